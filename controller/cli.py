"""The `shotline` command: render, serve, status, assemble, workflow to-api, character put.

Every input is checked by the contract before any server starts (exit 2, the message names the field); a
database, a ComfyUI or a preset that cannot be used is exit 1 with one line saying why, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from shotline.core.characters import CharacterSheetError, parse_sheet, write_character
from tqdm import tqdm

from shotline_controller.api.app import create_app, load_or_create_token
from shotline_controller.api.learning import character_learning
from shotline_controller.comfy.client import ComfyBackend, ComfyUnavailable
from shotline_controller.comfy.presets import PresetError, SetError, is_editor_format
from shotline_controller.comfy.queued_graph import api_graph
from shotline_controller.comfy.results import RenderError
from shotline_controller.comfy.server import ComfyStartError, ComfySupervisor, LocalComfyServer
from shotline_controller.contract import AssemblyRequest, InputError, Shot, StateRequest, state_changes, validated
from shotline_controller.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from shotline_controller.golden_dataset import add_parser as add_dataset_parser
from shotline_controller.lora_registry import add_parser as add_lora_parser
from shotline_controller.media.assembly import AssemblyError
from shotline_controller.media.scene_music import backend_music
from shotline_controller.media.assembly_jobs import (
    AssemblyConflict,
    BatchNotFound,
    JobLost,
    SourceUnavailable,
    run_assembly_job,
)
from shotline_controller.media.sniff import sniff
from shotline_controller.parsing import parse_text, parse_yaml
from shotline_controller.settings import Settings, SettingsError, is_random_checkpoint, load_settings
from shotline_controller.shot_list import (
    check_characters,
    check_presets,
    choose_engines,
    queued_shots,
    read_media_file,
    read_shot_list,
)
from shotline_controller.store.assemblies import AssemblyStore
from shotline_controller.store.characters import CharacterStore
from shotline_controller.store.continuity import STATE_FIELDS, ContinuityStore
from shotline_controller.store.learning import LearningStore
from shotline_controller.store.migrations import apply_migrations
from shotline_controller.store.shots import ShotStore
from shotline_controller.store.uploads import UploadStore
from shotline_controller.webhook_policy import WebhookPolicy
from shotline_controller.workers.runner import Workers

log = logging.getLogger("shotline")


class ServiceError(RuntimeError):
    """A `shotline serve` refused a request or could not be reached."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached: one line saying where and why (never the URL's password)."""


async def _first_connection(url: str, wait_seconds: float) -> None:
    """One plain connection before the pool opens, so a database that is not there is one clear line at once (a
    pool retries for its whole timeout, logging each try, and then says only that it timed out).
    `wait_seconds`: keep trying that long (a service started beside its database)."""
    deadline, warned = time.monotonic() + wait_seconds, False
    while True:
        try:
            connection = await psycopg.AsyncConnection.connect(url, connect_timeout=10)
        except psycopg.OperationalError as error:
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(f"cannot connect to the database: {reason}") from None
            if not warned:
                log.warning("the database is not reachable (%s); retrying for %.0f s", reason, wait_seconds)
                warned = True
            await asyncio.sleep(1.0)
            continue
        await connection.close()
        return


UNUSABLE = (PresetError, RenderError, ComfyStartError, ComfyUnavailable, EmbeddedPostgresError, SettingsError,
            DatabaseUnavailable, psycopg.OperationalError, PoolTimeout, aiohttp.ClientError)


@asynccontextmanager
async def open_database(settings: Settings, max_connections: int = 4, wait_seconds: float = 0.0):
    """A pool on DATABASE_URL, or on the embedded server (started if needed, stopped again if this started it).
    A DATABASE_URL that cannot be reached within `wait_seconds` raises DatabaseUnavailable."""
    server, started_here = None, False
    url = settings.database_url
    if not url:
        server = EmbeddedPostgres(settings.postgres_data_dir)
        started_here = await asyncio.to_thread(server.start)
        url = server.url
    else:
        await _first_connection(url, wait_seconds)
    # autocommit: a statement is its own transaction (one round trip, not two); what must be atomic and is more
    # than one statement says so with conn.transaction()
    pool = AsyncConnectionPool(url, min_size=1, max_size=max_connections, open=False, timeout=30,
                               kwargs={"autocommit": True})
    try:
        await pool.open(wait=True, timeout=30)
        await apply_migrations(pool)
        yield pool
    finally:
        await pool.close()
        if server is not None and started_here:
            await asyncio.to_thread(server.stop)


