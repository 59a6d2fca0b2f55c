import cv2
import numpy as np
import pytest

from shotline.core.image_quality import QualityThresholds, assess_batch, assess_image
from tests.images import blurred, comfy_example_image, t1_photo, template_image


@pytest.fixture(scope="module")
def example():
    return comfy_example_image()


def test_sharp_image_passes_and_its_blurred_copy_fails_for_blur(example):
    sharp = assess_image(example)
    soft = assess_image(blurred(example, 3.0))
    assert sharp.passed, sharp.reasons
    assert sharp.sharpness > 120
    assert soft.sharpness < sharp.sharpness / 10
    assert soft.scores["sharpness"] < sharp.scores["sharpness"]
    assert not soft.passed
    assert [reason.split(":")[0] for reason in soft.reasons] == ["blurry"]


def test_more_blur_scores_lower(example):
    scores = [assess_image(blurred(example, sigma)).sharpness for sigma in (0.5, 1.0, 2.0, 4.0)]
    assert scores == sorted(scores, reverse=True)


def test_sharpness_is_normalised_for_resolution(example):
    """The same picture at 768 px and 1536 px measures (nearly) the same sharpness."""
    large = cv2.resize(example, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    assert assess_image(large).sharpness == pytest.approx(assess_image(example).sharpness, rel=0.05)


def test_tiny_image_fails_the_resolution_check(example):
    tiny = cv2.resize(example, (64, 64), interpolation=cv2.INTER_AREA)
    result = assess_image(tiny, QualityThresholds(min_side=256))
    assert not result.passed
    assert result.scores["resolution"] == 0.25
    assert any(reason.startswith("too small: 64x64") for reason in result.reasons)


def test_flat_grey_fails_contrast_and_sharpness():
    result = assess_image(np.full((512, 512, 3), 0.5, np.float32))
    assert result.contrast == pytest.approx(0.0, abs=1e-6)
    assert result.scores["contrast"] == 0.0
    assert {reason.split(":")[0] for reason in result.reasons} == {"blurry", "low contrast"}


def test_exposure_clipping(example):
    blown = np.clip(example * 3.0, 0, 1)
    crushed = example * 0.003  # every pixel at or below 1/255
    assert assess_image(blown).clipped_highlights > 0.5
    assert any(r.startswith("overexposed") for r in assess_image(blown).reasons)
    assert assess_image(crushed).clipped_shadows > 0.5
    assert any(r.startswith("underexposed") for r in assess_image(crushed).reasons)
    assert assess_image(example).scores["exposure"] > 0.85


def test_batch_is_as_good_as_its_worst_image(example):
    verdict = assess_batch(np.stack([example, blurred(example, 3.0)]))
    assert not verdict["passed"]
    assert verdict["score"] == min(image["score"] for image in verdict["images"])
    assert verdict["reasons"][0].startswith("image 1: blurry")
    assert len(verdict["images"]) == 2


def test_empty_batch_fails_with_a_reason():
    verdict = assess_batch(np.zeros((0, 64, 64, 3), np.float32))
    assert verdict["passed"] is False and verdict["reasons"] == ["empty batch"]


def test_grey_and_rgba_images_are_accepted(example):
    grey = cv2.cvtColor(example, cv2.COLOR_RGB2GRAY)
    rgba = np.concatenate([example, np.ones_like(example[..., :1])], axis=2)
    assert assess_image(grey[..., None]).sharpness == pytest.approx(assess_image(example).sharpness, rel=1e-3)
    assert assess_image(rgba).sharpness == pytest.approx(assess_image(example).sharpness, rel=1e-6)


def test_invalid_thresholds_are_refused():
    with pytest.raises(ValueError):
        QualityThresholds(min_side=0)


def test_nan_pixels_fail_with_a_reason_and_score_zero(example):
    broken = example.copy()
    broken[:384] = np.nan  # half the frame: what an fp16 overflow in the VAE leaves
    result = assess_image(broken)
    assert result.invalid_pixels == pytest.approx(0.5)
    assert result.score == 0.0 and not result.passed
    assert result.reasons[0].startswith("invalid pixels: 50.0%")
    assert np.isfinite(result.sharpness) and np.isfinite(result.contrast)


def test_noise_is_flagged_on_its_own_though_it_raises_sharpness():
    example = template_image("flux1_krea_dev-1")  # a smooth generated picture: noise 0.5 clean
    clean = assess_image(example)
    assert clean.noise < 7.0 and not any(r.startswith("noisy") for r in clean.reasons)
    rng = np.random.default_rng(1)
    noisy_image = np.clip(example + rng.normal(0, 12 / 255, example.shape).astype(np.float32), 0, 1)
    noisy = assess_image(noisy_image)
    assert noisy.sharpness > clean.sharpness  # what made noise pass as detail
    assert 10.0 < noisy.noise < 16.0 and any(r.startswith("noisy: noise") for r in noisy.reasons)
    assert noisy.scores["noise"] < 0.5 <= clean.scores["noise"]


def test_a_blown_colour_channel_is_overexposure_even_where_luma_is_not(example):
    image = example.copy()
    image[: int(image.shape[0] * 0.61), :, :2] = 1.0    # 61 % of the frame washed out to yellow
    result = assess_image(image)
    assert result.clipped_highlights >= 0.6
    assert any(r.startswith("overexposed") for r in result.reasons)
    assert not any(r.startswith("overexposed") for r in assess_image(example).reasons)


def shallow_focus(picture: np.ndarray, box) -> np.ndarray:
    """`picture` defocused (Gaussian sigma 6) everywhere but inside `box`: a portrait before a soft background."""
    x0, y0, x1, y1 = box
    soft = blurred(picture, 6.0)
    soft[y0:y1, x0:x1] = picture[y0:y1, x0:x1]
    return soft


def test_a_sharp_subject_before_a_defocused_background_passes():
    """The whole-frame Laplacian variance drops with the background; the subject's tiles do not."""
    from shotline.core.image_quality import laplacian_variance, luma

    example = t1_photo()
    height, width = example.shape[:2]
    subject = (width // 3, height // 4, width // 3 + width // 4, height // 4 + height // 3)
    portrait = shallow_focus(example, subject)
    verdict = assess_image(portrait)
    assert verdict.passed, verdict.reasons
    assert verdict.sharpness_region == "sharpest quarter"
    assert laplacian_variance(luma(portrait)) < laplacian_variance(luma(example)) / 3  # what flagged it before
    everywhere = assess_image(blurred(example, 6.0))  # sigma 2.8 px at the 512 px analysis size
    assert not everywhere.passed and everywhere.sharpness < verdict.sharpness / 10


def test_sharpness_is_taken_on_the_faces_when_they_are_given():
    example = t1_photo()
    height, width = example.shape[:2]
    face = (width // 2, height // 2, width // 2 + width // 6, height // 2 + height // 6)
    picture = example.copy()
    x0, y0, x1, y1 = face
    picture[y0:y1, x0:x1] = blurred(example, 4.0)[y0:y1, x0:x1]  # a smeared face in a sharp frame
    on_frame = assess_image(picture)
    on_face = assess_image(picture, faces=[face])
    assert on_frame.passed and on_frame.sharpness_region == "sharpest quarter"
    assert on_face.sharpness_region == "faces" and on_face.sharpness < on_frame.sharpness / 3
    assert not on_face.passed and on_face.reasons[0].endswith("on the faces")
    batch = assess_batch(np.stack([picture, picture]), faces=[[face], None])
    assert [image["sharpness_region"] for image in batch["images"]] == ["faces", "sharpest quarter"]
