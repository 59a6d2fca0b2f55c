"""A batch's approved shots assembled into scenes, and the scenes into an episode, recorded in PostgreSQL.

Shared by `shotline assemble` and `POST /api/v1/batches/{id}/assemblies`, both through a durable job
(`assembly_jobs`, below): the API checks the request, queues the job and answers 202; a worker in the service
claims it under a lease, as shots are claimed; the CLI records its job as claimed and runs it in place.

1. `parse_assembly_request` checks the request field by field (errors name the field, as shot lists do).
2. The batch's shots are grouped by their `scene` (scene order: first appearance in the shot list; shot order:
   the list's). Only `approved` shots are cut in; a scene with none is refused (AssemblyConflict, HTTP 409).
3. Each approved shot's file is its latest succeeded attempt's output: a video (.mp4/.webm/.mov/.mkv) if there
   is one, else the last image. It is fetched from the ComfyUI that rendered it (`attempts.backend`) through
   ComfyUI's public `GET /view`, which serves local and remote servers alike.
4. `shotline_controller.media.assembly.assemble` writes the MP4 and its thumbnail (in a thread: the event loop stays free), and
   the assembly is recorded with its parts: where each shot (or scene) starts in the cut and how long it lasts.

Files: scenes in `<assemblies dir>/<batch_id>/<scene>.mp4`, episodes in
`<library>/Season NN/SxxEyy - Title.mp4` (controller/settings.py has the defaults). Assembling a scene again
replaces its file; every assembly keeps its row.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from shotline_controller.media.assembly import (
    MAX_CROSSFADE_S,
    MAX_FPS,
    MIN_FPS,
    AssemblyError,
    AssemblyResult,
    ClipSource,
    assemble,
    episode_paths,
    is_video_file,
    parse_size,
)
from shotline_controller.shot_list import DEFAULT_DURATION, DEFAULT_SCENE, SCENE_KEY_PATTERN

DEFAULT_CROSSFADE_S = 0.5
REQUEST_FIELDS = ("scenes", "crossfade_s", "fps", "size", "music", "episode")
EPISODE_FIELDS = ("season", "number", "title")
FETCH_CHUNK_BYTES = 1 << 20
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")

log = logging.getLogger("shotline.assemblies")

Progress = Callable[[str], Callable[[int, int], None]]  # name of the file -> progress(done, total)


class BatchNotFound(LookupError):
    pass


class AssemblyConflict(RuntimeError):
    """The batch is not in a state to be assembled as asked (no approved shot, an approved shot with no file)."""


class SourceUnavailable(RuntimeError):
    """A shot's file could not be fetched from the ComfyUI that rendered it."""


@dataclass(frozen=True)
class EpisodeRequest:
    season: int
    number: int
    title: str


@dataclass(frozen=True)
class AssemblyRequest:
    scenes: tuple[str, ...] | None = None     # None: every scene of the batch
    crossfade_s: float = DEFAULT_CROSSFADE_S
    fps: float | None = None
    size: tuple[int, int] | None = None
    music: Path | None = None
    episode: EpisodeRequest | None = None


