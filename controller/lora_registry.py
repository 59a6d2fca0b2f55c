"""The LoRA registry: versions of a character's LoRA, validated against the active one before they replace it.

    shotline character lora add NAME FILE [--validate N] [--strength S] [--comfy URL]
    shotline character lora list NAME
    GET /api/v1/characters/{folder}/loras

`add` checks FILE (a readable safetensors header, at most MAX_LORA_BYTES), copies it to
models/loras/shotline/<character>/v<N>.safetensors and records it (store/loras.py, with its sha256).

- Without `--validate`: a version registered while none is active becomes active at once; otherwise it stays a
  candidate (`lora add` says so), as nothing measured it.
- With `--validate N`: N shots of the character (VALIDATION_PROMPT after its design prompt, seeds 1..N) are
  rendered twice in one batch through the real dispatcher, once with the candidate and once with the active
  version (or with no registry LoRA when none is active), chosen per shot by the Character LoRAs node's
  `lora_override` (a `set` entry). The learner is off and every field fixed, so only the LoRA differs. The
  character's identity score is read per shot from character_scores; a shot where the character was not found
  (NULL, or no verdict) counts 0. The candidate becomes active only if its mean is strictly higher; both
  means, the per-seed scores and the decision with its reason are kept in `validation`.

Activating writes the version into the character's sheet `loras` (its previous registry entry replaced, the
user's own LoRAs kept) and records the sheet (CharacterStore.put), so presets, the editor and the controller
apply it. Earlier versions stay listed, retired or rejected.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import Field
from shotline.core.characters import SHEET_FILE, CharacterSheet, LoraRef, load_character, write_character

from shotline_controller.contract import Answer
from shotline_controller.store.loras import LoraStatus, LoraStore

REGISTRY_FOLDER = "shotline"       # under models/loras; the Character LoRAs node reads the same name
MAX_LORA_BYTES = 4 * 1024 ** 3     # larger than any SD/SDXL LoRA; a bigger file is a checkpoint by mistake
MAX_HEADER_BYTES = 100 * 1024 ** 2  # safetensors' own limit on the JSON header
VALIDATION_PROMPT = "portrait, face in focus, looking at the viewer"
OVERRIDE_INPUT = "Character LoRAs.lora_override"
NOT_FOUND_SCORE = 0.0              # a validation shot where the character was not found scores this


class LoraError(ValueError):
    """A LoRA file or registry request that cannot be used; `field` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


# --- pure parts ---------------------------------------------------------------------------------------------------

def version_file(character: str, version: int) -> str:
    """The version's file name under models/loras."""
    return f"{REGISTRY_FOLDER}/{character}/v{version}.safetensors"


def registry_prefix(character: str) -> str:
    return f"{REGISTRY_FOLDER}/{character}/"


def lora_override(file_name: str | None, strength: float) -> str:
    """The Character LoRAs node's `lora_override` for one render ("" = the sheet as it is)."""
    return f"{file_name}:{strength:g}" if file_name else ""


def sheet_with_active(sheet: CharacterSheet, character: str, file_name: str, strength: float) -> CharacterSheet:
    """The sheet with `file_name` as its registry LoRA: the previous registry entry replaced, the user's own
    LoRAs kept in their order."""
    kept = tuple(lora for lora in sheet.loras if not lora.name.startswith(registry_prefix(character)))
    return sheet.model_copy(update={"loras": (*kept, LoraRef(name=file_name, strength=strength))})


def decide(seeds: list[int], candidate: list[float | None], active: list[float | None],
           against: str) -> dict:
    """The validation record: per-seed scores (None, not found, counts NOT_FOUND_SCORE), the means, and the
    decision: activate only when the candidate's mean is strictly higher."""
    def mean(scores):
        return sum(NOT_FOUND_SCORE if s is None else s for s in scores) / len(scores)
    candidate_mean, active_mean = mean(candidate), mean(active)
    better = candidate_mean > active_mean
    reason = (f"candidate mean identity {candidate_mean:.4f} {'>' if better else '<=' } {against} "
              f"{active_mean:.4f} over seeds {', '.join(map(str, seeds))}"
              f" (a shot where the character was not found counts {NOT_FOUND_SCORE:g})")
    return {"seeds": seeds, "against": against,
            "candidate_scores": candidate, "active_scores": active,
            "candidate_mean": candidate_mean, "active_mean": active_mean,
            "decision": "activated" if better else "kept the active",
            "reason": ("better: " if better else "not better: ") + reason}


