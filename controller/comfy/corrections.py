"""Corrections: what the next attempt of a rejected shot changes, chosen from why it was rejected.

    reason in the verdict                 correction
    blurry                                more steps (x1.5, at least +8, at most 80)
    low contrast                          higher cfg (+1.5, at most 15)
    under- / overexposed                  a new seed, and "balanced exposure" in the prompt
    too small                             size scaled up to the checks' minimum side (multiple of 8, at most 2048)
    wrong face count / unexpected face    "solo" in the prompt, "extra people, crowd" in the negative
    low identity / missing character /    a new seed and the prompt weighted up, (prompt:1.15), one step more
      no face found                         each time
    invalid pixels (NaN)                  a new seed
    anything else                         a new seed

Several reasons combine (a blurry crowd gets more steps and "solo"). Pure logic: params in, params out.
"""
from __future__ import annotations

import re

MAX_STEPS = 80
MAX_CFG = 15.0
MAX_SIDE = 2048
SEED_STEP = 7919  # a prime: successive corrections never revisit a seed
SOLO = "solo"
CROWD_NEGATIVE = "extra people, crowd, multiple people"
WEIGHT = re.compile(r"^\((?P<text>.*):(?P<weight>[0-9.]+)\)$", re.DOTALL)


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


def choose_correction(params: dict, verdicts: list[dict], attempt_no: int) -> dict:
    """{"changes": {field: new value}, "reason": "..."} for the attempt after `attempt_no`."""
    reasons = _reasons(verdicts)
    has = lambda *words: any(word in reason for reason in reasons for word in words)  # noqa: E731
    changes: dict = {}
    why: list[str] = []
    new_seed = False

    if has("blurry"):
        steps = int(params.get("steps") or 20)
        changes["steps"] = min(MAX_STEPS, max(steps + 8, round(steps * 1.5)))
        why.append("blurry")
    if has("low contrast"):
        changes["cfg"] = min(MAX_CFG, float(params.get("cfg") or 7.0) + 1.5)
        why.append("low contrast")
    if has("underexposed", "overexposed"):
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
    if has("wrong face count", "unexpected face"):
        changes["prompt"] = _append(changes.get("prompt", params.get("prompt", "")), SOLO)
        changes["negative"] = _append(params.get("negative", ""), CROWD_NEGATIVE)
        why.append("extra people")
    if has("low identity", "missing character", "no face found"):
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
    return {"changes": changes, "reason": ", ".join(why)}
