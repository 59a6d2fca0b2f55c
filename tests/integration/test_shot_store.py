"""Migrations and records against a real PostgreSQL."""
import asyncio

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from shotline_controller.shot_list import parse_shot_list
from shotline_controller.store.shots import ShotQueue
from shotline_controller.store.attempts import MIGRATIONS_DIR, ShotStore, apply_migrations

pytestmark = pytest.mark.integration


async def with_pool(url, work):
    async with AsyncConnectionPool(url, min_size=1, max_size=4, open=False) as pool:
        return await work(pool)


def test_migrations_apply_once_even_when_controllers_start_together(database_url):
    async def start_three(pool):
        return await asyncio.gather(*(apply_migrations(pool) for _ in range(3)))
    results = asyncio.run(with_pool(database_url, start_three))
    all_migrations = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(name for applied in results for name in applied) == all_migrations
    assert asyncio.run(with_pool(database_url, apply_migrations)) == []
    with psycopg.connect(database_url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"batches", "shots", "attempts", "outputs", "verdicts", "schema_migrations"} <= tables


def test_attempt_numbers_and_constraints(database_url):
    shots = parse_shot_list([{"id": "a", "prompt": "x"}])

    async def work(pool):
        await apply_migrations(pool)
        store = ShotStore(pool)
        _, [shot_id] = await ShotQueue(pool).submit_batch(shots, "test")
        first = await store.start_attempt(shot_id, "00000000-0000-0000-0000-000000000001", "http://b", {})
        await store.finish_attempt(first, shot_id, "failed", [], [], error={"exception_message": "boom"})
        second = await store.start_attempt(shot_id, "00000000-0000-0000-0000-000000000002", "http://b", {})
        with pytest.raises(psycopg.errors.UniqueViolation):  # a prompt_id is recorded once, ever
            await store.start_attempt(shot_id, "00000000-0000-0000-0000-000000000002", "http://b", {})
        with pytest.raises(psycopg.errors.CheckViolation):  # a score outside 0..1 is refused
            await store.finish_attempt(second, shot_id, "approved", [], [
                {"node_id": "1", "check": "quality", "score": 1.5, "passed": True}])
        async with pool.connection() as conn:
            return await (await conn.execute(
                "SELECT attempt_no, status FROM attempts WHERE shot_id = %s ORDER BY attempt_no",
                (shot_id,))).fetchall()

    assert asyncio.run(with_pool(database_url, work)) == [(1, "failed"), (2, "running")]


def test_identity_verdicts_are_kept_per_character(database_url):
    shots = parse_shot_list([{"id": "a", "prompt": "x"}])
    identity = {"node_id": "7", "check": "identity", "score": 0.62, "passed": False,
                "reasons": ["low identity: Ren 0.62 < 0.75"],
                "characters": {"Aiko": {"score": 0.91, "threshold": 0.8, "passed": True},
                               "Ren": {"score": 0.62, "threshold": 0.75, "passed": False},
                               "Kai": {"score": None, "threshold": 0.75, "passed": False}}}

    async def work(pool):
        await apply_migrations(pool)
        store = ShotStore(pool)
        _, [shot_id] = await ShotQueue(pool).submit_batch(shots, "test")
        attempt = await store.start_attempt(shot_id, "00000000-0000-0000-0000-00000000000a", "http://b", {})
        await store.finish_attempt(attempt, shot_id, "needs_review", [], [identity])
        async with pool.connection() as conn:
            return await (await conn.execute(
                "SELECT character_name, score, threshold, passed FROM character_scores ORDER BY character_name"
            )).fetchall()

    assert asyncio.run(with_pool(database_url, work)) == [
        ("Aiko", 0.91, 0.8, True), ("Kai", None, 0.75, False), ("Ren", 0.62, 0.75, False)]
