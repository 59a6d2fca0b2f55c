"""The controller's one typed contract: every input it takes and every answer it gives, as pydantic models.

`shotline render` (shot-list files), the HTTP API (bodies) and the served OpenAPI document (/openapi.json, built
from these models by api/openapi.py) all use these definitions, so they cannot drift. A refusal always has the
shape `{"error": message, "field": path}` with paths like `shots[1].seed` (`InputError`).

Text rules (shotline.core.validation): no NUL, no lone surrogate, no control characters (prompts and dialogue may
hold tab and newline), names and ids match their pattern as a whole string. Numbers are strict: `true` is not 1,
"5" is not 5, NaN and infinity are refused.

Media a shot or an assembly names is content-addressed: `sha256:<64 hex>` of an upload (POST /api/v1/uploads, or
a file part of a multipart batch submission). A shot-list file read by the CLI may name a path inside its own
folder instead; the CLI stores that file as an upload, so any controller on any machine can run the shot.
"""
from __future__ import annotations

import math
import re
import uuid
import zlib
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from shotline.core.validation import FreeText, Key, Line, RequiredText, check_text, first_error

from shotline_controller.store.status import AttemptStatus, JobStatus, ShotStatus

DEFAULT_WORKFLOW = "shot_txt2img"
DEFAULT_SIZE = (512, 512)
DEFAULT_SCENE = "main"
DEFAULT_DURATION = 2.0              # seconds a still is held in the cut
MAX_SHOTS = 10_000
MAX_SEED = 2**64 - 1                # KSampler's limit
MAX_FRAMES = 1024
MAX_DIALOGUE = 2000                 # characters: one line of dialogue, not a script
PRESET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # dots: official templates (wan2.1_...)
MEDIA_REF_PATTERN = r"^sha256:[0-9a-f]{64}$"
_MEDIA_REF = re.compile(MEDIA_REF_PATTERN[1:-1])


class InputError(ValueError):
    """An input the controller refuses: `field` is the path of the offending value, e.g. `shots[1].seed`.

    Every error class of the controller about a client's input derives from this one, with this argument order."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # raised in a worker process (parsing.py), it must unpickle with both arguments
        return type(self), (self.field, self.message)


def validated(model: type[BaseModel], data: Any, prefix: str = ""):
    """`model` validated from parsed data; InputError naming the first field at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InputError(*first_error(error, prefix, model)) from None


def is_media_ref(value: str) -> bool:
    return bool(_MEDIA_REF.fullmatch(value))


def _unique(values: list[str]) -> list[str]:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise ValueError(f"{value!r} is named twice")
    return values


# --- field types -----------------------------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _preset_name(value: str) -> str:
    check_text(value, multiline=False)
    if not re.fullmatch(PRESET_PATTERN[1:-1], value):
        raise ValueError("must be a preset name: a letter or digit, then letters, digits, '.', '_' or '-', at most 64")
    return value


def _file_name(value: str) -> str:
    """A model file name as ComfyUI lists it (subfolders allowed), never an absolute path or '..'."""
    check_text(value, multiline=False)
    if not value.strip() or len(value) > 255 or value.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", value):
        raise ValueError("must be a file name as ComfyUI lists it (subfolders allowed, no '..', at most 255)")
    return value


def _media_name(value: str) -> str:
    check_text(value, multiline=False)
    if not value.strip() or len(value) > 255:
        raise ValueError("must be sha256:<hex> of an upload, or the name of a file sent with the request")
    return value


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", value)
        if not match:
            raise ValueError("must look like 512x768")
        width, height = int(match[1]), int(match[2])
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        width, height = value
    elif isinstance(value, dict) and set(value) == {"width", "height"}:
        width, height = value["width"], value["height"]
    else:
        raise ValueError("must be WxH, [W, H] or {width, height}")
    for side in (width, height):
        if isinstance(side, bool) or not isinstance(side, int) or not 64 <= side <= 8192 or side % 8:
            raise ValueError("sides must be whole multiples of 8 (the latent grid) from 64 to 8192")
    return width, height


