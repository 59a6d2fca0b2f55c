"""The character library's records: each character's sheet and the hashes of its reference images."""
from __future__ import annotations

import asyncio
import hashlib
import uuid

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool


def _reference_rows(character) -> list[tuple[str, str, int]]:
    return [(path.name, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)
            for path in character.references]


class CharacterStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def put(self, character) -> uuid.UUID:
        """Record a character (a shotline.core.characters.Character) and its references; returns its id."""
        references = await asyncio.to_thread(_reference_rows, character)  # files read off the event loop
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
                    "VALUES (%s, %s, %s, %s)", [(character_id, *reference) for reference in references])
        return character_id

    async def list(self) -> list[dict]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT c.id, c.folder, c.name, c.style, c.sheet, c.created_at, c.updated_at, "
                "  count(r.id) AS reference_count "
                "FROM characters c LEFT JOIN character_references r ON r.character_id = c.id "
                "GROUP BY c.id ORDER BY c.folder")
            return await cursor.fetchall()
