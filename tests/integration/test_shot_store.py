"""The store against a real PostgreSQL: migrations, the one status enum, claims that open attempts, finishes that
record everything in one statement, the lease queue shared by shots and assembly jobs, notifications."""
import asyncio
import re
import uuid

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shotline_controller.contract import shots_of
from shotline_controller.store.assemblies import AssemblyStore
from shotline_controller.store.migrations import MIGRATIONS_DIR, apply_migrations
from shotline_controller.store.notifications import Notifications, StreamLimit
from shotline_controller.store.shots import NextClaim, ShotStore
from shotline_controller.store.status import EVENTS_CHANNEL, AttemptStatus, JobStatus, ShotStatus

pytestmark = pytest.mark.integration


def run(url, work):
    async def main():
        async with AsyncConnectionPool(url, min_size=1, max_size=4, open=False) as pool:
            await apply_migrations(pool)
            return await work(pool)
    return asyncio.run(main())


async def rows(pool, sql, params=()):
    async with pool.connection() as conn:
        return await (await conn.execute(sql, params)).fetchall()


def test_migrations_apply_once_even_when_controllers_start_together(database_url):
    async def start_three(pool):
        return await asyncio.gather(*(apply_migrations(pool) for _ in range(3)))

    async def main():
        async with AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False) as pool:
            return await start_three(pool), await apply_migrations(pool)
    results, again = asyncio.run(main())
    assert sorted(name for applied in results for name in applied) == sorted(
        path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    assert again == []


def test_the_status_enums_are_the_databases_own(database_url):
    """One spelling of every status: the enums must list exactly what the CHECK constraints allow."""
    async def work(pool):
        return dict(await rows(pool, "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                                     "WHERE conname IN ('shots_status_check', 'attempts_status_check', "
                                     "'assembly_jobs_status_check')"))
    checks = run(database_url, work)
    for table, enum in (("shots", ShotStatus), ("attempts", AttemptStatus), ("assembly_jobs", JobStatus)):
        assert set(re.findall(r"'(\w+)'", checks[table])) == {status.value for status in enum}, table


def test_the_continuity_trigger_speaks_the_controllers_channel_and_statuses(database_url):
    """The trigger moving dependants is SQL written once in its migration: it must notify on EVENTS_CHANNEL and
    name only statuses the enum has."""
    async def work(pool):
        return (await rows(pool, "SELECT prosrc FROM pg_proc WHERE proname = 'shotline_move_dependants'"))[0][0]
    source = run(database_url, work)
    assert f"pg_notify('{EVENTS_CHANNEL}'" in source
    assert set(re.findall(r"'([a-z_]+)'", source)) - {EVENTS_CHANNEL} <= {status.value for status in ShotStatus}


def test_a_claim_opens_the_attempt_and_a_finish_records_everything_once(database_url):
    identity = {"node_id": "7", "check": "identity", "score": 0.62, "passed": False,
                "reasons": ["low identity: Ren 0.62 < 0.75"],
                "characters": {"Aiko": {"score": 0.91, "threshold": 0.8, "passed": True},
                               "Ren": {"score": 0.62, "threshold": 0.75, "passed": False},
                               "Kai": {"score": None, "threshold": 0.75, "passed": False}}}
    outputs = [{"node_id": "9", "kind": "images", "filename": "a.png", "subfolder": "s", "type": "output"}]

    async def work(pool):
        store = ShotStore(pool)
        batch_id, [shot_id] = await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}]), "test",
                                                       max_attempts=2)
        claimed = await store.claim("w1", 30, "http://b1")
        assert (claimed.id, claimed.attempts, claimed.last_attempt) == (shot_id, 0, None)
        assert claimed.attempt_id is not None and claimed.prompt_id is not None
        assert await store.claim("w2", 30, "http://b1") is None  # nothing else queued
        retry = {"params": {"seed": 9}, "correction": {"changes": {"seed": 9}, "reason": "low identity"}}
        assert await store.finish_attempt(claimed.attempt_id, ShotStatus.REJECTED, outputs=outputs,
                                          verdicts=[identity], inputs={"Sampler.seed": 1}, retry=retry)
        # a second finish of the same attempt (another controller following the prompt) records nothing
        assert not await store.finish_attempt(claimed.attempt_id, ShotStatus.APPROVED, outputs=outputs)
        again = await store.claim("w2", 30, "http://b2")
        assert (again.attempts, again.params["seed"], again.correction["reason"]) == (1, 9, "low identity")
        assert await store.finish_attempt(again.attempt_id, ShotStatus.APPROVED)
        assert await store.claim("w2", 30, "http://b2") is None
        return (batch_id, await rows(pool, "SELECT attempt_no, status, backend, inputs, correction->>'reason' "
                                           "FROM attempts ORDER BY attempt_no"),
                await rows(pool, "SELECT character_name, score, threshold, passed FROM character_scores "
                                 "ORDER BY character_name"),
                await rows(pool, "SELECT count(*) FROM outputs"), await store.shot(shot_id),
                await store.batch(batch_id))

    batch_id, attempts, scores, [(output_count,)], shot, batch = run(database_url, work)
    assert attempts == [(1, "succeeded", "http://b1", {"Sampler.seed": 1}, None),
                        (2, "succeeded", "http://b2", {}, "low identity")]
    assert scores == [("Aiko", 0.91, 0.8, True), ("Kai", None, 0.75, False), ("Ren", 0.62, 0.75, False)]
    assert output_count == 1 and shot["status"] == "approved"
    assert (batch["counts"], batch["done"], batch["finished"]) == ({"approved": 1}, 1, True)