PresetName = Annotated[str, AfterValidator(_preset_name),
                       WithJsonSchema({"type": "string", "pattern": PRESET_PATTERN,
                                       "description": "a preset in workflows/ (or SHOTLINE_PRESETS)"})]
ModelFile = Annotated[str, AfterValidator(_file_name),
                      WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255,
                                      "description": "a file name as ComfyUI lists it, e.g. sd15/model.safetensors"})]
MediaName = Annotated[str, AfterValidator(_media_name),
                      WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255,
                                      "description": "sha256:<hex> of an upload, or (in a multipart request) the "
                                                     "file name of one of its parts"})]
MediaRef = Annotated[str, Field(pattern=MEDIA_REF_PATTERN)]
Size = Annotated[tuple[int, int], BeforeValidator(_size),
                 WithJsonSchema({"description": "WxH, [W, H] or {width, height}: multiples of 8 from 64 to 8192",
                                 "oneOf": [{"type": "string", "pattern": r"^\s*\d{1,5}\s*[xX]\s*\d{1,5}\s*$"},
                                           {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                                            "maxItems": 2},
                                           {"type": "object", "required": ["width", "height"],
                                            "additionalProperties": False,
                                            "properties": {"width": {"type": "integer"},
                                                           "height": {"type": "integer"}}}]})]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="derived from the shot id when absent")]
Steps = Annotated[int, Field(ge=1, le=10_000)]
Cfg = Annotated[float, Field(ge=0, le=100)]
SamplerName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$",
                                   description="the sampler's sampler_name (one of the server's: euler, dpmpp_2m ...)")]
LearningMode = Annotated[Literal["explore", "exploit", "off"], Field(
    description="how the learner chooses the fields the shot leaves open (cfg, steps, sampler, lora_scale, "
                "refine_denoise, refine_cycles) and the correction for a failure: explore (Thompson sampling, "
                "the default), exploit (the best so far, no trying), off (the preset's values and the fixed ladder)")]
Duration = Annotated[float, Field(ge=0.2, le=600, description="seconds a still image shot is held in its scene")]
Frames = Annotated[int, Field(ge=1, le=MAX_FRAMES, description="video presets: frames generated")]
Fps = Annotated[float, Field(ge=0.1, le=240, description="video presets: frame rate before interpolation")]
Threshold = Annotated[float, Field(ge=0, le=1)]
MAX_CHARACTERS = 4                  # the presets' "Character 1" ... "Character 4" slots
CharacterNames = Annotated[list[Key], Field(min_length=1, max_length=MAX_CHARACTERS,
                                            description="character folders in the library, in the order the "
                                                        "prompt names them (filled into 'Character 1'...)"),
                           AfterValidator(_unique)]
CharacterWeight = Annotated[float, Field(ge=0.5, le=2.0, description="weight of the characters' design prompts "
                                                                     "(identity corrections raise it)")]
LoraScale = Annotated[float, Field(ge=0, le=4, description="multiplies the strengths of the characters' LoRAs")]
RefineCycles = Annotated[int, Field(ge=1, le=12, description="Face Refine's most cycles per face")]
RefineDenoise = Annotated[float, Field(ge=0, le=1, description="Face Refine's denoise")]
RefineSize = Annotated[int, Field(ge=64, le=4096, multiple_of=8, description="Face Refine's guide_size: the "
                                                                         "long side a face crop is sampled at")]
MinSide = Annotated[int, Field(ge=16, le=8192, description="the shortest side the Quality check asks for (the "
                                                           "preset's when absent; previews and tests go lower)")]
MAX_SET = 64                        # `set` entries per shot
SET_KEY_PATTERN = r"^[^.\x00-\x1f][^\x00-\x1f]{0,190}\.[A-Za-z_][A-Za-z0-9_]{0,63}$"


def _set_key(value: str) -> str:
    check_text(value, multiline=False)
    if not re.fullmatch(SET_KEY_PATTERN[1:-1], value) or not value.rpartition(".")[0].strip():
        raise ValueError("must be '<node title or id>.<input>', e.g. 'KSampler.steps' or '3.seed'")
    return value


