"""One lease queue over PostgreSQL, for every kind of work a controller claims: shots and assembly jobs.

A row is `queued` until a worker claims it with `FOR UPDATE SKIP LOCKED` (two workers never claim the same row)
and holds it `running` under a lease it renews (`claimed_by`, `lease_until`). A worker that dies stops renewing;
`reclaim_lapsed` then puts its rows back in the queue, or fails them once they used every attempt. A worker that
stops cleanly `release`s what it holds. The tables differ only in what a claim and a lapse also set: a
`LeaseTable` says that, and the SQL below is written once.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg import AsyncConnection

from shotline_controller.store.status import ShotStatus


@dataclass(frozen=True)
class LeaseTable:
    name: str                 # the table
    order_by: str             # queue order of claims (an index walks it)
    on_claim: str = ""        # more assignments when claimed, e.g. ", attempts = attempts + 1"
    on_lapse: str = ""        # more assignments when a lease lapses
    exhausted: str = "false"  # a lapsed row that meets this ends `failed` instead of queued again


QUEUED, RUNNING, FAILED = ShotStatus.QUEUED.value, ShotStatus.RUNNING.value, ShotStatus.FAILED.value


class LeaseQueue:
    def __init__(self, table: LeaseTable):
        self.table = table

    def claim_ctes(self, returning: str, next_rows: str | None = None, also_where: str = "") -> str:
        """CTEs `next` (the rows to claim: up to %(limit)s queued ones in queue order, `also_where` (SQL starting
        with AND) holding too, unless `next_rows` defines `next` otherwise) and `claimed` (them, now running for
        %(worker)s for %(lease)s seconds, RETURNING `returning`, columns written `x.column`), for a statement to
        go on with."""
        t = self.table
        next_rows = next_rows or (f"next AS (SELECT id FROM {t.name} WHERE status = '{QUEUED}'{also_where} "
                                  f"ORDER BY {t.order_by} FOR UPDATE SKIP LOCKED LIMIT %(limit)s)")
        return (f"{next_rows}, claimed AS (UPDATE {t.name} x SET status = '{RUNNING}', claimed_by = %(worker)s, "
                f"lease_until = now() + make_interval(secs => %(lease)s){t.on_claim} "
                f"FROM next WHERE x.id = next.id RETURNING {returning})")

    async def renew(self, conn: AsyncConnection, worker: str, ids, lease_seconds: float) -> set[uuid.UUID]:
        """Extend this worker's leases; returns the ids it still holds."""
        if not ids:
            return set()
        cursor = await conn.execute(
            f"UPDATE {self.table.name} SET lease_until = now() + make_interval(secs => %s) "
            f"WHERE id = ANY(%s) AND claimed_by = %s AND status = '{RUNNING}' RETURNING id",
            (lease_seconds, list(ids), worker))
        return {row[0] for row in await cursor.fetchall()}

    async def release(self, conn: AsyncConnection, worker: str, ids, also: str = "") -> list[uuid.UUID]:
        """Give rows back to the queue unfinished (a worker stopping cleanly)."""
        if not ids:
            return []
        cursor = await conn.execute(
            f"UPDATE {self.table.name} SET status = '{QUEUED}', claimed_by = NULL, lease_until = NULL{also} "
            f"WHERE id = ANY(%s) AND claimed_by = %s AND status = '{RUNNING}' RETURNING id", (list(ids), worker))
        return [row[0] for row in await cursor.fetchall()]

    async def reclaim_lapsed(self, conn: AsyncConnection) -> list[tuple[uuid.UUID, str]]:
        """Rows whose worker stopped renewing: queued again (or failed when exhausted). Returns (id, new status)."""
        t = self.table
        cursor = await conn.execute(
            f"UPDATE {t.name} SET status = CASE WHEN {t.exhausted} THEN '{FAILED}' ELSE '{QUEUED}' END, "
            f"  lease_until = NULL{t.on_lapse} "
            f"WHERE status = '{RUNNING}' AND lease_until < now() RETURNING id, status")
        return [(row[0], row[1]) for row in await cursor.fetchall()]
