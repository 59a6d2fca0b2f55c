"""The `shotline` command."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import yaml
from psycopg_pool import AsyncConnectionPool
from shotline.core.characters import CharacterSheetError, parse_sheet, write_character
from tqdm import tqdm

from .comfy_client import ComfyBackend, ComfyUnavailable
from .comfy_server import ComfyStartError, LocalComfyServer
from .embedded_postgres_server import EmbeddedPostgres, EmbeddedPostgresError
from .presets import PresetError
from .render import RenderError, ShotOutcome, render_shots
from .settings import Settings, load_settings
from .shot_list import ShotListError, load_shot_list
from .shot_store import ShotStore, apply_migrations

log = logging.getLogger("shotline")


@asynccontextmanager
async def open_database(settings: Settings):
    """A pool on DATABASE_URL, or on the embedded server (started if needed, stopped again if this started it)."""
    server = None
    url = settings.database_url
    if not url:
        server = EmbeddedPostgres(settings.postgres_data_dir)
        started_here = server.start()
        url = server.url
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False)
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
        yield server.url, server
    finally:
        await asyncio.to_thread(server.stop)


def print_summary(rows: list[dict]) -> None:
    headers = ("shot", "status", "attempts", "score", "output")
    table = [[str(row[h]) if row[h] is not None else "-" for h in headers] for row in rows]
    for row, source in zip(table, rows):
        row[3] = f"{source['score']:.3f}" if source["score"] is not None else "-"
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


async def render_command(args) -> int:
    shots = load_shot_list(args.file)  # bad input fails here, before any server starts
    settings = load_settings()
    started = time.monotonic()
    async with open_database(settings) as pool, open_comfy(settings, args.comfy) as (url, _server):
        store = ShotStore(pool)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = ComfyBackend(url, session)
            await client.start()
            with tqdm(total=len(shots), unit="shot", desc="rendering", file=sys.stderr) as progress:
                def on_shot(outcome: ShotOutcome) -> None:
                    progress.set_postfix_str(f"{outcome.shot.id}: {outcome.status}")
                    progress.update(1)
                    for reason in outcome.reasons:
                        progress.write(f"  {outcome.shot.id}: {reason}")
                try:
                    batch_id = await render_shots(shots, str(Path(args.file).resolve()), store, client, on_shot)
                finally:
                    await client.close()
            rows = await store.batch_summary(batch_id)
    print(f"\nbatch {batch_id}: {len(shots)} shots in {time.monotonic() - started:.1f} s")
    print_summary(rows)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


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
        return asyncio.run(render_command(args))
    except ShotListError as error:
        print(f"error: {args.file}: {error}", file=sys.stderr)
        return 2
    except CharacterSheetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (PresetError, RenderError, ComfyStartError, ComfyUnavailable, EmbeddedPostgresError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