SetKey = Annotated[str, AfterValidator(_set_key),
                   WithJsonSchema({"type": "string", "pattern": SET_KEY_PATTERN,
                                   "description": "<node title or id>.<input>"})]
MAX_SET_TEXT = 20_000


def _set_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, str):
        if len(value) > MAX_SET_TEXT:
            raise ValueError(f"must be at most {MAX_SET_TEXT} characters")
        return check_text(value)
    if not isinstance(value, (bool, int, float)):
        raise ValueError("must be text, a number or true/false")
    return value


SetValue = Annotated[Any, AfterValidator(_set_value),
                     WithJsonSchema({"type": ["string", "integer", "number", "boolean"]})]
Overrides = Annotated[dict[SetKey, SetValue], Field(
    min_length=1, max_length=MAX_SET,
    description="inputs set after the shot's own fields: {'<node title or id>.<input>': value}, checked against "
                "the server's /object_info (type, range, options) before the shot is queued")]
DialogueLine = Annotated[RequiredText, Field(max_length=MAX_DIALOGUE),
                         WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_DIALOGUE,
                                         "description": "dialogue presets: the line spoken"})]
SpokenLine = Annotated[dict[Key, DialogueLine], Field(
    min_length=1, max_length=1, description="{speaker: line}: the line spoken in that character's voice (its "
                                            "sheet's `voice`); the speaker is one of the shot's characters")]
_DIALOGUE_FORMS = (TypeAdapter(DialogueLine), TypeAdapter(SpokenLine))


def _dialogue(value: Any) -> Any:
    """A line, or {speaker: line}: validated as the one its shape says, so an error names `dialogue` itself."""
    adapter = _DIALOGUE_FORMS[isinstance(value, dict)]
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as error:
        raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None


Dialogue = Annotated[Any, AfterValidator(_dialogue), WithJsonSchema({"oneOf": [
    {"type": "string", "minLength": 1, "maxLength": MAX_DIALOGUE, "description": "dialogue presets: the line spoken"},
    {"type": "object", "minProperties": 1, "maxProperties": 1,
     "additionalProperties": {"type": "string", "minLength": 1, "maxLength": MAX_DIALOGUE},
     "description": "{speaker: line}: the line spoken in that character's voice (its sheet's `voice`); the "
                    "speaker is one of the shot's characters"}]})]
Mood = Annotated[Line, Field(max_length=300, description="the scene's mood: an assembly's music: auto makes the "
                                                        "scene's music from the first one its shots name")]
Continuity = Annotated[Literal["previous", "none"], Field(
    description="previous: wait until the shot before this one in its scene is approved, then start from its "
                "last frame (the preset's Input Image)")]
MAX_STATE_TEXT = 300
StateText = Annotated[Line, Field(max_length=MAX_STATE_TEXT, description="'' ends what an earlier entry set")]


class CharacterState(Strict):
    """A character's state from a shot on, until a later entry changes a field ('' clears it)."""
    outfit: StateText | None = None
    injuries: StateText | None = None
    props: StateText | None = None
    emotion: StateText | None = None
    notes: StateText | None = None

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.model_dump(exclude_none=True):
            raise ValueError("name at least one of outfit, injuries, props, emotion, notes")
        return self


StateChanges = Annotated[dict[Key, CharacterState], Field(
    min_length=1, max_length=16, description="{character: {outfit, injuries, props, emotion, notes}}: applies "
                                             "from this shot on, in list order, to every shot naming the character")]


class EngineRules(Strict):
    """Presets chosen by what a shot is, for shots that name no workflow of their own; the first rule that applies
    and names a preset wins, else the workflow (the defaults', else shot_txt2img)."""
    lora: Annotated[PresetName, Field(description="a character of the shot has LoRAs on its sheet")] | None = None
    image_to_video: Annotated[PresetName, Field(description="at most one character and a source image (its own "
                                                            "image, or continuity: previous)")] | None = None
    text_to_video: Annotated[PresetName, Field(description="several characters, or no source image")] | None = None


