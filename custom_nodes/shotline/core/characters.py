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
    voice:                             # optional: who speaks the character's dialogue
      engine: piper                    # one of core/speech.py's ENGINES: edge-tts, piper, espeak-ng
      voice: en_US-joe-medium          # the engine's voice name; the engine's default voice when left out

Pure logic: YAML in, pydantic models out (the controller's API takes the same CharacterSheet); errors name the field (`loras[0].strength: ...`).

A character's state in a shot (outfit, injuries, props, emotion, notes: the Character State node) is no part of
the sheet: it rides on the loaded Character and composes after the design prompt as a fragment (`state_fragment`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator,
                      model_validator)

from .voices import DEFAULT_VOICES, ENGINES
from .validation import KEY_RULE, MAX_FREE_TEXT, FreeText, Line, RequiredText, check_key, check_text, first_error

SHEET_FILE = "character.yaml"
REFERENCES_DIR = "references"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
STYLES = ("anime", "photo")
THRESHOLD_KEYS = ("identity", "quality", "approve_at", "reject_below", "golden_at")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"
# a voice as the engines name them (en-US-AriaNeural, en_US-joe-medium, en-us+f3): never a path
VOICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"


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


class Voice(_Sheet):
    """Who speaks the character's lines: an engine of core/speech.py and one of its voices."""
    engine: Literal[ENGINES]
    # never None once parsed: left out (or null), it is the engine's default voice (DEFAULT_VOICES)
    voice: Annotated[str, StringConstraints(pattern=VOICE_PATTERN)] | None = Field(
        default=None, description="the engine's voice name (letters, digits, '.', '_', '+' or '-'); left out, "
                                  "the engine's default voice")

    @model_validator(mode="before")
    @classmethod
    def _default_voice(cls, data):
        if isinstance(data, dict) and data.get("voice") is None and data.get("engine") in DEFAULT_VOICES:
            return {**data, "voice": DEFAULT_VOICES[data["engine"]]}
        return data

    @field_validator("voice")
    @classmethod
    def _no_parent(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError("must be a voice name, not a path ('..')")
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
    voice: Voice | None = None

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
    # the character's state in this shot (Character State): STATE_FIELDS -> text, only those set
    state: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.sheet.name

    def design_with_state(self, weight: float = 1.0) -> str:
        """The sheet's design prompt (at `weight`) followed by the state's fragment."""
        return ", ".join(part for part in (weighted(self.sheet.design_prompt, weight), state_fragment(self.state))
                         if part)


# A character's state, in the order its fragment names it, and how each reads in a prompt ("{}" is the text).
STATE_FIELDS = ("outfit", "injuries", "props", "emotion", "notes")
STATE_PHRASES = {"outfit": "wearing {}", "injuries": "injured: {}", "props": "holding {}", "emotion": "{}",
                 "notes": "{}"}


def checked_state(state) -> dict:
    """`state` with its texts stripped (and of stray commas at their ends) and the empty ones left out, in
    STATE_FIELDS order; ValueError naming the field for an unknown field or a text that is not one clean line."""
    if not isinstance(state, dict):
        raise ValueError(f"state: must be a mapping of {', '.join(STATE_FIELDS)}")
    unknown = sorted(str(key) for key in state if key not in STATE_FIELDS)
    if unknown:
        raise ValueError(f"state.{unknown[0]}: unknown field (known: {', '.join(STATE_FIELDS)})")
    checked = {}
    for key in STATE_FIELDS:
        value = state.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"state.{key}: must be a string, got {type(value).__name__}")
        if len(value) > MAX_FREE_TEXT:
            raise ValueError(f"state.{key}: must have at most {MAX_FREE_TEXT} characters")
        try:
            check_text(value, multiline=False)
        except ValueError as error:
            raise ValueError(f"state.{key}: {error}") from None
        value = value.strip().strip(",").strip()
        if value:
            checked[key] = value
    return checked


def state_fragment(state: dict) -> str:
    """The prompt fragment of a character's state: "wearing torn jacket, injured: bandaged left arm, holding a
    katana, angry, <notes>"; fields left empty are left out, a text that already starts with its phrase's word
    ("wearing a coat") is not given it twice."""
    parts = []
    for key, value in checked_state(state).items():
        phrase = STATE_PHRASES[key]
        lead = phrase.split("{}")[0].rstrip(": ")
        first_word = value.split(maxsplit=1)[0].rstrip(":,").lower()
        parts.append(value if lead and first_word == lead else phrase.format(value))
    return ", ".join(parts)


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


def compose_prompts(prompt: str, negative: str, characters, character_weight: float = 1.0) -> tuple[str, str]:
    """The shot's prompt followed by each character's design prompt (at `character_weight`) and right after it
    that character's state fragment, and the shot's negative followed by each character's negative prompt, in the
    order the characters are given. `characters` are Characters, or bare sheets (no state)."""
    characters = [c if isinstance(c, Character) else Character(Path(), c, ()) for c in characters]
    positive = [prompt.strip(), *(c.design_with_state(character_weight) for c in characters)]
    negatives = [negative.strip(), *(c.sheet.negative_prompt for c in characters)]
    return ", ".join(part for part in positive if part), ", ".join(part for part in negatives if part)