def _number(value, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise AssemblyError(f"must be a number from {low:g} to {high:g}, got {value!r}", field)
    return float(value)


def parse_assembly_request(data) -> AssemblyRequest:
    """An AssemblyRequest from its JSON form; AssemblyError names the field at fault."""
    if not isinstance(data, dict):
        raise AssemblyError(f"must be an object, got {type(data).__name__}", "body")
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise AssemblyError(f"unknown field (known: {', '.join(REQUEST_FIELDS)})", unknown[0])
    scenes = data.get("scenes")
    if scenes is not None:
        if not isinstance(scenes, list) or not scenes:
            raise AssemblyError("must be a non-empty list of scene keys (leave it out for every scene)", "scenes")
        for index, scene in enumerate(scenes):
            if not isinstance(scene, str) or not SCENE_KEY_PATTERN.match(scene):
                raise AssemblyError(f"must be a scene key like sc01, got {scene!r}", f"scenes[{index}]")
            if scene in scenes[:index]:
                raise AssemblyError(f"{scene!r} is named twice", f"scenes[{index}]")
        scenes = tuple(scenes)
    crossfade_s = _number(data.get("crossfade_s", DEFAULT_CROSSFADE_S), "crossfade_s", 0, MAX_CROSSFADE_S)
    fps = data.get("fps")
    fps = None if fps is None else _number(fps, "fps", MIN_FPS, MAX_FPS)
    size = data.get("size")
    size = None if size is None else parse_size(size)
    music = data.get("music")
    if music is not None:
        if not isinstance(music, str) or not music.strip():
            raise AssemblyError(f"must be the path of an audio file, got {music!r}", "music")
        music = Path(music).expanduser().resolve()
        if not music.is_file():
            raise AssemblyError(f"no such file: {music}", "music")
    episode = data.get("episode")
    if episode is not None:
        if not isinstance(episode, dict):
            raise AssemblyError("must be an object {season, number, title}", "episode")
        unknown = sorted(set(episode) - set(EPISODE_FIELDS))
        if unknown:
            raise AssemblyError(f"unknown field (known: {', '.join(EPISODE_FIELDS)})", f"episode.{unknown[0]}")
        for name in EPISODE_FIELDS:
            if name not in episode:
                raise AssemblyError("required", f"episode.{name}")
        episode_paths(Path("."), episode["season"], episode["number"], episode["title"])  # checks all three
        episode = EpisodeRequest(episode["season"], episode["number"], episode["title"])
    return AssemblyRequest(scenes, crossfade_s, fps, size, music, episode)


# --- records ---------------------------------------------------------------------------------------------------

class AssemblyStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

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
                "  AND status = 'succeeded' ORDER BY attempt_no DESC LIMIT 1) a ON true "
                "WHERE s.batch_id = %s ORDER BY s.position", (batch_id,))
            return await cursor.fetchall()

    async def record(self, batch_id: uuid.UUID, result: AssemblyResult, parts: list[dict], *,
                     scene: str | None = None, episode: EpisodeRequest | None = None) -> uuid.UUID:
        """One assembly and its parts ({shot_id, output_id} or {scene_assembly_id}, in cut order)."""
        async with self.pool.connection() as conn, conn.transaction():
            assembly_id = (await (await conn.execute(
                "INSERT INTO assemblies (batch_id, kind, scene_key, season, episode, title, output_path, "
                "thumbnail_path, duration_s, frame_count, fps, width, height, crossfade_s, music_path) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (batch_id, "episode" if episode else "scene", scene, episode and episode.season,
                 episode and episode.number, episode and episode.title, str(result.path.resolve()),
                 str(result.thumbnail.resolve()), result.duration_s, result.frame_count, result.fps, result.width,
                 result.height, result.crossfade_s, str(result.music) if result.music else None))).fetchone())[0]
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


# --- choosing and fetching the shots' files --------------------------------------------------------------------

def choose_output(outputs: list[dict]) -> dict | None:
    """The file a shot contributes: its last video, else its last image; saved outputs before temp previews."""
    saved = [o for o in outputs if o.get("type") == "output"] or outputs
    videos = [o for o in saved if is_video_file(o["filename"])]
    images = [o for o in saved if not is_video_file(o["filename"])
              and not o["filename"].lower().endswith(AUDIO_SUFFIXES)]
    return (videos or images or [None])[-1]


def _view_path(output: dict) -> str:
    return "/".join(part for part in (output["type"], output["subfolder"], output["filename"]) if part)


