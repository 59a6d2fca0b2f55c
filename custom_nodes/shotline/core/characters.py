"""The character library: one folder per character, with a sheet and reference images.

    models/shotline_characters/
      aiko/
        character.yaml        the sheet (below)
        references/           reference images: front, three-quarter, profile, expressions...
          front.png
          smile.jpg

    # character.yaml
    name: Aiko
    style: anime                       # anime or photo: picks the face detector and embedder
    design_prompt: "Aiko, a girl with silver hair in a bob, amber eyes, red scarf"
    negative_prompt: "short hair, blue eyes"
    loras:                             # optional
      - name: aiko_v3.safetensors
        strength: 0.8                  # model strength; clip_strength defaults to the same
    thresholds:                        # optional, override the graph's defaults for this character
      identity: 0.8

Pure logic: YAML in, dataclasses out; errors name the field (`loras[0].strength: ...`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

SHEET_FILE = "character.yaml"
REFERENCES_DIR = "references"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
STYLES = ("anime", "photo")
THRESHOLD_KEYS = ("identity", "quality", "approve_at", "reject_below", "golden_at")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CharacterSheetError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LoraRef:
    name: str
    strength: float = 1.0
    clip_strength: float | None = None


@dataclass(frozen=True)
class CharacterSheet:
    name: str
    style: str
    design_prompt: str
    negative_prompt: str = ""
    loras: tuple[LoraRef, ...] = ()
    thresholds: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["loras"] = [asdict(lora) for lora in self.loras]
        return data


@dataclass(frozen=True)
class Character:
    folder: Path
    sheet: CharacterSheet
    references: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.sheet.name


def _number(value, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise CharacterSheetError(field, f"must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _string(value, field: str, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise CharacterSheetError(field, f"must be {'a non-empty ' if required else 'a '}string, got {value!r}")
    return value.strip()


def parse_sheet(data) -> CharacterSheet:
    if not isinstance(data, dict):
        raise CharacterSheetError("sheet", "must be a mapping (name, style, design_prompt, ...)")
    known = {"name", "style", "design_prompt", "negative_prompt", "loras", "thresholds"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CharacterSheetError(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
    name = _string(data.get("name"), "name", required=True)
    if not NAME_PATTERN.match(name):
        raise CharacterSheetError("name", f"letters, digits, spaces, '.', '_' or '-', at most 64; got {name!r}")
    style = data.get("style", "anime")
    if style not in STYLES:
        raise CharacterSheetError("style", f"must be one of {', '.join(STYLES)}, got {style!r}")
    loras_raw = data.get("loras") or []
    if not isinstance(loras_raw, list):
        raise CharacterSheetError("loras", "must be a list of {name, strength}")
    loras = []
    for index, lora in enumerate(loras_raw):
        where = f"loras[{index}]"
        if not isinstance(lora, dict) or not isinstance(lora.get("name"), str) or not lora["name"].strip():
            raise CharacterSheetError(f"{where}.name", "required: the LoRA file name in models/loras")
        clip_strength = lora.get("clip_strength")
        loras.append(LoraRef(
            name=lora["name"].strip(),
            strength=_number(lora.get("strength", 1.0), f"{where}.strength", -10, 10),
            clip_strength=None if clip_strength is None else _number(clip_strength, f"{where}.clip_strength",
                                                                     -10, 10)))
    thresholds_raw = data.get("thresholds") or {}
    if not isinstance(thresholds_raw, dict):
        raise CharacterSheetError("thresholds", f"must be a mapping of {', '.join(THRESHOLD_KEYS)}")
    thresholds = {}
    for key, value in thresholds_raw.items():
        if key not in THRESHOLD_KEYS:
            raise CharacterSheetError(f"thresholds.{key}", f"unknown threshold (known: {', '.join(THRESHOLD_KEYS)})")
        thresholds[key] = _number(value, f"thresholds.{key}", 0, 1)
    return CharacterSheet(
        name=name,
        style=style,
        design_prompt=_string(data.get("design_prompt"), "design_prompt", required=True),
        negative_prompt=_string(data.get("negative_prompt"), "negative_prompt", required=False),
        loras=tuple(loras),
        thresholds=thresholds,
    )


def reference_images(folder: Path) -> tuple[Path, ...]:
    references = Path(folder) / REFERENCES_DIR
    if not references.is_dir():
        return ()
    return tuple(sorted(path for path in references.iterdir()
                        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()))


def load_character(folder: Path) -> Character:
    folder = Path(folder)
    sheet_path = folder / SHEET_FILE
    if not sheet_path.is_file():
        raise CharacterSheetError("sheet", f"{sheet_path} does not exist: a character folder needs a {SHEET_FILE}")
    try:
        data = yaml.safe_load(sheet_path.read_text())
    except yaml.YAMLError as error:
        raise CharacterSheetError("sheet", f"{sheet_path} is not valid YAML: {error}") from None
    return Character(folder=folder, sheet=parse_sheet(data), references=reference_images(folder))


def find_characters(roots) -> dict[str, Path]:
    """Character folders (those with a sheet) under the library roots, by folder name; the first root wins."""
    found: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and (folder / SHEET_FILE).is_file() and folder.name not in found:
                found[folder.name] = folder
    return found


def write_character(root: Path, folder_name: str, sheet: CharacterSheet, references: dict[str, bytes]) -> Character:
    """Create or update a character folder: the sheet, plus new or replaced reference images by file name."""
    if not FOLDER_PATTERN.match(folder_name):
        raise CharacterSheetError("folder", f"letters, digits, '.', '_' or '-', at most 64; got {folder_name!r}")
    folder = Path(root) / folder_name
    (folder / REFERENCES_DIR).mkdir(parents=True, exist_ok=True)
    for file_name, content in references.items():
        if not FOLDER_PATTERN.match(file_name) or Path(file_name).suffix.lower() not in IMAGE_SUFFIXES:
            raise CharacterSheetError(f"references.{file_name}", "must be a plain image file name "
                                      f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        (folder / REFERENCES_DIR / file_name).write_bytes(content)
    data = sheet.as_dict()
    data["loras"] = [{k: v for k, v in lora.items() if v is not None} for lora in data["loras"]]
    (folder / SHEET_FILE).write_text(yaml.safe_dump({k: v for k, v in data.items() if v not in ("", [], {})},
                                                    sort_keys=False, allow_unicode=True))
    return load_character(folder)
