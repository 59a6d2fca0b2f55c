"""Uploaded media (a shot's input image, an assembly's music), stored in PostgreSQL by content hash."""
from __future__ import annotations

import hashlib

from psycopg_pool import AsyncConnectionPool

from shotline_controller.media.sniff import SUFFIXES, MediaKind

REF_PREFIX = "sha256:"


def media_ref(sha256: str) -> str:
    return REF_PREFIX + sha256


class UploadStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def put(self, data: bytes, kind: MediaKind) -> dict:
        """Store `data` (sniffed as `kind`) once; returns its record {ref, sha256, media_type, size_bytes}."""
        digest = hashlib.sha256(data).hexdigest()
        async with self.pool.connection() as conn:
            await conn.execute("INSERT INTO uploads (sha256, media_type, size_bytes, content) VALUES (%s, %s, %s, %s) "
                               "ON CONFLICT (sha256) DO NOTHING", (digest, kind.media_type, len(data), data))
        return {"ref": media_ref(digest), "sha256": digest, "media_type": kind.media_type, "size_bytes": len(data)}

    async def kinds(self, refs) -> dict[str, str]:
        """ref -> media type, for the refs that exist."""
        digests = [ref.removeprefix(REF_PREFIX) for ref in refs]
        if not digests:
            return {}
        async with self.pool.connection() as conn:
            rows = await (await conn.execute("SELECT sha256, media_type FROM uploads WHERE sha256 = ANY(%s)",
                                             (digests,))).fetchall()
        return {media_ref(digest): media_type for digest, media_type in rows}

    async def content(self, ref: str) -> tuple[bytes, str] | None:
        """(bytes, file suffix) of an upload, or None."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT content, media_type FROM uploads WHERE sha256 = %s",
                                            (ref.removeprefix(REF_PREFIX),))).fetchone()
        return None if row is None else (bytes(row[0]), SUFFIXES.get(row[1], ""))