def test_constraints_hold(database_url):
    async def work(pool):
        store = ShotStore(pool)
        _, [shot_id] = await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}]), "test")
        claimed = await store.claim("w1", 30, "http://b")
        with pytest.raises(psycopg.errors.CheckViolation):  # a score outside 0..1 is refused
            await store.finish_attempt(claimed.attempt_id, ShotStatus.APPROVED,
                                       verdicts=[{"node_id": "1", "check": "quality", "score": 1.5, "passed": True}])
        # the statement failed as a whole: the attempt is still open, the shot still running
        return await rows(pool, "SELECT a.status, s.status FROM attempts a JOIN shots s ON s.id = a.shot_id")
    assert run(database_url, work) == [("running", "running")]


def test_attempts_run_out_and_a_reconciled_attempt_is_not_reopened(database_url):
    async def work(pool):
        store = ShotStore(pool)
        await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}]), "test", max_attempts=1)
        first = await store.claim("w1", 30, "http://b")
        await store.release("w1", [first.id])  # a controller stopping while the prompt runs
        second = await store.claim("w2", 30, "http://b")
        # the open attempt is followed, not replaced
        assert second.attempt_id is None and str(second.last_attempt["id"]) == str(first.attempt_id)
        await store.finish_attempt(uuid.UUID(str(second.last_attempt["id"])), ShotStatus.QUEUED,
                                   attempt_status=AttemptStatus.LOST, error={"exception_message": "lost"})
        third = await store.claim("w3", 30, "http://b")  # the lost attempt does not count
        assert third.attempt_id is not None and third.attempts == 0
        await store.finish_attempt(third.attempt_id, ShotStatus.FAILED, error={"exception_message": "boom"})
        return await rows(pool, "SELECT attempt_no, status FROM attempts ORDER BY attempt_no")
    assert run(database_url, work) == [(1, "lost"), (2, "failed")]


def test_checkpoint_affinity_and_priority_order(database_url):
    async def work(pool):
        store = ShotStore(pool)
        await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "x",
                                                                      "checkpoint": "m2.safetensors"}]), "test")
        await store.submit_batch(shots_of([{"id": "urgent", "prompt": "x"}]), "test", priority=5)
        order = [(await store.claim("w", 30, "http://b", "m2.safetensors")).shot_key]
        order += [(await store.claim("w", 30, "http://b")).shot_key for _ in range(2)]
        return order
    assert run(database_url, work) == ["b", "urgent", "a"]


