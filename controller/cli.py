"""The `shotline` command."""
from __future__ import annotations

import argparse
import asyncio
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
from aiohttp import web
import yaml
from psycopg_pool import AsyncConnectionPool
from shotline.core.characters import CharacterSheetError, parse_sheet, write_character
from tqdm import tqdm

from shotline_controller.media.assembly_jobs import (
    AssemblyConflict,
    AssemblyJobs,
    BatchNotFound,
    JobLost,
    SourceUnavailable,
    parse_assembly_request,
    run_assembly_job,
)
from shotline_controller.media.assembly import AssemblyError
from shotline_controller.comfy.client import ComfyBackend, ComfyUnavailable
from shotline_controller.comfy.server import ComfyStartError, LocalComfyServer
from shotline_controller.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError
from shotline_controller.workers.dispatcher import Dispatcher
from shotline_controller.comfy.presets import PresetError, load_preset
from shotline_controller.comfy.results import RenderError
from shotline_controller.settings import Settings, load_settings
from shotline_controller.shot_list import ShotListError, load_shot_list
from shotline_controller.api.app import create_app, load_or_create_token
from shotline_controller.store.shots import ShotQueue
from shotline_controller.store.attempts import ShotStore, apply_migrations

log = logging.getLogger("shotline")


class ServiceError(RuntimeError):
    """A `shotline serve` refused a request or could not be reached."""


@asynccontextmanager
async def open_database(settings: Settings, max_connections: int = 4):
    """A pool on DATABASE_URL, or on the embedded server (started if needed, stopped again if this started it)."""
    server = None
    url = settings.database_url
    if not url:
        server = EmbeddedPostgres(settings.postgres_data_dir)
        started_here = server.start()
        url = server.url
    pool = AsyncConnectionPool(url, min_size=1, max_size=max_connections, open=False)
    try:
        await pool.open(wait=True, timeout=30)
        await apply_migrations(pool)
        yield pool
    finally:
        await pool.close()
        if server is not None and started_here:
            server.stop()


@asynccontextmanager
async def open_comfy(settings: Settings, url: str | None):
    """A ComfyUI base URL: the one given, or a local server started for this run."""
    if url:
        yield url, None
        return
    async with start_local_comfy(settings) as server:
        yield server.url, server


@asynccontextmanager
async def start_local_comfy(settings: Settings):
    if not settings.comfyui_dir or not settings.comfyui_python:
        raise ComfyStartError("no ComfyUI configured: run `python3 install.py` (optionally with --comfyui PATH), "
                              "or pass --comfy URL")
    server = LocalComfyServer(settings.comfyui_dir, settings.comfyui_python,
                              log_path=settings.state_dir / "logs" / "comfyui.log",
                              extra_model_paths=settings.extra_model_paths)
    print(f"starting ComfyUI from {settings.comfyui_dir} (log: {server.log_path}) ...", flush=True)
    seconds = await asyncio.to_thread(server.start)
    print(f"ComfyUI ready at {server.url} in {seconds:.1f} s", flush=True)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def print_summary(shots: list[dict]) -> None:
    """The table a render ends with, from ShotQueue.batch_shots rows (or the service's JSON of them)."""
    for shot in shots:
        if shot.get("error"):
            print(f"  {shot['shot_key']}: {shot['error'].strip().splitlines()[0]}")
    print_table(("shot", "status", "attempts", "score", "output"),
                [[shot["shot_key"], shot["status"], str(shot["attempts"]),
                  "-" if shot["score"] is None else f"{shot['score']:.3f}", shot["output"] or "-"] for shot in shots])