def local_comfy(settings: Settings) -> ComfySupervisor:
    """The installed ComfyUI, run (and restarted when it dies) by this controller, writing under <state>/comfyui."""
    if not settings.comfyui_dir or not settings.comfyui_python:
        raise ComfyStartError("no ComfyUI configured: run `python3 install.py` (optionally with --comfyui PATH), "
                              "or pass --comfy URL")
    server = LocalComfyServer(settings.comfyui_dir, settings.comfyui_python,
                              log_path=settings.state_dir / "logs" / "comfyui.log",
                              extra_model_paths=settings.extra_model_paths, state_dir=settings.state_dir)
    return ComfySupervisor(server)


def print_summary(shots: list[dict]) -> None:
    """The table a render ends with, from ShotStore.batch_shots rows (or the service's JSON of them)."""
    for shot in shots:
        if shot.get("error"):
            print(f"  {shot['shot_key']}: {shot['error'].strip().splitlines()[0]}")
    print_table(("shot", "status", "attempts", "score", "output"),
                [[shot["shot_key"], shot["status"] + (f" (after {shot['continues']})" if shot.get("continues")
                                                      and shot["status"] in ("waiting", "blocked") else ""),
                  str(shot["attempts"]),
                  "-" if shot["score"] is None else f"{shot['score']:.3f}", shot["output"] or "-"] for shot in shots])


def character_story(shot: dict) -> list[str]:
    """What happened to a character shot, attempt by attempt: the correction it took, each character's score,
    what Face Refine did, and the verdict's reasons (from ShotStore.shot)."""
    names = ", ".join(shot["params"].get("characters") or [])
    lines = [f"{shot['shot_key']} ({names}): {shot['status']} after {len(shot['attempts'])} attempt(s)"]
    for attempt in shot["attempts"]:
        correction = attempt["correction"] or {}
        step = correction.get("step") or correction.get("reason") or "as written"
        lines.append(f"  attempt {attempt['attempt_no']} [{attempt['status']}] correction: {step}")
        for verdict in attempt["verdicts"]:
            check = verdict.get("check")
            if check == "identity":
                scores = ", ".join(f"{name} {'-' if c.get('score') is None else format(c['score'], '.2f')}"
                                   f"/{c.get('threshold', 0):g}" for name, c in verdict.get("characters", {}).items())
                lines.append(f"    identity: {scores or 'no character'}")
            elif check == "face_refine":
                lines.append(f"    face refine: {verdict.get('summary', '')}")
                for face in verdict.get("faces", []):
                    cycles = ", ".join(f"seed {c['seed']}: " + ("face lost" if c.get("score_after") is None
                                                                 else f"{c['score_after']:.2f}")
                                       + (" kept" if c.get("kept") else "") for c in face.get("cycles", []))
                    lines.append(f"      face {face['face']} {face.get('character') or '(no character)'}: "
                                 f"{face.get('score_in')} -> {face.get('score_out')} (cycles: {cycles or 'none'}; "
                                 f"prompt: {face.get('prompt') or '-'})")
            elif check == "shot":
                lines.append(f"    verdict: {verdict.get('band')} {verdict.get('score', 0):.2f}: "
                             + "; ".join(verdict.get("reasons", [])[:3]))
    return lines


def used_random_checkpoint(shot: dict) -> bool:
    return any(is_random_checkpoint(value) for attempt in shot["attempts"]  # titled, or named by `set`
               for key, value in (attempt["inputs"] or {}).items()
               if key.endswith(".ckpt_name") and isinstance(value, str))


RANDOM_CHECKPOINT_NOTE = ("The random test checkpoint draws noise, not faces: a face it generates or re-samples cannot "
                          "match a character (Face Refine then keeps the input's face). With a real checkpoint in "
                          "ComfyUI's models/checkpoints, delete the example's size, steps and min_side, and give your "
                          "characters real references (shotline character put).")
MAX_STORIES = 10  # character shots told attempt by attempt after a render; the rest are in `shotline status`


def print_table(headers, table: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in table)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


def _progress(progress: tqdm, batch: dict) -> None:
    progress.n = batch["done"]
    progress.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(batch["counts"].items())))
    progress.refresh()


# --- render ----------------------------------------------------------------------------------------------------

