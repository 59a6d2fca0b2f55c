"""Shot lists: a YAML or JSON file of shots to render, validated field by field.

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
        image: refs/pose.png        # optional: uploaded to the server that runs the shot (relative to the list)
        scene: sc01                 # optional: the scene the shot belongs to in the cut (default "main")
        duration: 2.5               # optional: seconds a still image shot is held in the cut (default 2.0)
        frames: 8                   # optional, video presets: frames generated, and their rate before
        fps: 12                     #   interpolation (shot_video makes x2 as many at twice the rate)
        dialogue: "Where is she?"   # optional, dialogue presets: the line the shot speaks

A bare list of shots is accepted too. Errors name the field: `shots[1].seed: ...`.
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from shotline.core.characters import IMAGE_SUFFIXES

DEFAULT_WORKFLOW = "shot_txt2img"
DEFAULT_SIZE = (512, 512)
SHOT_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRESET_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_SEED = 2**64 - 1  # KSampler's limit
KNOWN_FIELDS = {"id", "workflow", "prompt", "negative", "seed", "size", "steps", "cfg", "checkpoint", "image", "scene",
                "duration", "frames", "fps", "dialogue"}
MAX_FRAMES = 1024
MAX_FPS = 240.0
MAX_DIALOGUE = 2000  # characters: one line of dialogue, not a script
DEFAULT_SCENE = "main"
SCENE_KEY_PATTERN = SHOT_KEY_PATTERN   # a scene key is a file name too: <scene>.mp4
DEFAULT_DURATION = 2.0                 # seconds a still is held in the cut
MIN_DURATION, MAX_DURATION = 0.2, 600.0


class ShotListError(ValueError):
    """A shot list that cannot be rendered; `field` is the path of the offending value, e.g. `shots[1].seed`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Shot:
    id: str
    workflow: str
    prompt: str
    negative: str
    seed: int
    width: int
    height: int
    steps: int | None = None
    cfg: float | None = None
    checkpoint: str | None = None
    image: str | None = None       # a local image file, uploaded to the server that runs the shot
    scene: str = DEFAULT_SCENE     # the scene it belongs to when the batch is assembled
    duration: float = DEFAULT_DURATION  # seconds a still image is held in the scene's cut
    frames: int | None = None      # video presets: frames generated (the latent batch)
    fps: float | None = None       # their frame rate, before interpolation
    dialogue: str | None = None    # dialogue presets: the line spoken

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _integer(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShotListError(field, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ShotListError(field, f"must be between {low} and {high}, got {value}")
    return value


def _size(value, field: str) -> tuple[int, int]:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not match:
            raise ShotListError(field, f"must look like 512x768, got {value!r}")
        width, height = int(match[1]), int(match[2])
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        width, height = value
    elif isinstance(value, dict) and set(value) == {"width", "height"}:
        width, height = value["width"], value["height"]
    else:
        raise ShotListError(field, f"must be WxH, [W, H] or {{width, height}}, got {value!r}")
    for name, side in (("width", width), ("height", height)):
        _integer(side, f"{field}.{name}", 64, 8192)
        if side % 8:
            raise ShotListError(f"{field}.{name}", f"must be a multiple of 8 (latent grid), got {side}")
    return width, height


def _text(value, field: str, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ShotListError(field, f"must be {'a non-empty' if required else 'a'} string, got {value!r}")
    return value


def parse_shot(raw, field: str, base_dir: Path | None = None) -> Shot:
    if not isinstance(raw, dict):
        raise ShotListError(field, f"must be a mapping of shot fields, got {type(raw).__name__}")
    unknown = sorted(set(raw) - KNOWN_FIELDS)
    if unknown:
        raise ShotListError(f"{field}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(KNOWN_FIELDS))})")
    shot_id = raw.get("id")
    if not isinstance(shot_id, (str, int)) or isinstance(shot_id, bool) or not SHOT_KEY_PATTERN.match(str(shot_id)):
        raise ShotListError(f"{field}.id", "required: letters, digits, '.', '_' or '-', at most 64, "
                                           f"not starting with a symbol; got {shot_id!r}")
    shot_id = str(shot_id)
    workflow = raw.get("workflow", DEFAULT_WORKFLOW)
    if not isinstance(workflow, str) or not PRESET_NAME_PATTERN.match(workflow):
        raise ShotListError(f"{field}.workflow", f"must be a preset name from workflows/, got {workflow!r}")
    seed = raw.get("seed")
    seed = zlib.crc32(shot_id.encode()) if seed is None else _integer(seed, f"{field}.seed", 0, MAX_SEED)
    width, height = _size(raw["size"], f"{field}.size") if "size" in raw else DEFAULT_SIZE
    steps = raw.get("steps")
    cfg = raw.get("cfg")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0 <= cfg <= 100):
        raise ShotListError(f"{field}.cfg", f"must be a number from 0 to 100, got {cfg!r}")
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint.strip()):
        raise ShotListError(f"{field}.checkpoint", f"must be a checkpoint file name, got {checkpoint!r}")
    image = raw.get("image")
    if image is not None:
        if not isinstance(image, str) or Path(image).suffix.lower() not in IMAGE_SUFFIXES:
            raise ShotListError(f"{field}.image", f"must be an image file path ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                                                  f"got {image!r}")
        if base_dir is not None:
            image = str((Path(base_dir) / image).resolve())
        if not Path(image).is_file():
            raise ShotListError(f"{field}.image", f"no such file: {image}")
    scene = raw.get("scene", DEFAULT_SCENE)
    if isinstance(scene, int) and not isinstance(scene, bool):
        scene = str(scene)
    if not isinstance(scene, str) or not SCENE_KEY_PATTERN.match(scene):
        raise ShotListError(f"{field}.scene", "must be a scene key like sc01: letters, digits, '.', '_' or '-', "
                                              f"at most 64, not starting with a symbol; got {scene!r}")
    duration = raw.get("duration", DEFAULT_DURATION)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) \
            or not MIN_DURATION <= duration <= MAX_DURATION:
        raise ShotListError(f"{field}.duration", f"must be a number of seconds from {MIN_DURATION:g} to "
                                                 f"{MAX_DURATION:g}, got {duration!r}")
    frames = raw.get("frames")
    fps = raw.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0.1 <= fps <= MAX_FPS):
        raise ShotListError(f"{field}.fps", f"must be a frame rate from 0.1 to {MAX_FPS:g}, got {fps!r}")
    dialogue = raw.get("dialogue")
    if dialogue is not None and (not isinstance(dialogue, str) or not dialogue.strip()
                                 or len(dialogue) > MAX_DIALOGUE):
        raise ShotListError(f"{field}.dialogue", f"must be a non-empty line of at most {MAX_DIALOGUE} characters, "
                                                 f"got {dialogue!r:.80}")
    return Shot(
        id=shot_id,
        workflow=workflow,
        prompt=_text(raw.get("prompt"), f"{field}.prompt", required=True),
        negative=_text(raw.get("negative"), f"{field}.negative", required=False),
        seed=seed,
        width=width,
        height=height,
        steps=None if steps is None else _integer(steps, f"{field}.steps", 1, 10000),
        cfg=None if cfg is None else float(cfg),
        checkpoint=checkpoint,
        image=image,
        scene=scene,
        duration=float(duration),
        frames=None if frames is None else _integer(frames, f"{field}.frames", 1, MAX_FRAMES),
        fps=None if fps is None else float(fps),
        dialogue=dialogue,
    )


