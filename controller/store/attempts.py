"""Shots, attempts, outputs and verdicts in PostgreSQL, and the migrations that shape the tables."""
from __future__ import annotations

import hashlib
import uuid
from importlib import resources
from pathlib import Path

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline_controller.store.shots import FINAL_STATUSES

MIGRATIONS_DIR = Path(str(resources.files("shotline_controller.migrations")))  # db/migrations, as package data


async def apply_migrations(pool: AsyncConnectionPool) -> list[str]:
    """Apply db/migrations/NNNN_*.sql not yet applied, in order; returns the names applied now.

    An advisory lock makes concurrent controllers starting on one database take turns.
    """
    applied = []
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('shotline.migrations'))")
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                           "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row[0] for row in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
        for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
            version = int(path.name[:4])
            if version in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, path.name))
            applied.append(path.name)
    return applied


class ShotStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def start_attempt(self, shot_id: uuid.UUID, prompt_id: str, backend: str, inputs: dict,
                            correction: dict | None = None) -> uuid.UUID:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("UPDATE shots SET status = 'running', updated_at = now() "
                               "WHERE id = %s AND status IN ('queued', 'running')", (shot_id,))
            row = await (await conn.execute(
                "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, inputs, correction, "
                "started_at) VALUES (%s, (SELECT coalesce(max(attempt_no), 0) + 1 FROM attempts WHERE shot_id = %s), "
                "%s, %s, 'running', %s, %s, now()) RETURNING id",
                (shot_id, shot_id, prompt_id, backend, Jsonb(inputs), Jsonb(correction) if correction else None))
            ).fetchone()
        return row[0]

    async def finish_attempt(self, attempt_id: uuid.UUID, shot_id: uuid.UUID, shot_status: str,
                             outputs: list[dict], verdicts: list[dict], error: dict | None = None,
                             attempt_status: str | None = None, retry: dict | None = None) -> bool:
        """Record an attempt's end, its outputs and verdicts, and the shot's next status, in one transaction.

        Only the first caller for an attempt records it (another controller may be following the same prompt
        after a lease lapsed): returns False, recording nothing, when the attempt was already closed.
        `retry` ({"params": {...}, "correction": {...}}) queues the shot again with corrected values. A cancelled
        shot keeps its status; its attempt is still recorded.
        """
        attempt_status = attempt_status or ("failed" if error else "succeeded")
        async with self.pool.connection() as conn, conn.transaction():
            closed = await (await conn.execute(
                "UPDATE attempts SET status = %s, error = %s, finished_at = now() "
                "WHERE id = %s AND status IN ('queued', 'running') RETURNING id",
                (attempt_status, Jsonb(error) if error else None, attempt_id))).fetchone()
            if closed is None:
                return False
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO outputs (attempt_id, node_id, kind, filename, subfolder, folder_type) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    [(attempt_id, o["node_id"], o["kind"], o["filename"], o["subfolder"], o["type"])
                     for o in outputs])
                for verdict in verdicts:
                    await cursor.execute(
                        "INSERT INTO verdicts (attempt_id, node_id, check_name, score, passed, details) "
                        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                        (attempt_id, verdict["node_id"], verdict["check"], verdict["score"], verdict["passed"],
                         Jsonb(verdict)))
                    verdict_id = (await cursor.fetchone())[0]
                    # identity verdicts carry a result per character: kept as rows for analytics
                    await cursor.executemany(
                        "INSERT INTO character_scores (verdict_id, attempt_id, character_name, score, threshold, "
                        "passed, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(verdict_id, attempt_id, name, result.get("score"), result.get("threshold"),
                          bool(result.get("passed")), Jsonb(result))
                         for name, result in verdict.get("characters", {}).items()])
            if retry:
                await conn.execute(
                    "UPDATE shots SET status = 'queued', next_params = %s, next_correction = %s, claimed_by = NULL, "
                    "lease_until = NULL, updated_at = now() WHERE id = %s AND status IN ('queued', 'running')",
                    (Jsonb(retry["params"]), Jsonb(retry["correction"]), shot_id))
            else:
                release = shot_status in ("queued",) + FINAL_STATUSES
                await conn.execute(
                    "UPDATE shots SET status = %s, updated_at = now()"
                    + (", claimed_by = NULL, lease_until = NULL" if release else "")
                    + " WHERE id = %s AND status IN ('queued', 'running')", (shot_status, shot_id))
            await conn.execute("SELECT pg_notify('shotline_events', %s)", (f"shot {shot_id} {shot_status}",))
        return True

    async def end_shot(self, shot_id: uuid.UUID, status: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE shots SET status = %s, claimed_by = NULL, lease_until = NULL, updated_at = now() "
                               "WHERE id = %s AND status IN ('queued', 'running')", (status, shot_id))

    async def put_character(self, character) -> uuid.UUID:
        """Record a character (a core.characters.Character) and its references; returns its id."""
        async with self.pool.connection() as conn, conn.transaction():
            character_id = (await (await conn.execute(
                "INSERT INTO characters (folder, name, style, sheet) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (folder) DO UPDATE SET name = excluded.name, style = excluded.style, "
                "sheet = excluded.sheet, updated_at = now() RETURNING id",
                (character.folder.name, character.name, character.sheet.style,
                 Jsonb(character.sheet.as_dict())))).fetchone())[0]
            await conn.execute("DELETE FROM character_references WHERE character_id = %s", (character_id,))
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO character_references (character_id, file_name, sha256, size_bytes) "
                    "VALUES (%s, %s, %s, %s)",
                    [(character_id, path.name, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
                     for path in character.references])
        return character_id
