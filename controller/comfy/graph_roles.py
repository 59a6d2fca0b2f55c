"""Which nodes of an untitled graph a shot fills, found from the graph itself.

The title convention (presets.py) says it outright; a graph from elsewhere (ComfyUI's official templates, a
colleague's file) lacks the titles, so the roles are read off its wiring instead. Pure functions over an
API-format graph (comfy-cli's converter has already dissolved reroutes, primitives and subgraphs):

    role             found as
    Sampler          the one KSampler, KSamplerAdvanced, SamplerCustom or SamplerCustomAdvanced; its seed
                     (noise_seed, or the RandomNoise node feeding `noise`), steps (its own or the scheduler
                     feeding `sigmas`), cfg (its own or the CFG guider feeding `guider`), sampler_name
                     (its own or the KSamplerSelect feeding `sampler`)
    Prompt           the text encoders feeding the sampler's positive (through conditioning nodes: combine,
    Negative Prompt  concat, set area/mask/timestep range, Flux guidance, ControlNet apply, guiders ...); the
                     negative stops at ConditioningZeroOut (it then has no text)
    Size             the latent the sampler starts from, when it has width and height (batch_size or length:
                     the shot's frames)
    Save             every node with a filename_prefix
    Input Image      the one LoadImage

A role that has a titled node is not inferred (titles win). Two samplers, or two image loaders for a shot that
sends an image, cannot be told apart: `Roles.ambiguous` says why, naming the candidates, and the fill refuses
the shot before anything is queued unless a title (or the shot's `set`) decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
TEXT_INPUTS = ("text", "prompt", "text_g", "text_l", "clip_l", "clip_g", "t5xxl", "tags")  # a text encoder's
STRING_SOURCES = ("value", "string", "text")  # a string primitive's literal, when an encoder's text is linked
ZERO_CONDITIONING = ("ConditioningZeroOut",)
IMAGE_LOADERS = ("LoadImage",)
# titled loaders the controller fills with other frames
OTHER_IMAGE_ROLES = ("Anchor Image", "End Image", *(f"Continuity {number}" for number in range(1, 5)))
MAX_DEPTH = 64


@dataclass
class Roles:
    """role title -> [(node id, {input name: shot field})]; a None field is filled by the controller."""
    bindings: dict[str, list[tuple[str, dict[str, str | None]]]] = field(default_factory=dict)
    ambiguous: dict[str, str] = field(default_factory=dict)  # role title -> why it cannot be inferred
    candidates: dict[str, list[str]] = field(default_factory=dict)  # role title -> node ids it could be

    def add(self, role: str, node_id: str, inputs: dict[str, str | None]) -> None:
        if inputs:
            self.bindings.setdefault(role, []).append((node_id, inputs))


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def describe(graph: dict, node_ids) -> str:
    return ", ".join(f"{node_id} ({graph[node_id].get('class_type')}"
                     + (f" {title!r}" if (title := graph[node_id].get("_meta", {}).get("title")) else "") + ")"
                     for node_id in node_ids)


def _source(graph: dict, value) -> tuple[str, int, dict] | None:
    if is_link(value) and value[0] in graph:
        return value[0], value[1], graph[value[0]]
    return None


def _literal(node: dict, name: str, kind) -> bool:
    value = node.get("inputs", {}).get(name)
    return isinstance(value, kind) and not isinstance(value, bool)


def _text_targets(graph: dict, node_id: str) -> list[tuple[str, str]]:
    """(node id, input) pairs holding the text of the encoder `node_id`: its literal text inputs, or the literal of
    the string primitive a linked one comes from. Empty when it is not a text encoder."""
    node = graph[node_id]
    targets = []
    for name in TEXT_INPUTS:
        value = node.get("inputs", {}).get(name)
        if isinstance(value, str):
            targets.append((node_id, name))
        elif (source := _source(graph, value)) is not None:
            primitive = next((key for key in STRING_SOURCES if isinstance(source[2]["inputs"].get(key), str)), None)
            if primitive and not any(is_link(v) for v in source[2]["inputs"].values()):
                targets.append((source[0], primitive))
    return targets


def text_encoders(graph: dict, value, seen: set | None = None, depth: int = 0) -> list[str]:
    """The text encoders whose conditioning reaches the linked input `value`, nearest first."""
    seen = set() if seen is None else seen
    source = _source(graph, value)
    if source is None or depth > MAX_DEPTH or (source[0], source[1]) in seen:
        return []
    seen.add((source[0], source[1]))
    node_id, slot, node = source
    if node.get("class_type") in ZERO_CONDITIONING:
        return []
    if _text_targets(graph, node_id):
        return [node_id]
    inputs = node.get("inputs", {})
    if is_link(inputs.get("positive")) and is_link(inputs.get("negative")):
        # ControlNetApplyAdvanced, InstructPix2Pix, WanImageToVideo ...: output 0 is the positive, 1 the negative
        follow = {0: ["positive"], 1: ["negative"]}.get(slot, [])
    else:
        follow = [name for name, linked in inputs.items() if is_link(linked) and "cond" in name.lower()]
    found = []
    for name in follow:
        for encoder in text_encoders(graph, inputs[name], seen, depth + 1):
            if encoder not in found:
                found.append(encoder)
    return found


def _conditioning_starts(graph: dict, sampler_id: str) -> tuple[list, list]:
    """The sampler's positive and negative conditioning links (through its guider for SamplerCustomAdvanced)."""
    inputs = graph[sampler_id]["inputs"]
    if "guider" in inputs:
        guider = _source(graph, inputs["guider"])
        if guider is None:
            return [], []
        inputs = guider[2]["inputs"]
    positive = [inputs[name] for name in ("positive", "conditioning", "cond1", "cond2") if is_link(inputs.get(name))]
    negative = [inputs["negative"]] if is_link(inputs.get("negative")) else []
    return positive, negative