def read_lora_file(path: Path) -> tuple[bytes, str]:
    """The file's bytes and sha256, after checking it is a safetensors file with tensors; LoraError naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_LORA_BYTES:
            raise LoraError("file", f"{path} is {size / 1024 ** 3:.1f} GiB, over the {MAX_LORA_BYTES // 1024 ** 3} "
                                    "GiB a LoRA can be (is it a checkpoint?)")
        data = path.read_bytes()
    except OSError as error:
        raise LoraError("file", f"cannot read {path}: {error.strerror}") from None
    if len(data) < 8:
        raise LoraError("file", f"{path} is not a safetensors file: {len(data)} bytes")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise LoraError("file", f"{path} is not a safetensors file: its header claims {header_size} bytes")
    try:
        header = json.loads(data[8:8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraError("file", f"{path} is not a safetensors file: its header is not JSON ({error})") from None
    tensors = [key for key in header if key != "__metadata__"] if isinstance(header, dict) else []
    if not tensors:
        raise LoraError("file", f"{path} holds no tensors")
    return data, hashlib.sha256(data).hexdigest()


def loras_folder(settings, given: Path | None = None) -> Path:
    """Where ComfyUI reads LoRAs: `given`, else the first `loras` folder of the extra_model_paths.yaml the
    controller starts ComfyUI with, else the ComfyUI's models/loras."""
    if given:
        return given
    if settings.extra_model_paths and settings.extra_model_paths.is_file():
        config = yaml.safe_load(settings.extra_model_paths.read_text()) or {}
        for entry in config.values():
            if isinstance(entry, dict) and entry.get("loras"):
                base = Path(str(entry.get("base_path", ""))).expanduser()
                base = base if base.is_absolute() else settings.extra_model_paths.parent / base  # as ComfyUI reads it
                first = str(entry["loras"]).split("\n")[0].strip()
                return base / first
    if settings.comfyui_dir:
        return settings.comfyui_dir / "models" / "loras"
    raise LoraError("loras", "no LoRA folder: run install.py, or pass --loras-dir")


# --- registering and validating -------------------------------------------------------------------------------------

async def render_validation(pool, backend, library: Path, character, seeds: list[int], overrides: dict[str, str],
                            size: str, steps: int, progress=None) -> dict[str, list[float | None]]:
    """For each label -> lora_override: the character's identity score on each seed, rendered in one batch by the
    dispatcher on `backend` (started). Every field is fixed and the learner off, so only the LoRA differs."""
    from shotline_controller.contract import parse_shot_list, state_changes
    from shotline_controller.shot_list import (
        check_presets,
        choose_engines,
        queued_shots,
    )
    from shotline_controller.store.shots import ShotStore
    from shotline_controller.workers.runner import Workers

    fixed = {"workflow": "shot_character", "characters": [character.folder.name], "prompt": VALIDATION_PROMPT,
             "size": size, "steps": steps, "cfg": 7.0, "sampler": "euler", "lora_scale": 1.0, "learning": "off"}
    shot_list = parse_shot_list({"shots": [
        {**fixed, "id": f"{label}-{seed}", "seed": seed, **({"set": {OVERRIDE_INPUT: override}} if override else {})}
        for label, override in overrides.items() for seed in seeds]})
    shot_list, rules = choose_engines(shot_list, library)
    await asyncio.to_thread(check_presets, shot_list, await backend.object_info())

    async def no_media(name: str, field: str) -> str:
        raise LoraError(field, "validation shots take no image")

    store = ShotStore(pool)
    shots = await queued_shots(shot_list, no_media, rules)
    batch_id, _ = await store.submit_batch(shots, f"lora registry: {character.folder.name}", max_attempts=1,
                                           states=state_changes(shot_list))
    workers = Workers(pool, [backend], service=False, character_library=library)

    async def finished() -> bool:
        batch = await store.batch(batch_id)
        if progress is not None:
            progress.n = batch["done"]
            progress.refresh()
        return batch["settled"]
    await workers.run(stop=asyncio.Event(), until=finished)
    failed = [row["shot_key"] for row in await store.batch_shots(batch_id) if row["status"] == "failed"]
    if failed:
        raise LoraError("validate", f"validation shots failed in batch {batch_id}: {', '.join(failed)} "
                                    "(see shotline status)")
    scores = await LoraStore(pool).shot_scores(batch_id, (character.name, character.folder.name))
    return {label: [scores.get(f"{label}-{seed}") for seed in seeds] for label in overrides}