# --- shots -----------------------------------------------------------------------------------------------------

class CharacterFields(Strict):
    """The character loop's shot fields, the same in a shot as written and as queued (the corrections move them)."""
    characters: CharacterNames | None = None
    identity_threshold: Annotated[Threshold, Field(description="the IDR every character needs in this shot (a "
                                                               "character sheet's own threshold still wins)")] | None = None
    character_weight: CharacterWeight | None = None
    lora_scale: LoraScale | None = None
    refine_cycles: RefineCycles | None = None
    refine_denoise: RefineDenoise | None = None
    refine_size: RefineSize | None = None
    min_side: MinSide | None = None
    continuity: Continuity | None = None
    colour_anchor: Annotated[bool, Field(description="colour-match the shot to its scene's first approved shot "
                                                     "(the preset's Colour Anchor); on for continuity shots")] | None = None
    sampler: SamplerName | None = None
    learning: LearningMode | None = None


class ShotDefaults(CharacterFields):
    """Shot fields a shot list sets once for every shot (a shot's own value wins)."""
    workflow: PresetName | None = None
    prompt: RequiredText | None = None
    negative: FreeText | None = None
    seed: Seed | None = None
    size: Size | None = None
    steps: Steps | None = None
    cfg: Cfg | None = None
    checkpoint: ModelFile | None = None
    image: MediaName | None = None
    scene: Key | None = None
    mood: Mood | None = None
    duration: Duration | None = None
    frames: Frames | None = None
    fps: Fps | None = None
    dialogue: Dialogue | None = None
    set: Overrides | None = None
    engines: EngineRules | None = None


class ShotInput(ShotDefaults):
    """One shot as a client writes it."""
    id: Annotated[Key, Field(description="the shot's id in the list (unique within the batch)")]
    prompt: RequiredText
    state: StateChanges | None = None


class Shot(CharacterFields):
    """A shot as it is queued and rendered: defaults applied, the seed fixed, media content-addressed. This is
    the form stored in `shots.params` and validated again before every attempt (with its correction applied)."""
    model_config = ConfigDict(frozen=True)
    id: Key
    workflow: PresetName = DEFAULT_WORKFLOW
    prompt: RequiredText
    negative: FreeText = ""
    seed: Seed
    width: Annotated[int, Field(ge=64, le=8192, multiple_of=8)] = DEFAULT_SIZE[0]
    height: Annotated[int, Field(ge=64, le=8192, multiple_of=8)] = DEFAULT_SIZE[1]
    steps: Steps | None = None
    cfg: Cfg | None = None
    checkpoint: ModelFile | None = None
    image: MediaRef | None = None
    scene: Key = DEFAULT_SCENE
    mood: Mood | None = None
    duration: Duration = DEFAULT_DURATION
    frames: Frames | None = None
    fps: Fps | None = None
    dialogue: Dialogue | None = None
    set: Overrides | None = None
    engine_rule: Annotated[str, Field(max_length=200,
                                      description="the engine rule that chose the workflow")] | None = None

    @classmethod
    def from_input(cls, shot: ShotInput, image: str | None = None, engine_rule: str | None = None) -> "Shot":
        """The queued form of `shot`; `image` is its media reference once resolved, `engine_rule` the rule that
        chose its workflow. Its character state changes are kept apart (character_states)."""
        width, height = shot.size or DEFAULT_SIZE
        values = shot.model_dump(exclude_none=True, exclude={"size", "image", "state", "engines"})
        values.setdefault("seed", zlib.crc32(shot.id.encode()))
        return cls.model_validate({**values, "width": width, "height": height, "image": image,
                                   "engine_rule": engine_rule})

    @classmethod
    def from_record(cls, record: dict, field: str = "shot") -> "Shot":
        return validated(cls, record, field)

    def as_dict(self) -> dict:
        return self.model_dump(exclude_none=True)


