"""Preset workflows and the convention for which of their inputs a shot fills.

A preset is a ComfyUI graph saved twice in workflows/: `NAME.json` in editor format (what users open and tune)
and `api/NAME.json` in API format (what the controller queues). Folders in SHOTLINE_PRESETS are searched first. A shot fills inputs of nodes found by title:

    node title        input(s)                 shot field
    Checkpoint        ckpt_name                checkpoint
    Prompt            text                     prompt
    Negative Prompt   text                     negative
    Sampler           seed, steps, cfg         seed, steps, cfg
    Size              width, height            size
                      batch_size               frames
    Interpolate       source_fps               fps
    Dialogue          text                     dialogue
    Save              filename_prefix          (set by the controller: shotline/<batch>/<shot>; every node so titled)
    Input Image       image                    image (uploaded to the server that runs the shot)
    Character 1..4    character                characters[0..3] (Load Character nodes)
    Character Prompt  text, negative,          prompt, negative,
                      character_weight           character_weight
    Character LoRAs   strength_scale           lora_scale
    Face Refine       seed, steps, cfg,        seed, steps, cfg,
                      max_cycles,                refine_cycles,
                      denoise, target,           refine_denoise, identity_threshold,
                      guide_size, negative       refine_size, negative
    Face Repair       face_prompt + the above  prompt + the above (a preset that repairs an Input Image)
    Quality           min_side                 min_side (else the shortest side of the shot's size)
    Identity Check    threshold                identity_threshold
    Shot Verdict      identity_pass            identity_threshold

Rename a node in the editor to one of these titles to let shots drive it. A preset lacking a titled node the
shot needs fails before anything is queued, naming the title.

Character slots: a preset holds "Character 1" ... "Character N" (N <= 4); a shot naming fewer characters runs
with the slots it does not use taken out, with every node that only they feed (their Character Gallery), and
every link from them into the nodes that stay dropped: wire them into optional inputs (a prompt's
`character_3`, a check's `gallery_3`), as the presets do; a dropped required input is refused by ComfyUI. A shot
naming no characters keeps the preset's own.
"""
from __future__ import annotations

import copy
import json
import os
import re
from importlib import resources
from pathlib import Path

from shotline_controller.contract import PRESET_PATTERN, Shot

WORKFLOWS_DIR = Path(str(resources.files("shotline_controller.presets")))  # workflows/, shipped as package data


def preset_dirs() -> list[Path]:
    """Folders searched for presets, first match wins: SHOTLINE_PRESETS (os.pathsep-separated), then the built-ins."""
    extra = [Path(p) for p in os.environ.get("SHOTLINE_PRESETS", "").split(os.pathsep) if p]
    return extra + [WORKFLOWS_DIR]

# title -> {input name: shot field}; a None shot field is filled by the controller.
SHOT_INPUTS: dict[str, dict[str, str | None]] = {
    "Checkpoint": {"ckpt_name": "checkpoint"},
    "Prompt": {"text": "prompt"},
    "Negative Prompt": {"text": "negative"},
    "Sampler": {"seed": "seed", "steps": "steps", "cfg": "cfg"},
    "Size": {"width": "width", "height": "height", "batch_size": "frames"},
    "Interpolate": {"source_fps": "fps"},
    "Dialogue": {"text": "dialogue"},
    "Save": {"filename_prefix": None},
    "Input Image": {"image": "image"},  # the shot's image, uploaded to the server that runs the shot
    "Character Prompt": {"text": "prompt", "negative": "negative", "character_weight": "character_weight"},
    "Character LoRAs": {"strength_scale": "lora_scale"},
    "Face Refine": {"seed": "seed", "steps": "steps", "cfg": "cfg", "max_cycles": "refine_cycles",
                    "denoise": "refine_denoise", "target": "identity_threshold", "guide_size": "refine_size",
                    "negative": "negative"},
    # a Face Refine that repairs an existing image (shot_face_repair): the shot's prompt is the face prompt
    "Face Repair": {"face_prompt": "prompt", "negative": "negative", "seed": "seed", "steps": "steps", "cfg": "cfg",
                    "max_cycles": "refine_cycles", "denoise": "refine_denoise", "target": "identity_threshold",
                    "guide_size": "refine_size"},
    "Quality": {"min_side": "min_side"},
    "Identity Check": {"threshold": "identity_threshold"},
    "Shot Verdict": {"identity_pass": "identity_threshold"},
}
REQUIRED_TITLES = ("Save",)
PROMPT_TITLES = ("Prompt", "Character Prompt", "Face Repair")  # a preset needs one of them
MAX_CHARACTER_SLOTS = 4