def test_one_lease_queue_for_shots_and_assembly_jobs(database_url, tmp_path):
    async def work(pool):
        shots, jobs = ShotStore(pool), AssemblyStore(pool)
        batch_id, [shot_id] = await shots.submit_batch(shots_of([{"id": "a", "prompt": "x"}]), "test")
        job = await jobs.create_job(batch_id, {}, tmp_path, tmp_path, max_attempts=2)
        claimed_shot, claimed_job = await shots.claim("w1", 0.1, "http://b"), await jobs.claim_job("w1", 0.1)
        assert (claimed_shot.id, claimed_job.id, claimed_job.attempts) == (shot_id, job.id, 1)
        assert await shots.renew("w2", [shot_id], 30) == set()  # only the holder renews
        assert not await jobs.renew_job(job.id, "w2")
        await asyncio.sleep(0.3)  # both leases lapse: their controller died
        assert await shots.reclaim_lapsed() == 1 and await jobs.reclaim_lapsed_jobs() == 1
        again = await jobs.claim_job("w2", 0.1)
        await asyncio.sleep(0.3)
        assert await jobs.reclaim_lapsed_jobs() == 1  # used both its attempts: failed, with why
        return (await shots.shot(shot_id))["status"], await jobs.job(job.id), again.attempts
    shot_status, job, attempts = run(database_url, work)
    assert shot_status == "queued" and attempts == 2
    assert job["status"] == "failed" and "stopped before it finished, 2 time(s)" in job["error"]["message"]


def test_transitions_and_their_notifications(database_url):
    async def work(pool):
        store = ShotStore(pool)
        hub = Notifications.for_pool(pool, max_streams=1)
        await hub.start()
        while not hub.connected:
            await asyncio.sleep(0.05)
        try:
            with hub.subscribe("queued") as queued, hub.subscribe("cancelled") as cancelled:
                batch_id, (a, b) = await store.submit_batch(shots_of([{"id": "a", "prompt": "x"},
                                                                      {"id": "b", "prompt": "y"}]), "test")
                await asyncio.wait_for(queued.wait(), 5)
                with hub.stream(batch_id) as changed:
                    with pytest.raises(StreamLimit):
                        with hub.stream(batch_id):
                            pass
                    assert await store.cancel_shot(a) and not await store.cancel_shot(a)
                    await asyncio.wait_for(cancelled.wait(), 5)
                    await asyncio.wait_for(changed.wait(), 5)
                assert not await store.review_shot(b, approve=True)  # only needs_review can be reviewed
                assert await store.retry_shot(a) and not await store.retry_shot(b)
                return (await store.shot(a))["status"], (await store.shot(a))["max_attempts"], hub.streams
        finally:
            await hub.stop()
    assert run(database_url, work) == ("queued", 4, 0)


def test_a_finish_carries_the_next_claim_in_the_same_statement(database_url):
    async def work(pool):
        store = ShotStore(pool)
        await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}]), "test",
                                 max_attempts=2)
        first = await store.claim("w1", 30, "http://b")
        retry = {"params": {"seed": 9}, "correction": {"changes": {"seed": 9}, "reason": "blurry"}}
        recorded, following = await store.finish_and_claim(first.attempt_id, ShotStatus.REJECTED,
                                                           NextClaim("w1", 30, "http://b"), retry=retry)
        # the shot queued again by its correction is not the one claimed with its own record
        assert recorded and following.shot_key == "b" and following.attempt_id is not None
        recorded, again = await store.finish_and_claim(following.attempt_id, ShotStatus.APPROVED,
                                                       NextClaim("w1", 30, "http://b"))
        assert recorded and again.shot_key == "a" and again.correction["reason"] == "blurry"
        recorded, none_left = await store.finish_and_claim(again.attempt_id, ShotStatus.APPROVED,
                                                           NextClaim("w1", 30, "http://b"))
        async with pool.connection() as conn:  # the quick commit was that statement's alone
            setting = (await (await conn.execute("SHOW synchronous_commit")).fetchone())[0]
        return recorded, none_left, setting, await rows(
            pool, "SELECT s.shot_key, a.attempt_no, a.status FROM attempts a JOIN shots s ON s.id = a.shot_id "
                  "ORDER BY s.shot_key, a.attempt_no")
    recorded, none_left, setting, attempts = run(database_url, work)
    assert recorded and none_left is None and setting == "on"
    assert attempts == [("a", 1, "succeeded"), ("a", 2, "succeeded"), ("b", 1, "succeeded")]