def _with_defaults(defaults: dict, shot: dict) -> dict:
    """A shot's fields over the defaults; `set` entries merge key by key (the shot's win)."""
    merged = {**defaults, **shot}
    if isinstance(defaults.get("set"), dict) and isinstance(shot.get("set"), dict):
        merged["set"] = {**defaults["set"], **shot["set"]}
    if "workflow" in shot:  # a shot naming its workflow is not chosen for by the engine rules
        merged.pop("engines", None)
    return merged


def _merge_defaults(data: Any) -> Any:
    """`defaults` merged under every shot, before either is validated."""
    if isinstance(data, list):
        data = {"shots": data}
    if isinstance(data, dict) and isinstance(data.get("defaults"), dict) and isinstance(data.get("shots"), list):
        defaults = {key: value for key, value in data["defaults"].items() if key != "id"}
        data = {**data, "shots": [_with_defaults(defaults, shot) if isinstance(shot, dict) else shot
                                  for shot in data["shots"]]}
    return data


class ShotList(Strict):
    """A shot-list file (YAML or JSON): `shots`, optionally `defaults`. A bare list of shots is accepted too."""
    defaults: ShotDefaults | None = None
    shots: Annotated[list[ShotInput], Field(min_length=1, max_length=MAX_SHOTS)]

    @model_validator(mode="before")
    @classmethod
    def _merge(cls, data: Any) -> Any:
        return _merge_defaults(data)


class BatchRequest(ShotList):
    """`POST /api/v1/batches`: a shot list and how to run it."""
    webhook_url: Annotated[Line, Field(max_length=2048)] | None = Field(
        None, description="POSTed {batch_id, counts, total} when every shot is final, signed with "
                          "X-Shotline-Signature: sha256=<HMAC of the body>. http(s) only; private, loopback and "
                          "link-local addresses are refused unless SHOTLINE_WEBHOOK_ALLOW names them")
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000, description="higher is claimed first")] = 0


def parse_shot_list(data: Any, model: type[ShotList] = ShotList) -> ShotList:
    """A shot list (or, with `model=BatchRequest`, a batch submission) from its parsed YAML/JSON."""
    if isinstance(data, dict) and isinstance(data.get("defaults"), dict) and "id" in data["defaults"]:
        raise InputError("defaults.id", "every shot needs its own id")
    shot_list = validated(model, data)
    seen: dict[str, int] = {}
    for index, shot in enumerate(shot_list.shots):
        if shot.id in seen:
            raise InputError(f"shots[{index}].id", f"duplicate of shots[{seen[shot.id]}].id ({shot.id!r})")
        seen[shot.id] = index
        if isinstance(shot.dialogue, dict):
            [speaker] = shot.dialogue
            if speaker not in (shot.characters or ()):
                raise InputError(f"shots[{index}].dialogue.{speaker}", "the speaker must be one of the shot's "
                                 f"characters ({', '.join(shot.characters or ()) or 'it names none'})")
    continued_shots(shot_list.shots)
    return shot_list


def state_changes(shot_list: ShotList) -> list[tuple[int, str, dict]]:
    """(list position, character, fields set) for every `state` entry of the list, in list order."""
    return [(index, name, fields.model_dump(exclude_none=True))
            for index, shot in enumerate(shot_list.shots) for name, fields in (shot.state or {}).items()]


def continued_shots(shots) -> list[int | None]:
    """For each shot, the index of the shot it continues (the one before it in its scene, for `continuity:
    previous`), else None; a scene's first shot has none to continue."""
    last_in_scene: dict[str, int] = {}
    continued = []
    for index, shot in enumerate(shots):
        scene = shot.scene or DEFAULT_SCENE
        if shot.continuity == "previous":
            if scene not in last_in_scene:
                raise InputError(f"shots[{index}].continuity",
                                 f"the first shot of scene {scene!r} has no shot before it to continue")
            continued.append(last_in_scene[scene])
        else:
            continued.append(None)
        last_in_scene[scene] = index
    return continued


# --- other requests --------------------------------------------------------------------------------------------