async def render_command(args) -> int:
    shot_list = read_shot_list(args.file)  # bad input fails here, before any server starts
    settings = load_settings()
    shot_list, rules = choose_engines(shot_list, settings.character_library_if_any)
    check_presets(shot_list)
    check_characters(shot_list, settings.character_library_if_any)
    base_dir = Path(args.file).resolve().parent
    images = {shot.image: await asyncio.to_thread(read_media_file, base_dir, shot.image, f"shots[{index}].image")
              for index, shot in enumerate(shot_list.shots) if shot.image}
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(open_database(settings, max_connections=6))
        url = args.comfy
        if not url:
            supervisor = local_comfy(settings)
            print(f"starting ComfyUI from {settings.comfyui_dir} (log: {supervisor.server.log_path}) ...", flush=True)
            seconds = await stack.enter_async_context(_supervised(supervisor))
            print(f"ComfyUI ready at {supervisor.url} in {seconds:.1f} s", flush=True)
            url = supervisor.url
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)))
        backend = ComfyBackend(url, session)
        await backend.start()  # an unreachable server fails here, before anything is queued
        # again with the server's /object_info: editor-format presets converted, `set` checked by type and range
        await asyncio.to_thread(check_presets, shot_list, await backend.object_info())
        uploads, store = UploadStore(pool), ShotStore(pool)

        async def media(name: str, field: str) -> str:
            return (await uploads.put(images[name], sniff(images[name])))["ref"]

        shots = await queued_shots(shot_list, media, rules)
        batch_id, _ = await store.submit_batch(shots, str(Path(args.file).resolve()), max_attempts=args.max_attempts,
                                               states=state_changes(shot_list))
        print(f"batch {batch_id}: {len(shots)} shots queued (at most {args.max_attempts} attempts each)")
        workers = Workers(pool, [backend], service=False, character_library=settings.character_library_if_any)
        with tqdm(total=len(shots), unit="shot", desc="rendering", file=sys.stderr) as progress:
            async def finished() -> bool:
                batch = await store.batch(batch_id)
                _progress(progress, batch)
                return batch["settled"]  # blocked shots wait for a person (shotline status, the API)
            await workers.run(stop=asyncio.Event(), until=finished)
        rows = await store.batch_shots(batch_id)
        character_rows = [row for row in rows if row["params"].get("characters")]
        stories = [await store.shot(row["id"]) for row in character_rows[:MAX_STORIES]]
    print(f"\nbatch {batch_id}: {len(shots)} shots in {time.monotonic() - started:.1f} s")
    for story in stories:
        print("\n".join(character_story(story)))
    if len(character_rows) > MAX_STORIES:
        print(f"({len(character_rows) - MAX_STORIES} more character shots: see shotline status or the API)")
    if any(used_random_checkpoint(story) for story in stories):
        print(RANDOM_CHECKPOINT_NOTE)
    print_summary(rows)
    blocked = [row["shot_key"] for row in rows if row["status"] == "blocked"]
    if blocked:
        print(f"blocked, waiting for the shot each continues to be retried or approved: {', '.join(blocked)} "
              f"(POST /api/v1/shots/<id>/retry or /review; they stay queued in batch {batch_id})")
    return 1 if any(row["status"] in ("failed", "blocked") for row in rows) else 0


@asynccontextmanager
async def _supervised(supervisor: ComfySupervisor):
    try:
        yield await supervisor.start()
    finally:
        await supervisor.stop()