def print_table(headers, table: list[list[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in table)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


async def render_command(args) -> int:
    shots = load_shot_list(args.file)  # bad input fails here, before any server starts
    for workflow in {shot.workflow for shot in shots}:
        load_preset(workflow)
    settings = load_settings()
    started = time.monotonic()
    async with open_database(settings) as pool, open_comfy(settings, args.comfy) as (url, _server):
        queue = ShotQueue(pool)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backend = ComfyBackend(url, session)
            await backend.start()  # an unreachable server fails here, before anything is queued
            batch_id, _ = await queue.submit_batch(shots, str(Path(args.file).resolve()),
                                                   max_attempts=args.max_attempts)
            print(f"batch {batch_id}: {len(shots)} shots queued (at most {args.max_attempts} attempts each)")
            with tqdm(total=len(shots), unit="shot", desc="rendering", file=sys.stderr) as progress:
                async def finished() -> bool:
                    batch = await queue.batch(batch_id)
                    progress.n = batch["done"]
                    progress.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(batch["counts"].items())))
                    progress.refresh()
                    return batch["finished"]
                try:
                    await Dispatcher(pool, [backend]).run(until=finished)
                finally:
                    await backend.close()
            rows = await queue.batch_shots(batch_id)
    print(f"\nbatch {batch_id}: {len(shots)} shots in {time.monotonic() - started:.1f} s")
    print_summary(rows)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


async def render_on_server(args, shots_text: str) -> int:
    """Submit the shot list to a running `shotline serve` and follow the batch to its end."""
    token = args.token or os.environ.get("SHOTLINE_TOKEN")
    if not token:
        raise ServiceError("--server needs the service's token: --token or SHOTLINE_TOKEN")
    base = args.server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/api/v1/batches", data=shots_text.encode(), headers=headers) as response:
            body = await response.json()
            if response.status != 201:
                raise ServiceError(f"{response.status}: {body.get('error')}"
                                   + (f" (field {body['field']})" if body.get("field") else ""))
        batch_id = body["batch_id"]
        print(f"batch {batch_id}: {len(body['shot_ids'])} shots queued on {base}")
        with tqdm(total=len(body["shot_ids"]), unit="shot", desc="rendering", file=sys.stderr) as progress:
            while True:
                async with session.get(f"{base}/api/v1/batches/{batch_id}") as response:
                    batch = await response.json()
                progress.n = batch["done"]
                progress.set_postfix_str(", ".join(f"{k} {v}" for k, v in sorted(batch["counts"].items())))
                progress.refresh()
                if batch["finished"]:
                    break
                await asyncio.sleep(0.5)
        async with session.get(f"{base}/api/v1/batches/{batch_id}/shots") as response:
            rows = (await response.json())["shots"]
    print_summary(rows)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


async def serve_command(args) -> int:
    """The service and a dispatcher in one process, until SIGINT/SIGTERM."""
    settings = load_settings()
    token, created = load_or_create_token(settings.state_dir)
    if created:
        print(f"new API token (kept in {settings.state_dir / 'service_token'}): {token}", flush=True)
    async with AsyncExitStack() as stack:
        urls = list(args.comfy or [])
        # a connection per dispatcher slot, plus the lease keeper, the assembly worker and the API's requests
        pool = await stack.enter_async_context(open_database(settings, max(1, len(urls)) * args.slots + 5))
        if not urls:
            urls.append((await stack.enter_async_context(start_local_comfy(settings))).url)
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)))
        backends = [ComfyBackend(url, session) for url in urls]
        dispatcher = Dispatcher(pool, backends, slots_per_backend=args.slots, lease_seconds=args.lease)
        app = create_app(pool, settings, token, backends=backends)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"Shotline service on http://{args.host}:{args.port} (OpenAPI: /openapi.json), "
              f"{len(backends)} ComfyUI backend(s): {', '.join(urls)}", flush=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, dispatcher.stop)
        await dispatcher.run()  # until a signal; the shots it holds then go back to the queue
        for backend in backends:
            await backend.close()
    return 0


