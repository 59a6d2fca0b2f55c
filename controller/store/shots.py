"""PostgreSQL as the durable job queue shared by any number of controller processes.

A shot moves queued -> running -> approved / needs_review / rejected / failed, or cancelled. A controller claims
queued shots with `FOR UPDATE SKIP LOCKED` (two controllers never claim the same shot) and holds them under a
lease it renews; when a controller dies its leases lapse and `requeue_expired` puts its shots back in the queue.
The next claimant reconciles the shot's last attempt by its prompt_id before running anything, so a prompt that
was already queued on ComfyUI is followed, not run twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline_controller.shot_list import Shot

FINAL_STATUSES = ("approved", "needs_review", "rejected", "failed", "cancelled")


@dataclass
class ClaimedShot:
    id: uuid.UUID
    batch_id: uuid.UUID
    shot_key: str
    workflow: str
    params: dict                     # the shot as submitted, with the latest correction applied
    correction: dict | None          # what the latest correction changed and why (None on the first try)
    attempts: int                    # attempts recorded so far (lost ones excluded)
    max_attempts: int
    last_attempt: dict | None        # {id, prompt_id, backend, status} of the latest attempt


class ShotQueue:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    # --- submitting ---------------------------------------------------------------------------------------

    async def submit_batch(self, shots: list[Shot], source: str, webhook_url: str | None = None,
                           max_attempts: int = 3, priority: int = 0) -> tuple[uuid.UUID, list[uuid.UUID]]:
        async with self.pool.connection() as conn, conn.transaction():
            batch_id = (await (await conn.execute(
                "INSERT INTO batches (source, webhook_url) VALUES (%s, %s) RETURNING id",
                (source, webhook_url))).fetchone())[0]
            shot_ids = []
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO shots (batch_id, shot_key, position, workflow, params, max_attempts, priority) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    [(batch_id, shot.id, position, shot.workflow, Jsonb(shot.as_dict()), max_attempts, priority)
                     for position, shot in enumerate(shots)], returning=True)
                while True:
                    shot_ids.append((await cursor.fetchone())[0])
                    if not cursor.nextset():
                        break
            await conn.execute("SELECT pg_notify('shotline_events', %s)", (f"batch {batch_id} queued",))
        return batch_id, shot_ids

    # --- claiming -----------------------------------------------------------------------------------------

    async def claim(self, worker: str, lease_seconds: float, limit: int = 1,
                    prefer_checkpoint: str | None = None) -> list[ClaimedShot]:
        """Take up to `limit` queued shots, highest priority and oldest first; shots that name the checkpoint
        the caller's backend has loaded come first, so a GPU does not swap models between shots."""
        rows = []
        if prefer_checkpoint:
            rows = await self._claim(worker, lease_seconds, limit, "AND params->>'checkpoint' = %s",
                                     (prefer_checkpoint,))
        return rows or await self._claim(worker, lease_seconds, limit, "", ())

    async def _claim(self, worker: str, lease_seconds: float, limit: int, condition: str,
                     condition_params: tuple) -> list[ClaimedShot]:
        # Both forms walk an index in queue order (shots_queued_idx, shots_queued_checkpoint_idx): a claim costs
        # the same with ten thousand shots queued as with ten.
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "WITH next AS ("
                f"  SELECT id FROM shots WHERE status = 'queued' {condition}"
                "  ORDER BY priority DESC, created_at, position"
                "  FOR UPDATE SKIP LOCKED LIMIT %s)"
                "UPDATE shots s SET status = 'running', claimed_by = %s, "
                "  lease_until = now() + make_interval(secs => %s), updated_at = now() "
                "FROM next WHERE s.id = next.id "
                "RETURNING s.id, s.batch_id, s.shot_key, s.workflow, s.params, s.next_params, s.next_correction, "
                "  s.max_attempts, "
                "  (SELECT count(*) FROM attempts a WHERE a.shot_id = s.id AND a.status <> 'lost') AS attempts, "
                "  (SELECT json_build_object('id', a.id, 'prompt_id', a.prompt_id, 'backend', a.backend, "
                "     'status', a.status) FROM attempts a WHERE a.shot_id = s.id "
                "   ORDER BY a.attempt_no DESC LIMIT 1) AS last_attempt",
                (*condition_params, limit, worker, lease_seconds))
            rows = await cursor.fetchall()
        return [ClaimedShot(id=row["id"], batch_id=row["batch_id"], shot_key=row["shot_key"],
                            workflow=row["workflow"], params={**row["params"], **(row["next_params"] or {})},
                            correction=row["next_correction"], attempts=row["attempts"],
                            max_attempts=row["max_attempts"], last_attempt=row["last_attempt"]) for row in rows]

    async def renew(self, worker: str, shot_ids: list[uuid.UUID], lease_seconds: float) -> set[uuid.UUID]:
        """Extend this worker's leases; returns the shots it still holds."""
        if not shot_ids:
            return set()
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE shots SET lease_until = now() + make_interval(secs => %s) "
                "WHERE id = ANY(%s) AND claimed_by = %s AND status = 'running' RETURNING id",
                (lease_seconds, list(shot_ids), worker))
            return {row[0] for row in await cursor.fetchall()}

    async def requeue_expired(self) -> int:
        """Shots whose controller stopped renewing its lease go back to the queue."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE shots SET status = 'queued', claimed_by = NULL, lease_until = NULL, updated_at = now() "
                "WHERE status = 'running' AND lease_until < now() RETURNING id")
            return len(await cursor.fetchall())

    async def release(self, worker: str, shot_ids: list[uuid.UUID]) -> None:
        """Give shots back to the queue (a controller shutting down cleanly)."""
        if shot_ids:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE shots SET status = 'queued', claimed_by = NULL, lease_until = NULL, updated_at = now() "
                    "WHERE id = ANY(%s) AND claimed_by = %s AND status = 'running'", (list(shot_ids), worker))

    # --- the service's reads and decisions ----------------------------------------------------------------

    async def batch(self, batch_id: uuid.UUID) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT id, source, webhook_url, created_at, finished_at, notified_at FROM batches "
                                 "WHERE id = %s", (batch_id,))
            batch = await cursor.fetchone()
            if batch is None:
                return None
            await cursor.execute("SELECT status, count(*) AS n FROM shots WHERE batch_id = %s GROUP BY status",
                                 (batch_id,))
            counts = {row["status"]: row["n"] for row in await cursor.fetchall()}
        total = sum(counts.values())
        done = sum(n for status, n in counts.items() if status in FINAL_STATUSES)
        return {**batch, "counts": counts, "total": total, "done": done, "finished": total > 0 and done == total}

    async def batch_shots(self, batch_id: uuid.UUID) -> list[dict]:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT s.id, s.shot_key, s.status, s.params, s.max_attempts, "
                "  (SELECT count(*) FROM attempts a WHERE a.shot_id = s.id AND a.status <> 'lost') AS attempts, "
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
            row["score"], row["band"] = verdict.get("score"), verdict.get("band")
        return rows

    async def shot(self, shot_id: uuid.UUID) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT id, batch_id, shot_key, workflow, status, params, max_attempts, created_at, "
                                 "updated_at FROM shots WHERE id = %s", (shot_id,))
            shot = await cursor.fetchone()
            if shot is None:
                return None
            await cursor.execute(
                "SELECT a.id, a.attempt_no, a.prompt_id, a.backend, a.status, a.inputs, a.correction, a.error, "
                "  a.queued_at, a.started_at, a.finished_at, "
                "  coalesce((SELECT json_agg(v.details ORDER BY v.id) FROM verdicts v WHERE v.attempt_id = a.id), "
                "           '[]') AS verdicts, "
                "  coalesce((SELECT json_agg(json_build_object('node_id', o.node_id, 'kind', o.kind, "
                "     'filename', o.filename, 'subfolder', o.subfolder, 'type', o.folder_type) ORDER BY o.id) "
                "     FROM outputs o WHERE o.attempt_id = a.id), '[]') AS outputs "
                "FROM attempts a WHERE a.shot_id = %s ORDER BY a.attempt_no", (shot_id,))
            shot["attempts"] = await cursor.fetchall()
        return shot

    async def _transition(self, sql: str, params: tuple) -> list:
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (await conn.execute(sql, params)).fetchall()
            if rows:
                await conn.execute("SELECT pg_notify('shotline_events', %s)", (f"shots changed: {len(rows)}",))
            return rows

    async def cancel_shot(self, shot_id: uuid.UUID) -> bool:
        """Cancel a shot that has not reached a final status; a running prompt finishes but is not recorded."""
        return bool(await self._transition(
            "UPDATE shots SET status = 'cancelled', claimed_by = NULL, lease_until = NULL, updated_at = now() "
            "WHERE id = %s AND status IN ('queued', 'running') RETURNING id", (shot_id,)))

    async def cancel_batch(self, batch_id: uuid.UUID) -> int:
        return len(await self._transition(
            "UPDATE shots SET status = 'cancelled', claimed_by = NULL, lease_until = NULL, updated_at = now() "
            "WHERE batch_id = %s AND status IN ('queued', 'running') RETURNING id", (batch_id,)))

    async def retry_shot(self, shot_id: uuid.UUID) -> bool:
        """Queue a finished shot again, with one more attempt allowed; its batch is open again (and will notify
        its webhook again when it finishes)."""
        return bool(await self._transition(
            "WITH retried AS ("
            "  UPDATE shots SET status = 'queued', max_attempts = least(20, max_attempts + 1), updated_at = now() "
            "  WHERE id = %s AND status IN ('failed', 'rejected', 'cancelled', 'needs_review') RETURNING batch_id) "
            "UPDATE batches b SET finished_at = NULL, notified_at = NULL FROM retried WHERE b.id = retried.batch_id "
            "RETURNING b.id", (shot_id,)))

    async def review_shot(self, shot_id: uuid.UUID, approve: bool) -> bool:
        """A person's decision on a shot in the review band."""
        return bool(await self._transition(
            "UPDATE shots SET status = %s, updated_at = now() WHERE id = %s AND status = 'needs_review' "
            "RETURNING id", ("approved" if approve else "rejected", shot_id)))

    async def mark_finished_batches(self) -> list[dict]:
        """Batches whose every shot is final, not yet marked finished: marks them and returns them."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "UPDATE batches b SET finished_at = now() WHERE finished_at IS NULL AND EXISTS "
                "(SELECT 1 FROM shots s WHERE s.batch_id = b.id) AND NOT EXISTS "
                "(SELECT 1 FROM shots s WHERE s.batch_id = b.id AND s.status IN ('queued', 'running')) "
                "RETURNING b.id, b.webhook_url")
            return await cursor.fetchall()