def character_slot(number: int) -> str:
    return f"Character {number}"


class PresetError(ValueError):
    pass


def preset_path(name: str, api: bool = True) -> Path:
    if not re.fullmatch(PRESET_PATTERN[1:-1], name):
        raise PresetError(f"invalid preset name {name!r}")
    candidates = [folder / ("api" if api else "") / f"{name}.json" for folder in preset_dirs()]
    return next((path for path in candidates if path.exists()), candidates[-1])


def find_preset(name: str) -> Path:
    """The preset's file: its API format if there is one, else its editor format (converted when loaded)."""
    for api in (True, False):
        path = preset_path(name, api)
        if path.exists():
            return path
    raise PresetError(f"no preset {name!r} (available: {', '.join(available_presets())})")


def available_presets() -> list[str]:
    """The preset names shots may use (no server paths: this text reaches API clients)."""
    return sorted({path.stem for folder in preset_dirs() for path in [*folder.glob("*.json"), *folder.glob("api/*.json")]
                   if re.fullmatch(PRESET_PATTERN[1:-1], path.stem)})


def load_preset(name: str, object_info: dict | None = None) -> dict:
    """The preset as an API-format graph. An editor-format file (what the ComfyUI editor saves) is converted
    with comfy-cli's converter against `object_info`, the /object_info of the server that will run it."""
    path = find_preset(name)
    try:
        graph = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PresetError(f"preset {name!r}: {path.name} is not valid JSON: {error}") from None
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        if object_info is None:
            return {node["id"]: {"_meta": {"title": node.get("title")}} for node in graph["nodes"]}  # titles only
        from comfy_cli.workflow_to_api import WorkflowConversionError, convert_ui_to_api
        try:
            graph = convert_ui_to_api(graph, object_info)
        except WorkflowConversionError as error:
            raise PresetError(f"preset {name!r}: cannot convert {path.name} to API format: {error}") from None
    titles = {node.get("_meta", {}).get("title") for node in graph.values()}
    missing = [title for title in REQUIRED_TITLES if title not in titles]
    if not titles & set(PROMPT_TITLES):
        missing.insert(0, PROMPT_TITLES[0])
    if missing:
        raise PresetError(f"preset {name!r} has no node titled {', '.join(map(repr, missing))}; "
                          "see the title convention in controller/presets.py")
    return graph


def nodes_titled(graph: dict, title: str) -> list[dict]:
    return [node for node in graph.values() if node.get("_meta", {}).get("title") == title]


def character_slots(graph: dict) -> int:
    """How many characters the preset takes: its "Character 1" ... "Character N" nodes, counted from 1."""
    slots = 0
    while slots < MAX_CHARACTER_SLOTS and nodes_titled(graph, character_slot(slots + 1)):
        slots += 1
    return slots


def check_character_slots(name: str, graph: dict, characters: int) -> None:
    slots = character_slots(graph)
    if characters > slots:
        raise PresetError(f"preset {name!r} has {slots} character slot{'s' if slots != 1 else ''} "
                          f"({', '.join(map(character_slot, range(1, slots + 1))) or 'no node titled Character 1'}) "
                          f"and the shot names {characters} characters: use a character preset such as "
                          "shot_character, or title Load Character nodes 'Character 1', 'Character 2' ...")