async def status_command(args) -> int:
    settings = load_settings()
    async with open_database(settings) as pool:
        queue = ShotQueue(pool)
        if args.batch:
            batch = await queue.batch(args.batch)
            if batch is None:
                print(f"error: no batch {args.batch}", file=sys.stderr)
                return 1
            print(f"batch {batch['id']} ({batch['source']}): {batch['done']}/{batch['total']} done, "
                  + ", ".join(f"{k} {v}" for k, v in sorted(batch["counts"].items())))
            print_summary(await queue.batch_shots(args.batch))
            return 0
        async with pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT b.id, b.source, b.created_at, count(s.id), "
                "  count(s.id) FILTER (WHERE s.status IN ('queued', 'running')) "
                "FROM batches b LEFT JOIN shots s ON s.batch_id = b.id GROUP BY b.id "
                "ORDER BY b.created_at DESC LIMIT 20")).fetchall()
        for batch_id, source, created, total, open_shots in rows:
            print(f"{batch_id}  {created:%Y-%m-%d %H:%M}  {total - open_shots}/{total} done  {source}")
        if not rows:
            print("no batches yet")
    return 0


ASSEMBLY_FLAGS = {"crossfade_s": "--crossfade", "fps": "--fps", "size": "--size", "music": "--music",
                  "episode": "--episode", "episode.season": "--season", "episode.number": "--episode",
                  "episode.title": "--title"}


def assembly_flag(field: str | None) -> str | None:
    """The `shotline assemble` flag of a request field (scenes[1] -> --scene)."""
    if field and field.startswith("scenes"):
        return "--scene"
    return ASSEMBLY_FLAGS.get(field)


