"""Preset workflows and the convention for which of their inputs a shot fills.

A preset is a ComfyUI graph saved twice in workflows/: `NAME.json` in editor format (what users open and tune)
and `api/NAME.json` in API format (what the controller queues). Folders in SHOTLINE_PRESETS are searched first,
in order, then the built-ins: the first folder holding the name in either format wins (within one folder its
`api/NAME.json`), so a user's editor file is never hidden by a built-in of the same name. Names are a letter or
digit, then letters, digits, '.', '_' or '-' (official templates are called `wan2.1_...`).

A shot fills inputs of nodes found by title:

    node title        input(s)                 shot field
    Checkpoint        ckpt_name                checkpoint
    Prompt            text                     prompt
    Negative Prompt   text                     negative
    Sampler           seed, steps, cfg,        seed, steps, cfg,
                      sampler_name               sampler
    Size              width, height            size
                      batch_size (or length)   frames
    Interpolate       source_fps               fps
    Dialogue          text                     dialogue (its line); engine and the engine's voice from the
                                                 speaker's sheet when the dialogue names one
    Save              filename_prefix          (set by the controller: shotline/<batch>/<shot>; every node so titled)
    Input Image       image                    image (uploaded to the server that runs the shot); for a
                                                 continuity shot, the last frame of the shot it continues
    Anchor Image      image                    its scene's first approved frame, matched by "Colour Anchor"
                                                 (without one the loader and its link are taken out)
    Character 1..4    character                characters[0..3] (Load Character nodes)
    State 1..4        outfit, injuries, props, each character's state at this shot (Character State nodes)
                      emotion, notes
    Continuity 1..4   image                    each character's face from its best approved shot so far (this
                                                 scene's, else an earlier one's), into its gallery; taken out
                                                 for a character with none
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

Rename a node in the editor to one of these titles to let shots drive it. The titles are optional: for a role
no node is titled for, graph_roles.py finds the node from the wiring (the text encoders feeding the sampler's
positive and negative, the sampler's seed/steps/cfg, its latent's size and frames, every filename_prefix, the one
LoadImage); titles win where present. An untitled graph keeps its own checkpoint (and negative, unless the shot
gives one). A preset where neither finds a node the shot needs fails before anything is queued, naming the
title; two samplers (or image loaders) are named as candidates, to be decided by a title or the shot's `set`.

A shot's `set` ({"<node title or id>.<input>": value}) is applied last, checked against the server's
/object_info (type, range, options) where one is at hand, else against the graph (node and input exist, the
input is a widget, not a link). A shot with `set` may leave the roles that cannot be inferred to it.

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

from shotline.core.characters import STATE_FIELDS, state_fragment
from shotline.core.voices import VOICE_INPUTS

from shotline_controller.comfy.graph_roles import Roles, infer_roles, is_link
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
    "Sampler": {"seed": "seed", "steps": "steps", "cfg": "cfg", "sampler_name": "sampler"},
    "Size": {"width": "width", "height": "height", "batch_size": "frames"},
    "Interpolate": {"source_fps": "fps"},
    "Dialogue": {"text": "dialogue"},
    "Save": {"filename_prefix": None},
    "Input Image": {"image": "image"},  # the shot's image, uploaded to the server that runs the shot
    "Anchor Image": {"image": "anchor_image"},  # the scene's first approved frame, for its "Colour Anchor"
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
# a node titled for a role may take a field under another input: Wan's and LTXV's latents count frames as
# `length` (their `batch_size` is how many videos)
PREFERRED_INPUTS = {"batch_size": "length"}
ANCHOR_IMAGE_TITLE = "Anchor Image"
REQUIRED_TITLES = ("Save",)
PROMPT_TITLES = ("Prompt", "Character Prompt", "Face Repair")  # a preset needs one of them
MAX_CHARACTER_SLOTS = 4


def spoken_line(dialogue) -> str | None:
    """The line a shot speaks: its dialogue, or the one line of a {speaker: line} dialogue."""
    return next(iter(dialogue.values())) if isinstance(dialogue, dict) else dialogue


def character_slot(number: int) -> str:
    return f"Character {number}"


class PresetError(ValueError):
    pass


def _checked_name(name: str) -> str:
    if not re.fullmatch(PRESET_PATTERN[1:-1], name):
        raise PresetError(f"invalid preset name {name!r}")
    return name


def preset_path(name: str, api: bool = True) -> Path:
    """The preset's file in one format from the first folder that has it, else the built-in path (which may not
    exist)."""
    _checked_name(name)
    candidates = [folder / ("api" if api else "") / f"{name}.json" for folder in preset_dirs()]
    return next((path for path in candidates if path.is_file()), candidates[-1])


def find_preset(name: str) -> Path:
    """The preset's file from the first folder that holds it in either format (SHOTLINE_PRESETS in order, then the
    built-ins), so a user's editor file is never hidden by a built-in API file of the same name; within one folder
    its API format wins (an editor file is converted when loaded)."""
    _checked_name(name)
    for folder in preset_dirs():
        for path in (folder / "api" / f"{name}.json", folder / f"{name}.json"):
            if path.is_file():
                return path
    raise PresetError(f"no preset {name!r} (available: {', '.join(available_presets())})")


def available_presets() -> list[str]:
    """The preset names shots may use (no server paths: this text reaches API clients)."""
    return sorted({path.stem for folder in preset_dirs() for path in [*folder.glob("*.json"), *folder.glob("api/*.json")]
                   if re.fullmatch(PRESET_PATTERN[1:-1], path.stem)})


def read_graph(path: Path, name: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PresetError(f"preset {name!r}: {path.name} is not valid JSON: {error}") from None


def is_editor_format(graph) -> bool:
    return isinstance(graph, dict) and isinstance(graph.get("nodes"), list)


def load_preset(name: str, object_info: dict | None = None) -> dict:
    """The preset as an API-format graph. An editor-format file (what the ComfyUI editor saves) is converted
    with comfy-cli's converter against `object_info`, the /object_info of the server that will run it."""
    path = find_preset(name)
    return preset_graph(read_graph(path, name), name, object_info, path.name)


