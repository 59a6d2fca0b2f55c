"""Batches, shots and attempts in PostgreSQL: every change of a shot's status happens in this file.

    submit_batch    -> queued                                 (NOTIFY queued <batch>)
    claim           queued -> running, and its next attempt   (a lease, FOR UPDATE SKIP LOCKED; store/leases.py)
    finish_attempt  running -> approved | needs_review | rejected | failed, or queued again with a correction
    end_shot        running -> failed (attempts used up)
    release / reclaim_lapsed   running -> queued (a controller stopping, or one that died)
    cancel_shot / cancel_batch -> cancelled                   (NOTIFY cancelled <batch>: the prompt is interrupted)
    retry_shot      final -> queued, one more attempt allowed
    review_shot     needs_review -> approved | rejected; rejected -> approved (a person overrides the checks)
    (a trigger)     waiting -> queued | blocked, blocked -> waiting | queued: shots that continue another follow
                    its status (db/migrations/0008_continuity.sql), in the same transaction

Each transition is one statement (a claim also opens the attempt; a finish also writes the outputs, verdicts and
per-character scores), which is what keeps the controller's own cost per shot small. Every transition NOTIFYs
`<kind> <batch_id>` on EVENTS_CHANNEL, read by the event streams and the dispatchers (store/notifications.py).
"""
from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline_controller.contract import continued_shots
from shotline_controller.store.learning import LESSONS_SQL, lesson_terms
from shotline_controller.store.leases import LeaseQueue, LeaseTable
from shotline_controller.store.status import (
    EVENTS_CHANNEL,
    FINAL_SHOT_STATUSES,
    OPEN_ATTEMPT_STATUSES,
    OPEN_SHOT_STATUSES,
    RETRYABLE_SHOT_STATUSES,
    RUNNABLE_SHOT_STATUSES,
    AttemptStatus,
    ShotStatus,
    sql_in,
)

SHOTS = LeaseTable("shots", order_by="priority DESC, created_at, position",
                   on_claim=", updated_at = now()", on_lapse=", claimed_by = NULL, updated_at = now()")
OPEN = sql_in(OPEN_SHOT_STATUSES)
OPEN_ATTEMPT = sql_in(OPEN_ATTEMPT_STATUSES)
FINAL = sql_in(FINAL_SHOT_STATUSES)
LOST = AttemptStatus.LOST.value
# the verdicts of attempt `a` as a JSON array, as the nodes reported them
ATTEMPT_VERDICTS = ("coalesce((SELECT json_agg(v.details ORDER BY v.id) FROM verdicts v WHERE v.attempt_id = a.id), "
                    "'[]')")
# the outputs of attempt `a` as a JSON array of {node_id, kind, filename, subfolder, type}
ATTEMPT_OUTPUTS = ("coalesce((SELECT json_agg(json_build_object('node_id', o.node_id, 'kind', o.kind, "
                   "'filename', o.filename, 'subfolder', o.subfolder, 'type', o.folder_type) ORDER BY o.id) "
                   "FROM outputs o WHERE o.attempt_id = a.id), '[]')")


def _notify(kind: str, batch: str) -> str:
    """SQL for a NOTIFY of `<kind> <batch id>`; `batch` is an SQL expression."""
    return f"pg_notify('{EVENTS_CHANNEL}', '{kind} ' || ({batch})::text)"


@dataclass
class ClaimedShot:
    id: uuid.UUID
    batch_id: uuid.UUID
    shot_key: str
    workflow: str
    params: dict                     # the shot as submitted, with the latest correction applied
    correction: dict | None          # what the latest correction changed and why (None on the first try)
    attempts: int                    # attempts recorded so far (lost ones excluded), this one not counted
    max_attempts: int
    last_attempt: dict | None        # {id, prompt_id, backend, status} of the latest attempt before this claim
    attempt_id: uuid.UUID | None     # the attempt this claim opened (None: reconcile the last one, or no attempts
    prompt_id: uuid.UUID | None      #   left), and the prompt_id it will be queued under on ComfyUI
    position: int = 0                # its place in the batch's list
    after_shot: uuid.UUID | None = None  # the shot it continues (approved, or it would not be queued)