class StateRequest(Strict):
    """`POST /api/v1/batches/{id}/states` and `shotline state set`: a character's state from a shot of the batch
    on (the shots not started yet take it)."""
    character: Key
    from_shot: Annotated[Key, Field(description="the id of the shot it applies from, in the batch's list order")]
    state: CharacterState


REVIEW_CATEGORIES = ("wrong_face", "extra_people", "hands", "outfit", "blur", "style", "other")
ReviewCategory = Literal[REVIEW_CATEGORIES]


class ReviewRequest(Strict):
    """A person's decision on a shot in `needs_review` (or their approval of a rejected one), and why. A rejection's
    category teaches the shot's characters a negative prompt term (store/learning.py); the note is kept."""
    decision: Literal["approve", "reject"]
    reason: Annotated[ReviewCategory, Field(description="what was wrong (a rejection) or what was checked")] | None = None
    note: Annotated[FreeText, Field(max_length=2000)] = ""


class EpisodeRequest(Strict):
    season: Annotated[int, Field(ge=1, le=99)]
    number: Annotated[int, Field(ge=1, le=99)]
    title: Annotated[Line, Field(min_length=1, max_length=200, description="the episode's title (its file name, "
                                                                          "made safe for every file system)")]


def _even_size(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", value)
        if not match:
            raise ValueError("must look like 1280x720")
        value = (int(match[1]), int(match[2]))
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(side, int) and not isinstance(side, bool) and 16 <= side <= 8192 and side % 2 == 0
            for side in value):
        raise ValueError("must be WxH with even sides from 16 to 8192 (H.264 4:2:0)")
    return tuple(value)


def _music_choice(value: str) -> str:
    if value != "auto" and not is_media_ref(value):
        raise ValueError("must be sha256:<hex> of an uploaded audio file, or auto")
    return value


MusicChoice = Annotated[str, AfterValidator(_music_choice),
                        WithJsonSchema({"type": "string", "pattern": r"^(auto|sha256:[0-9a-f]{64})$"})]


class AssemblyRequest(Strict):
    """`POST /api/v1/batches/{id}/assemblies` and `shotline assemble`: which scenes, and how to cut them."""
    scenes: Annotated[list[Key], Field(min_length=1, max_length=1000), AfterValidator(_unique)] | None = Field(
        None, description="scene keys to assemble, in the batch's order; leave out for every scene")
    crossfade_s: Annotated[float, Field(ge=0, le=10)] = 0.5
    fps: Annotated[float, Field(ge=1, le=240)] | None = None
    size: Annotated[tuple[int, int], BeforeValidator(_even_size),
                    WithJsonSchema({"type": "string", "pattern": r"^\s*\d{1,5}\s*[xX]\s*\d{1,5}\s*$",
                                    "description": "WxH with even sides"})] | None = None
    music: MusicChoice | None = Field(
        None, description="sha256:<hex> of an uploaded audio file, or auto: each scene's music made from its mood "
                          "(its shots' `mood`) by the music_ace_step preset on a ComfyUI backend")
    episode: EpisodeRequest | None = None


# --- answers ---------------------------------------------------------------------------------------------------

class Answer(BaseModel):
    """Every response body: documented fields, nothing else."""
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Answer):
    error: str
    field: str | None = Field(None, description="path of the offending value, e.g. shots[1].seed")


class Health(Answer):
    ok: bool


class BatchCreated(Answer):
    batch_id: uuid.UUID
    shot_ids: list[uuid.UUID]


Counts = Annotated[dict[ShotStatus, int], Field(description="shots per status")]


class Batch(Answer):
    id: uuid.UUID
    source: str
    webhook_url: str | None
    created_at: datetime
    finished_at: datetime | None
    notified_at: datetime | None
    counts: Counts
    total: int
    done: int
    finished: bool
    settled: bool = Field(description="nothing left to run without a person: no shot queued or running (the "
                                      "others are final, or wait on a blocked shot or one in review)")


class BatchCancelled(Batch):
    cancelled: int = Field(description="shots cancelled by this request")