def preset_graph(graph: dict, name: str, object_info: dict | None = None, source: str = "the file") -> dict:
    """`graph` (either format) as the API graph a shot fills, checked to have what every shot needs. Without
    `object_info` an editor-format graph comes back as its titles only (checked when it is converted)."""
    if is_editor_format(graph):
        if object_info is None:
            return {str(node["id"]): {"_meta": {"title": node.get("title")}} for node in graph["nodes"]}
        graph = convert(graph, object_info, name, source)
    if not isinstance(graph, dict) or not all(isinstance(node, dict) and "class_type" in node
                                              for node in graph.values()):
        raise PresetError(f"preset {name!r}: {source} is neither an editor-format nor an API-format graph")
    check_graph(name, graph)
    return graph


def convert(graph: dict, object_info: dict, name: str, source: str = "the file") -> dict:
    from comfy_cli.workflow_to_api import WorkflowConversionError, convert_ui_to_api
    try:
        return convert_ui_to_api(graph, object_info)
    except WorkflowConversionError as error:
        raise PresetError(f"preset {name!r}: cannot convert {source} to API format: {error}") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:  # a file the converter does not expect
        raise PresetError(f"preset {name!r}: cannot convert {source} to API format: "
                          f"{type(error).__name__}: {error}") from None


def check_graph(name: str, graph: dict) -> None:
    """A shot can run on `graph`: it has somewhere to put the output files and the prompt, by title or inferred
    from its wiring (an ambiguity is left to the fill: a shot's `set` may decide it)."""
    targets, roles = shot_targets(graph)
    missing = [title for title in REQUIRED_TITLES if title not in targets]
    if not any(title in targets or title in roles.ambiguous for title in PROMPT_TITLES):
        missing.insert(0, PROMPT_TITLES[0])
    if missing:
        raise PresetError(f"preset {name!r} has no node titled {', '.join(map(repr, missing))} and none was found "
                          "from its wiring (a text encoder feeding a KSampler's positive; an output node with a "
                          "filename_prefix); see the title convention in controller/comfy/presets.py")