@dataclass(frozen=True)
class NextClaim:
    """Who claims, for how long, for which backend (and the checkpoint it has loaded)."""
    worker: str
    lease_seconds: float
    backend: str
    prefer_checkpoint: str | None = None

    def params(self) -> dict:
        return {"limit": 1, "worker": self.worker, "lease": self.lease_seconds, "backend": self.backend,
                "checkpoint": self.prefer_checkpoint}


def _as_json(shots) -> str:
    """The shots' stored form as one JSON array (built off the event loop for a long batch)."""
    return json.dumps([shot.as_dict() for shot in shots])


def claimed_shot(row: dict | None) -> ClaimedShot | None:
    if row is None or row["id"] is None:  # nothing was queued
        return None
    return ClaimedShot(id=row["id"], batch_id=row["batch_id"], shot_key=row["shot_key"], workflow=row["workflow"],
                       params={**row["params"], **(row["next_params"] or {})}, correction=row["next_correction"],
                       attempts=row["attempts"], max_attempts=row["max_attempts"], last_attempt=row["last_attempt"],
                       attempt_id=row["attempt_id"], prompt_id=row["prompt_id"], position=row["position"],
                       after_shot=row["after_shot"])


# --- claims: one statement takes the next shot and opens its attempt --------------------------------------------

_CLAIMED_COLUMNS = ("x.id, x.batch_id, x.shot_key, x.workflow, x.params, x.next_params, x.next_correction, "
                    "x.max_attempts, x.position, x.after_shot")
_CLAIM_REST = f"""
, history AS (
    SELECT count(*) FILTER (WHERE a.status <> '{LOST}') AS attempts, max(a.attempt_no) AS last_no
    FROM attempts a JOIN claimed c ON a.shot_id = c.id),
last AS (
    SELECT a.id, a.prompt_id, a.backend, a.status FROM attempts a JOIN claimed c ON a.shot_id = c.id
    ORDER BY a.attempt_no DESC LIMIT 1),
fresh AS (
    INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, inputs, correction, started_at)
    SELECT c.id, coalesce(h.last_no, 0) + 1, gen_random_uuid(), %(backend)s, '{AttemptStatus.RUNNING}', '{{}}',
           c.next_correction, now()
    FROM claimed c, history h
    WHERE h.attempts < c.max_attempts AND NOT EXISTS (SELECT 1 FROM last WHERE last.status IN {OPEN_ATTEMPT})
    RETURNING id, prompt_id),
note AS (SELECT {_notify('changed', 'c.batch_id')} FROM claimed c)"""
_CLAIM_SELECT = """
SELECT c.*, h.attempts, (SELECT row_to_json(last) FROM last) AS last_attempt, f.id AS attempt_id, f.prompt_id,
       (SELECT count(*) FROM note) AS notified
FROM claimed c CROSS JOIN history h LEFT JOIN fresh f ON true"""


# A claim made with an attempt's record never takes that attempt's shot: were it queued (a lease that lapsed while
# the attempt ran), the statement's snapshot would see it queued while the same statement ends it.
_NOT_FINISHING = " AND id IS DISTINCT FROM (SELECT shot_id FROM attempts WHERE id = %(attempt)s)"


def _claim_ctes(queue: LeaseQueue, prefer_checkpoint: bool, also_where: str = "") -> str:
    if not prefer_checkpoint:
        return queue.claim_ctes(_CLAIMED_COLUMNS, also_where=also_where) + _CLAIM_REST
    # the checkpoint the backend has loaded first, so a GPU does not swap models between shots; either part walks
    # an index in queue order (shots_queued_checkpoint_idx, shots_queued_idx), and `other` only runs when
    # `preferred` found nothing
    order, queued = queue.table.order_by, ShotStatus.QUEUED.value
    preferred = (f"preferred AS (SELECT id FROM shots WHERE status = '{queued}'{also_where} "
                 f"  AND params->>'checkpoint' = %(checkpoint)s ORDER BY {order} FOR UPDATE SKIP LOCKED LIMIT 1), "
                 f"other AS (SELECT id FROM shots WHERE status = '{queued}'{also_where} "
                 f"  AND NOT EXISTS (SELECT 1 FROM preferred) ORDER BY {order} FOR UPDATE SKIP LOCKED LIMIT 1), "
                 "next AS (SELECT id FROM preferred UNION ALL SELECT id FROM other)")
    return queue.claim_ctes(_CLAIMED_COLUMNS, preferred) + _CLAIM_REST