def accepted_fields(graph: dict) -> frozenset:
    """The shot fields the preset has a node for (by title), characters included when it has slots."""
    fields = {field for title, inputs in SHOT_INPUTS.items() if nodes_titled(graph, title)
              for field in inputs.values() if field}
    return frozenset(fields | ({"characters"} if character_slots(graph) else set()))


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def without_unused_slots(graph: dict, used: int) -> dict:
    """The graph without its character slots past `used`: those nodes, the nodes fed by nothing else (their
    galleries), and every link from them into the inputs of the nodes that stay."""
    removed = {node_id for node_id, node in graph.items()
               if any(node.get("_meta", {}).get("title") == character_slot(number)
                      for number in range(used + 1, MAX_CHARACTER_SLOTS + 1))}
    while True:
        fed_only_by_removed = {node_id for node_id, node in graph.items() if node_id not in removed and (
            links := [value[0] for value in node["inputs"].values() if _is_link(value)]) and set(links) <= removed}
        if not fed_only_by_removed:
            break
        removed |= fed_only_by_removed
    kept = {}
    for node_id, node in graph.items():
        if node_id not in removed:
            inputs = {name: value for name, value in node["inputs"].items()
                      if not (_is_link(value) and value[0] in removed)}
            kept[node_id] = {**node, "inputs": inputs}
    return kept


def fill_preset(graph: dict, shot: Shot, checkpoint: str | None, filename_prefix: str,
                image_name: str | None = None) -> tuple[dict, dict]:
    """A copy of the preset graph with the shot's values in place, and the values filled (recorded per attempt).

    `image_name` is the shot's image as uploaded to the server (what LoadImage takes), not its local path.
    """
    characters = shot.characters or []
    check_character_slots(shot.workflow, graph, len(characters))
    graph = copy.deepcopy(graph)
    if characters:  # a shot naming none keeps the preset's own characters
        graph = without_unused_slots(graph, len(characters))
    values = {**shot.as_dict(), "checkpoint": checkpoint, "image": image_name}
    filled = {}
    for number, character in enumerate(characters, start=1):
        for node in nodes_titled(graph, character_slot(number)):
            node["inputs"]["character"] = character
        filled[f"{character_slot(number)}.character"] = character
    wanted: dict[str, list[str]] = {}  # a shot field with a value -> the titles that could take it
    for title, inputs in SHOT_INPUTS.items():
        nodes = nodes_titled(graph, title)
        for input_name, field in inputs.items():
            value = filename_prefix if field is None else values.get(field)
            if value is None:
                continue  # the preset's own value stands
            wanted.setdefault(field, []).append(title)
            for node in nodes:
                if input_name not in node["inputs"]:
                    raise PresetError(f"preset {shot.workflow!r}: node titled {title!r} ({node['class_type']}) "
                                      f"has no input {input_name!r}")
                node["inputs"][input_name] = value
            if nodes:
                filled[f"{title}.{input_name}"] = value
    for field, titles in wanted.items():
        if not any(nodes_titled(graph, title) for title in titles):
            raise PresetError(f"preset {shot.workflow!r} has no node titled {' or '.join(map(repr, titles))} "
                              f"for the shot's {field or 'output files'}")
    side = requested_side(graph, values)
    if side is not None and values.get("min_side") is None:
        for node in nodes_titled(graph, "Quality"):
            node["inputs"]["min_side"] = side
            filled["Quality.min_side"] = side
    return graph, filled


def requested_side(graph: dict, values: dict) -> int | None:
    """The shortest side of the frame the shot asks for, when the preset generates at the shot's size (it has a
    Size node): what the Quality check's min_side follows unless the shot sets min_side, so a 128 px shot is
    checked as 128 px, not against the preset's 512. None for a preset that takes its frame from elsewhere."""
    if not nodes_titled(graph, "Size"):
        return None
    sides = [values.get(name) for name in ("width", "height")]
    sides = [side for side in sides if isinstance(side, int) and side > 0]
    return min(sides) if sides else None
