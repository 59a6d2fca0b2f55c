"""Colour grade: one mapping for the whole shot (no flicker), Reinhard Lab transfer, and controls that do what
their names say. On real photos: InsightFace's t1.jpg and a ComfyUI template picture."""
import numpy as np
import pytest

from shotline.core.color_grade import REC709, Grade, GradeSettings, LabStats, grade_frames, lab_stats
from tests.images import t1_photo, template_image


@pytest.fixture(scope="module")
def shot() -> np.ndarray:
    """Four 128 px frames of a slow pan over t1.jpg."""
    photo = t1_photo()
    return np.stack([photo[100:228, 200 + 4 * i:328 + 4 * i] for i in range(4)])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return template_image("controlnet_example-1")[:192, :192]


def test_neutral_settings_are_the_identity(shot, reference):
    assert np.abs(grade_frames(shot) - shot).max() <= 1e-6
    neutral_with_reference = GradeSettings(match_strength=0.0)
    assert np.abs(grade_frames(shot, neutral_with_reference, reference) - shot).max() <= 1e-6
    assert Grade.for_shot(shot, neutral_with_reference, reference).neutral


def test_the_same_frame_grades_identically_wherever_it_is_in_the_batch(shot, reference):
    batch = np.stack([shot[0], shot[1], shot[2], shot[0], shot[3]])
    settings = GradeSettings(exposure=0.3, contrast=1.2, saturation=0.8, gamma=1.1, match_strength=0.7)
    graded = grade_frames(batch, settings, reference)
    assert np.array_equal(graded[0], graded[3])
    assert not np.array_equal(graded[0], batch[0])  # it did grade


def test_statistics_come_from_the_whole_shot_not_each_frame(shot, reference):
    settings = GradeSettings(match_strength=1.0)
    pooled = Grade.for_shot(shot, settings, reference)
    assert pooled.source == lab_stats(shot)  # the batch, pooled
    whole = grade_frames(shot, settings, reference)
    assert np.array_equal(whole[1], pooled.apply(shot[1]))
    alone = grade_frames(shot[1], settings, reference)[0]  # frame 1 graded on its own statistics
    assert not np.array_equal(whole[1], alone)


def test_transfer_moves_the_shot_lab_mean_and_std_to_the_reference(shot, reference):
    before, target = lab_stats(shot), lab_stats(reference)
    assert max(abs(b - t) for b, t in zip(before.mean, target.mean)) > 5  # the two really differ
    after = lab_stats(grade_frames(shot, GradeSettings(match_strength=1.0), reference))
    np.testing.assert_allclose(after.mean, target.mean, atol=1.5)
    np.testing.assert_allclose(after.std, target.std, rtol=0.1, atol=0.5)
    half = lab_stats(grade_frames(shot, GradeSettings(match_strength=0.5), reference))
    for b, h, t in zip(before.mean, half.mean, target.mean):
        assert h == pytest.approx((b + t) / 2, abs=1.5)


def test_reference_statistics_can_be_given_instead_of_frames(shot, reference):
    settings = GradeSettings(match_strength=0.8)
    stats = lab_stats(reference)
    assert isinstance(stats, LabStats)
    assert np.array_equal(grade_frames(shot, settings, stats), grade_frames(shot, settings, reference))


def test_gamma_above_one_lifts_the_midtones_and_keeps_black_and_white():
    ramp = np.linspace(0, 1, 11, dtype=np.float32)[None, :, None].repeat(3, axis=2)
    lifted = grade_frames(ramp, GradeSettings(gamma=2.0))[0]
    assert lifted[0, 5, 0] == pytest.approx(0.5 ** 0.5, abs=1e-6)
    assert lifted[0, 0, 0] == 0 and lifted[0, 10, 0] == pytest.approx(1.0, abs=1e-6)
    assert (grade_frames(ramp, GradeSettings(gamma=0.5))[0, 0, 1:10] < ramp[0, 1:10]).all()


def test_saturation_zero_is_grey_and_above_one_spreads_the_channels(shot):
    grey = grade_frames(shot, GradeSettings(saturation=0.0))
    assert np.abs(grey - grey[..., :1]).max() <= 1e-6
    np.testing.assert_allclose(grey[..., 0], shot @ REC709, atol=1e-5)  # luma is kept

    def spread(frames):
        return float(np.mean(frames.max(axis=-1) - frames.min(axis=-1)))
    assert spread(grade_frames(shot, GradeSettings(saturation=1.5))) > spread(shot) * 1.2


def test_contrast_stretches_around_mid_grey_and_exposure_multiplies():
    values = np.array([0.3, 0.5, 0.7], dtype=np.float32)[None, :, None].repeat(3, axis=2)
    contrasted = grade_frames(values, GradeSettings(contrast=1.5))[0, 0, :, 0]
    np.testing.assert_allclose(contrasted, [0.2, 0.5, 0.8], atol=1e-6)
    flat = grade_frames(values, GradeSettings(contrast=0.0))[0, 0, :, 0]
    np.testing.assert_allclose(flat, 0.5, atol=1e-6)
    brighter = grade_frames(values, GradeSettings(exposure=1.0))[0, 0, :, 0]
    np.testing.assert_allclose(brighter, [0.6, 1.0, 1.0], atol=1e-6)  # one stop doubles; white clips


def test_bad_settings_and_shapes_are_clear_errors(shot):
    with pytest.raises(ValueError, match="gamma"):
        GradeSettings(gamma=0.0)
    with pytest.raises(ValueError, match="match_strength"):
        GradeSettings(match_strength=1.5)
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        grade_frames(shot[..., :2])
