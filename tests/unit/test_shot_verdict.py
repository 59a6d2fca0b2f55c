import pytest

from shotline.core.shot_verdict import BandThresholds, decide_band


def quality(score, passed=True, reasons=()):
    return {"check": "quality", "score": score, "passed": passed, "reasons": list(reasons)}


def identity(scores: dict, passed=True, reasons=()):
    return {"check": "identity", "score": min(scores.values()) if scores else 0.0, "passed": passed,
            "reasons": list(reasons), "characters": {name: {"score": s} for name, s in scores.items()}}


def test_strong_shot_is_approved_and_golden():
    verdict = decide_band(quality(0.95), identity({"Aiko": 0.96}))
    assert (verdict["band"], verdict["passed"], verdict["golden"]) == ("approve", True, True)
    assert verdict["score"] == pytest.approx(0.6 * 0.96 + 0.4 * 0.95, abs=1e-4)


def test_approved_but_not_golden_when_a_character_is_below_golden_at():
    verdict = decide_band(quality(1.0), identity({"Aiko": 0.97, "Ren": 0.84}), thresholds=BandThresholds(
        approve_at=0.85))
    assert verdict["band"] == "approve" and not verdict["golden"]


def test_middle_scores_go_to_review_with_the_reason():
    verdict = decide_band(quality(0.85), identity({"Aiko": 0.9}))
    assert verdict["band"] == "review"
    assert any(reason.startswith("overall 0.880 < approve_at 0.92") for reason in verdict["reasons"])


def test_low_identity_is_reviewed_not_approved_even_with_a_high_overall():
    verdict = decide_band(quality(1.0), identity({"Aiko": 0.7}, passed=False,
                                                   reasons=["low identity: Aiko 0.70 < 0.75"]),
                          thresholds=BandThresholds(approve_at=0.8))
    assert verdict["band"] == "review"
    assert "identity: low identity: Aiko 0.70 < 0.75" in verdict["reasons"]


@pytest.mark.parametrize("reason", ["no face found", "missing character: Ren",
                                    "wrong face count: 3 faces for 2 characters"])
def test_hard_identity_failures_reject(reason):
    verdict = decide_band(quality(0.95), identity({"Aiko": 0.9}, passed=False, reasons=[reason]))
    assert verdict["band"] == "reject" and f"identity: {reason}" in verdict["reasons"]


def test_very_low_overall_rejects():
    verdict = decide_band(quality(0.2, passed=False, reasons=["image 0: blurry: sharpness 3.0 < 100"]))
    assert verdict["band"] == "reject"
    assert verdict["reasons"] == ["quality: image 0: blurry: sharpness 3.0 < 100", "overall 0.200 < reject_below 0.4"]


def test_quality_alone_and_temporal_weights():
    assert decide_band(quality(0.95))["band"] == "approve"
    verdict = decide_band(quality(1.0), identity({"A": 1.0}), {"check": "temporal", "score": 0.0, "passed": False})
    assert verdict["score"] == pytest.approx(1.0 / 1.2, abs=1e-4) and verdict["band"] == "review"


def test_no_checks_and_bad_thresholds():
    assert decide_band(None)["band"] == "reject"
    with pytest.raises(ValueError):
        BandThresholds(approve_at=0.3, reject_below=0.5)


def test_a_characters_own_threshold_overrides_the_default():
    lenient = {"check": "identity", "score": 0.72, "passed": True, "reasons": [],
               "characters": {"Aiko": {"score": 0.72, "threshold": 0.7}}}
    assert decide_band(quality(1.0), lenient, thresholds=BandThresholds(approve_at=0.8))["band"] == "approve"
    strict = {**lenient, "characters": {"Aiko": {"score": 0.78, "threshold": 0.8}}, "score": 0.78}
    verdict = decide_band(quality(1.0), strict, thresholds=BandThresholds(approve_at=0.8))
    assert verdict["band"] == "review" and "identity: low identity: Aiko 0.78 < 0.8" in verdict["reasons"]
    zero = {**lenient, "characters": {"Aiko": {"score": 0.5, "threshold": 0.0}}, "score": 0.5}
    assert not any("low identity" in reason for reason in decide_band(quality(1.0), zero)["reasons"])