def shot_from_record(record: dict) -> Shot:
    """A shot from its stored form (Shot.as_dict, corrections merged), validated again."""
    data = dict(record)
    if "width" in data or "height" in data:
        data["size"] = [data.pop("width", None), data.pop("height", None)]
    return parse_shot(data, "shot")


def parse_shot_list(data, base_dir: Path | None = None) -> list[Shot]:
    """Shots from a parsed list; `base_dir` resolves relative image paths (the list file's folder)."""
    defaults = {}
    if isinstance(data, dict):
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ShotListError("defaults", "must be a mapping of shot fields")
        if "id" in defaults:
            raise ShotListError("defaults.id", "every shot needs its own id")
        if "shots" not in data:
            raise ShotListError("shots", "required: the list of shots")
        data = data["shots"]
    if not isinstance(data, list) or not data:
        raise ShotListError("shots", "must be a non-empty list of shots")
    shots = [parse_shot({**defaults, **raw} if isinstance(raw, dict) else raw, f"shots[{index}]", base_dir)
             for index, raw in enumerate(data)]
    seen = {}
    for index, shot in enumerate(shots):
        if shot.id in seen:
            raise ShotListError(f"shots[{index}].id", f"duplicate of shots[{seen[shot.id]}].id ({shot.id!r})")
        seen[shot.id] = index
    return shots


def load_shot_list(path: Path) -> list[Shot]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ShotListError("file", f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ShotListError("file", f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                    f"{error}") from None
    return parse_shot_list(data, base_dir=path.parent)
