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

Pure logic: YAML in, pydantic models out (the controller's API takes the same CharacterSheet); errors name the field (`loras[0].strength: ...`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from .validation import KEY_RULE, FreeText, Line, RequiredText, check_key, first_error

SHEET_FILE = "character.yaml"
REFERENCES_DIR = "references"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
STYLES = ("anime", "photo")
THRESHOLD_KEYS = ("identity", "quality", "approve_at", "reject_below", "golden_at")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"


class CharacterSheetError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Sheet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


Strength = Annotated[float, Field(ge=-10, le=10)]


class LoraRef(_Sheet):
    name: Annotated[Line, Field(min_length=1, description="the LoRA file name in models/loras")]
    strength: Strength = 1.0
    clip_strength: Strength | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        value = value.strip()
        if not value or value.startswith("/") or ".." in Path(value).parts:
            raise ValueError("must be a file name in models/loras (subfolders allowed, no '..')")
        return value


class CharacterSheet(_Sheet):
    """A character's sheet (character.yaml): the one definition the pack and the controller's API both use."""
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN),
                    Field(description="letters, digits, spaces, '.', '_' or '-', at most 64")]
    style: Literal["anime", "photo"] = "anime"
    design_prompt: RequiredText
    negative_prompt: FreeText = ""
    loras: tuple[LoraRef, ...] = ()
    thresholds: dict[Literal["identity", "quality", "approve_at", "reject_below", "golden_at"],
                     Annotated[float, Field(ge=0, le=1)]] = {}

    @field_validator("name", "design_prompt", "negative_prompt")
    @classmethod
    def _stripped(cls, value: str) -> str:
        return value.strip()

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Character:
    folder: Path
    sheet: CharacterSheet
    references: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.sheet.name


def parse_sheet(data) -> CharacterSheet:
    """A sheet from its parsed YAML/JSON; CharacterSheetError names the field (`loras[0].strength`)."""
    if not isinstance(data, dict):
        raise CharacterSheetError("sheet", "must be a mapping (name, style, design_prompt, ...)")
    if data.get("loras") is None:
        data = {**data, "loras": ()}
    if data.get("thresholds") is None:
        data = {**data, "thresholds": {}}
    try:
        return CharacterSheet.model_validate({**data, "loras": tuple(data["loras"]) if isinstance(
            data["loras"], list) else data["loras"]})
    except ValidationError as error:
        raise CharacterSheetError(*first_error(error, model=CharacterSheet)) from None


def check_folder_name(name) -> str:
    """A character folder or reference file name: a plain key, never a path."""
    if not isinstance(name, str):
        raise CharacterSheetError("folder", f"must be {KEY_RULE}")
    try:
        return check_key(name)
    except ValueError as error:
        raise CharacterSheetError("folder", str(error)) from None


def reference_name_error(file_name) -> str | None:
    """Why `file_name` cannot be a reference image's name, or None: a plain key with an image suffix."""
    try:
        check_key(file_name if isinstance(file_name, str) else "")
    except ValueError as error:
        return str(error)
    if Path(file_name).suffix.lower() not in IMAGE_SUFFIXES:
        return f"must be an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})"
    return None


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
    check_folder_name(folder_name)
    folder = Path(root) / folder_name
    (folder / REFERENCES_DIR).mkdir(parents=True, exist_ok=True)
    for file_name, content in references.items():
        if reference_name_error(file_name):
            raise CharacterSheetError(f"references.{file_name}", reference_name_error(file_name))
        (folder / REFERENCES_DIR / file_name).write_bytes(content)
    data = sheet.model_dump(mode="json", exclude_none=True)
    (folder / SHEET_FILE).write_text(yaml.safe_dump({k: v for k, v in data.items() if v not in ("", [], {})},
                                                    sort_keys=False, allow_unicode=True))
    return load_character(folder)


def weighted(text: str, weight: float) -> str:
    """`text` at `weight` in ComfyUI's prompt syntax: "(text:1.15)"; as it is at weight 1."""
    text = text.strip()
    return text if not text or abs(weight - 1.0) < 1e-6 else f"({text}:{weight:.2f})"


def compose_prompts(prompt: str, negative: str, sheets, character_weight: float = 1.0) -> tuple[str, str]:
    """The shot's prompt followed by each character's design prompt (at `character_weight`), and the shot's
    negative followed by each character's negative prompt, in the order the characters are given."""
    positive = [prompt.strip(), *(weighted(sheet.design_prompt, character_weight) for sheet in sheets)]
    negatives = [negative.strip(), *(sheet.negative_prompt for sheet in sheets)]
    return ", ".join(part for part in positive if part), ", ".join(part for part in negatives if part)
