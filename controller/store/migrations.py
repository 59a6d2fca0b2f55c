"""The schema: db/migrations/NNNN_*.sql (shipped inside the package), applied in order, once each."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

MIGRATIONS_DIR = Path(str(resources.files("shotline_controller.migrations")))  # db/migrations, as package data


async def apply_migrations(pool: AsyncConnectionPool) -> list[str]:
    """Apply the migrations not yet applied, in order; returns the names applied now. An advisory lock makes
    controllers starting together on one database take turns."""
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