async def fetch_output(session: aiohttp.ClientSession, backend: str, output: dict, destination: Path,
                       label: str) -> None:
    """Download a ComfyUI output through its public /view route."""
    params = {"filename": output["filename"], "subfolder": output["subfolder"], "type": output["type"]}
    where = _view_path(output)
    try:
        async with session.get(f"{backend.rstrip('/')}/view", params=params) as response:
            if response.status != 200:
                raise SourceUnavailable(f"{label}: {backend} has no {where} any more (HTTP {response.status}): "
                                        "render the shot again, or restore the file in ComfyUI's output folder")
            with open(destination, "wb") as file:
                async for chunk in response.content.iter_chunked(FETCH_CHUNK_BYTES):
                    file.write(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
        raise SourceUnavailable(f"{label}: cannot fetch {where} from {backend}: "
                                f"{type(error).__name__}: {error}") from None


@dataclass
class _SceneShot:
    row: dict
    output: dict
    path: Path | None = None


def _plan_scenes(rows: list[dict], wanted: tuple[str, ...] | None) -> dict[str, list[_SceneShot]]:
    """scene -> its approved shots with the file each contributes, in cut order; refuses what cannot be cut."""
    scenes: dict[str, list[dict]] = {}
    for row in rows:
        scenes.setdefault(row["params"].get("scene", DEFAULT_SCENE), []).append(row)
    if wanted is not None:
        for index, scene in enumerate(wanted):
            if scene not in scenes:
                raise AssemblyError(f"no scene {scene!r} in this batch (its scenes: {', '.join(scenes) or 'none'})",
                                    f"scenes[{index}]")
    chosen = [scene for scene in scenes if wanted is None or scene in wanted]
    problems, plan = [], {}
    for scene in chosen:
        approved = [row for row in scenes[scene] if row["status"] == "approved"]
        if not approved:
            counts = collections.Counter(row["status"] for row in scenes[scene])
            problems.append(f"scene {scene!r} has no approved shot ("
                            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")")
            continue
        plan[scene] = []
        for row in approved:
            output = choose_output(row["outputs"] or [])
            if output is None:
                problems.append(f"shot {row['shot_key']!r} (scene {scene!r}) is approved but has no image or video "
                                "from a succeeded attempt")
            else:
                plan[scene].append(_SceneShot(row, output))
    if not rows:
        problems.append("the batch has no shots")
    if problems:
        raise AssemblyConflict("; ".join(problems))
    return plan


# --- the whole job ---------------------------------------------------------------------------------------------

async def assemble_batch(pool: AsyncConnectionPool, session: aiohttp.ClientSession, batch_id: uuid.UUID,
                         request: AssemblyRequest, scenes_dir: Path, library_dir: Path,
                         progress: Progress | None = None) -> list[dict]:
    """Assemble the requested scenes of a batch (and the episode, when asked) and record them; returns the
    records, scenes in cut order then the episode. Scene files go to `scenes_dir`, the episode under
    `library_dir`."""
    store = AssemblyStore(pool)
    rows = await store.batch_shots(batch_id)
    if rows is None:
        raise BatchNotFound(f"no batch {batch_id}")
    plan = _plan_scenes(rows, request.scenes)

    ids: list[uuid.UUID] = []
    with tempfile.TemporaryDirectory(prefix="shotline-assembly-") as folder:
        for scene, shots in plan.items():
            for shot in shots:
                row = shot.row
                suffix = Path(shot.output["filename"]).suffix.lower()
                shot.path = Path(folder) / f"{row['position']:05d}-{row['shot_key']}{suffix}"
                await fetch_output(session, row["backend"], shot.output, shot.path,
                                   f"shot {row['shot_key']!r} (scene {scene!r})")

        fps, size = request.fps, request.size
        scene_results: list[tuple[uuid.UUID, AssemblyResult]] = []
        for scene, shots in plan.items():
            clips = [ClipSource(shot.path, f"shot {shot.row['shot_key']!r}",
                                float(shot.row["params"].get("duration", DEFAULT_DURATION))) for shot in shots]
            result = await asyncio.to_thread(
                assemble, clips, Path(scenes_dir) / f"{scene}.mp4", crossfade_s=request.crossfade_s, fps=fps,
                size=size, music=request.music, progress=progress(scene) if progress else None)
            if request.episode and not scene_results:
                # the episode's scenes share one picture format: the first scene's, unless one was asked for
                fps, size = fps or result.fps, size or (result.width, result.height)
            assembly_id = await store.record(
                batch_id, result, [{"shot_id": shot.row["id"], "output_id": shot.output["id"]} for shot in shots],
                scene=scene)
            scene_results.append((assembly_id, result))
            ids.append(assembly_id)

    if request.episode:
        episode = request.episode
        path, thumbnail = episode_paths(Path(library_dir), episode.season, episode.number, episode.title)
        clips = [ClipSource(result.path, f"scene {scene!r}") for scene, (_, result) in zip(plan, scene_results)]
        result = await asyncio.to_thread(
            assemble, clips, path, thumbnail=thumbnail, crossfade_s=request.crossfade_s, fps=fps,
            size=size, progress=progress(path.stem) if progress else None)
        ids.append(await store.record(batch_id, result, [{"scene_assembly_id": assembly_id}
                                                         for assembly_id, _ in scene_results], episode=episode))
    return await store.assemblies(batch_id, ids)


# --- durable jobs ----------------------------------------------------------------------------------------------
# The API queues a job and answers at once; a service's worker claims it (FOR UPDATE SKIP LOCKED) under a lease
# it renews while the job runs, so a controller that dies leaves the job to be claimed again once the lease
# lapses. `shotline assemble` records its own job as already claimed and runs it in place: one code path.

JOBS_CHANNEL = "shotline_assembly_jobs"   # NOTIFYed on every new queued job: a worker wakes at once
JOB_LEASE_SECONDS = 60.0
JOB_MAX_ATTEMPTS = 3


class JobLost(RuntimeError):
    """This controller's lease on a job lapsed and another took it over: its outcome is not recorded."""


@dataclass(frozen=True)
class AssemblyJob:
    id: uuid.UUID
    batch_id: uuid.UUID
    request: dict                 # the request's JSON form, parsed again when the job runs
    scenes_dir: Path
    library_dir: Path
    attempts: int
    max_attempts: int


def request_json(request: AssemblyRequest) -> dict:
    """The JSON form of a parsed request: parse_assembly_request(request_json(r)) == r."""
    data: dict = {"crossfade_s": request.crossfade_s}
    if request.scenes is not None:
        data["scenes"] = list(request.scenes)
    if request.fps is not None:
        data["fps"] = request.fps
    if request.size is not None:
        data["size"] = f"{request.size[0]}x{request.size[1]}"
    if request.music is not None:
        data["music"] = str(request.music)
    if request.episode is not None:
        data["episode"] = {"season": request.episode.season, "number": request.episode.number,
                           "title": request.episode.title}
    return data


def failure(error: BaseException) -> tuple[dict, bool]:
    """A job's error as recorded ({message, field, status}: the HTTP status the request would get) and whether it
    is the request's or the batch's fault (final) rather than the controller's (worth another attempt)."""
    if isinstance(error, BatchNotFound):
        return {"message": str(error), "field": "batch_id", "status": 404}, True
    if isinstance(error, AssemblyConflict):
        return {"message": str(error), "field": None, "status": 409}, True
    if isinstance(error, SourceUnavailable):
        return {"message": str(error), "field": None, "status": 502}, True
    if isinstance(error, AssemblyError):  # a value the shots cannot take (400), or a file that cannot be decoded
        return {"message": error.message, "field": error.field, "status": 400 if error.field else 422}, True
    return {"message": f"{type(error).__name__}: {error}", "field": None, "status": 500}, False


class AssemblyJobs:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def create(self, batch_id: uuid.UUID, request: AssemblyRequest, scenes_dir: Path, library_dir: Path,
                     claimed_by: str | None = None, lease_seconds: float = JOB_LEASE_SECONDS,
                     max_attempts: int = JOB_MAX_ATTEMPTS) -> AssemblyJob:
        """Queue a job (NOTIFYing the workers), or with `claimed_by` record it as already claimed by the caller.
        BatchNotFound when there is no such batch."""
        scenes_dir, library_dir = Path(scenes_dir).resolve(), Path(library_dir).resolve()
        data = request_json(request)
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "INSERT INTO assembly_jobs (batch_id, request, scenes_dir, library_dir, status, claimed_by, "
                "  lease_until, attempts, max_attempts, started_at) "
                "SELECT id, %s, %s, %s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL "
                "  ELSE now() + make_interval(secs => %s) END, %s, %s, CASE WHEN %s::text IS NULL THEN NULL "
                "  ELSE now() END FROM batches WHERE id = %s RETURNING id",
                (Jsonb(data), str(scenes_dir), str(library_dir), "running" if claimed_by else "queued", claimed_by,
                 claimed_by, lease_seconds, 1 if claimed_by else 0, max_attempts, claimed_by, batch_id))).fetchone()
            if row is None:
                raise BatchNotFound(f"no batch {batch_id}")
            if claimed_by is None:
                await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, str(row[0])))
        return AssemblyJob(row[0], batch_id, data, scenes_dir, library_dir, 1 if claimed_by else 0, max_attempts)

    async def reclaim_lapsed(self) -> int:
        """Jobs whose controller stopped renewing its lease: queued again, or failed once they used every attempt."""
        async with self.pool.connection() as conn, conn.transaction():
            lapsed = "status = 'running' AND lease_until < now()"
            failed = await (await conn.execute(
                "UPDATE assembly_jobs SET status = 'failed', lease_until = NULL, finished_at = now(), "
                "  error = jsonb_build_object('message', 'the controller running it (' || claimed_by || ') stopped '"
                "    || 'before it finished, ' || attempts || ' time(s)' || coalesce('; before that: ' "
                "    || (error->>'message'), ''), 'field', NULL, 'status', 500) "
                f"WHERE {lapsed} AND attempts >= max_attempts RETURNING id")).fetchall()
            queued = await (await conn.execute(
                "UPDATE assembly_jobs SET status = 'queued', lease_until = NULL, "
                "  error = jsonb_build_object('message', 'the controller running it (' || claimed_by || ') stopped "
                "before it finished', 'field', NULL, 'status', 500) "
                f"WHERE {lapsed} AND attempts < max_attempts RETURNING id")).fetchall()
        return len(failed) + len(queued)

    async def claim(self, worker: str, lease_seconds: float = JOB_LEASE_SECONDS) -> AssemblyJob | None:
        """The oldest queued job, now running under this worker's lease; None when there is none."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "WITH next AS (SELECT id FROM assembly_jobs WHERE status = 'queued' ORDER BY created_at "
                "  FOR UPDATE SKIP LOCKED LIMIT 1) "
                "UPDATE assembly_jobs j SET status = 'running', claimed_by = %s, "
                "  lease_until = now() + make_interval(secs => %s), attempts = attempts + 1, started_at = now() "
                "FROM next WHERE j.id = next.id "
                "RETURNING j.id, j.batch_id, j.request, j.scenes_dir, j.library_dir, j.attempts, j.max_attempts",
                (worker, lease_seconds))
            row = await cursor.fetchone()
        if row is None:
            return None
        return AssemblyJob(row["id"], row["batch_id"], row["request"], Path(row["scenes_dir"]),
                           Path(row["library_dir"]), row["attempts"], row["max_attempts"])

    async def renew(self, job_id: uuid.UUID, worker: str, lease_seconds: float = JOB_LEASE_SECONDS) -> bool:
        """Extend this worker's lease; False when it no longer holds the job."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE assembly_jobs SET lease_until = now() + make_interval(secs => %s) "
                "WHERE id = %s AND claimed_by = %s AND status = 'running' RETURNING id",
                (lease_seconds, job_id, worker))
            return await cursor.fetchone() is not None

    async def _end(self, job_id: uuid.UUID, worker: str, assignments: str, params: tuple) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"UPDATE assembly_jobs SET {assignments}, lease_until = NULL "
                "WHERE id = %s AND claimed_by = %s AND status = 'running' RETURNING id", (*params, job_id, worker))
            return await cursor.fetchone() is not None

    async def finish(self, job_id: uuid.UUID, worker: str, assembly_ids: list[uuid.UUID]) -> bool:
        return await self._end(job_id, worker, "status = 'done', error = NULL, assembly_ids = %s, "
                               "finished_at = now()", (list(assembly_ids),))

    async def fail(self, job_id: uuid.UUID, worker: str, error: dict, final: bool) -> bool:
        """Record a failure: the job ends failed when it is final or its attempts are used up, else is queued
        again."""
        return await self._end(
            job_id, worker, "status = CASE WHEN %s OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
            "error = %s, finished_at = CASE WHEN %s OR attempts >= max_attempts THEN now() END",
            (final, Jsonb(error), final))

    async def release(self, job_id: uuid.UUID, worker: str) -> bool:
        """Give a job back to the queue unfinished (a service shutting down): the claim does not count."""
        return await self._end(job_id, worker, "status = 'queued', attempts = greatest(attempts - 1, 0)", ())

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
        row["assemblies"] = await AssemblyStore(self.pool).assemblies(row["batch_id"], ids) if ids else []
        return row


