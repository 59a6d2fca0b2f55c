"""Corrections: what the next attempt of a rejected shot changes, chosen from why it was rejected.

    reason in the verdict                 correction
    blurry, noisy                         more steps (x1.5, at least +8, at most 80)
    low contrast                          higher cfg (+1.5, at most 15)
    under- / overexposed                  a new seed, and "balanced exposure" in the prompt
    too small                             size scaled up to the checks' minimum side (multiple of 8, at most 2048)
    wrong face count / unexpected face    "solo" in the prompt, "extra people, crowd" in the negative
    low identity / missing character /    a shot naming characters: the identity ladder below; any other
      no face found                         shot: a new seed and the prompt weighted up, (prompt:1.15)
    invalid pixels (NaN)                  a new seed
    anything else                         a new seed

Identity failures of a shot that names its characters climb a ladder, one rung per identity failure (the rung
is kept in every correction, so a blurry attempt between two identity failures does not reset it):

    rung  name                 changes
    1     seed + weight        a new seed; character_weight +0.15 (design prompts weighted up, at most 1.6)
    2     LoRAs + refine       a new seed; lora_scale +0.2 when a character's sheet lists LoRAs (at most 1.6);
                               Face Refine: refine_cycles +2 (from 3, at most 8), refine_denoise +0.1 (from
                               0.45, at most 0.75)
    3     from reference       where the preset has an Input Image: image-to-image from the first character's
                               most typical reference (the dispatcher uploads it); a new seed. Without one, rung
                               2 again (more cycles, higher denoise, up to their limits)

Several reasons combine (a blurry crowd gets more steps and "solo"). Pure logic: params in, params out; what the
shot's preset and characters offer comes in as `CorrectionContext`.

The learner (learner.py) may choose another correction for a reason, among FIX_OPTIONS (the first of each is the
table's own; for low identity the ladder's next rung is): `fixes` = {reason: option}, e.g. {"blurry": "new seed",
"low identity": "rung 3"} (a rung chosen is jumped to, and the ladder goes on from there).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_STEPS = 80
MAX_CFG = 15.0
MAX_SIDE = 2048
SEED_STEP = 7919  # a prime: successive corrections never revisit a seed
SOLO = "solo"
CROWD_NEGATIVE = "extra people, crowd, multiple people"
WEIGHT_STEP, MAX_WEIGHT = 0.15, 1.6
LORA_STEP, MAX_LORA_SCALE = 0.2, 1.6
BASE_REFINE_CYCLES, REFINE_CYCLES_STEP, MAX_REFINE_CYCLES = 3, 2, 8
BASE_REFINE_DENOISE, REFINE_DENOISE_STEP, MAX_REFINE_DENOISE = 0.45, 0.1, 0.75
IDENTITY_RUNGS = {1: "seed + weight", 2: "LoRAs + refine", 3: "from reference"}
WEIGHT = re.compile(r"^\((?P<text>.*):(?P<weight>[0-9.]+)\)$", re.DOTALL)
NEW_SEED = "new seed"
FIX_OPTIONS: dict[str, tuple[str, ...]] = {  # reason -> the corrections the learner chooses between
    "low identity": ("rung 1", "rung 2", "rung 3"),
    "blurry": ("more steps", NEW_SEED),
    "noisy": ("more steps", NEW_SEED),
    "low contrast": ("higher cfg", NEW_SEED),
    "extra people": ("solo and crowd negative", NEW_SEED),
    "exposure": ("balanced exposure", NEW_SEED),
}


def _reasons(verdicts: list[dict]) -> list[str]:
    return [reason.lower() for verdict in verdicts for reason in verdict.get("reasons", [])]


def _min_side(verdicts: list[dict]) -> int | None:
    sides = [verdict.get("thresholds", {}).get("min_side") for verdict in verdicts if verdict.get("check") == "quality"]
    return max((side for side in sides if side), default=None)


def _weighted(prompt: str, step: float = 0.15, limit: float = 1.6) -> str:
    match = WEIGHT.match(prompt.strip())
    if match:
        weight = min(limit, float(match["weight"]) + step)
        return f"({match['text']}:{weight:.2f})"
    return f"({prompt}:{1 + step:.2f})"


def _append(text: str, words: str) -> str:
    return words if not text.strip() else (text if words in text else f"{text}, {words}")


@dataclass(frozen=True)
class CorrectionContext:
    """What the shot's preset and characters offer the corrections."""
    has_loras: bool = False          # a character of the shot has LoRAs in its sheet
    has_input_image: bool = False    # the preset has a node titled "Input Image"
    fields: frozenset | None = None  # the shot fields the preset has a node for (None: any)


