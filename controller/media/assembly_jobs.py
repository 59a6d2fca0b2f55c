"""A batch's approved shots assembled into scenes, and the scenes into an episode, recorded in PostgreSQL.

Shared by `shotline assemble` and `POST /api/v1/batches/{id}/assemblies`, both through a durable job
(`assembly_jobs`, below): the API checks the request, queues the job and answers 202; a worker in the service
claims it under a lease, as shots are claimed; the CLI records its job as claimed and runs it in place.

1. The request is a `contract.AssemblyRequest` (errors name the field, as shot lists do); its music is an upload,
   or `auto`: each scene's own music made from its mood on a ComfyUI backend (media/scene_music.py).
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp
import psycopg
from psycopg_pool import AsyncConnectionPool

from shotline_controller.contract import DEFAULT_DURATION, DEFAULT_SCENE, AssemblyRequest, InputError, validated
from shotline_controller.media.assembly import (
    AssemblyError,
    AssemblyResult,
    ClipSource,
    assemble,
    episode_paths,
    is_video_file,
)
from shotline_controller.store.assemblies import JOB_LEASE_SECONDS, AssemblyJob, AssemblyStore
from shotline_controller.store.uploads import UploadStore

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


class MusicUnavailable(SourceUnavailable):
    """A scene's music (`music: auto`) could not be made: no backend, its model files missing, or the run failed."""


def music_seed(batch_id, scene: str) -> int:
    """The music's seed: the same scene of the same batch gets the same music when assembled again."""
    return zlib.crc32(f"{batch_id}/{scene}".encode())


class JobLost(RuntimeError):
    """This controller's lease on a job lapsed and another took it over: its outcome is not recorded."""


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
                raise AssemblyError(f"scenes[{index}]",
                                    f"no scene {scene!r} in this batch (its scenes: {', '.join(scenes) or 'none'})")
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

async def _music_file(pool: AsyncConnectionPool, ref: str, folder: Path) -> Path:
    found = await UploadStore(pool).content(ref)
    if found is None:
        raise AssemblyError("music", f"no upload {ref}: upload the audio file first (POST /api/v1/uploads)")
    data, suffix = found
    path = Path(folder) / f"music{suffix}"
    await asyncio.to_thread(path.write_bytes, data)
    return path


def scene_mood(shots: list[_SceneShot] | list[dict]) -> str | None:
    """The first `mood` a shot of the scene names (its rows' params)."""
    rows = [shot.row if isinstance(shot, _SceneShot) else shot for shot in shots]
    return next((row["params"]["mood"] for row in rows if row["params"].get("mood")), None)


def _check_moods(plan: dict[str, list[_SceneShot]]) -> None:
    missing = [scene for scene, shots in plan.items() if scene_mood(shots) is None]
    if missing:
        raise AssemblyError("music", f"music: auto makes a scene's music from its mood, and no shot of scene(s) "
                                     f"{', '.join(map(repr, missing))} names one: set `mood` on a shot of each")


async def _scene_music(make_music, batch_id, scene: str, shots: list[_SceneShot], folder: Path) -> Path:
    if make_music is None:
        raise MusicUnavailable("music: auto needs a ComfyUI backend to make the music on: run it through "
                               "`shotline serve`, or `shotline assemble --comfy URL`")
    seconds = sum(float(shot.row["params"].get("duration", DEFAULT_DURATION)) for shot in shots)
    data, suffix = await make_music(scene_mood(shots), seconds, music_seed(batch_id, scene))
    path = folder / f"music-{scene}{suffix}"
    await asyncio.to_thread(path.write_bytes, data)
    return path