def test_a_shot_queued_again_while_its_attempt_ran_is_ended_by_that_attempt_not_claimed_by_it(database_url):
    """A lease that lapsed mid-attempt puts the shot back in the queue while its prompt still runs. The attempt's
    record must end the shot; the claim made in the same statement must not take it (it would see it queued, and
    the shot would be left running with its only attempt already recorded: a `failed` shot that succeeded)."""
    async def work(pool):
        store = ShotStore(pool)
        await store.submit_batch(shots_of([{"id": "a", "prompt": "x"}]), "test", max_attempts=1)
        first = await store.claim("w1", 30, "http://b")
        await store.release("w1", [first.id])  # as a lapse would: queued, its attempt still open
        recorded, following = await store.finish_and_claim(first.attempt_id, ShotStatus.REJECTED,
                                                           NextClaim("w1", 30, "http://b"))
        status = await rows(pool, "SELECT status FROM shots WHERE id = %s", (first.id,))
        return recorded, following, status, await store.last_recorded_attempt(first.id)
    recorded, following, status, last = run(database_url, work)
    assert recorded and following is None
    assert status == [("rejected",)]
    assert last["status"] == "succeeded" and last["verdicts"] == []


def test_a_continuing_shot_waits_is_blocked_and_released_with_the_shot_it_continues(database_url):
    """The trigger moves dependants in the transaction that moves their shot: nothing can strand them."""
    async def work(pool):
        store = ShotStore(pool)
        _, (one, two, three, other) = await store.submit_batch(shots_of([
            {"id": "a", "prompt": "x", "scene": "s"}, {"id": "b", "prompt": "x", "scene": "s", "continuity": "previous"},
            {"id": "c", "prompt": "x", "scene": "s", "continuity": "previous"}, {"id": "z", "prompt": "x"}]),
            "test", max_attempts=1)

        async def statuses():
            found = dict(await rows(pool, "SELECT id, status FROM shots WHERE id = ANY(%s)",
                                    ([one, two, three, other],)))
            return [found[key] for key in (one, two, three, other)]
        seen = [await statuses()]
        claimed = [await store.claim("w", 30, "http://b") for _ in range(3)]
        assert sorted(shot.shot_key for shot in claimed if shot) == ["a", "z"]  # b and c wait: never claimed
        first = next(shot for shot in claimed if shot and shot.shot_key == "a")
        await store.finish_attempt(first.attempt_id, ShotStatus.REJECTED)
        seen.append(await statuses())
        await store.retry_shot(one)
        seen.append(await statuses())
        again = await store.claim("w", 30, "http://b")
        await store.finish_attempt(again.attempt_id, ShotStatus.REJECTED)
        await store.review_shot(one, approve=True)  # a person approves the shot the checks rejected
        seen.append(await statuses())
        batch = await store.batch(first.batch_id)
        return seen, batch["settled"], (await store.claim("w", 30, "http://b")).shot_key
    seen, settled, next_key = run(database_url, work)
    assert seen == [["queued", "waiting", "waiting", "queued"],
                    ["rejected", "blocked", "waiting", "running"],
                    ["queued", "waiting", "waiting", "running"],
                    ["approved", "queued", "waiting", "running"]]
    assert not settled and next_key == "b"


def test_a_characters_best_frame_is_kept_per_scene_and_the_freshest_is_found_first(database_url):
    from shotline_controller.store.continuity import ContinuityStore

    async def work(pool):
        store, kept = ShotStore(pool), ContinuityStore(pool)
        batch_id, shot_ids = await store.submit_batch(shots_of([
            {"id": "a", "prompt": "x", "scene": "s1"}, {"id": "b", "prompt": "x", "scene": "s1"},
            {"id": "c", "prompt": "x", "scene": "s2"}]), "test")
        attempts = {}
        for shot_id in shot_ids:
            attempts[shot_id] = (await store.claim("w", 30, "http://b")).attempt_id
        keep = [await kept.keep_frame(batch_id, "s1", "aiko", shot_ids[0], attempts[shot_ids[0]], 0.8,
                                      "sha256:" + "a" * 64, None, None),
                await kept.keep_frame(batch_id, "s1", "aiko", shot_ids[1], attempts[shot_ids[1]], 0.7,
                                      "sha256:" + "b" * 64, None, None),  # lower: the first stays
                await kept.keep_frame(batch_id, "s1", "aiko", shot_ids[1], attempts[shot_ids[1]], 0.9,
                                      "sha256:" + "c" * 64, "sha256:" + "d" * 64, [1, 2, 3, 4])]
        in_s1 = await kept.freshest_frame(batch_id, "s1", "aiko")
        in_s2 = await kept.freshest_frame(batch_id, "s2", "aiko")  # none of its own: the earlier scene's
        nobody = await kept.freshest_frame(batch_id, "s2", "ren")
        return keep, in_s1, in_s2, nobody
    keep, in_s1, in_s2, nobody = run(database_url, work)
    assert keep == [True, False, True]
    assert (in_s1["shot_key"], in_s1["score"], in_s1["face_ref"]) == ("b", 0.9, "sha256:" + "d" * 64)
    assert in_s2["scene"] == "s1" and nobody is None


