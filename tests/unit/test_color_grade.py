"""Colour grade: one mapping for the whole shot (no flicker), Reinhard Lab transfer, and controls that do what
their names say; CIEDE2000 drift measures and anchoring a chain of shots to its first. On real photos:
InsightFace's t1.jpg and a ComfyUI template picture."""
import cv2
import numpy as np
import pytest

from shotline.core.color_grade import (REC709, Grade, GradeSettings, LabStats, color_drift, delta_e_2000,
                                       grade_frames, lab_stats, mean_delta_e)
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


# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula": all 34 test pairs (Lab 1, Lab 2, ΔE00),
# among them the hue-angle wrap-arounds (pairs 9-15) an implementation most often gets wrong.
SHARMA_PAIRS = [
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 3.1571, -77.2803), (50, 0, -82.7485), 2.8615),
    ((50, 2.8361, -74.0200), (50, 0, -82.7485), 3.4412), ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
    ((50, -1.1848, -84.8006), (50, 0, -82.7485), 1.0000), ((50, -0.9009, -85.5211), (50, 0, -82.7485), 1.0000),
    ((50, 0, 0), (50, -1, 2), 2.3669), ((50, -1, 2), (50, 0, 0), 2.3669),
    ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792), ((50, 2.49, -0.001), (50, -2.49, 0.0010), 7.1792),
    ((50, 2.49, -0.001), (50, -2.49, 0.0011), 7.2195), ((50, 2.49, -0.001), (50, -2.49, 0.0012), 7.2195),
    ((50, -0.001, 2.49), (50, 0.0009, -2.49), 4.8045), ((50, -0.001, 2.49), (50, 0.0010, -2.49), 4.8045),
    ((50, -0.001, 2.49), (50, 0.0011, -2.49), 4.7461), ((50, 2.5, 0), (50, 0, -2.5), 4.3065),
    ((50, 2.5, 0), (73, 25, -18), 27.1492), ((50, 2.5, 0), (61, -5, 29), 22.8977),
    ((50, 2.5, 0), (56, -27, -3), 31.9030), ((50, 2.5, 0), (58, 24, 15), 19.4535),
    ((50, 2.5, 0), (50, 3.1736, 0.5854), 1.0000), ((50, 2.5, 0), (50, 3.2972, 0), 1.0000),
    ((50, 2.5, 0), (50, 1.8634, 0.5757), 1.0000), ((50, 2.5, 0), (50, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_delta_e_2000_matches_sharmas_test_data():
    first, second, expected = (np.array(column, dtype=np.float64) for column in zip(*SHARMA_PAIRS))
    np.testing.assert_allclose(delta_e_2000(first, second), expected, atol=1e-4)  # the paper gives 4 decimals
    np.testing.assert_allclose(delta_e_2000(second, first), expected, atol=1e-4)  # symmetric
    assert delta_e_2000((45, 0, 0), (55, 0, 0)) == pytest.approx(10.0)  # greys about L 50: plain lightness distance


def test_mean_delta_e_compares_frames_pixel_for_pixel(shot):
    assert mean_delta_e(shot, shot) == 0
    lab = cv2.cvtColor(shot[0], cv2.COLOR_RGB2Lab)
    darker = cv2.cvtColor(lab - np.float32([5, 0, 0]), cv2.COLOR_Lab2RGB)
    expected = float(delta_e_2000(cv2.cvtColor(darker, cv2.COLOR_RGB2Lab), lab).mean())
    assert mean_delta_e(darker, shot[0]) == pytest.approx(expected, rel=1e-6)
    assert 3 < expected < 5.5  # 5 L units, weighted by S_L and clipped where the shot was nearly black
    with pytest.raises(ValueError, match="one shape"):
        mean_delta_e(shot, shot[:2])


def test_color_drift_sees_a_cast_more_than_a_change_of_framing(shot):
    assert color_drift(shot, shot) == pytest.approx(0, abs=1e-9)
    reframed = color_drift(shot[1], shot[0])  # a 4 px pan: other pixels, nearly the same colours
    assert 0 < reframed < 1.5  # not 0: the content moved (a 12 px pan over these faces scores about 3)
    warm = np.clip(shot * np.float32([1.08, 1.0, 0.9]), 0, 1)
    casts = [color_drift(warm[index], shot[index]) for index in range(len(shot))]
    assert min(casts) > 3 * reframed and max(casts) - min(casts) < 0.3  # the same cast scores alike on each frame
    assert color_drift(warm, lab_stats(shot)) == color_drift(warm, shot)


def _drift_step(frame: np.ndarray, colour: bool = True) -> np.ndarray:
    """A chained shot's start: a small crop of the last frame (the camera moved) with, like a generation step, a
    warm cast, more saturation and darker mid-tones."""
    side = frame.shape[0]
    frame = cv2.resize(frame[3:, 2:side - 1], (side, side), interpolation=cv2.INTER_AREA)
    if not colour:
        return frame
    frame = np.clip(frame * np.float32([1.05, 1.0, 0.95]), 0, 1)
    luma = (frame @ REC709)[..., None]
    return np.clip(luma + 1.06 * (frame - luma), 0, 1) ** np.float32(1 / 0.94)


def _chain(picture: np.ndarray, strength: float | None, shots: int = 6) -> list[np.ndarray]:
    chain = [picture]
    for _ in range(shots - 1):
        frame = _drift_step(chain[-1])
        if strength is not None:
            frame = grade_frames(frame, GradeSettings(match_strength=strength), reference=picture)[0]
        chain.append(frame)
    return chain


def test_anchoring_to_the_first_shot_stops_colour_drift_along_a_chain(reference):
    picture = cv2.resize(reference, (128, 128), interpolation=cv2.INTER_AREA)
    truth = [picture]
    for _ in range(5):
        truth.append(_drift_step(truth[-1], colour=False))
    drift, error = {}, {}
    for strength in (None, 0.8, 1.0):
        chain = _chain(picture, strength)
        drift[strength] = [color_drift(frame, picture) for frame in chain[1:]]
        error[strength] = np.mean([mean_delta_e(frame, true) for frame, true in zip(chain[1:], truth[1:])])
    assert drift[None][-1] > 15 and np.all(np.diff(drift[None]) > 2)  # unanchored, it accumulates shot by shot
    assert max(drift[0.8]) < 2.0 and max(drift[1.0]) < 0.5  # anchored, it stays put
    assert np.mean(drift[0.8]) < 0.15 * np.mean(drift[None])
    assert error[0.8] < 0.5 * error[None] and error[1.0] < 0.5 * error[None]  # pixel for pixel against truth too
