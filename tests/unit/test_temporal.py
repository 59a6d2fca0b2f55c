"""Consecutive-frame stability (SSIM) and brightness flicker, on a real photo moved, cut and flashed."""
import numpy as np
import pytest

from shotline.core.temporal import TemporalThresholds, assess_frames, ssim
from tests.images import t1_photo, template_image


def pan(image, steps: int, step_px: int = 3):
    """A slow camera pan: 256 px windows sliding right."""
    return [image[100:356, 200 + i * step_px:456 + i * step_px] for i in range(steps)]


def test_a_slow_pan_is_stable_and_steady():
    verdict = assess_frames(pan(t1_photo(), 6))
    assert verdict.passed, verdict.reasons
    assert verdict.frame_count == 6 and len(verdict.ssim) == 5
    assert verdict.min_ssim > 0.6 and verdict.max_luma_jump < 0.01
    assert verdict.scores["flicker"] > 0.9


def test_identical_frames_score_one():
    frame = t1_photo()[:256, :256]
    verdict = assess_frames([frame, frame.copy(), frame.copy()])
    assert verdict.ssim == [1.0, 1.0] and verdict.score == 1.0


def test_a_scene_cut_is_unstable_at_the_cut():
    frames = pan(t1_photo(), 3) + [template_image("controlnet_example-1")[:256, :256]]
    verdict = assess_frames(frames)
    assert not verdict.passed
    assert [reason.split(" SSIM")[0] for reason in verdict.reasons if reason.startswith("unstable")] == \
        ["unstable: frames 2-3"]
    assert verdict.scores["stability"] < 0.5


def test_a_flash_is_flicker_and_a_fade_is_not():
    base = pan(t1_photo(), 5, step_px=1)
    flashed = [frame if i != 2 else np.clip(frame * 1.4, 0, 1) for i, frame in enumerate(base)]
    verdict = assess_frames(flashed)
    flicker = [reason for reason in verdict.reasons if reason.startswith("flicker")]
    assert len(flicker) == 2
    assert flicker[0].startswith("flicker: brightness jump 0.") and "between frames 1 and 2 > 0.06" in flicker[0]
    assert verdict.scores["flicker"] < 0.5
    faded = assess_frames([frame * (1 - 0.05 * i) for i, frame in enumerate(base)])
    assert faded.passed, faded.reasons
    assert 0.015 < faded.max_luma_jump < 0.06


def test_ssim_matches_scikit_image():
    import cv2
    from skimage import metrics
    a = cv2.cvtColor(np.ascontiguousarray(pan(t1_photo(), 2)[0]), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(pan(t1_photo(), 2)[1]), cv2.COLOR_RGB2GRAY)
    expected = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(expected, abs=0.01)


def test_odd_input_gives_a_verdict():
    assert assess_frames([t1_photo()]).passed  # one frame: nothing to compare
    assert assess_frames([]).frame_count == 0
    broken = [np.full((64, 64, 3), np.nan, np.float32), np.zeros((64, 64, 3), np.float32)]
    assert assess_frames(broken).ssim == [1.0]  # NaN reads as black
    mixed = assess_frames([np.zeros((64, 64, 3), np.float32), np.zeros((32, 48, 1), np.float32)])
    assert mixed.frame_count == 2
    with pytest.raises(ValueError):
        TemporalThresholds(min_ssim=0)