class BatchShot(Answer):
    id: uuid.UUID
    shot_key: str
    status: ShotStatus
    params: dict[str, Any]
    max_attempts: int
    attempts: int
    score: float | None = Field(description="the latest attempt's verdict score")
    band: str | None = Field(description="the latest Shot Verdict band: approve, review or reject")
    output: str | None = Field(description="the latest attempt's first output file (subfolder/name)")
    error: str | None = Field(description="the latest attempt's error message")
    continues: str | None = Field(None, description="the id of the shot this one continues (continuity: "
                                                    "previous); waiting or blocked shots wait for it")


class BatchShots(Answer):
    batch_id: uuid.UUID
    total: int
    done: int
    counts: Counts
    finished: bool
    settled: bool
    shots: list[BatchShot]


class Output(Answer):
    node_id: str
    kind: str = Field(description="the ui key ComfyUI reported it under: images, gifs, audio, ...")
    filename: str
    subfolder: str
    type: str = Field(description="ComfyUI's folder type: output, temp or input")


class Attempt(Answer):
    id: uuid.UUID
    attempt_no: int
    prompt_id: uuid.UUID
    backend: str
    status: AttemptStatus
    inputs: dict[str, Any] = Field(description="the values filled into the preset")
    correction: dict[str, Any] | None = Field(description="what this attempt changed and why (the escalation step)")
    error: dict[str, Any] | None = Field(description="ComfyUI's validation or execution error, as sent")
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    verdicts: list[dict[str, Any]] = Field(description="every check node's verdict, as the node reported it")
    outputs: list[Output]
    outcome: Literal["approved", "needs_review", "rejected", "failed"] | None = Field(
        None, description="what its verdicts decided, or a person's review of it: what the learner counts")
    knobs: dict[str, str] | None = Field(None, description="the value of each learned parameter it ran with "
                                                           "(cfg, steps, sampler ...; fix:<reason>: its correction)")
    learned: dict[str, Any] | None = Field(None, description="what the learner chose for it, each choice with the "
                                                             "statistics behind it (`why`)")


class Review(Answer):
    decision: Literal["approve", "reject"]
    category: str | None
    note: str
    attempt_id: uuid.UUID | None
    created_at: datetime


class ShotDetail(Answer):
    id: uuid.UUID
    batch_id: uuid.UUID
    shot_key: str
    workflow: str
    status: ShotStatus
    params: dict[str, Any]
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    continues: str | None = Field(None, description="the id of the shot this one continues")
    reviews: list[Review] = Field([], description="a person's decisions on it, oldest first")
    attempts: list[Attempt]


class StateEntry(Answer):
    character: str
    from_position: int
    from_shot: str | None
    fields: dict[str, str]
    source: str = Field(description="shot list, api or cli")
    created_at: datetime


class ContinuityFrame(Answer):
    scene: str
    character: str
    score: float = Field(description="its identity score in the approved shot it came from")
    frame_ref: str = Field(description="the approved frame, an upload (sha256:...)")
    face_ref: str | None = Field(description="the character's face crop, an upload")
    box: list[float] | None
    shot: str
    updated_at: datetime


class Continuity(Answer):
    """What carries over in a batch: the character state timeline and each character's kept frame per scene."""
    batch_id: uuid.UUID
    states: list[StateEntry]
    frames: list[ContinuityFrame]


class Upload(Answer):
    ref: str = Field(description="what a shot's `image` or an assembly's `music` names: sha256:<hex>")
    sha256: str
    media_type: str
    size_bytes: int


class AssemblyJobAccepted(Answer):
    job_id: uuid.UUID
    status: JobStatus
    location: str


class AssemblyPart(Answer):
    position: int
    shot_id: uuid.UUID | None
    shot_key: str | None
    file: str | None
    scene_assembly_id: uuid.UUID | None
    scene: str | None
    start_s: float
    duration_s: float