def _raised(params: dict, field: str, base: float, step: float, cap: float) -> float:
    """`field` one `step` up from its value (`base` when unset), at most `cap`, never below the value set."""
    value = params.get(field)
    current = base if value is None else float(value)
    return round(max(current, min(cap, current + step)), 2)


def _more_faces_than_characters(reasons: list[str]) -> bool:
    """Whether a face-count reason says there were more faces than characters (not fewer)."""
    for reason in reasons:
        match = re.search(r"wrong face count: (\d+) faces? for (\d+) character", reason)
        if match and int(match[1]) > int(match[2]):
            return True
    return any("unexpected face" in reason for reason in reasons)


def _identity_rung(params: dict, rung: int, context: CorrectionContext, changes: dict) -> str:
    """Apply identity rung `rung` to `changes`; the rung's description."""
    if rung >= 3 and context.has_input_image and params.get("characters") and not params.get("image"):
        changes["reference_image_of"] = params["characters"][0]  # resolved to an upload by the dispatcher
        return f"rung 3 {IDENTITY_RUNGS[3]}: image-to-image from {params['characters'][0]}'s reference"
    if rung >= 2:
        parts = []
        if context.has_loras:
            changes["lora_scale"] = _raised(params, "lora_scale", 1.0, LORA_STEP, MAX_LORA_SCALE)
            parts.append(f"LoRA scale {changes['lora_scale']:g}")
        changes["refine_cycles"] = int(_raised(params, "refine_cycles", BASE_REFINE_CYCLES, REFINE_CYCLES_STEP,
                                               MAX_REFINE_CYCLES))
        changes["refine_denoise"] = _raised(params, "refine_denoise", BASE_REFINE_DENOISE, REFINE_DENOISE_STEP,
                                            MAX_REFINE_DENOISE)
        parts.append(f"refine {changes['refine_cycles']} cycles at denoise {changes['refine_denoise']:g}")
        return f"rung 2 {IDENTITY_RUNGS[2]}: " + ", ".join(parts)
    changes["character_weight"] = _raised(params, "character_weight", 1.0, WEIGHT_STEP, MAX_WEIGHT)
    return f"rung 1 {IDENTITY_RUNGS[1]}: character weight {changes['character_weight']:g}"

# reason -> the learned knobs a failure for it counts against (the learner's credit: a blurry frame says nothing
# about its cfg); a failure with any other reason (too small, NaN pixels, an execution error) counts against all
BLAME: dict[str, tuple[str, ...]] = {
    "blurry": ("steps", "sampler"),
    "noisy": ("steps", "sampler"),
    "low contrast": ("cfg",),
    "exposure": ("cfg",),
    "extra people": (),
    "low identity": ("lora_scale", "refine_denoise", "refine_cycles"),
}


def blamed_knobs(params: dict, verdicts: list[dict]) -> list[str] | None:
    """The knobs a failure with these verdicts counts against; None for all (a reason BLAME does not know)."""
    reasons = _reasons(verdicts)
    if not reasons:
        return None
    known = failure_reasons(params, verdicts)
    explained = [reason for reason in reasons if any(_names(reason, name) for name in known)]
    if len(explained) < len(reasons):
        return None
    return sorted({knob for reason in known for knob in BLAME[reason]})


def _names(reason: str, name: str) -> bool:
    """Whether a verdict's reason text is one of failure_reasons' `name`."""
    words = {"exposure": ("underexposed", "overexposed"), "extra people": ("wrong face count", "unexpected face"),
             "low identity": ("low identity", "missing character", "no face found")}.get(name, (name,))
    return any(word in reason for word in words)


def failure_reasons(params: dict, verdicts: list[dict]) -> list[str]:
    """The reasons of FIX_OPTIONS the verdicts give (what the learner may choose a correction for)."""
    reasons = _reasons(verdicts)
    has = lambda *words: any(word in reason for reason in reasons for word in words)  # noqa: E731
    found = [word for word in ("blurry", "noisy", "low contrast") if has(word)]
    if has("underexposed", "overexposed"):
        found.append("exposure")
    if has("wrong face count", "unexpected face") and _more_faces_than_characters(reasons):
        found.append("extra people")
    if has("low identity", "missing character", "no face found") and params.get("characters"):
        found.append("low identity")
    return found


