"""Assemblies (scene and episode files cut from approved shots) and the durable jobs that make them.

The API queues an assembly job and answers at once; a service's worker claims it from the same lease queue
shots use (store/leases.py) and renews the lease while the job runs, so a controller that dies leaves the job to
be claimed again once the lease lapses (up to max_attempts claims). `shotline assemble` records its own job as
already claimed and runs it in place: one code path.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline_controller.store.leases import LeaseQueue, LeaseTable
from shotline_controller.store.status import EVENTS_CHANNEL, AttemptStatus, JobStatus

JOB_LEASE_SECONDS = 60.0
JOB_MAX_ATTEMPTS = 3
_STOPPED = ("'the controller running it (' || claimed_by || ') stopped before it finished'")
JOBS = LeaseTable(
    "assembly_jobs", order_by="created_at", on_claim=", attempts = attempts + 1, started_at = now()",
    exhausted="attempts >= max_attempts",
    on_lapse=(f", finished_at = CASE WHEN attempts >= max_attempts THEN now() END, "
              f"error = jsonb_build_object('message', {_STOPPED} || CASE WHEN attempts >= max_attempts THEN ', ' "
              f"|| attempts || ' time(s)' || coalesce('; before that: ' || (error->>'message'), '') ELSE '' END, "
              f"'field', NULL, 'status', 500)"))
_JOB_COLUMNS = "x.id, x.batch_id, x.request, x.scenes_dir, x.library_dir, x.attempts, x.max_attempts"


@dataclass(frozen=True)
class AssemblyJob:
    id: uuid.UUID
    batch_id: uuid.UUID
    request: dict                 # the request's JSON form (contract.AssemblyRequest), validated again to run
    scenes_dir: Path
    library_dir: Path
    attempts: int
    max_attempts: int


class AssemblyStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
        self.leases = LeaseQueue(JOBS)
        self._claim = "WITH " + self.leases.claim_ctes(_JOB_COLUMNS) + " SELECT * FROM claimed"

    # --- what a batch offers to cut -------------------------------------------------------------------------

    async def batch_shots(self, batch_id: uuid.UUID) -> list[dict] | None:
        """The batch's shots in list order with the files of their latest succeeded attempt; None: no batch."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT 1 FROM batches WHERE id = %s", (batch_id,))
            if await cursor.fetchone() is None:
                return None
            await cursor.execute(
                "SELECT s.id, s.shot_key, s.position, s.status, s.params, a.id AS attempt_id, a.backend, "
                "  coalesce((SELECT json_agg(json_build_object('id', o.id, 'filename', o.filename, "
                "     'subfolder', o.subfolder, 'type', o.folder_type, 'kind', o.kind) ORDER BY o.id) "
                "     FROM outputs o WHERE o.attempt_id = a.id), '[]') AS outputs "
                "FROM shots s LEFT JOIN LATERAL (SELECT id, backend FROM attempts WHERE shot_id = s.id "
                f"  AND status = '{AttemptStatus.SUCCEEDED}' ORDER BY attempt_no DESC LIMIT 1) a ON true "
                "WHERE s.batch_id = %s ORDER BY s.position", (batch_id,))
            return await cursor.fetchall()

    # --- assemblies -----------------------------------------------------------------------------------------

    async def record(self, batch_id: uuid.UUID, result, parts: list[dict], *, scene: str | None = None,
                     episode=None, music: str | None = None) -> uuid.UUID:
        """One assembly (a media.assembly.AssemblyResult) and its parts ({shot_id, output_id} or
        {scene_assembly_id}, in cut order)."""
        async with self.pool.connection() as conn, conn.transaction():
            assembly_id = (await (await conn.execute(
                "INSERT INTO assemblies (batch_id, kind, scene_key, season, episode, title, output_path, "
                "thumbnail_path, duration_s, frame_count, fps, width, height, crossfade_s, music_path) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (batch_id, "episode" if episode else "scene", scene, episode and episode.season,
                 episode and episode.number, episode and episode.title, str(result.path.resolve()),
                 str(result.thumbnail.resolve()), result.duration_s, result.frame_count, result.fps, result.width,
                 result.height, result.crossfade_s, music))).fetchone())[0]
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO assembly_parts (assembly_id, position, shot_id, output_id, scene_assembly_id, "
                    "start_s, duration_s) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(assembly_id, position, part.get("shot_id"), part.get("output_id"),
                      part.get("scene_assembly_id"), cut.start_s, cut.duration_s)
                     for position, (part, cut) in enumerate(zip(parts, result.parts))])
        return assembly_id

    async def assemblies(self, batch_id: uuid.UUID, ids: list[uuid.UUID] | None = None) -> list[dict]:
        """The batch's assemblies (or those of `ids`, in that order), oldest first, each with its parts."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT x.id, x.batch_id, x.kind, x.scene_key AS scene, x.season, x.episode, x.title, "
                "  x.output_path AS path, x.thumbnail_path AS thumbnail, x.duration_s, x.frame_count, x.fps, "
                "  x.width, x.height, x.crossfade_s, x.music_path AS music, x.created_at, "
                "  coalesce((SELECT json_agg(json_build_object('position', p.position, 'shot_id', p.shot_id, "
                "     'shot_key', s.shot_key, 'file', o.subfolder || CASE WHEN o.subfolder = '' THEN '' ELSE '/' END "
                "     || o.filename, 'scene_assembly_id', p.scene_assembly_id, 'scene', sa.scene_key, "
                "     'start_s', p.start_s, 'duration_s', p.duration_s) ORDER BY p.position) "
                "     FROM assembly_parts p LEFT JOIN shots s ON s.id = p.shot_id "
                "     LEFT JOIN outputs o ON o.id = p.output_id "
                "     LEFT JOIN assemblies sa ON sa.id = p.scene_assembly_id "
                "     WHERE p.assembly_id = x.id), '[]') AS parts "
                "FROM assemblies x WHERE x.batch_id = %s AND (%s::uuid[] IS NULL OR x.id = ANY(%s::uuid[])) "
                "ORDER BY x.created_at, x.id", (batch_id, ids, ids))
            rows = await cursor.fetchall()
        if ids is not None:
            order = {assembly_id: index for index, assembly_id in enumerate(ids)}
            rows.sort(key=lambda row: order[row["id"]])
        return rows

    # --- jobs -----------------------------------------------------------------------------------------------

    async def create_job(self, batch_id: uuid.UUID, request: dict, scenes_dir: Path, library_dir: Path,
                         claimed_by: str | None = None, lease_seconds: float = JOB_LEASE_SECONDS,
                         max_attempts: int = JOB_MAX_ATTEMPTS) -> AssemblyJob | None:
        """Queue a job (NOTIFYing the workers), or with `claimed_by` record it as already claimed by the caller.
        None when there is no such batch."""
        scenes_dir, library_dir = Path(scenes_dir).resolve(), Path(library_dir).resolve()
        claimed = claimed_by is not None
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "INSERT INTO assembly_jobs (batch_id, request, scenes_dir, library_dir, status, claimed_by, "
                "  lease_until, attempts, max_attempts, started_at) "
                "SELECT id, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() + make_interval(secs => %s) END, %s, %s, "
                "  CASE WHEN %s THEN now() END FROM batches WHERE id = %s RETURNING id",
                (Jsonb(request), str(scenes_dir), str(library_dir),
                 (JobStatus.RUNNING if claimed else JobStatus.QUEUED).value, claimed_by, claimed, lease_seconds,
                 int(claimed), max_attempts, claimed, batch_id))).fetchone()
            if row is None:
                return None
            if not claimed:
                await conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, f"job {row[0]}"))
        return AssemblyJob(row[0], batch_id, request, scenes_dir, library_dir, int(claimed), max_attempts)

    async def claim_job(self, worker: str, lease_seconds: float = JOB_LEASE_SECONDS) -> AssemblyJob | None:
        """The oldest queued job, now running under this worker's lease; None when there is none."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(self._claim, {"limit": 1, "worker": worker, "lease": lease_seconds})
            row = await cursor.fetchone()
        if row is None:
            return None
        return AssemblyJob(row["id"], row["batch_id"], row["request"], Path(row["scenes_dir"]),
                           Path(row["library_dir"]), row["attempts"], row["max_attempts"])

    async def reclaim_lapsed_jobs(self) -> int:
        """Jobs whose controller stopped renewing its lease: queued again, or failed once they used every attempt."""
        async with self.pool.connection() as conn:
            return len(await self.leases.reclaim_lapsed(conn))

    async def renew_job(self, job_id: uuid.UUID, worker: str, lease_seconds: float = JOB_LEASE_SECONDS) -> bool:
        """Extend this worker's lease; False when it no longer holds the job."""
        async with self.pool.connection() as conn:
            return job_id in await self.leases.renew(conn, worker, [job_id], lease_seconds)

    async def release_job(self, job_id: uuid.UUID, worker: str) -> bool:
        """Give a job back to the queue unfinished (a service shutting down): the claim does not count."""
        async with self.pool.connection() as conn:
            return bool(await self.leases.release(conn, worker, [job_id],
                                                  also=", attempts = greatest(attempts - 1, 0)"))

    async def _end_job(self, job_id: uuid.UUID, worker: str, assignments: str, params: tuple) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"UPDATE assembly_jobs SET {assignments}, lease_until = NULL "
                f"WHERE id = %s AND claimed_by = %s AND status = '{JobStatus.RUNNING}' RETURNING id",
                (*params, job_id, worker))
            return await cursor.fetchone() is not None

    async def finish_job(self, job_id: uuid.UUID, worker: str, assembly_ids: list[uuid.UUID]) -> bool:
        return await self._end_job(job_id, worker, f"status = '{JobStatus.DONE}', error = NULL, assembly_ids = %s, "
                                   "finished_at = now()", (list(assembly_ids),))

    async def fail_job(self, job_id: uuid.UUID, worker: str, error: dict, final: bool) -> bool:
        """Record a failure: the job ends failed when it is final or its attempts are used up, else is queued
        again."""
        ends = "%s OR attempts >= max_attempts"
        return await self._end_job(
            job_id, worker, f"status = CASE WHEN {ends} THEN '{JobStatus.FAILED}' ELSE '{JobStatus.QUEUED}' END, "
            f"error = %s, finished_at = CASE WHEN {ends} THEN now() END", (final, Jsonb(error), final))

    async def job(self, job_id: uuid.UUID) -> dict | None:
        """A job as the API shows it; `assemblies` holds the records once it is done."""
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT id, batch_id, status, request, error, attempts, max_attempts, claimed_by, lease_until, "
                "  created_at, started_at, finished_at, assembly_ids FROM assembly_jobs WHERE id = %s", (job_id,))
            row = await cursor.fetchone()
        if row is None:
            return None
        ids = row.pop("assembly_ids")
        row["assemblies"] = await self.assemblies(row["batch_id"], ids) if ids else []
        return row