def _sampler_bindings(graph: dict, sampler_id: str) -> list[tuple[str, dict]]:
    """Where the sampler's seed, steps and cfg live: on itself or on the nodes feeding noise, sigmas, guider."""
    inputs = graph[sampler_id]["inputs"]
    own = {name: fld for name, fld in (("seed", "seed"), ("noise_seed", "seed"), ("steps", "steps"), ("cfg", "cfg"))
           if _literal(graph[sampler_id], name, (int, float))}
    if _literal(graph[sampler_id], "sampler_name", (str,)):
        own["sampler_name"] = "sampler"
    bindings = [(sampler_id, own)]
    for link_name, wanted in (("noise", {"noise_seed": "seed", "seed": "seed"}), ("sigmas", {"steps": "steps"}),
                              ("guider", {"cfg": "cfg"}), ("sampler", {"sampler_name": "sampler"})):
        source = _source(graph, inputs.get(link_name))
        if source is not None:
            bindings.append((source[0], {name: fld for name, fld in wanted.items()
                                         if _literal(source[2], name, (str,) if name == "sampler_name" else
                                                     (int, float))}))
    return [(node_id, found) for node_id, found in bindings if found]


def latent_size(graph: dict, value, depth: int = 0) -> tuple[str, dict] | None:
    """The node making the latent the sampler starts from, when the shot's size fits it (width and height)."""
    source = _source(graph, value)
    if source is None or depth > MAX_DEPTH:
        return None
    node_id, _, node = source
    inputs = node.get("inputs", {})
    if _literal(node, "width", int) and _literal(node, "height", int):
        found = {"width": "width", "height": "height"}
        for name in ("length", "batch_size"):  # a video latent's frame count, else a batch of frames
            if _literal(node, name, int):
                found[name] = "frames"
                break
        return node_id, found
    for name in ("samples", "latent", "latent_image", "samples1", "video_latent"):
        if is_link(inputs.get(name)):
            return latent_size(graph, inputs[name], depth + 1)
    return None


def samplers(graph: dict) -> list[str]:
    return [node_id for node_id, node in graph.items() if node.get("class_type") in SAMPLER_CLASSES]


def infer_roles(graph: dict, titled: frozenset | set = frozenset()) -> Roles:
    """The roles a shot fills in `graph`, except those in `titled` (the titles the graph already has)."""
    roles = Roles()
    if "Save" not in titled:
        for node_id, node in graph.items():
            if isinstance(node.get("inputs", {}).get("filename_prefix"), str):
                roles.add("Save", node_id, {"filename_prefix": None})
    if "Input Image" not in titled:
        loaders = [node_id for node_id, node in graph.items()
                   if node.get("class_type") in IMAGE_LOADERS and isinstance(node["inputs"].get("image"), str)
                   and node.get("_meta", {}).get("title") not in OTHER_IMAGE_ROLES]
        roles.candidates["Input Image"] = loaders
        if len(loaders) == 1:
            roles.add("Input Image", loaders[0], {"image": "image"})
        elif loaders:
            roles.ambiguous["Input Image"] = (
                f"{len(loaders)} image loaders: {describe(graph, loaders)}; title the one the shot's image goes "
                "into 'Input Image', or name the others' files with `set`")
    wanted = {"Sampler", "Prompt", "Negative Prompt", "Size"} - set(titled)
    if not wanted:
        return roles
    # a titled Sampler is the one whose prompts and latent are followed
    found = [node_id for node_id, node in graph.items() if node.get("_meta", {}).get("title") == "Sampler"] \
        if "Sampler" in titled else samplers(graph)
    roles.candidates["Sampler"] = found
    if len(found) != 1:
        if found:
            why = (f"{len(found)} samplers: {describe(graph, found)}; title the one shots drive 'Sampler' (and its "
                   "prompts 'Prompt' / 'Negative Prompt', its latent 'Size'), or drive them with `set`")
            for role in wanted:
                roles.ambiguous[role] = why
        return roles
    sampler_id = found[0]
    if "Sampler" in wanted:
        for node_id, inputs in _sampler_bindings(graph, sampler_id):
            roles.add("Sampler", node_id, inputs)
    positive_links, negative_links = _conditioning_starts(graph, sampler_id)
    positive = [encoder for link in positive_links for encoder in text_encoders(graph, link)]
    negative = [encoder for link in negative_links for encoder in text_encoders(graph, link)
                if encoder not in positive]
    for role, field_name, encoders in (("Prompt", "prompt", positive), ("Negative Prompt", "negative", negative)):
        if role not in wanted:
            continue
        for encoder in dict.fromkeys(encoders):
            targets: dict[str, dict] = {}
            for node_id, name in _text_targets(graph, encoder):
                targets.setdefault(node_id, {})[name] = field_name
            for node_id, inputs in targets.items():
                roles.add(role, node_id, inputs)
    if "Size" in wanted:
        size = latent_size(graph, graph[sampler_id]["inputs"].get("latent_image"))
        if size is not None:
            roles.add("Size", *size)
    return roles