def test_outcomes_count_per_character_and_arm_and_a_review_changes_them_and_teaches(database_url):
    """Each attempt's knobs are counted under its outcome (lost and undecided ones not); a person's review makes
    the decision the last attempt's outcome, keeps the reason and note, and a rejection's category adds its terms
    to every character of the shot."""
    from shotline_controller.learner import Counts
    from shotline_controller.store.learning import LearningStore

    async def work(pool):
        store, learning = ShotStore(pool), LearningStore(pool)
        shots = shots_of([{"id": "a", "prompt": "x", "characters": ["aiko", "ren"]},
                          {"id": "b", "prompt": "x", "characters": ["aiko"]}, {"id": "c", "prompt": "x"}])
        batch_id, [a, b, c] = await store.submit_batch(shots, "test", max_attempts=2)
        knobs = {"knobs": {"cfg": "8.5", "sampler": "euler"}, "learned": {"cfg": {"arm": "8.5"}}}
        first = await store.claim("w", 30, "http://b1")
        retry = {"params": {"seed": 9}, "correction": {"changes": {"seed": 9}, "reason": "blurry"}}
        await store.finish_attempt(first.attempt_id, ShotStatus.REJECTED, retry=retry, learning=knobs)
        for _ in range(3):
            claimed = await store.claim("w", 30, "http://b1")
            status = {a: ShotStatus.NEEDS_REVIEW, b: ShotStatus.APPROVED, c: ShotStatus.APPROVED}[claimed.id]
            await store.finish_attempt(claimed.attempt_id, status, learning={"knobs": {"cfg": "7"}})
        before = await learning.counts(["aiko"], ["cfg", "sampler"])
        nobody = await learning.counts([], ["cfg"])
        assert not await store.review_shot(b, False, "hands")  # approved: only approving a rejected one is allowed
        assert await store.review_shot(a, False, "extra_people", "two girls behind her")
        after = await learning.counts(["aiko"], ["cfg"])
        reviews = await rows(pool, "SELECT decision, category, note, attempt_id IS NOT NULL FROM reviews")
        return (before, nobody, after, reviews, await learning.active_negatives(["ren"]),
                await learning.negatives("aiko"), await learning.history("aiko"))

    before, nobody, after, reviews, ren, aiko, history = run(database_url, work)
    # a: 8.5 rejected, then 7 undecided (needs review); b: 7 approved -- summed over aiko's shots
    assert before == {"cfg": {"8.5": Counts(0, 1), "7": Counts(1, 0)}, "sampler": {"euler": Counts(0, 1)}}
    assert nobody == {"cfg": {"7": Counts(1, 0)}}  # c names no character: it learns under ''
    assert after == {"cfg": {"8.5": Counts(0, 1), "7": Counts(1, 1)}}  # the review decided a's second attempt
    assert reviews == [("reject", "extra_people", "two girls behind her", True)]
    assert ren == ["crowd", "extra people", "multiple people"]
    assert [(n["term"], n["times"], n["last_shot"]) for n in aiko] == [
        ("crowd", 1, "a"), ("extra people", 1, "a"), ("multiple people", 1, "a")]
    [batch] = history
    assert (batch["shots"], batch["approved"], batch["first_attempt_pass_rate"], batch["attempts_per_approved"]) == (
        2, 1, 0.5, 3.0)