async def activate(pool, library: Path, character_folder: str, row: dict, validation: dict | None) -> dict:
    """Make `row` the character's active version: the sheet names it, the sheet is recorded, the store says so."""
    from shotline_controller.store.characters import CharacterStore
    character = await asyncio.to_thread(load_character, library / character_folder)
    sheet = sheet_with_active(character.sheet, character_folder, row["file_name"], row["strength"])
    updated = await asyncio.to_thread(write_character, library, character_folder, sheet, {})
    decided = await LoraStore(pool).decide(row["id"], True, validation)
    await CharacterStore(pool).put(updated)
    return decided


async def register_lora(pool, library: Path, loras_dir: Path, folder: str, file: Path, strength: float = 1.0,
                        validate: int = 0, backend=None, size: str = "512x512", steps: int = 20,
                        progress_factory=None) -> dict:
    """Register FILE as the character's next version and decide it (see the module's docstring); the row."""
    if not (library / folder / SHEET_FILE).is_file():
        raise LoraError("name", f"no character {folder!r}: {library / folder / SHEET_FILE} does not exist")
    character = await asyncio.to_thread(load_character, library / folder)
    data, sha256 = await asyncio.to_thread(read_lora_file, file)
    store = LoraStore(pool)

    async def place(version: int) -> str:
        name = version_file(folder, version)
        target = loras_dir / name
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(target.write_bytes, data)
        return name
    row = await store.register(folder, sha256, len(data), strength, place)
    active = await store.active(folder)
    if not validate:
        if active is None:
            return await activate(pool, library, folder, row, None)
        return row
    seeds = list(range(1, validate + 1))
    against = f"v{active['version']}" if active else "no registry LoRA"
    overrides = {"candidate": lora_override(row["file_name"], strength),
                 "active": lora_override(active["file_name"], active["strength"]) if active else ""}
    if active is None:  # the sheet may still name a registry file no row makes active: measure (and keep) without
        from shotline_controller.store.characters import CharacterStore
        bare = character.sheet.model_copy(update={"loras": tuple(
            lora for lora in character.sheet.loras if not lora.name.startswith(registry_prefix(folder)))})
        if bare != character.sheet:
            await CharacterStore(pool).put(await asyncio.to_thread(write_character, library, folder, bare, {}))
    progress = progress_factory(2 * len(seeds)) if progress_factory else None
    try:
        scores = await render_validation(pool, backend, library, character, seeds, overrides, size, steps, progress)
    finally:
        if progress is not None:
            progress.close()
    validation = decide(seeds, scores["candidate"], scores["active"], against)
    if validation["decision"] == "activated":
        return await activate(pool, library, folder, row, validation)
    return await store.decide(row["id"], False, validation)


# --- answers (the CLI prints them, the API sends them) --------------------------------------------------------------

class LoraValidation(Answer):
    seeds: list[int]
    against: str = Field(description="the version measured against: vN, or no registry LoRA")
    candidate_scores: list[float | None] = Field(description="the character's identity score per seed with the "
                                                             "candidate (null: not found, counted 0)")
    active_scores: list[float | None]
    candidate_mean: float
    active_mean: float
    decision: str = Field(description="activated, or kept the active")
    reason: str


class LoraVersion(Answer):
    version: int
    file_name: str = Field(description="under models/loras")
    sha256: str
    size_bytes: int
    strength: float
    status: LoraStatus
    validation: LoraValidation | None = None
    created_at: datetime
    decided_at: datetime | None = None


class LoraList(Answer):
    character: str
    active: int | None = Field(None, description="the active version")
    versions: list[LoraVersion]


def lora_list(character: str, rows: list[dict]) -> dict:
    return {"character": character, "versions": [{k: v for k, v in row.items() if k not in ("id", "character_name")}
                                                 for row in rows],
            "active": next((row["version"] for row in rows if row["status"] == LoraStatus.ACTIVE), None)}


async def list_loras(request):
    """GET /api/v1/characters/{folder}/loras."""
    from shotline_controller.api.keys import POOL
    from shotline_controller.api.requests import answer, path_key
    folder = path_key(request, "folder")
    return await answer(LoraList, lora_list(folder, await LoraStore(request.app[POOL]).versions(folder)))


# --- the command line -----------------------------------------------------------------------------------------------

