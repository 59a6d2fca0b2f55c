"""Shot lists: from a file (the CLI) or a request body (the API) to the shots that are queued.

    defaults:            # optional, merged into every shot
      workflow: shot_txt2img
      size: 512x512
    shots:
      - id: s01-rooftop
        prompt: "a girl with silver hair on a rooftop at dusk"
        negative: "blurry"          # optional
        seed: 42                    # optional: derived from the id when absent, so re-renders are stable
        size: 768x512               # WxH, [W, H] or {width: W, height: H}
        steps: 20                   # optional, like cfg and checkpoint
        image: refs/pose.png        # optional: in a file, a path inside the list's own folder; through the API,
                                    #   sha256:<hex> of an upload or the name of a file part sent with the list
        scene: sc01                 # optional: the scene the shot belongs to in the cut (default "main")
        duration: 2.5               # optional: seconds a still image shot is held in the cut (default 2.0)
        frames: 8                   # optional, video presets: frames generated, and their rate before
        fps: 12                     #   interpolation (shot_video makes x2 as many at twice the rate)
        dialogue: "Where is she?"   # optional, dialogue presets: the line the shot speaks
        characters: [aiko, kairo]   # optional, character presets (shot_character): 1-4 library folders, in
                                    #   the order the prompt introduces them
        identity_threshold: 0.7     # optional: the identity score each character needs in this shot
        set: {"KSampler.sampler_name": "euler", "4.ckpt_name": "sd15.safetensors"}
                                    # optional: inputs of the graph set after the shot's fields,
                                    #   "<node title or id>.<input>": value (checked before queueing)

The fields are defined once, in contract.py. Here: reading a file (size-capped, parsed like an API body), the
media a shot names (only from allowed places: the list's folder for the CLI, uploads for the API), and the
presets the shots use, all checked before anything is queued.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from shotline.core.characters import SHEET_FILE, CharacterSheetError, find_characters, load_character

from shotline_controller.comfy.presets import (
    FieldError,
    PresetError,
    SetError,
    check_character_slots,
    fill_preset,
    load_preset,
    shot_targets,
    state_slot,
)
from shotline_controller.contract import DEFAULT_WORKFLOW, InputError, Shot, ShotList, is_media_ref, parse_shot_list
from shotline_controller.engines import choose_engine
from shotline_controller.media.sniff import sniff
from shotline_controller.parsing import parse_text

MAX_FILE_BYTES = 20 * 1024 * 1024
LONG_LIST = 200
# name a shot gives (and its field path) -> the media reference it stands for
MediaResolver = Callable[[str, str], Awaitable[str]]


def read_shot_list(path: Path) -> ShotList:
    """A shot-list file (JSON by suffix, else YAML), validated; InputError names the field (or `file`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError("file", f"{path.name} is over {MAX_FILE_BYTES // (1024 * 1024)} MB")
        text = path.read_bytes()
    except OSError as error:
        raise InputError("file", f"cannot read {path}: {error.strerror}") from None
    return parse_shot_list(parse_text(text, as_yaml=path.suffix.lower() != ".json", field="file"))


def check_presets(shot_list: ShotList, object_info: dict | None = None) -> None:
    """Every preset the shots name exists and has a node for every field they set and a slot for each character
    they name (PresetError's text names no server path). An API-format preset (or, with a server's
    `object_info`, an editor-format one) is filled once per distinct set of fields and `set` entries, as a dry
    run: a `set` entry is checked against `object_info` when given (type, range, options), else against the
    graph (its node and input exist); an editor-format one is otherwise checked when it is converted."""
    presets: dict[str, dict] = {}
    tried: set[tuple] = set()
    with_state: set[str] = set()  # characters the list has given a state so far
    for index, shot in enumerate(shot_list.shots):
        workflow = shot.workflow or DEFAULT_WORKFLOW
        with_state |= set(shot.state or ())
        try:
            if workflow not in presets:
                presets[workflow] = load_preset(workflow, object_info)
            graph = presets[workflow]
            if shot.characters:
                check_character_slots(workflow, graph, len(shot.characters))
            titles = {node.get("_meta", {}).get("title") for node in graph.values()}
            takes_image = "Input Image" in titles or (all("class_type" in node for node in graph.values())
                                                      and "Input Image" in shot_targets(graph)[0])
            if shot.continuity == "previous" and not takes_image:
                raise InputError(f"shots[{index}].continuity",
                                 f"preset {workflow!r} has no node titled 'Input Image' to start from the last "
                                 "frame of the shot before: use an image-to-image or image-to-video preset")
            for number, name in enumerate(shot.characters or (), start=1):
                if name in with_state and state_slot(number) not in titles:
                    raise InputError(f"shots[{index}].workflow",
                                     f"preset {workflow!r} has no node titled {state_slot(number)!r} for "
                                     f"{name}'s state: use a preset with Character State nodes (shot_character)")
            # the image is left out: where it may come from is checked with the media (shots[i].image)
            shape = (workflow, tuple(name for name, value in shot if value is not None and name != "image"),
                     len(shot.characters or ()), tuple(sorted((shot.set or {}).items(), key=repr)))
            if shape not in tried and all("class_type" in node for node in graph.values()):
                fill_preset(graph, Shot.from_input(shot.model_copy(update={"image": None})), checkpoint="checkpoint",
                            filename_prefix="check", object_info=object_info)
            tried.add(shape)
        except SetError as error:
            raise InputError(f"shots[{index}].set.{error.key}", str(error)) from None
        except FieldError as error:
            raise InputError(f"shots[{index}].{error.field}", str(error)) from None
        except PresetError as error:
            raise InputError(f"shots[{index}].workflow", str(error)) from None


def field_of(index: int, number: int) -> str:
    return f"shots[{index}].characters[{number}]"


def check_characters(shot_list: ShotList, library: Path | None) -> None:
    """Every character the shots name is a folder of the character library with a valid sheet and at least one
    reference image (the library this controller reads: SHOTLINE_CHARACTER_LIBRARY, else its ComfyUI's)."""
    known, loaded = None, {}
    for index, shot in enumerate(shot_list.shots):
        for number, name in enumerate(shot.characters or ()):
            if known is None:
                known = find_characters([library]) if library is not None else {}
            if name not in known:
                field = field_of(index, number)
                if library is None:
                    raise InputError(field, "this controller has no character library: set "
                                            "SHOTLINE_CHARACTER_LIBRARY")
                some = sorted(known)[:20]
                raise InputError(field, f"no character {name!r} in the library (it has: "
                                        f"{', '.join(some) + (' ...' if len(known) > 20 else '') or 'none'}); "
                                        "add one with `shotline character put` or PUT /api/v1/characters/{folder}")
            if name not in loaded:
                try:
                    loaded[name] = load_character(known[name])
                except CharacterSheetError as error:  # its own field names only: a sheet-level error holds a path
                    problem = f"{error.field}: {error.message}" if error.field != "sheet" else "not valid YAML"
                    raise InputError(field_of(index, number), f"character {name!r}: {SHEET_FILE} {problem}") from None
                except (OSError, ValueError):
                    raise InputError(field_of(index, number), f"character {name!r}: its {SHEET_FILE} cannot be "
                                                              "read") from None
            if not loaded[name].references:
                raise InputError(field_of(index, number),
                                 f"character {name!r} has no reference images: its identity cannot be checked")


def choose_engines(shot_list: ShotList, library: Path | None) -> tuple[ShotList, list[str | None]]:
    """The list with each shot's workflow chosen by its engine rules (controller/engines.py), and the rule that
    fired for each shot (None: no rule, its own or the defaults' workflow)."""
    if not any(shot.engines for shot in shot_list.shots):
        return shot_list, [None] * len(shot_list.shots)
    known = find_characters([library]) if library is not None else {}
    loras: dict[str, bool] = {}

    def has_loras(name: str) -> bool:
        if name not in loras:
            try:
                loras[name] = bool(load_character(known[name]).sheet.loras) if name in known else False
            except (CharacterSheetError, OSError, ValueError):
                loras[name] = False  # check_characters names what is wrong with the sheet
        return loras[name]

    shots, rules = [], []
    for shot in shot_list.shots:
        chosen = choose_engine(shot.engines.model_dump(exclude_none=True) if shot.engines else None,
                               list(shot.characters or ()), bool(shot.image) or shot.continuity == "previous",
                               has_loras)
        shots.append(shot.model_copy(update={"workflow": chosen[0]}) if chosen else shot)
        rules.append(chosen[1] if chosen else None)
    return shot_list.model_copy(update={"shots": shots}), rules


async def queued_shots(shot_list: ShotList, media: MediaResolver, rules: list[str | None] | None = None) -> list[Shot]:
    """The shots to queue: each shot's media name resolved to a reference by `media`, defaults applied, the
    engine rule that chose its workflow kept (for a long list in a worker thread: 10,000 shots take a few tenths
    of a second)."""
    images = {index: await media(shot.image, f"shots[{index}].image")
              for index, shot in enumerate(shot_list.shots) if shot.image}

    def build() -> list[Shot]:
        return [Shot.from_input(shot, image=images.get(index), engine_rule=rules[index] if rules else None)
                for index, shot in enumerate(shot_list.shots)]
    return await asyncio.to_thread(build) if len(shot_list.shots) > LONG_LIST else build()


def read_media_file(base_dir: Path, name: str, field: str, kind: str = "image") -> bytes:
    """The bytes of a file a shot-list file names, which must lie inside the list's folder (symlinks resolved)
    and be `kind` (image or audio) by its content."""
    base = Path(base_dir).resolve()
    if is_media_ref(name):
        raise InputError(field, "a shot-list file names its files by path, relative to the list's folder")
    path = (base / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(base):
        raise InputError(field, f"must be a file inside the shot list's folder, got {name!r}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(field, f"cannot read {name}: {error.strerror}") from None
    found = sniff(data)
    if found is None or found.kind != kind:
        raise InputError(field, f"{name} is not an {kind} file Shotline reads (by its content)")
    return data


def media_from_folder(base_dir: Path, store) -> MediaResolver:
    """The CLI's resolver: files inside the list's folder, stored as uploads (store: store.uploads.UploadStore),
    so any controller that claims the shot can run it."""
    async def resolve(name: str, field: str) -> str:
        data = await asyncio.to_thread(read_media_file, base_dir, name, field)
        return (await store.put(data, sniff(data)))["ref"]
    return resolve