# The hot path (an attempt's record and the claim that follows it) commits without waiting for the WAL flush: a
# PostgreSQL crash can forget the last fraction of a second of it, which the controllers already survive (an
# attempt left open is followed again by its prompt_id on ComfyUI; a claim forgotten is a shot queued again).
# Everything else, and all that a person did (a submitted batch, a cancel, a review, an upload), waits for it.
_QUICK_COMMIT = "quick_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS off)"

# --- finishing: one statement closes the attempt, records what it made, and moves the shot ---------------------

_FINISH_CTES = f"""
closed AS (
    UPDATE attempts SET status = %(attempt_status)s, error = %(error)s, finished_at = now(),
      inputs = coalesce(%(inputs)s, inputs), outcome = %(outcome)s, knobs = coalesce(%(knobs)s, knobs),
      learned = coalesce(%(learned)s, learned), blamed = %(blamed)s
    WHERE id = %(attempt)s AND status IN {OPEN_ATTEMPT} RETURNING id, shot_id),
outs AS (
    INSERT INTO outputs (attempt_id, node_id, kind, filename, subfolder, folder_type)
    SELECT c.id, o.node_id, o.kind, o.filename, o.subfolder, o.type
    FROM closed c, jsonb_to_recordset(%(outputs)s) AS o(node_id text, kind text, filename text, subfolder text,
                                                        type text)),
verdict_rows AS (
    INSERT INTO verdicts (attempt_id, node_id, check_name, score, passed, details)
    SELECT c.id, v->>'node_id', v->>'check', (v->>'score')::float8, (v->>'passed')::boolean, v
    FROM closed c, jsonb_array_elements(%(verdicts)s) AS v
    RETURNING id, attempt_id, details),
scores AS (
    -- identity verdicts carry a result per character: rows of their own, for analytics
    INSERT INTO character_scores (verdict_id, attempt_id, character_name, score, threshold, passed, details)
    SELECT r.id, r.attempt_id, ch.key, (ch.value->>'score')::float8, (ch.value->>'threshold')::float8,
           coalesce((ch.value->>'passed')::boolean, false), ch.value
    FROM verdict_rows r, jsonb_each(CASE WHEN jsonb_typeof(r.details->'characters') = 'object'
                                              AND r.details->>'check' = 'identity'
                                         THEN r.details->'characters' ELSE '{{}}' END) AS ch),
moved AS (
    UPDATE shots s SET status = %(shot_status)s, updated_at = now(),
      next_params = CASE WHEN %(retry)s THEN %(next_params)s ELSE s.next_params END,
      next_correction = CASE WHEN %(retry)s THEN %(next_correction)s ELSE s.next_correction END,
      claimed_by = CASE WHEN %(release)s THEN NULL ELSE s.claimed_by END,
      lease_until = CASE WHEN %(release)s THEN NULL ELSE s.lease_until END
    FROM closed WHERE s.id = closed.shot_id AND s.status IN {OPEN} RETURNING s.batch_id),
finish_note AS (SELECT {_notify('changed', 'm.batch_id')} FROM moved m)"""
_FINISH = ("WITH " + _FINISH_CTES + " SELECT (SELECT count(*) FROM closed) AS recorded, "
           "(SELECT count(*) FROM finish_note) AS notified")