async def render_on_server(args, shots_text: bytes) -> int:
    """Submit the shot list to a running `shotline serve` and follow the batch to its end."""
    token = args.token or os.environ.get("SHOTLINE_TOKEN")
    if not token:
        raise ServiceError("--server needs the service's token: --token or SHOTLINE_TOKEN")
    base = args.server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    form = aiohttp.FormData()
    # the list as the service's JSON, with this command's --max-attempts (a shot-list file has no such field)
    data = parse_text(shots_text, as_yaml=args.file.suffix.lower() != ".json", field="file")
    form.add_field("shots", json.dumps({**data, "max_attempts": args.max_attempts}).encode(),
                   filename=f"{Path(args.file).stem}.json", content_type="application/json")
    base_dir = Path(args.file).resolve().parent
    for index, shot in enumerate(read_shot_list(args.file).shots):  # the images it names travel with it
        if shot.image:
            form.add_field("file", read_media_file(base_dir, shot.image, f"shots[{index}].image"),
                           filename=shot.image, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/api/v1/batches", data=form, headers=headers) as response:
            body = await response.json(content_type=None)
            if response.status != 201:
                raise ServiceError(f"{response.status}: {body.get('error')}"
                                   + (f" (field {body['field']})" if body.get("field") else ""))
        batch_id = body["batch_id"]
        print(f"batch {batch_id}: {len(body['shot_ids'])} shots queued on {base}")
        with tqdm(total=len(body["shot_ids"]), unit="shot", desc="rendering", file=sys.stderr) as progress:
            while True:
                async with session.get(f"{base}/api/v1/batches/{batch_id}") as response:
                    batch = await response.json()
                _progress(progress, batch)
                if batch["settled"]:  # blocked shots wait for a person
                    break
                await asyncio.sleep(0.5)
        async with session.get(f"{base}/api/v1/batches/{batch_id}/shots") as response:
            rows = (await response.json())["shots"]
    print_summary(rows)
    return 1 if any(row["status"] in ("failed", "blocked") for row in rows) else 0


# --- serve -----------------------------------------------------------------------------------------------------

async def serve_command(args) -> int:
    """The service and its workers in one process, until SIGINT/SIGTERM. The API listens first; a ComfyUI that
    is down (or still starting) is shown disconnected and retried, and a signal stops everything in seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    settings = load_settings()
    policy = WebhookPolicy.from_environment()
    token, created = load_or_create_token(settings.state_dir)
    if created:
        print(f"new API token (kept in {settings.state_dir / 'service_token'}): {token}", flush=True)
    async with AsyncExitStack() as stack:
        # requests and workers borrow connections for milliseconds: a small pool serves many backends
        pool = await stack.enter_async_context(open_database(settings, args.db_connections, wait_seconds=30))
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)))
        urls, supervisors = list(args.comfy or []), {}
        if not urls:
            supervisor = local_comfy(settings)
            supervisors[supervisor.url] = supervisor
            urls.append(supervisor.url)
        backends = [ComfyBackend(url, session) for url in urls]
        workers = Workers(pool, backends, supervisors=supervisors, slots_per_backend=args.slots,
                          character_library=settings.character_library_if_any,
                          lease_seconds=args.lease, webhook_secret=_webhook_secret(token), webhook_policy=policy,
                          max_streams=args.max_streams)
        app = create_app(pool, settings, token, backends=backends, supervisors=supervisors,
                         notifications=workers.notifications, metrics=workers.metrics, webhook_policy=policy)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"Shotline service on http://{args.host}:{args.port} (OpenAPI: /openapi.json, metrics: /metrics), "
              f"{len(backends)} ComfyUI backend(s): {', '.join(urls)}"
              + (" (starting)" if supervisors else ""), flush=True)
        await workers.run(stop=stop)  # until a signal; the shots it holds then go back to the queue
    return 0


def _webhook_secret(token: str) -> bytes:
    return (os.environ.get("SHOTLINE_WEBHOOK_SECRET") or token).encode()


# --- status ----------------------------------------------------------------------------------------------------

async def status_command(args) -> int:
    settings = load_settings()
    async with open_database(settings) as pool:
        store = ShotStore(pool)
        if args.batch:
            batch = await store.batch(args.batch)
            if batch is None:
                print(f"error: no batch {args.batch}", file=sys.stderr)
                return 1
            print(f"batch {batch['id']} ({batch['source']}): {batch['done']}/{batch['total']} done, "
                  + ", ".join(f"{k} {v}" for k, v in sorted(batch["counts"].items())))
            print_summary(await store.batch_shots(args.batch))
            return 0
        rows = await store.recent_batches()
        for batch_id, source, created, total, open_shots in rows:
            print(f"{batch_id}  {created:%Y-%m-%d %H:%M}  {total - open_shots}/{total} done  {source}")
        if not rows:
            print("no batches yet")
    return 0


# --- state ----------------------------------------------------------------------------------------------------

async def state_command(args) -> int:
    """`shotline state set BATCH CHARACTER --from SHOT --outfit ...` and `shotline state show BATCH`."""
    settings = load_settings()
    async with open_database(settings) as pool:
        batch = await ShotStore(pool).batch(args.batch)
        if batch is None:
            print(f"error: no batch {args.batch}", file=sys.stderr)
            return 1
        store = ContinuityStore(pool)
        if args.state_command == "set":
            fields = {field: getattr(args, field) for field in STATE_FIELDS if getattr(args, field) is not None}
            try:
                change = validated(StateRequest, {"character": args.character, "from_shot": args.from_shot,
                                                  "state": fields})
            except InputError as error:
                print(f"error: {STATE_FLAGS.get(error.field, error.field)}: {error.message}", file=sys.stderr)
                return 2
            position = await store.shot_position(batch["id"], change.from_shot)
            if position is None:
                print(f"error: --from: no shot {change.from_shot!r} in batch {batch['id']}", file=sys.stderr)
                return 2
            await store.add_state(batch["id"], change.character, position,
                                  change.state.model_dump(exclude_none=True), "cli")
        timeline = await store.timeline(batch["id"])
        frames = await store.frames(batch["id"])
    print_table(["character", "from shot", "state", "source"],
                [[row["character"], row["from_shot"] or f"#{row['from_position']}",
                  ", ".join(f"{k}: {v or '(cleared)'}" for k, v in row["fields"].items()), row["source"]]
                 for row in timeline])
    if frames:
        print_table(["scene", "character", "kept frame from", "score"],
                    [[row["scene"], row["character"], row["shot"], f"{row['score']:.2f}"] for row in frames])
    return 0


STATE_FLAGS = {"character": "CHARACTER", "from_shot": "--from", "state": "--outfit/--injuries/--props/--emotion/"
                                                                          "--notes"}
STATE_FLAGS.update({f"state.{field}": f"--{field}" for field in STATE_FIELDS})


# --- assemble --------------------------------------------------------------------------------------------------

ASSEMBLY_FLAGS = {"crossfade_s": "--crossfade", "fps": "--fps", "size": "--size", "music": "--music",
                  "episode": "--episode", "episode.season": "--season", "episode.number": "--episode",
                  "episode.title": "--title"}


def assembly_flag(field: str | None) -> str | None:
    """The `shotline assemble` flag of a request field (scenes[1] -> --scene)."""
    if field and field.startswith("scenes"):
        return "--scene"
    return ASSEMBLY_FLAGS.get(field)


def assembly_request_data(args, music_ref: str | None = None) -> dict:
    """The API's JSON form of `shotline assemble`'s flags, so both are checked by one model."""
    data = {"crossfade_s": args.crossfade}
    for name in ("fps", "size"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    if args.scene:
        data["scenes"] = args.scene
    if music_ref is not None:
        data["music"] = music_ref
    if args.episode is not None:
        data["episode"] = {"season": 1 if args.season is None else args.season, "number": args.episode}
        if args.title is not None:
            data["episode"]["title"] = args.title
    elif args.title is not None or args.season is not None:
        raise AssemblyError("episode", "--season and --title describe an episode: give its number with --episode N")
    return data


def print_assemblies(records: list[dict]) -> None:
    print_table(("assembly", "duration", "frames", "size", "path"),
                [[record["scene"] if record["kind"] == "scene" else f"S{record['season']:02d}E{record['episode']:02d}",
                  f"{record['duration_s']:.2f} s", str(record["frame_count"]),
                  f"{record['width']}x{record['height']}@{record['fps']:g}", record["path"]] for record in records])


def _music_bytes(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AssemblyError("music", f"cannot read {path}: {error.strerror}") from None
    found = sniff(data)
    if found is None or found.kind != "audio":
        raise AssemblyError("music", f"{path} is not an audio file Shotline reads (WAV, FLAC, Ogg, MP3, M4A)")
    return data


async def assemble_command(args) -> int:
    """Cut a batch's approved shots into scene MP4s, and those into an episode when --episode is given."""
    auto_music = args.music is not None and str(args.music) == "auto"
    try:
        music = await asyncio.to_thread(_music_bytes, args.music) if args.music is not None and not auto_music \
            else None
        placeholder = "sha256:" + "0" * 64 if music else ("auto" if auto_music else None)  # the real ref once stored
        validated(AssemblyRequest, assembly_request_data(args, placeholder))
    except (AssemblyError, InputError) as error:  # name the flag, not the API field
        print(f"error: {assembly_flag(error.field) or error.field}: {error.message}", file=sys.stderr)
        return 2
    settings = load_settings()
    bars: list[tqdm] = []

    def progress(name: str):
        bar = tqdm(desc=name, unit="frame", file=sys.stderr)
        bars.append(bar)

        def update(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()
            if done == total:
                bar.close()
        return update

    try:
        async with open_database(settings) as pool, aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)) as session:
            ref = (await UploadStore(pool).put(music, sniff(music)))["ref"] if music else placeholder
            request = validated(AssemblyRequest, assembly_request_data(args, ref))
            make_music = None
            if auto_music and args.comfy:
                backend = ComfyBackend(args.comfy, session)
                await backend.start()  # an unreachable server fails here, before anything is cut
                make_music = backend_music([backend], session)
            # the same job as the API's, recorded as claimed by this process and run here; one attempt: a
            # failure is reported now, not retried later by a service
            worker = f"{socket.gethostname()}:{os.getpid()}:cli:{uuid.uuid4().hex[:6]}"
            job = await AssemblyStore(pool).create_job(
                args.batch, request.model_dump(mode="json", exclude_none=True),
                scenes_dir=(args.output or settings.assemblies_dir) / str(args.batch),
                library_dir=args.library or settings.library_dir, claimed_by=worker, max_attempts=1)
            if job is None:
                raise BatchNotFound(f"no batch {args.batch}")
            records = await run_assembly_job(pool, session, job, worker, progress=progress, make_music=make_music)
    except (AssemblyError, InputError) as error:  # a flag the shots cannot take (2), or a file that cannot be read
        flag = assembly_flag(error.field)
        print(f"error: {flag + ': ' if flag else ''}{error.message}", file=sys.stderr)
        return 2 if flag else 1
    except (BatchNotFound, AssemblyConflict, SourceUnavailable, JobLost, ComfyUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    print_assemblies(records)
    return 0


# --- characters ------------------------------------------------------------------------------------------------

async def character_put_command(args) -> int:
    """Create or update a character in the library from a sheet and reference images, and record it."""
    settings = load_settings()
    library = args.library or settings.character_library
    try:
        text = args.sheet.read_bytes()
    except OSError as error:
        raise CharacterSheetError("sheet", f"cannot read {args.sheet}: {error.strerror}") from None
    try:
        sheet = parse_sheet(parse_yaml(text, field="sheet"))
    except InputError as error:
        raise CharacterSheetError(error.field, error.message) from None
    references = {}
    for path in args.reference:
        try:
            references[path.name] = path.read_bytes()
        except OSError as error:
            raise CharacterSheetError(f"references.{path.name}", f"cannot read {path}: {error.strerror}") from None
    character = write_character(library, args.folder, sheet, references)
    async with open_database(settings) as pool:
        character_id = await CharacterStore(pool).put(character)
    print(f"character {character.name!r} ({character_id}) in {character.folder}: "
          f"{len(character.references)} reference image(s)")
    return 0


# --- the command line ------------------------------------------------------------------------------------------

async def character_learned_command(args) -> int:
    """`shotline character learned NAME [--remove TERM]`."""
    async with open_database(load_settings()) as pool:
        store = LearningStore(pool)
        for term in args.remove:
            if not await store.remove_negative(args.name, term):
                print(f"error: --remove: {args.name!r} has no learned negative {term!r} in use", file=sys.stderr)
                return 2
            print(f"removed {term!r}: {args.name}'s shots no longer add it to their negative")
        found = await character_learning(store, args.name)
    if not (found["history"] or found["preferences"] or found["negatives"]):
        print(f"nothing learned for {args.name!r} yet")
        return 0
    print_table(["batch", "created", "shots", "approved", "first-attempt pass", "attempts / approved"],
                [[str(row["batch_id"])[:8], f"{row['created_at']:%Y-%m-%d %H:%M}", str(row["shots"]),
                  str(row["approved"]), f"{row['first_attempt_pass_rate']:.0%}",
                  "-" if row["attempts_per_approved"] is None else f"{row['attempts_per_approved']:.2f}"]
                 for row in found["history"]])
    print_table(["decision", "prefers", "pass rate", "90 % interval", "trials", "P(best)"],
                [[row["decision"], row["arm"], f"{row['mean']:.2f}", f"{row['low']:.2f}-{row['high']:.2f}",
                  str(row["trials"]), f"{row['p_best']:.2f}"] for row in found["preferences"]])
    print_table(["learned negative", "from", "times", "last shot", "in use"],
                [[row["term"], row["category"], str(row["times"]), row["last_shot"] or "-",
                  "no (removed)" if row["removed_at"] else "yes"] for row in found["negatives"]])
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shotline", description="Render shot lists through ComfyUI.")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render a shot list (YAML or JSON) and record it in PostgreSQL")
    render.add_argument("file", type=Path)
    render.add_argument("--comfy", metavar="URL", help="a running ComfyUI server (default: start the local one)")
    render.add_argument("--server", metavar="URL", help="submit to a running `shotline serve` instead")
    render.add_argument("--token", help="the service's API token (default: SHOTLINE_TOKEN)")
    render.add_argument("--max-attempts", type=int, default=3, choices=range(1, 21), metavar="N",
                        help="attempts per shot, corrections included (1-20, default 3)")
    serve = commands.add_parser("serve", help="the HTTP service plus the workers over ComfyUI backends")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8288)
    serve.add_argument("--comfy", metavar="URL", action="append",
                       help="a ComfyUI server to render on (repeat for several; default: start the local one)")
    serve.add_argument("--slots", type=int, default=2, choices=range(1, 9), metavar="N",
                       help="prompts kept queued per backend so it never idles (default 2)")
    serve.add_argument("--lease", type=float, default=30.0, metavar="SECONDS",
                       help="how long a claimed shot stays this process's without renewal (default 30)")
    serve.add_argument("--db-connections", type=int, default=10, choices=range(2, 101), metavar="N",
                       help="PostgreSQL connections this service uses at most, besides its one LISTEN connection "
                            "(default 10; the workers and requests borrow them for milliseconds)")
    serve.add_argument("--max-streams", type=int, default=256, metavar="N",
                       help="open event streams allowed at once; past it a client gets 503 (default 256)")
    status = commands.add_parser("status", help="recent batches, or one batch's shots")
    status.add_argument("batch", nargs="?", type=uuid.UUID)
    assemble = commands.add_parser("assemble", help="cut a batch's approved shots into scene MP4s (and an episode)")
    assemble.add_argument("batch", type=uuid.UUID)
    assemble.add_argument("--scene", action="append", metavar="KEY",
                          help="a scene to assemble (repeat for several; default: every scene)")
    assemble.add_argument("--music", type=Path, metavar="FILE|auto",
                          help="music ducked under the shots' own audio; auto: each scene's music made from its "
                               "shots' mood by the music_ace_step preset (needs --comfy)")
    assemble.add_argument("--comfy", metavar="URL", help="the ComfyUI that makes --music auto")
    assemble.add_argument("--crossfade", type=float, default=0.5, metavar="SECONDS",
                          help="crossfade between shots and between scenes (default 0.5; 0 cuts)")
    assemble.add_argument("--fps", type=float, metavar="N", help="frame rate (default: the first video shot's, else 24)")
    assemble.add_argument("--size", metavar="WxH", help="picture size (default: the first shot's)")
    assemble.add_argument("--season", type=int, metavar="N", help="the episode's season (default 1)")
    assemble.add_argument("--episode", type=int, metavar="N", help="also cut the scenes into this episode")
    assemble.add_argument("--title", metavar="TEXT", help="the episode's title (its file name)")
    assemble.add_argument("--library", type=Path, metavar="DIR",
                          help="the show folder episodes go to (default: SHOTLINE_LIBRARY or <state>/library)")
    assemble.add_argument("--output", type=Path, metavar="DIR",
                          help="where scene MP4s go, in a folder per batch (default: SHOTLINE_ASSEMBLIES or "
                               "<state>/assemblies)")
    workflow = commands.add_parser("workflow", help="workflow files as the controller sees them")
    workflow_commands = workflow.add_subparsers(dest="workflow_command", required=True)
    to_api = workflow_commands.add_parser(
        "to-api", help="print the API graph the controller would queue for a workflow (editor or API format)")
    to_api.add_argument("file", metavar="FILE|-", help="the workflow JSON; - reads stdin")
    to_api.add_argument("--comfy", metavar="URL", help="convert and check against this server's /object_info "
                                                       "(default: the local ComfyUI, started for an editor file)")
    to_api.add_argument("--shot", type=Path, metavar="LIST", help="fill it with a shot of this shot list (YAML or "
                                                                 "JSON), as a render would")
    to_api.add_argument("--id", metavar="KEY", help="which shot of --shot (default: the first)")
    state = commands.add_parser("state", help="characters' state along a batch's story (outfit, injuries ...)")
    state_commands = state.add_subparsers(dest="state_command", required=True)
    state_set = state_commands.add_parser("set", help="set a character's state from a shot on")
    state_set.add_argument("batch", type=uuid.UUID)
    state_set.add_argument("character", help="the character's folder name, e.g. aiko")
    state_set.add_argument("--from", dest="from_shot", required=True, metavar="SHOT",
                           help="the id of the shot it applies from")
    for field in STATE_FIELDS:
        state_set.add_argument(f"--{field}", metavar="TEXT", help=f"the character's {field} ('' clears it)")
    state_show = state_commands.add_parser("show", help="the batch's state timeline and kept continuity frames")
    state_show.add_argument("batch", type=uuid.UUID)
    character = commands.add_parser("character", help="manage the character library")
    character_commands = character.add_subparsers(dest="character_command", required=True)
    put = character_commands.add_parser("put", help="create or update a character: sheet + reference images")
    put.add_argument("folder", help="folder name in the library, e.g. aiko")
    put.add_argument("--sheet", type=Path, required=True, help="character.yaml to use")
    put.add_argument("--reference", type=Path, action="append", default=[], help="a reference image (repeat)")
    put.add_argument("--library", type=Path, help="library folder (default: SHOTLINE_CHARACTER_LIBRARY, else "
                                                  "ComfyUI's models/shotline_characters)")
    put.set_defaults(run=character_put_command)
    learned = character_commands.add_parser("learned", help="what the learner learned for a character: batch by "
                                                            "batch, its preferences, its learned negatives")
    learned.add_argument("name", help="the character's name as shots give it")
    learned.add_argument("--remove", metavar="TERM", action="append", default=[],
                         help="stop adding this learned negative term (repeat)")
    learned.set_defaults(run=character_learned_command)
    add_dataset_parser(character_commands)
    add_lora_parser(character_commands)
    return parser


