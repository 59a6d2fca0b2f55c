"""One verdict for a shot from its checks: approve, review or reject.

The overall score is a weighted mean of the check scores present: identity weighs 0.6, quality 0.4, temporal
coherence (video shots) 0.2 on top; the weights are renormalised over the checks that ran. Bands:

    reject   overall < reject_below, or a hard identity failure (no face, a character missing, wrong face count)
    approve  overall >= approve_at and every check passed
    review   everything else: a person decides
    golden   an approved shot whose every character scores >= golden_at: fit for a training dataset

Pure logic: the inputs are the JSON verdicts the check nodes emit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

CHECK_WEIGHTS = {"identity": 0.6, "quality": 0.4, "temporal": 0.2}
# identity failure reasons that no human review can rescue
HARD_IDENTITY_FAILURES = ("no face", "missing character", "wrong face count")


@dataclass(frozen=True)
class BandThresholds:
    approve_at: float = 0.92
    reject_below: float = 0.40
    identity_pass: float = 0.75
    golden_at: float = 0.85

    def __post_init__(self):
        values = (self.approve_at, self.reject_below, self.identity_pass, self.golden_at)
        if not all(0.0 <= value <= 1.0 for value in values) or self.reject_below > self.approve_at:
            raise ValueError(f"band thresholds must lie in 0..1 with reject_below <= approve_at: {self}")


def character_scores(identity: dict, default_threshold: float) -> dict[str, tuple[float, float]]:
    """(score, threshold) per character from an identity verdict ({"characters": {name: {"score", "threshold"}}}).

    A character's own threshold (from its sheet) overrides the default.
    """
    return {name: (float(result["score"]),
                   float(default_threshold if result.get("threshold") is None else result["threshold"]))
            for name, result in identity.get("characters", {}).items() if result.get("score") is not None}


def decide_band(quality: dict | None, identity: dict | None = None, temporal: dict | None = None,
                thresholds: BandThresholds = BandThresholds()) -> dict:
    checks = {name: verdict for name, verdict in (("quality", quality), ("identity", identity),
                                                  ("temporal", temporal)) if verdict is not None}
    if not checks:
        return {"check": "shot", "band": "reject", "passed": False, "golden": False, "score": 0.0,
                "reasons": ["no check verdicts to judge"], "checks": {}, "thresholds": asdict(thresholds)}
    weight = sum(CHECK_WEIGHTS[name] for name in checks)
    overall = sum(CHECK_WEIGHTS[name] * float(verdict["score"]) for name, verdict in checks.items()) / weight
    reasons = [f"{name}: {reason}" for name, verdict in checks.items() for reason in verdict.get("reasons", [])]

    per_character = character_scores(identity, thresholds.identity_pass) if identity else {}
    identity_ok = identity is None or (identity.get("passed", False)
                                       and all(score >= limit for score, limit in per_character.values()))
    if identity is not None:
        for name, (score, limit) in per_character.items():
            if score < limit and not any(name in reason for reason in identity.get("reasons", [])):
                reasons.append(f"identity: low identity: {name} {score:.2f} < {limit:g}")
    hard_failure = identity is not None and any(
        marker in reason for reason in identity.get("reasons", []) for marker in HARD_IDENTITY_FAILURES)
    all_passed = identity_ok and all(verdict.get("passed", False) for name, verdict in checks.items()
                                     if name != "identity")

    if overall < thresholds.reject_below or hard_failure:
        band = "reject"
        if overall < thresholds.reject_below:
            reasons.append(f"overall {overall:.3f} < reject_below {thresholds.reject_below:g}")
    elif overall >= thresholds.approve_at and all_passed:
        band = "approve"
    else:
        band = "review"
        if all_passed:
            reasons.append(f"overall {overall:.3f} < approve_at {thresholds.approve_at:g}")
    golden = band == "approve" and bool(per_character) and all(
        score >= thresholds.golden_at for score, _ in per_character.values())
    return {
        "check": "shot",
        "band": band,
        "passed": band == "approve",
        "golden": golden,
        "score": round(overall, 4),
        "reasons": reasons,
        "checks": {name: {"score": verdict["score"], "passed": verdict.get("passed")}
                   for name, verdict in checks.items()},
        "thresholds": asdict(thresholds),
    }