def assembly_request_data(args) -> dict:
    """The API's JSON form of `shotline assemble`'s flags, so both are checked by one parser."""
    data = {"crossfade_s": args.crossfade}
    for name in ("fps", "size"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    if args.scene:
        data["scenes"] = args.scene
    if args.music is not None:
        data["music"] = str(args.music)
    if args.episode is not None:
        data["episode"] = {"season": 1 if args.season is None else args.season, "number": args.episode}
        if args.title is not None:
            data["episode"]["title"] = args.title
    elif args.title is not None or args.season is not None:
        raise AssemblyError("--season and --title describe an episode: give its number with --episode N", "episode")
    return data


def print_assemblies(records: list[dict]) -> None:
    print_table(("assembly", "duration", "frames", "size", "path"),
                [[record["scene"] if record["kind"] == "scene" else f"S{record['season']:02d}E{record['episode']:02d}",
                  f"{record['duration_s']:.2f} s", str(record["frame_count"]),
                  f"{record['width']}x{record['height']}@{record['fps']:g}", record["path"]] for record in records])


async def assemble_command(args) -> int:
    """Cut a batch's approved shots into scene MP4s, and those into an episode when --episode is given."""
    try:
        request = parse_assembly_request(assembly_request_data(args))
    except AssemblyError as error:  # name the flag, not the API field
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
            # the same job as the API's, recorded as claimed by this process and run here; one attempt: a
            # failure is reported now, not retried later by a service
            worker = f"{socket.gethostname()}:{os.getpid()}:cli:{uuid.uuid4().hex[:6]}"
            job = await AssemblyJobs(pool).create(
                args.batch, request, scenes_dir=(args.output or settings.assemblies_dir) / str(args.batch),
                library_dir=args.library or settings.library_dir, claimed_by=worker, max_attempts=1)
            records = await run_assembly_job(pool, session, job, worker, progress=progress)
    except AssemblyError as error:  # a flag the shots cannot take (2), or a file that cannot be read (1)
        flag = assembly_flag(error.field)
        print(f"error: {flag + ': ' if flag else ''}{error.message}", file=sys.stderr)
        return 2 if flag else 1
    except (BatchNotFound, AssemblyConflict, SourceUnavailable, JobLost) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    print_assemblies(records)
    return 0


def character_library(settings: Settings, library: Path | None) -> Path:
    if library:
        return library
    if not settings.comfyui_dir:
        raise CharacterSheetError("library", "no ComfyUI configured: pass --library PATH or run install.py")
    return settings.comfyui_dir / "models" / "shotline_characters"


async def character_put_command(args) -> int:
    """Create or update a character in the library from a sheet and reference images, and record it."""
    settings = load_settings()
    try:
        data = yaml.safe_load(args.sheet.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CharacterSheetError("sheet", f"cannot read {args.sheet}: {error}") from None
    sheet = parse_sheet(data)
    references = {}
    for path in args.reference:
        try:
            references[path.name] = path.read_bytes()
        except OSError as error:
            raise CharacterSheetError(f"references.{path.name}", f"cannot read {path}: {error.strerror}") from None
    character = write_character(character_library(settings, args.library), args.folder, sheet, references)
    async with open_database(settings) as pool:
        character_id = await ShotStore(pool).put_character(character)
    print(f"character {character.name!r} ({character_id}) in {character.folder}: "
          f"{len(character.references)} reference image(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shotline", description="Render shot lists through ComfyUI.")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render a shot list (YAML or JSON) and record it in PostgreSQL")
    render.add_argument("file", type=Path)
    render.add_argument("--comfy", metavar="URL", help="a running ComfyUI server (default: start the local one)")
    render.add_argument("--server", metavar="URL", help="submit to a running `shotline serve` instead")
    render.add_argument("--token", help="the service's API token (default: SHOTLINE_TOKEN)")
    render.add_argument("--max-attempts", type=int, default=3, choices=range(1, 21), metavar="N",
                        help="attempts per shot, corrections included (1-20, default 3)")
    serve = commands.add_parser("serve", help="the HTTP service plus a dispatcher over ComfyUI backends")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8288)
    serve.add_argument("--comfy", metavar="URL", action="append",
                       help="a ComfyUI server to render on (repeat for several; default: start the local one)")
    serve.add_argument("--slots", type=int, default=2, choices=range(1, 9), metavar="N",
                       help="prompts kept queued per backend so it never idles (default 2)")
    serve.add_argument("--lease", type=float, default=30.0, metavar="SECONDS",
                       help="how long a claimed shot stays this process's without renewal (default 30)")
    status = commands.add_parser("status", help="recent batches, or one batch's shots")
    status.add_argument("batch", nargs="?", type=uuid.UUID)
    assemble = commands.add_parser("assemble", help="cut a batch's approved shots into scene MP4s (and an episode)")
    assemble.add_argument("batch", type=uuid.UUID)
    assemble.add_argument("--scene", action="append", metavar="KEY",
                          help="a scene to assemble (repeat for several; default: every scene)")
    assemble.add_argument("--music", type=Path, metavar="FILE", help="music ducked under the shots' own audio")
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
    character = commands.add_parser("character", help="manage the character library")
    character_commands = character.add_subparsers(dest="character_command", required=True)
    put = character_commands.add_parser("put", help="create or update a character: sheet + reference images")
    put.add_argument("folder", help="folder name in the library, e.g. aiko")
    put.add_argument("--sheet", type=Path, required=True, help="character.yaml to use")
    put.add_argument("--reference", type=Path, action="append", default=[], help="a reference image (repeat)")
    put.add_argument("--library", type=Path, help="library folder (default: ComfyUI's models/shotline_characters)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "character":
            return asyncio.run(character_put_command(args))
        if args.command == "serve":
            return asyncio.run(serve_command(args))
        if args.command == "status":
            return asyncio.run(status_command(args))
        if args.command == "assemble":
            return asyncio.run(assemble_command(args))
        if args.server:
            load_shot_list(args.file)  # the same checks before anything is sent
            return asyncio.run(render_on_server(args, args.file.read_text()))
        return asyncio.run(render_command(args))
    except ShotListError as error:
        print(f"error: {args.file}: {error}", file=sys.stderr)
        return 2
    except CharacterSheetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (PresetError, RenderError, ComfyStartError, ComfyUnavailable, EmbeddedPostgresError, ServiceError,
            aiohttp.ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