# --- workflow to-api ------------------------------------------------------------------------------------------

async def fetch_object_info(url: str) -> dict:
    """The server's /object_info (ComfyUnavailable, one line, when it cannot be read)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120, sock_connect=10)) as session:
        return await ComfyBackend(url, session).object_info()


async def workflow_object_info(args, data) -> dict | None:
    """The /object_info to convert and check against: --comfy URL's, else for an editor-format file the local
    ComfyUI's, started for the purpose; None for an API graph (a shot's `set` is then checked against the graph)."""
    if args.comfy:
        return await fetch_object_info(args.comfy)
    if not is_editor_format(data):
        return None
    supervisor = local_comfy(load_settings())
    print(f"starting ComfyUI from {supervisor.server.comfyui_dir} for its /object_info ...", file=sys.stderr,
          flush=True)
    async with _supervised(supervisor):
        return await fetch_object_info(supervisor.url)


async def workflow_to_api_command(args) -> int:
    """Print the API graph the controller would queue for FILE (or stdin), filled with a shot when --shot names a
    shot list; which nodes the shot fills, and any problem, go to stderr."""
    name = "stdin" if args.file == "-" else Path(args.file).name
    try:
        text = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        raise InputError("file", f"cannot read {args.file}: {error.strerror}") from None
    data = parse_text(text, as_yaml=False, field="file")
    shot = None
    if args.shot:
        shot_list = read_shot_list(args.shot)
        chosen = [s for s in shot_list.shots if args.id in (None, s.id)]
        if not chosen:
            raise InputError("id", f"no shot {args.id!r} in {args.shot} (it has: "
                                   f"{', '.join(s.id for s in shot_list.shots[:20])})")
        shot = Shot.from_input(chosen[0].model_copy(update={"image": None}), image=None)
    object_info = await workflow_object_info(args, data)
    try:
        graph, _, notes = api_graph(data, name.removesuffix(".json"), object_info, shot,
                                    image_name=chosen[0].image if shot else None)
    except SetError as error:
        raise InputError(f"set.{error.key}", str(error)) from None
    for note in notes:
        print(note, file=sys.stderr)
    json.dump(graph, sys.stdout, indent=2)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "character":  # each character command's parser names its function
            return asyncio.run(args.run(args))
        if args.command == "serve":
            return asyncio.run(serve_command(args))
        if args.command == "status":
            return asyncio.run(status_command(args))
        if args.command == "state":
            return asyncio.run(state_command(args))
        if args.command == "assemble":
            return asyncio.run(assemble_command(args))
        if args.command == "workflow":
            return asyncio.run(workflow_to_api_command(args))
        if args.server:
            read_shot_list(args.file)  # the same checks before anything is sent
            return asyncio.run(render_on_server(args, args.file.read_bytes()))
        return asyncio.run(render_command(args))
    except InputError as error:
        where = f"{args.shot if error.field.startswith('shots[') and getattr(args, 'shot', None) else args.file}: " \
            if getattr(args, "file", None) else ""
        print(f"error: {where}{error}", file=sys.stderr)
        return 2
    except CharacterSheetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UNUSABLE + (ServiceError,) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
