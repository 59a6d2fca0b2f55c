"""The LoRA registry's records (db/migrations/0010_lora_registry.sql): each character's LoRA versions, the one
active, and the validation that decided each; and the identity scores a validation batch measured."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool


class LoraStatus(StrEnum):
    CANDIDATE = "candidate"   # registered, being validated
    ACTIVE = "active"         # the one presets apply (at most one per character)
    RETIRED = "retired"       # was active, replaced by a better version
    REJECTED = "rejected"     # validated and not better than the active version


_COLUMNS = ("id, character_name, version, file_name, sha256, size_bytes, strength, status, validation, created_at, "
            "decided_at")


class LoraStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def register(self, character: str, sha256: str, size_bytes: int, strength: float,
                       place: Callable[[int], Awaitable[str]]) -> dict:
        """A new candidate version (the character's highest + 1); `place(version)` puts the file where that
        version lives and returns its name under models/loras. One transaction: a failed copy leaves no row, and
        two registrations of one character take turns."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('shotline.loras.' || %s))", (character,))
            version = (await (await conn.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM character_loras WHERE character_name = %s",
                (character,))).fetchone())[0]
            file_name = await place(version)
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"INSERT INTO character_loras (character_name, version, file_name, sha256, size_bytes, strength, "
                f"status) VALUES (%s, %s, %s, %s, %s, %s, '{LoraStatus.CANDIDATE}') RETURNING {_COLUMNS}",
                (character, version, file_name, sha256, size_bytes, strength))
            return await cursor.fetchone()

    async def active(self, character: str) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(f"SELECT {_COLUMNS} FROM character_loras WHERE character_name = %s "
                                 f"AND status = '{LoraStatus.ACTIVE}'", (character,))
            return await cursor.fetchone()

    async def decide(self, lora_id: int, activate: bool, validation: dict | None) -> dict:
        """Close a candidate: active (the character's previous active version retired, in the same transaction)
        or rejected; the validation is kept either way."""
        status = LoraStatus.ACTIVE if activate else LoraStatus.REJECTED
        async with self.pool.connection() as conn, conn.transaction():
            if activate:
                await conn.execute(
                    f"UPDATE character_loras SET status = '{LoraStatus.RETIRED}' WHERE status = '{LoraStatus.ACTIVE}' "
                    "AND character_name = (SELECT character_name FROM character_loras WHERE id = %s)", (lora_id,))
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"UPDATE character_loras SET status = %s, validation = %s, decided_at = now() "
                f"WHERE id = %s AND status = '{LoraStatus.CANDIDATE}' RETURNING {_COLUMNS}",
                (status, Jsonb(validation) if validation is not None else None, lora_id))
            row = await cursor.fetchone()
            if row is None:
                raise LookupError(f"LoRA registry entry {lora_id} is not a candidate")
            return row

    async def versions(self, character: str) -> list[dict]:
        """Every version of the character, oldest first."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(f"SELECT {_COLUMNS} FROM character_loras WHERE character_name = %s "
                                 "ORDER BY version", (character,))
            return await cursor.fetchall()

    async def shot_scores(self, batch_id, names: tuple[str, ...]) -> dict[str, float | None]:
        """Each shot of the batch (by key): the character's identity score in its last attempt's last identity
        verdict; None where it was not on screen or no verdict named it."""
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT s.shot_key, (SELECT cs.score FROM attempts a JOIN character_scores cs ON cs.attempt_id = a.id "
                "  WHERE a.shot_id = s.id AND cs.character_name = ANY(%s) "
                "  ORDER BY a.attempt_no DESC, cs.verdict_id DESC LIMIT 1) "
                "FROM shots s WHERE s.batch_id = %s", (list(names), batch_id))).fetchall()
            return dict(rows)