def _finish_and_claim_sql(queue: LeaseQueue, prefer_checkpoint: bool) -> str:
    """One statement: the attempt's record and the slot's next claim (so one round trip, and one transaction that
    commits without waiting for the flush). Its snapshot cannot see the finished shot as queued, so a shot queued
    again by its correction is claimed by a later claim, never by this one."""
    return ("WITH " + _QUICK_COMMIT + ", " + _FINISH_CTES + ", "
            + _claim_ctes(queue, prefer_checkpoint, _NOT_FINISHING)
            + " SELECT (SELECT count(*) FROM closed) AS recorded, (SELECT count(*) FROM finish_note) "
            "+ (SELECT count(*) FROM quick_commit WHERE off IS NOT NULL) AS finish_notified, claim.* "
            "FROM (SELECT 1) AS one LEFT JOIN (" + _CLAIM_SELECT + ") AS claim ON true")


class ShotStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
        self.leases = LeaseQueue(SHOTS)
        self._claim = {prefer: "WITH " + _claim_ctes(self.leases, prefer) + _CLAIM_SELECT for prefer in (False, True)}
        self._finish_and_claim = {prefer: _finish_and_claim_sql(self.leases, prefer) for prefer in (False, True)}

    # --- submitting -----------------------------------------------------------------------------------------

    async def submit_batch(self, shots, source: str, webhook_url: str | None = None, max_attempts: int = 3,
                           priority: int = 0, states=()) -> tuple[uuid.UUID, list[uuid.UUID]]:
        """Queue `shots` (contract.Shot) as a new batch; returns its id and the shots' ids in list order. A shot
        with `continuity: previous` waits for the shot before it in its scene. `states`: the list's character
        state changes, (position, character, fields) (contract.state_changes)."""
        rows = await asyncio.to_thread(_as_json, shots) if len(shots) > 200 else _as_json(shots)
        continued = continued_shots(shots)
        async with self.pool.connection() as conn, conn.transaction():
            batch_id = (await (await conn.execute(
                "INSERT INTO batches (source, webhook_url) VALUES (%s, %s) RETURNING id",
                (source, webhook_url))).fetchone())[0]
            cursor = await conn.execute(
                "INSERT INTO shots (batch_id, shot_key, position, workflow, params, max_attempts, priority) "
                "SELECT %s, s.params->>'id', s.position - 1, s.params->>'workflow', s.params, %s, %s "
                "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS s(params, position) "
                "ORDER BY s.position RETURNING id, position",
                (batch_id, max_attempts, priority, rows))
            shot_ids = [row[0] for row in sorted(await cursor.fetchall(), key=lambda row: row[1])]
            links = [(shot_ids[index], shot_ids[before]) for index, before in enumerate(continued)
                     if before is not None]
            if links:
                await conn.execute(
                    f"UPDATE shots s SET after_shot = l.before, status = '{ShotStatus.WAITING}' "
                    "FROM unnest(%s::uuid[], %s::uuid[]) AS l(shot, before) WHERE s.id = l.shot",
                    ([a for a, _ in links], [b for _, b in links]))
            if states:
                await conn.cursor().executemany(
                    "INSERT INTO character_states (batch_id, character_name, from_position, fields, source) "
                    "VALUES (%s, %s, %s, %s, 'shot list')",
                    [(batch_id, name, position, Jsonb(fields)) for position, name, fields in states])
            await conn.execute(f"SELECT {_notify('queued', '%s::uuid')}", (batch_id,))
        return batch_id, shot_ids

    # --- claiming and leases --------------------------------------------------------------------------------

    async def claim(self, worker: str, lease_seconds: float, backend: str,
                    prefer_checkpoint: str | None = None) -> ClaimedShot | None:
        """The next queued shot (highest priority, oldest first; the given checkpoint's first), now running under
        this worker's lease, with its next attempt opened on `backend` unless the last one must be reconciled or
        no attempt is left."""
        claim = NextClaim(worker, lease_seconds, backend, prefer_checkpoint)
        async with self.pool.connection() as conn:  # one statement: its own transaction
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(self._claim[claim.prefer_checkpoint is not None], claim.params())
            return claimed_shot(await cursor.fetchone())

    async def start_attempt(self, shot_id: uuid.UUID, backend: str, correction: dict | None) -> tuple[uuid.UUID,
                                                                                                   uuid.UUID]:
        """Open a new attempt on a shot this worker holds (after its last one was found lost)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, inputs, correction, "
                "started_at) SELECT %s, coalesce(max(attempt_no), 0) + 1, gen_random_uuid(), %s, %s, '{}', %s, now() "
                "FROM attempts WHERE shot_id = %s RETURNING id, prompt_id",
                (shot_id, backend, AttemptStatus.RUNNING.value, Jsonb(correction) if correction else None,
                 shot_id))).fetchone()
        return row[0], row[1]

    async def renew(self, worker: str, shot_ids, lease_seconds: float) -> set[uuid.UUID]:
        async with self.pool.connection() as conn:
            return await self.leases.renew(conn, worker, shot_ids, lease_seconds)

    async def release(self, worker: str, shot_ids) -> None:
        """Give shots back to the queue (a controller stopping, or a backend gone): their open attempt is followed
        by whoever claims them next."""
        async with self.pool.connection() as conn:
            await self.leases.release(conn, worker, shot_ids, also=", updated_at = now()")

    async def reclaim_lapsed(self) -> int:
        """Shots whose controller stopped renewing its lease go back to the queue."""
        async with self.pool.connection() as conn:
            return len(await self.leases.reclaim_lapsed(conn))

    async def cancelled_among(self, shot_ids) -> set[uuid.UUID]:
        """Which of these shots were cancelled (their prompts are to be interrupted)."""
        if not shot_ids:
            return set()
        async with self.pool.connection() as conn:
            cursor = await conn.execute(f"SELECT id FROM shots WHERE id = ANY(%s) AND status = "
                                        f"'{ShotStatus.CANCELLED}'", (list(shot_ids),))
            return {row[0] for row in await cursor.fetchall()}

    # --- ending attempts ------------------------------------------------------------------------------------

    async def finish_attempt(self, attempt_id: uuid.UUID, shot_status: ShotStatus, *, outputs=(), verdicts=(),
                             error: dict | None = None, inputs: dict | None = None,
                             attempt_status: AttemptStatus | None = None, retry: dict | None = None,
                             learning: dict | None = None) -> bool:
        """Close an attempt with its outputs, verdicts and per-character scores, and move its shot to
        `shot_status` (or, with `retry` = {"params", "correction"}, queue it again corrected), in one statement.

        Only the first caller for an attempt records it (another controller may follow the same prompt after a
        lease lapsed): False, recording nothing, when it was already closed. A cancelled shot keeps its status."""
        recorded, _ = await self.finish_and_claim(attempt_id, shot_status, None, outputs=outputs, verdicts=verdicts,
                                                  error=error, inputs=inputs, attempt_status=attempt_status,
                                                  retry=retry, learning=learning)
        return recorded

    async def finish_and_claim(self, attempt_id: uuid.UUID, shot_status: ShotStatus, claim: "NextClaim | None", *,
                               outputs=(), verdicts=(), error: dict | None = None, inputs: dict | None = None,
                               attempt_status: AttemptStatus | None = None, retry: dict | None = None,
                               learning: dict | None = None) -> tuple[bool, ClaimedShot | None]:
        """finish_attempt, and (with `claim`) the slot's next claim in the same statement: one round trip to
        PostgreSQL for both, which is most of what a shot costs the controller. The two are one transaction: a
        claim that fails leaves the attempt open too, to be followed again. `learning`: {"knobs", "learned",
        "blamed"}, what the learner counts this attempt's outcome under (the status its verdicts gave the shot;
        a failure against the `blamed` knobs only, when given)."""
        attempt_status = attempt_status or (AttemptStatus.FAILED if error else AttemptStatus.SUCCEEDED)
        status = ShotStatus.QUEUED if retry else ShotStatus(shot_status)
        judged = attempt_status in (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED) and ShotStatus(shot_status) in (
            ShotStatus.APPROVED, ShotStatus.NEEDS_REVIEW, ShotStatus.REJECTED, ShotStatus.FAILED)
        learning = learning or {}
        finish = {"attempt": attempt_id, "attempt_status": attempt_status.value,
                  "outcome": ShotStatus(shot_status).value if judged else None,
                  "knobs": Jsonb(learning["knobs"]) if learning.get("knobs") else None,
                  "learned": Jsonb(learning["learned"]) if learning.get("learned") else None,
                  "blamed": Jsonb(learning["blamed"]) if learning.get("blamed") is not None else None,
                  "error": Jsonb(error) if error else None, "inputs": Jsonb(inputs) if inputs is not None else None,
                  "outputs": Jsonb(list(outputs)), "verdicts": Jsonb(list(verdicts)),
                  "shot_status": status.value, "retry": retry is not None,
                  "next_params": Jsonb(retry["params"]) if retry else None,
                  "next_correction": Jsonb(retry["correction"]) if retry else None,
                  "release": status is not ShotStatus.RUNNING}
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            if claim is None:
                await cursor.execute(_FINISH, finish)
                return (await cursor.fetchone())["recorded"] > 0, None
            await cursor.execute(self._finish_and_claim[claim.prefer_checkpoint is not None],
                                 {**finish, **claim.params()})
            row = await cursor.fetchone()
        return row["recorded"] > 0, claimed_shot(row)

    async def last_recorded_attempt(self, shot_id: uuid.UUID) -> dict | None:
        """The shot's latest attempt that ran to its end ({status, verdicts}), or None."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT a.status, {ATTEMPT_VERDICTS} AS verdicts FROM attempts a "
                f"WHERE a.shot_id = %s AND a.status NOT IN {OPEN_ATTEMPT} AND a.status <> '{LOST}' "
                "ORDER BY a.attempt_no DESC LIMIT 1", (shot_id,))
            return await cursor.fetchone()

    async def end_shot(self, shot_id: uuid.UUID, status: ShotStatus) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                f"WITH moved AS (UPDATE shots SET status = %s, claimed_by = NULL, lease_until = NULL, "
                f"  updated_at = now() WHERE id = %s AND status IN {OPEN} RETURNING batch_id) "
                f"SELECT {_notify('changed', 'batch_id')} FROM moved", (ShotStatus(status).value, shot_id))

    # --- a person's decisions -------------------------------------------------------------------------------

    async def _transition(self, kind: str, sql: str, params: tuple) -> int:
        """Run an UPDATE ... RETURNING batch_id, NOTIFY each batch it touched; returns the rows changed."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (await conn.execute(sql, params)).fetchall()
            for batch_id in {row[0] for row in rows}:
                await conn.execute(f"SELECT {_notify(kind, '%s::uuid')}", (batch_id,))
            return len(rows)

    async def cancel_shot(self, shot_id: uuid.UUID) -> bool:
        """Cancel a shot that has not reached a final status; a running prompt is interrupted by its dispatcher."""
        return bool(await self._transition("cancelled", (
            f"UPDATE shots SET status = '{ShotStatus.CANCELLED}', claimed_by = NULL, lease_until = NULL, "
            f"updated_at = now() WHERE id = %s AND status IN {OPEN} RETURNING batch_id"), (shot_id,)))

    async def cancel_batch(self, batch_id: uuid.UUID) -> int:
        return await self._transition("cancelled", (
            f"UPDATE shots SET status = '{ShotStatus.CANCELLED}', claimed_by = NULL, lease_until = NULL, "
            f"updated_at = now() WHERE batch_id = %s AND status IN {OPEN} RETURNING batch_id"), (batch_id,))

    async def retry_shot(self, shot_id: uuid.UUID) -> bool:
        """Queue a finished shot again, with one more attempt allowed; its batch is open again (and notifies its
        webhook again when it finishes)."""
        return bool(await self._transition("queued", (
            f"WITH retried AS (UPDATE shots SET status = '{ShotStatus.QUEUED}', "
            f"  max_attempts = least(20, max_attempts + 1), updated_at = now() "
            f"  WHERE id = %s AND status IN {sql_in(RETRYABLE_SHOT_STATUSES)} RETURNING batch_id) "
            "UPDATE batches b SET finished_at = NULL, notified_at = NULL FROM retried WHERE b.id = retried.batch_id "
            "RETURNING b.id"), (shot_id,)))

    async def review_shot(self, shot_id: uuid.UUID, approve: bool, reason: str | None = None,
                          note: str = "") -> bool:
        """A person's decision on a shot in the review band, or their approval of a shot the checks rejected
        (which releases the shots that continue it), in one transaction with what it teaches: the review is
        kept (reason category and note), the shot's last attempt takes the decision as its outcome (the learner
        counts it), and a rejection adds its category's negative terms to each character of the shot."""
        status = ShotStatus.APPROVED if approve else ShotStatus.REJECTED
        reviewable = sql_in((ShotStatus.NEEDS_REVIEW, ShotStatus.REJECTED) if approve else (ShotStatus.NEEDS_REVIEW,))
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                f"UPDATE shots SET status = %s, updated_at = now() WHERE id = %s AND status IN {reviewable} "
                "RETURNING batch_id, coalesce(params->'characters', '[]'::jsonb)", (status.value, shot_id))).fetchone()
            if row is None:
                return False
            batch_id, characters = row
            attempt = await (await conn.execute(
                f"UPDATE attempts SET outcome = %s WHERE id = (SELECT id FROM attempts WHERE shot_id = %s "
                f"AND outcome IS NOT NULL ORDER BY attempt_no DESC LIMIT 1) RETURNING id",
                (status.value, shot_id))).fetchone()
            await conn.execute(
                "INSERT INTO reviews (shot_id, attempt_id, decision, category, note) VALUES (%s, %s, %s, %s, %s)",
                (shot_id, attempt and attempt[0], "approve" if approve else "reject", reason, note))
            terms = [] if approve else lesson_terms(reason)
            if terms and characters:
                await conn.execute(LESSONS_SQL, {"category": reason, "shot": shot_id, "characters": Jsonb(characters),
                                                 "terms": terms})
            await conn.execute(f"SELECT {_notify('changed', '%s::uuid')}", (batch_id,))
        return True

    # --- batches --------------------------------------------------------------------------------------------

    async def mark_finished_batches(self) -> int:
        """Batches whose every shot is final, not yet marked finished: marks them; returns how many."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE batches b SET finished_at = now() WHERE finished_at IS NULL AND EXISTS "
                "(SELECT 1 FROM shots s WHERE s.batch_id = b.id) AND NOT EXISTS "
                f"(SELECT 1 FROM shots s WHERE s.batch_id = b.id AND s.status IN {OPEN}) RETURNING b.id")
            return len(await cursor.fetchall())

    # --- reads ----------------------------------------------------------------------------------------------

    async def batch(self, batch_id: uuid.UUID) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT b.id, b.source, b.webhook_url, b.created_at, b.finished_at, b.notified_at, "
                "  coalesce((SELECT json_object_agg(status, n) FROM (SELECT status, count(*) AS n FROM shots "
                "   WHERE batch_id = b.id GROUP BY status) c), '{}') AS counts "
                "FROM batches b WHERE b.id = %s", (batch_id,))
            batch = await cursor.fetchone()
        if batch is None:
            return None
        counts = batch["counts"]
        total = sum(counts.values())
        done = sum(n for status, n in counts.items() if status in FINAL_SHOT_STATUSES)
        runnable = sum(n for status, n in counts.items() if status in RUNNABLE_SHOT_STATUSES)
        return {**batch, "total": total, "done": done, "finished": total > 0 and done == total,
                "settled": total > 0 and runnable == 0}

    async def batch_shots(self, batch_id: uuid.UUID) -> list[dict]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT s.id, s.shot_key, s.status, s.params, s.max_attempts, "
                "  (SELECT p.shot_key FROM shots p WHERE p.id = s.after_shot) AS continues, "
                f"  (SELECT count(*) FROM attempts a WHERE a.shot_id = s.id AND a.status <> '{LOST}') AS attempts, "
                "  (SELECT v.details FROM verdicts v JOIN attempts a ON a.id = v.attempt_id WHERE a.shot_id = s.id "
                "   ORDER BY a.attempt_no DESC, (v.check_name = 'shot') DESC, v.id LIMIT 1) AS verdict, "
                "  (SELECT o.subfolder || '/' || o.filename FROM outputs o JOIN attempts a ON a.id = o.attempt_id "
                "   WHERE a.shot_id = s.id ORDER BY a.attempt_no DESC, o.id LIMIT 1) AS output, "
                "  (SELECT coalesce(a.error->>'exception_message', a.error->'error'->>'message') FROM attempts a "
                "   WHERE a.shot_id = s.id ORDER BY a.attempt_no DESC LIMIT 1) AS error "
                "FROM shots s WHERE s.batch_id = %s ORDER BY s.position", (batch_id,))
            rows = await cursor.fetchall()
        for row in rows:
            verdict = row.pop("verdict") or {}
            score = verdict.get("score")
            row["score"] = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
            row["band"] = verdict.get("band") if isinstance(verdict.get("band"), str) else None
        return rows

    async def shot(self, shot_id: uuid.UUID) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT id, batch_id, shot_key, workflow, status, params, max_attempts, created_at, "
                                 "updated_at, (SELECT p.shot_key FROM shots p WHERE p.id = s.after_shot) AS continues "
                                 "FROM shots s WHERE id = %s", (shot_id,))
            shot = await cursor.fetchone()
            if shot is None:
                return None
            await cursor.execute(
                "SELECT a.id, a.attempt_no, a.prompt_id, a.backend, a.status, a.inputs, a.correction, a.error, "
                "  a.queued_at, a.started_at, a.finished_at, a.outcome, a.knobs, a.learned, "
                f"  {ATTEMPT_VERDICTS} AS verdicts, "
                f"  {ATTEMPT_OUTPUTS} AS outputs FROM attempts a WHERE a.shot_id = %s ORDER BY a.attempt_no",
                (shot_id,))
            shot["attempts"] = await cursor.fetchall()
            await cursor.execute("SELECT decision, category, note, attempt_id, created_at FROM reviews "
                                 "WHERE shot_id = %s ORDER BY id", (shot_id,))
            shot["reviews"] = await cursor.fetchall()
        return shot

    async def recent_batches(self, limit: int = 20) -> list[tuple]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(
                f"SELECT b.id, b.source, b.created_at, count(s.id), count(s.id) FILTER (WHERE s.status IN {OPEN}) "
                "FROM batches b LEFT JOIN shots s ON s.batch_id = b.id GROUP BY b.id "
                "ORDER BY b.created_at DESC LIMIT %s", (limit,))).fetchall()

    # --- webhooks -------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def webhooks_due(self, limit: int = 20):
        """Finished batches with a webhook not yet sent, locked (SKIP LOCKED) for the caller to deliver:
        yields [(batch_id, url, body dict)] and marks them notified when the block ends, delivered or not (a
        receiver that is down does not get the batch forever). Two services never send the same webhook; one
        that dies mid-delivery leaves the batch to the next round: delivery is at least once."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (await conn.execute(
                "SELECT b.id, b.webhook_url, coalesce((SELECT json_object_agg(status, n) FROM (SELECT status, "
                "  count(*) AS n FROM shots WHERE batch_id = b.id GROUP BY status) c), '{}') "
                "FROM batches b WHERE b.finished_at IS NOT NULL AND b.notified_at IS NULL "
                "AND b.webhook_url IS NOT NULL ORDER BY b.finished_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,))).fetchall()
            yield [(batch_id, url, {"batch_id": str(batch_id), "counts": counts, "total": sum(counts.values())})
                   for batch_id, url, counts in rows]
            if rows:
                await conn.execute("UPDATE batches SET notified_at = now() WHERE id = ANY(%s)",
                                   ([row[0] for row in rows],))