def default_fix(reason: str, previous: dict | None = None) -> str:
    """The table's own correction for `reason` (for low identity: the ladder's next rung)."""
    if reason == "low identity":
        return f"rung {min(3, int((previous or {}).get('identity_rung') or 0) + 1)}"
    return FIX_OPTIONS[reason][0]


def choose_correction(params: dict, verdicts: list[dict], attempt_no: int, previous: dict | None = None,
                      context: CorrectionContext = CorrectionContext(), fixes: dict | None = None) -> dict:
    """{"changes": {field: new value}, "reason": "...", "identity_rung": n[, "step": "..."][, "fixes": {...}]}
    for the attempt after `attempt_no`; `previous` is the correction that made that attempt (None for the
    first); `fixes` the learner's choices ({reason: option of FIX_OPTIONS}), kept in the correction."""
    rung = int((previous or {}).get("identity_rung") or 0)
    step = None
    fixes = fixes or {}
    reasons = _reasons(verdicts)
    has = lambda *words: any(word in reason for reason in reasons for word in words)  # noqa: E731
    chose_seed = lambda *names: any(fixes.get(name) == NEW_SEED for name in names if has(name))  # noqa: E731
    changes: dict = {}
    why: list[str] = []
    new_seed = False

    if has("blurry", "noisy"):  # an under-sampled frame is noisy or soft: more steps for either
        if chose_seed("blurry", "noisy") and not any(fixes.get(name) == "more steps" for name in ("blurry", "noisy")):
            new_seed = True
        else:
            steps = int(params.get("steps") or 20)
            changes["steps"] = min(MAX_STEPS, max(steps + 8, round(steps * 1.5)))
        why.extend(word for word in ("blurry", "noisy") if has(word))
    if has("low contrast"):
        if fixes.get("low contrast") == NEW_SEED:
            new_seed = True
        else:
            changes["cfg"] = min(MAX_CFG, float(params.get("cfg") or 7.0) + 1.5)
        why.append("low contrast")
    if has("underexposed", "overexposed"):
        if fixes.get("exposure") != NEW_SEED:
            changes["prompt"] = _append(changes.get("prompt", params.get("prompt", "")), "balanced exposure")
        new_seed = True
        why.append("exposure")
    if has("too small"):
        side = _min_side(verdicts) or 512
        width, height = int(params.get("width") or 512), int(params.get("height") or 512)
        scale = side / min(width, height)
        if scale > 1:
            changes["width"] = min(MAX_SIDE, int(round(width * scale / 8)) * 8)
            changes["height"] = min(MAX_SIDE, int(round(height * scale / 8)) * 8)
            why.append("too small")
    if has("wrong face count", "unexpected face") and _more_faces_than_characters(reasons):
        if fixes.get("extra people") == NEW_SEED:
            new_seed = True
        else:
            if len(params.get("characters") or ()) <= 1:  # "solo" would push a two-character shot to one person
                changes["prompt"] = _append(changes.get("prompt", params.get("prompt", "")), SOLO)
            changes["negative"] = _append(params.get("negative", ""), CROWD_NEGATIVE)
        why.append("extra people")
    if has("low identity", "missing character", "no face found"):
        if params.get("characters"):
            chosen = re.fullmatch(r"rung ([123])", fixes.get("low identity") or "")
            rung = int(chosen[1]) if chosen else rung + 1
            step = _identity_rung(params, rung, context, changes)
        else:
            changes["prompt"] = _weighted(changes.get("prompt", params.get("prompt", "")))
        new_seed = True
        why.append("low identity")
    if has("invalid pixels"):
        new_seed = True
        why.append("invalid pixels")
    if new_seed or not changes:
        changes["seed"] = (int(params.get("seed") or 0) + SEED_STEP * attempt_no) % (2**63)
        if not why:
            why.append(reasons[0].split(":")[0] if reasons else "rejected")
    if context.fields is not None:  # a change no node of the preset takes would fail the next attempt's build
        skipped = sorted(field for field in changes if field not in context.fields and field != "reference_image_of")
        changes = {field: value for field, value in changes.items() if field not in skipped}
        if skipped:
            why.append(f"(the preset takes no {', '.join(skipped)})")
    correction = {"changes": changes, "reason": ", ".join(why)}
    if fixes:
        correction["fixes"] = dict(fixes)
    if rung:
        correction["identity_rung"] = rung
    if step:
        correction["step"] = step
    return correction