class Assembly(Answer):
    id: uuid.UUID
    batch_id: uuid.UUID
    kind: Literal["scene", "episode"]
    scene: str | None
    season: int | None
    episode: int | None
    title: str | None
    path: str = Field(description="the MP4 (H.264 + AAC) the controller wrote")
    thumbnail: str
    duration_s: float
    frame_count: int
    fps: float
    width: int
    height: int
    crossfade_s: float
    music: str | None
    created_at: datetime
    parts: list[AssemblyPart]


class AssemblyList(Answer):
    batch_id: uuid.UUID
    assemblies: list[Assembly]


class JobError(Answer):
    message: str
    field: str | None = None
    status: int = Field(description="the HTTP status the same problem gets when asked synchronously")


class AssemblyJob(Answer):
    id: uuid.UUID
    batch_id: uuid.UUID
    status: JobStatus
    request: dict[str, Any]
    error: JobError | None
    attempts: int
    max_attempts: int
    claimed_by: str | None
    lease_until: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    assemblies: list[Assembly]


class CharacterView(Answer):
    id: uuid.UUID
    folder: str
    name: str
    style: str
    sheet: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    reference_count: int


class CharacterList(Answer):
    characters: list[CharacterView]


class CharacterStored(Answer):
    id: uuid.UUID
    folder: str
    name: str
    style: str
    references: list[str]


class BackendView(Answer):
    base_url: str
    connected: bool
    managed: bool = Field(description="started (and restarted when it dies) by this controller")
    restarts: int = Field(description="times this controller restarted it")
    queue_remaining: int | None
    loaded_checkpoint: str | None
    system_stats: dict[str, Any] | None = None
    error: str | None = None


class Backends(Answer):
    backends: list[BackendView]


class CharacterAnalytics(Answer):
    character: str
    attempts: int
    passed: int
    pass_rate: float | None
    mean_score: float | None
    not_on_screen: int


class CorrectionAnalytics(Answer):
    reason: str
    corrected_attempts: int
    led_to_approval: int
    approval_rate: float


class LearningPoint(Answer):
    """A character's shots in one batch (batches oldest first): is it getting better?"""
    batch_id: uuid.UUID
    created_at: datetime
    shots: int = Field(description="its final shots (approved, rejected, failed)")
    approved: int
    first_attempt_pass_rate: float
    attempts_per_approved: float | None = Field(description="attempts of those shots per approved shot")


class Preference(Answer):
    """What the learner prefers for one decision now, and how sure it is."""
    decision: str = Field(description="cfg, steps, sampler, lora_scale, refine_denoise, refine_cycles, or "
                                      "fix:<failure reason>")
    arm: str = Field(description="the value (or correction) with the highest posterior pass rate")
    mean: float = Field(description="its posterior mean pass rate")
    low: float = Field(description="the 90 % credible interval of its pass rate")
    high: float
    trials: int = Field(description="attempts counted for it")
    p_best: float = Field(description="the probability it is the best of the arms tried")


class LearnedNegative(Answer):
    term: str
    category: str = Field(description="the rejection category that taught it")
    times: int = Field(description="rejections that taught it")
    last_shot: str | None
    created_at: datetime
    removed_at: datetime | None = Field(description="when a person removed it (a new rejection teaches it again)")


class CharacterLearning(Answer):
    character: str = Field(description="the name shots use ('' for the shots that name no character)")
    history: list[LearningPoint]
    preferences: list[Preference]
    negatives: list[LearnedNegative]


class Analytics(Answer):
    characters: list[CharacterAnalytics]
    corrections: list[CorrectionAnalytics]
    learning: list[CharacterLearning] = Field([], description="per character: first-attempt pass rate and attempts "
                                                              "per approved shot over its batches, what the learner "
                                                              "prefers now, the negatives it learned")


class BatchEvent(Batch):
    """The data of each server-sent event (`event: progress` on every change, then `event: done`)."""


def shots_of(data: Any) -> list[Shot]:
    """The queued form of a parsed shot list that names no media (tests, benchmarks, examples)."""
    return [Shot.from_input(shot) for shot in parse_shot_list(data).shots]