def shot_targets(graph: dict) -> tuple[dict[str, list[tuple[str, dict]]], Roles]:
    """role title -> [(node id, {input: shot field})]: the titled nodes (SHOT_INPUTS), and for the roles no node
    is titled for, what graph_roles infers from the wiring. Also the inference itself (its ambiguities)."""
    targets = {title: [(node_id, titled_inputs(graph[node_id], title)) for node_id in ids_titled(graph, title)]
               for title in SHOT_INPUTS}
    targets = {title: found for title, found in targets.items() if found}
    titled = set(targets)
    if titled & {"Character Prompt", "Face Repair"}:  # they take the prompt and the negative themselves
        titled |= {"Prompt", "Negative Prompt"}
    if not all("class_type" in node for node in graph.values()):  # an editor file's titles only
        return targets, Roles()
    roles = infer_roles(graph, frozenset(titled))
    return {**targets, **roles.bindings}, roles


def titled_inputs(node: dict, title: str) -> dict[str, str | None]:
    """The inputs a node with a convention title takes: SHOT_INPUTS', except that a string primitive titled
    'Prompt' (as templates title the text box feeding their encoders) takes its text as `value`."""
    inputs = dict(SHOT_INPUTS[title])
    if "inputs" in node and list(inputs) == ["text"] and "text" not in node["inputs"] \
            and isinstance(node["inputs"].get("value"), str):
        return {"value": inputs["text"]}
    return inputs


def ids_titled(graph: dict, title: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node.get("_meta", {}).get("title") == title]


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
    """The shot fields the preset has a node for (by title or inferred), characters included when it has slots."""
    fields = {field for found in shot_targets(graph)[0].values() for _, inputs in found
              for field in inputs.values() if field}
    return frozenset(fields | ({"characters"} if character_slots(graph) else set()))


def without_titled(graph: dict, titles) -> dict:
    """The graph without the nodes titled one of `titles`, the nodes fed by nothing else, and every link from
    them into the inputs of the nodes that stay (wire such nodes into optional inputs)."""
    titles = set(titles)
    removed = {node_id for node_id, node in graph.items() if node.get("_meta", {}).get("title") in titles}
    while True:
        fed_only_by_removed = {node_id for node_id, node in graph.items() if node_id not in removed and (
            links := [value[0] for value in node["inputs"].values() if is_link(value)]) and set(links) <= removed}
        if not fed_only_by_removed:
            break
        removed |= fed_only_by_removed
    kept = {}
    for node_id, node in graph.items():
        if node_id not in removed:
            inputs = {name: value for name, value in node["inputs"].items()
                      if not (is_link(value) and value[0] in removed)}
            kept[node_id] = {**node, "inputs": inputs}
    return kept


# shot fields a graph need not take: the chosen checkpoint and the default size where the preset does not follow
# the title convention (an untitled graph keeps its own model and, without a latent of its own, its frame)
UNTITLED_OPTIONAL = frozenset({"checkpoint", "width", "height"})


