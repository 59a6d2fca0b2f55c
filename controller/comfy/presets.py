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

Rename a node in the editor to one of these titles to let shots drive it. A preset lacking a titled node the
shot needs fails before anything is queued, naming the title.
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
}
REQUIRED_TITLES = ("Prompt", "Sampler", "Save")


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
    if missing:
        raise PresetError(f"preset {name!r} has no node titled {', '.join(map(repr, missing))}; "
                          "see the title convention in controller/presets.py")
    return graph


def nodes_titled(graph: dict, title: str) -> list[dict]:
    return [node for node in graph.values() if node.get("_meta", {}).get("title") == title]


def fill_preset(graph: dict, shot: Shot, checkpoint: str | None, filename_prefix: str,
                image_name: str | None = None) -> tuple[dict, dict]:
    """A copy of the preset graph with the shot's values in place, and the values filled (recorded per attempt).

    `image_name` is the shot's image as uploaded to the server (what LoadImage takes), not its local path.
    """
    graph = copy.deepcopy(graph)
    values = {**shot.as_dict(), "checkpoint": checkpoint, "image": image_name}
    filled = {}
    for title, inputs in SHOT_INPUTS.items():
        nodes = nodes_titled(graph, title)
        for input_name, field in inputs.items():
            value = filename_prefix if field is None else values.get(field)
            if value is None:
                continue  # the preset's own value stands
            if not nodes:
                raise PresetError(f"preset {shot.workflow!r} has no node titled {title!r} for the shot's {field}")
            for node in nodes:
                if input_name not in node["inputs"]:
                    raise PresetError(f"preset {shot.workflow!r}: node titled {title!r} ({node['class_type']}) "
                                      f"has no input {input_name!r}")
                node["inputs"][input_name] = value
            filled[f"{title}.{input_name}"] = value
    return graph, filled