def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_versions(rows: list[dict]) -> None:
    from shotline_controller.cli import print_table
    print_table(["version", "status", "file", "candidate mean", "against", "decision"],
                [[f"v{row['version']}", row["status"], row["file_name"],
                  _score((row["validation"] or {}).get("candidate_mean")),
                  "-" if not row["validation"] else
                  f"{row['validation']['against']} {_score(row['validation']['active_mean'])}",
                  (row["validation"] or {}).get("reason", "activated unvalidated: no version was active"
                                                if row["status"] != LoraStatus.CANDIDATE else "not validated")]
                 for row in rows])


async def lora_add_command(args) -> int:
    """`shotline character lora add NAME FILE [--validate N] ...`."""
    from contextlib import AsyncExitStack

    import aiohttp
    from shotline_controller.cli import (
        UNUSABLE,
        _supervised,
        local_comfy,
        open_database,
    )
    from shotline_controller.comfy.client import ComfyBackend
    from shotline_controller.settings import load_settings
    from tqdm import tqdm

    settings = load_settings()
    if args.validate < 0:
        print("error: --validate: a number of shots, 0 or more", file=sys.stderr)
        return 2
    library = args.library or settings.character_library
    try:
        loras_dir = loras_folder(settings, args.loras_dir)
        async with open_database(settings, max_connections=6) as pool:
            backend = None
            async with AsyncExitStack() as stack:
                if args.validate:
                    url = args.comfy
                    if not url:
                        supervisor = local_comfy(settings)
                        await stack.enter_async_context(_supervised(supervisor))
                        url = supervisor.url
                    session = await stack.enter_async_context(aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)))
                    backend = ComfyBackend(url, session)
                    await backend.start()
                row = await register_lora(
                    pool, library, loras_dir, args.name, args.file, args.strength, args.validate, backend,
                    args.size, args.steps,
                    lambda total: tqdm(total=total, unit="shot", desc="validating", file=sys.stderr))
                rows = await LoraStore(pool).versions(args.name)
    except LoraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except UNUSABLE as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    where = loras_dir / row["file_name"]
    if row["status"] == LoraStatus.ACTIVE and not row["validation"]:
        print(f"v{row['version']} of {args.name} registered at {where} and active (no active version to "
              "validate it against)")
    elif row["status"] == LoraStatus.CANDIDATE:
        print(f"v{row['version']} of {args.name} registered at {where} as a candidate: not validated, so the "
              "active version stays (run with --validate N to compare them)")
    else:
        print(f"v{row['version']} of {args.name} registered at {where}: {row['status']} "
              f"({row['validation']['reason']})")
    print_versions(rows)
    return 0


async def lora_list_command(args) -> int:
    from shotline_controller.cli import UNUSABLE, open_database
    from shotline_controller.settings import load_settings
    try:
        async with open_database(load_settings()) as pool:
            rows = await LoraStore(pool).versions(args.name)
    except UNUSABLE as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not rows:
        print(f"no LoRA registered for {args.name!r}")
        return 0
    print_versions(rows)
    return 0


def add_parser(character_commands) -> None:
    """`character lora add|list` under `shotline character` (cli.py calls this)."""
    lora = character_commands.add_parser("lora", help="the LoRA registry: a character's LoRA versions")
    commands = lora.add_subparsers(dest="lora_command", required=True)
    add = commands.add_parser("add", help="register a LoRA version; with --validate N, activate it only if it "
                                          "scores better than the active version on N shots")
    add.add_argument("name", help="the character's folder in the library")
    add.add_argument("file", type=Path, help="the LoRA (.safetensors)")
    add.add_argument("--validate", type=int, default=0, metavar="N", help="render N shots with each version")
    add.add_argument("--strength", type=float, default=1.0, help="the strength presets apply it at (default 1)")
    add.add_argument("--comfy", metavar="URL", help="a running ComfyUI server (default: start the local one)")
    add.add_argument("--size", default="512x512", help="validation shots' size (default 512x512)")
    add.add_argument("--steps", type=int, default=20, help="validation shots' steps (default 20)")
    add.add_argument("--library", type=Path, help="library folder (default: SHOTLINE_CHARACTER_LIBRARY, else "
                                                  "ComfyUI's models/shotline_characters)")
    add.add_argument("--loras-dir", type=Path, help="ComfyUI's LoRA folder (default: the loras folder of the "
                                                    "extra_model_paths.yaml, else ComfyUI's models/loras)")
    add.set_defaults(run=lora_add_command)
    listing = commands.add_parser("list", help="a character's LoRA versions: status, scores, decision")
    listing.add_argument("name", help="the character's folder in the library")
    listing.set_defaults(run=lora_list_command)