class SetError(PresetError):
    """A shot's `set` entry the graph cannot take: `key` is the entry (its field is `shots[i].set.<key>`)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class FieldError(PresetError):
    """A shot field's value the server's node does not take (its field is `shots[i].<field>`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def is_sound_only(graph: dict) -> bool:
    """Whether everything the graph saves is sound (its Save nodes are audio savers): a shot's size is not its."""
    savers = nodes_titled(graph, "Save")
    return bool(savers) and all("Audio" in node.get("class_type", "") for node in savers)


def state_slot(number: int) -> str:
    return f"State {number}"


def continuity_slot(number: int) -> str:
    return f"Continuity {number}"


def fill_preset(graph: dict, shot: Shot, checkpoint: str | None, filename_prefix: str,
                image_name: str | None = None, object_info: dict | None = None, anchor_image: str | None = None,
                states: dict[str, dict] | None = None, voice: dict | None = None,
                continuity_faces: dict[str, str] | None = None) -> tuple[dict, dict]:
    """A copy of the preset graph with the shot's values in place, and the values filled (recorded per attempt).

    `image_name` is the shot's image as uploaded to the server (what LoadImage takes), not its local path;
    `anchor_image` likewise the frame its "Colour Anchor" matches (without one, the "Anchor Image" loader and its
    link are taken out), and `continuity_faces` each character's face from its best approved shot so far, for
    its "Continuity N" loader (feeding its gallery; taken out for a character with none). `states` holds each
    character's state (outfit, injuries, props, emotion, notes), filled into its "State N" node; `voice`
    ({engine, voice}) the speaker's voice for the "Dialogue" node.
    The shot's fields go into the titled or inferred nodes (shot_targets), then its `set` entries, checked
    against `object_info` when given (else against the graph: the node and the input exist).
    """
    characters = shot.characters or []
    check_character_slots(shot.workflow, graph, len(characters))
    faces = {number: (continuity_faces or {}).get(name) for number, name in enumerate(characters, start=1)}
    # one pass takes out what this shot does not use: the slots past its characters (a shot naming none keeps
    # the preset's own), the continuity loaders with no face, the anchor loader with no anchor
    unused = {continuity_slot(number) for number in range(1, MAX_CHARACTER_SLOTS + 1) if not faces.get(number)}
    if characters:
        unused |= {character_slot(number) for number in range(len(characters) + 1, MAX_CHARACTER_SLOTS + 1)}
    if anchor_image is None:
        unused.add(ANCHOR_IMAGE_TITLE)
    graph = without_titled(copy.deepcopy(graph), unused)
    values = {**shot.as_dict(), "checkpoint": checkpoint, "image": image_name, "anchor_image": anchor_image,
              "dialogue": spoken_line(shot.dialogue)}
    filled = {}
    for number, character in enumerate(characters, start=1):
        for node in nodes_titled(graph, character_slot(number)):
            node["inputs"]["character"] = character
        filled[f"{character_slot(number)}.character"] = character
        for node in nodes_titled(graph, continuity_slot(number)):
            node["inputs"]["image"] = faces[number]
            filled[f"{continuity_slot(number)}.image"] = faces[number]
        state = (states or {}).get(character, {})
        for node in nodes_titled(graph, state_slot(number)):
            for field in STATE_FIELDS:
                node["inputs"][field] = state.get(field, "")
        if state and nodes_titled(graph, state_slot(number)):
            filled[f"{state_slot(number)}.fragment"] = state_fragment(state)
            filled.update({f"{state_slot(number)}.{field}": value for field, value in state.items()})
        elif state:
            filled[f"{state_slot(number)}.fragment"] = f"not used: the preset has no node titled {state_slot(number)!r}"
    if voice:
        spoken = {"engine": voice["engine"], VOICE_INPUTS[voice["engine"]]: voice["voice"]}
        for node in nodes_titled(graph, "Dialogue"):
            node["inputs"].update(spoken)
            filled.update({f"Dialogue.{name}": value for name, value in spoken.items()})
    targets, roles = shot_targets(graph)
    taken: set[str | None] = set()
    for title, found in targets.items():
        titled = bool(ids_titled(graph, title))
        for node_id, inputs in found:
            node = graph[node_id]
            for input_name, field in inputs.items():
                value = filename_prefix if field is None else values.get(field)
                if value is None or (not titled and field == "negative" and value == ""):
                    continue  # the preset's own value stands (an untitled graph keeps its negative)
                if PREFERRED_INPUTS.get(input_name) in node["inputs"]:
                    input_name = PREFERRED_INPUTS[input_name]  # a video latent's `length`, not its `batch_size`
                if input_name not in node["inputs"]:
                    raise PresetError(f"preset {shot.workflow!r}: node titled {title!r} ({node['class_type']}) "
                                      f"has no input {input_name!r}")
                if object_info is not None and field == "sampler":
                    problem = value_problem(object_info, node["class_type"], input_name, value)
                    if problem:
                        raise FieldError(field, f"{input_name} of node {node_id} ({node['class_type']}) {problem}")
                node["inputs"][input_name] = value
                filled[f"{title}.{input_name}"] = value
                taken.add(field)
    convention = any(ids_titled(graph, title) for title in ("Sampler", *PROMPT_TITLES))
    sound_only = is_sound_only(graph)  # music takes no width or height
    drives_itself = bool(shot.set)  # a shot with `set` may leave the roles that cannot be inferred to it
    for title, inputs in SHOT_INPUTS.items():
        for field in inputs.values():
            value = filename_prefix if field is None else values.get(field)
            if field in taken or value is None or value == "" or (field == "checkpoint" and not shot.checkpoint) \
                    or (not convention and field in UNTITLED_OPTIONAL and not (field == "checkpoint"
                                                                              and shot.checkpoint)) \
                    or (sound_only and field in ("width", "height")):
                continue
            titles = [name for name, ins in SHOT_INPUTS.items() if field in ins.values()]
            unclear = next((roles.ambiguous[name] for name in titles if name in roles.ambiguous), None)
            if unclear and drives_itself and field not in ("steps", "cfg", "image"):
                continue
            where = f": it has {unclear}" if unclear else ""
            raise PresetError(f"preset {shot.workflow!r} has no node titled {' or '.join(map(repr, titles))} "
                              f"for the shot's {field or 'output files'}{where}")
    side = requested_side(graph, values)
    if side is not None and values.get("min_side") is None:
        for node in nodes_titled(graph, "Quality"):
            node["inputs"]["min_side"] = side
            filled["Quality.min_side"] = side
    for key, value in (shot.set or {}).items():
        for node_id, input_name in set_targets(graph, key, object_info):
            if object_info is not None:
                problem = value_problem(object_info, graph[node_id]["class_type"], input_name, value)
                if problem:
                    raise SetError(key, f"{input_name} of node {node_id} ({graph[node_id]['class_type']}) {problem}")
            graph[node_id]["inputs"][input_name] = value
        filled[f"set.{key}"] = value
    return graph, filled


def set_targets(graph: dict, key: str, object_info: dict | None = None) -> list[tuple[str, str]]:
    """The (node id, input) pairs a `set` key `<node title or id>.<input>` names: the node with that id, else
    every node with that title. SetError when there is none, the input is not one of the node's widgets, or it is
    wired from another node (set gives values, it does not cut links)."""
    node_name, _, input_name = key.rpartition(".")
    if not node_name or not input_name:
        raise SetError(key, "must be '<node title or id>.<input>'")
    ids = [node_name] if node_name in graph else ids_titled(graph, node_name)
    if not ids:
        titles = sorted({t for node in graph.values() if (t := node.get("_meta", {}).get("title"))})
        raise SetError(key, f"no node with id or title {node_name!r} in preset (titles: {', '.join(titles[:30])})")
    found = []
    for node_id in ids:
        node = graph[node_id]
        known = set(node["inputs"])
        if object_info is not None:
            spec = object_info.get(node["class_type"], {}).get("input", {})
            known |= set(spec.get("required", {})) | set(spec.get("optional", {}))
        if input_name not in known:
            raise SetError(key, f"node {node_id} ({node['class_type']}) has no input {input_name!r} (it has: "
                                f"{', '.join(sorted(known))})")
        if is_link(node["inputs"].get(input_name)):
            raise SetError(key, f"input {input_name!r} of node {node_id} ({node['class_type']}) is wired from node "
                                f"{node['inputs'][input_name][0]}: set gives widget values, it cuts no links")
        found.append((node_id, input_name))
    return found


def input_spec(object_info: dict, class_type: str, input_name: str) -> list | None:
    spec = object_info.get(class_type, {}).get("input", {})
    return spec.get("required", {}).get(input_name) or spec.get("optional", {}).get(input_name)


def value_problem(object_info: dict, class_type: str, input_name: str, value) -> str | None:
    """Why `value` does not fit the input as the server's /object_info describes it (type, range, options)."""
    if class_type not in object_info:
        return f"cannot be checked: the server has no node {class_type!r}"
    spec = input_spec(object_info, class_type, input_name)
    if not spec:
        return "is not an input the server's node takes"
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if kind == "COMBO" or isinstance(kind, list):
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if value not in choices:
            shown = ", ".join(map(repr, choices[:20])) + (" ..." if len(choices) > 20 else "")
            return f"must be one of the server's options ({shown or 'none'}), got {value!r}"
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "INT" and not (number and isinstance(value, int)):
        return f"must be a whole number, got {value!r}"
    if kind == "FLOAT" and not number:
        return f"must be a number, got {value!r}"
    if kind == "STRING" and not isinstance(value, str):
        return f"must be text, got {value!r}"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return f"is a {kind} input: it takes a link, not a value"
    if number:
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be from {low} to {high}, got {value!r}"
    return None


def requested_side(graph: dict, values: dict) -> int | None:
    """The shortest side of the frame the shot asks for, when the preset generates at the shot's size (it has a
    Size node): what the Quality check's min_side follows unless the shot sets min_side, so a 128 px shot is
    checked as 128 px, not against the preset's 512. None for a preset that takes its frame from elsewhere."""
    if not nodes_titled(graph, "Size"):
        return None
    sides = [values.get(name) for name in ("width", "height")]
    sides = [side for side in sides if isinstance(side, int) and side > 0]
    return min(sides) if sides else None