async def assemble_batch(pool: AsyncConnectionPool, session: aiohttp.ClientSession, batch_id: uuid.UUID,
                         request: AssemblyRequest, scenes_dir: Path, library_dir: Path,
                         progress: Progress | None = None, make_music=None) -> list[dict]:
    """Assemble the requested scenes of a batch (and the episode, when asked) and record them; returns the
    records, scenes in cut order then the episode. Scene files go to `scenes_dir`, the episode under
    `library_dir`. `make_music` (media/scene_music.MusicMaker) makes each scene's music for `music: auto`."""
    store = AssemblyStore(pool)
    rows = await store.batch_shots(batch_id)
    if rows is None:
        raise BatchNotFound(f"no batch {batch_id}")
    plan = _plan_scenes(rows, request.scenes)
    if request.music == "auto":
        _check_moods(plan)

    ids: list[uuid.UUID] = []
    with tempfile.TemporaryDirectory(prefix="shotline-assembly-") as folder:
        music = await _music_file(pool, request.music, Path(folder)) if request.music not in (None, "auto") else None
        scene_music = {scene: await _scene_music(make_music, batch_id, scene, shots, Path(folder))
                       for scene, shots in plan.items()} if request.music == "auto" else {}
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
                size=size, music=scene_music.get(scene, music), progress=progress(scene) if progress else None)
            if request.episode and not scene_results:
                # the episode's scenes share one picture format: the first scene's, unless one was asked for
                fps, size = fps or result.fps, size or (result.width, result.height)
            assembly_id = await store.record(
                batch_id, result, [{"shot_id": shot.row["id"], "output_id": shot.output["id"]} for shot in shots],
                scene=scene, music=request.music)
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


def failure(error: BaseException) -> tuple[dict, bool]:
    """A job's error as recorded ({message, field, status}: the HTTP status the request would get) and whether it
    is the request's or the batch's fault (final) rather than the controller's (worth another attempt)."""
    if isinstance(error, BatchNotFound):
        return {"message": str(error), "field": "batch_id", "status": 404}, True
    if isinstance(error, AssemblyConflict):
        return {"message": str(error), "field": None, "status": 409}, True
    if isinstance(error, SourceUnavailable):
        return {"message": str(error), "field": None, "status": 502}, True
    if isinstance(error, (AssemblyError, InputError)):  # a value the shots cannot take (400), or an undecodable file
        return {"message": error.message, "field": error.field, "status": 400 if error.field else 422}, True
    return {"message": f"{type(error).__name__}: {error}", "field": None, "status": 500}, False


async def check_assembly(pool: AsyncConnectionPool, batch_id: uuid.UUID, request: AssemblyRequest) -> None:
    """The cheap checks of a request against the batch, before a job is queued: BatchNotFound, an unknown scene
    (AssemblyError), a scene with no approved shot or an approved shot with no file (AssemblyConflict), music
    that is no audio upload (AssemblyError)."""
    rows = await AssemblyStore(pool).batch_shots(batch_id)
    if rows is None:
        raise BatchNotFound(f"no batch {batch_id}")
    plan = _plan_scenes(rows, request.scenes)
    if request.music == "auto":
        _check_moods(plan)
    elif request.music is not None:
        kinds = await UploadStore(pool).kinds([request.music])
        if not kinds.get(request.music, "").startswith("audio/"):
            raise AssemblyError("music", f"no audio upload {request.music}: upload the file first "
                                         "(POST /api/v1/uploads)")


async def run_assembly_job(pool: AsyncConnectionPool, session: aiohttp.ClientSession, job: AssemblyJob,
                           worker: str, lease_seconds: float = JOB_LEASE_SECONDS,
                           progress: Progress | None = None, make_music=None) -> list[dict]:
    """Run a job this worker has claimed, renewing its lease meanwhile, and record how it ended; returns the
    assemblies. A failure is recorded and raised again as is (the CLI reports it by its type); JobLost when the
    lease was lost to another controller, whose run then counts instead."""
    store = AssemblyStore(pool)

    async def work() -> list[dict]:
        request = validated(AssemblyRequest, job.request, "request")
        return await assemble_batch(pool, session, job.batch_id, request, job.scenes_dir, job.library_dir,
                                    progress=progress, make_music=make_music)

    task = asyncio.ensure_future(work())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=lease_seconds / 3)
            if task.done():
                break
            try:
                held = await store.renew_job(job.id, worker, lease_seconds)
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
        await store.fail_job(job.id, worker, recorded, final)
        raise
    finally:
        if not task.done():
            task.cancel()
    if not await store.finish_job(job.id, worker, [record["id"] for record in records]):
        raise JobLost(f"assembly job {job.id}: the lease lapsed and another controller took it over")
    return records