async def check_assembly(pool: AsyncConnectionPool, batch_id: uuid.UUID, request: AssemblyRequest) -> None:
    """The cheap checks of a request against the batch, before a job is queued: BatchNotFound, an unknown scene
    (AssemblyError), a scene with no approved shot or an approved shot with no file (AssemblyConflict)."""
    rows = await AssemblyStore(pool).batch_shots(batch_id)
    if rows is None:
        raise BatchNotFound(f"no batch {batch_id}")
    _plan_scenes(rows, request.scenes)


async def run_assembly_job(pool: AsyncConnectionPool, session: aiohttp.ClientSession, job: AssemblyJob,
                           worker: str, lease_seconds: float = JOB_LEASE_SECONDS,
                           progress: Progress | None = None) -> list[dict]:
    """Run a job this worker has claimed, renewing its lease meanwhile, and record how it ended; returns the
    assemblies. A failure is recorded and raised again as is (the CLI reports it by its type); JobLost when the
    lease was lost to another controller, whose run then counts instead."""
    jobs = AssemblyJobs(pool)

    async def work() -> list[dict]:
        request = parse_assembly_request(job.request)  # again: a music file may have gone since it was queued
        return await assemble_batch(pool, session, job.batch_id, request, job.scenes_dir, job.library_dir,
                                    progress=progress)

    task = asyncio.ensure_future(work())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=lease_seconds / 3)
            if task.done():
                break
            try:
                held = await jobs.renew(job.id, worker, lease_seconds)
            except psycopg.Error as error:  # the database restarting: try again next round, the lease may hold
                log.warning("assembly job %s: cannot renew the lease: %s", job.id, error)
                continue
            if not held:
                raise JobLost(f"assembly job {job.id}: the lease lapsed and another controller took it over")
        records = task.result()
    except (JobLost, asyncio.CancelledError):
        raise
    except Exception as error:
        recorded, final = failure(error)
        await jobs.fail(job.id, worker, recorded, final)
        raise
    finally:
        if not task.done():
            task.cancel()
    if not await jobs.finish(job.id, worker, [record["id"] for record in records]):
        raise JobLost(f"assembly job {job.id}: the lease lapsed and another controller took it over")
    return records
