"""Image quality checks for generated frames: sharpness, contrast, exposure, noise and resolution.

Pure numpy/OpenCV, no ComfyUI import, so unit tests and the controller can use it directly.
Images are float arrays in 0..1, shaped (H, W, C) as ComfyUI's IMAGE tensors are per frame.

Each check gives a raw measurement, a 0..1 score and a pass flag; a failed check adds a reason.
A check never raises on a bad image: it returns a verdict the graph or the controller can act on.

Sharpness is the subject's (`subject_sharpness`): the faces when given, else the sharpest quarter of the frame.
On the 240 pictures labelled sharp in bench/bench_verdicts.py's set, `min_sharpness` 35 flags 4 originals (a
clay-animation clip at 16-22 and one video frame) and 95 % of their copies blurred by sigma 2 px of the 512 px
analysis frame; the whole-frame variance under 100 flagged a quarter of the originals.

Noise raises the Laplacian variance (sharpness) as much as detail does (σ 12 grey levels lifted one template
image from 28 to 917), so noise is measured on its own: Immerkær's estimator (1996), the mean absolute response
of a kernel that cancels planes and smooth ramps, per colour channel at the frame's own resolution. On 44 of
ComfyUI's template images it reads 0.3-5.9 levels clean (median 1.4), 5.0-9.2 with σ 6 of noise added per
channel and 8.8-13.9 with σ 12; `max_noise` 7 flags every σ 12 copy and no clean one. Highlights count a pixel blown when its luma is, or two of its channels are (a washed-out yellow
sky is lost detail though its luma is not at the top); shadows stay on luma, because a saturated colour has
dark channels by nature.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

# Sharpness is measured on a copy resampled to this many pixels, so the Laplacian variance of a
# 2048 px frame and of a 512 px frame of the same scene are comparable ("normalised for resolution").
SHARPNESS_ANALYSIS_PIXELS = 512 * 512
SHARPNESS_GRID = 8  # subject sharpness: tiles per side
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


@dataclass(frozen=True)
class QualityThresholds:
    min_sharpness: float = 35.0      # Laplacian variance (0..255 grey levels) of the subject (`subject_sharpness`)
    min_contrast: float = 0.08       # RMS contrast: standard deviation of luma in 0..1
    max_clipped: float = 0.15        # share of pixels crushed to black or blown to white, each side
    min_side: int = 512              # shortest side in pixels
    max_noise: float = 7.0           # noise σ estimate (0..255 levels, per channel) at the frame's resolution

    def __post_init__(self):
        if (self.min_sharpness <= 0 or self.min_contrast <= 0 or not 0 < self.max_clipped <= 1 or self.min_side < 1
                or self.max_noise <= 0):
            raise ValueError(f"invalid quality thresholds: {self}")


@dataclass
class ImageQuality:
    width: int
    height: int
    sharpness: float           # Laplacian variance at the analysis size, on the subject (`subject_sharpness`)
    contrast: float            # RMS contrast
    clipped_shadows: float     # share of pixels with luma <= 1/255
    clipped_highlights: float  # share of pixels blown: luma, or two channels, at >= 254/255
    noise: float               # noise σ estimate in 0..255 levels, mean over the colour channels
    invalid_pixels: float      # share of pixels with a NaN or infinite value (a failed decode)
    scores: dict[str, float]   # per check, 0..1
    score: float               # mean of the check scores, 0..1
    passed: bool
    reasons: list[str] = field(default_factory=list)
    sharpness_region: str = "sharpest quarter"   # or "faces": where sharpness was measured

    def as_dict(self) -> dict:
        return asdict(self)


def luma(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in 0..1 of an (H, W, C) or (H, W) float image."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, C) image with 1, 3 or 4 channels, got shape {image.shape}")
    if image.shape[2] == 1:
        return image[..., 0]
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


def _analysis_laplacian(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The Laplacian of a 0..1 grey image resampled to the analysis size, in 0..255 levels, and the scale used."""
    height, width = grey.shape
    scale = (SHARPNESS_ANALYSIS_PIXELS / float(height * width)) ** 0.5
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA when shrinking averages pixels (no aliasing); INTER_CUBIC when growing a small image.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(grey * 255.0, size, interpolation=interpolation)
    return cv2.Laplacian(resized, cv2.CV_32F, ksize=1), scale


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the Laplacian of a 0..1 grey image, in 0..255 grey levels, at the analysis size."""
    return float(_analysis_laplacian(grey)[0].var())


def subject_sharpness(grey: np.ndarray, boxes=None) -> float:
    """Sharpness of the subject, not of the whole frame, in 0..255 levels at the analysis size: with face
    `boxes` (x0, y0, x1, y1 in the image's pixels), the Laplacian variance inside them (area-weighted over the
    faces); without, the mean variance of the sharpest quarter of the tiles of an 8 x 8 grid.

    The whole-frame variance flags shallow-focus portraits as blurry: a sharp subject before a smooth or
    defocused background averages low. A frame blurred all over is low in every tile."""
    laplacian, scale = _analysis_laplacian(grey)
    rows, cols = laplacian.shape
    variances, areas = [], []
    for x0, y0, x1, y1 in boxes or ():
        left, top = max(0, int(round(x0 * scale))), max(0, int(round(y0 * scale)))
        right, bottom = min(cols, int(round(x1 * scale))), min(rows, int(round(y1 * scale)))
        if (right - left) * (bottom - top) >= 16:  # a face of a few pixels says nothing
            variances.append(float(laplacian[top:bottom, left:right].var()))
            areas.append((right - left) * (bottom - top))
    if variances:
        return float(np.average(variances, weights=areas))
    grid = SHARPNESS_GRID
    edges_y = np.linspace(0, rows, grid + 1).round().astype(int)
    edges_x = np.linspace(0, cols, grid + 1).round().astype(int)
    tiles = np.sort([laplacian[edges_y[i]:edges_y[i + 1], edges_x[j]:edges_x[j + 1]].var()
                     for i in range(grid) for j in range(grid)
                     if edges_y[i + 1] > edges_y[i] and edges_x[j + 1] > edges_x[j]])[::-1]
    return float(np.mean(tiles[:max(1, len(tiles) // 4)]))


def noise_sigma(image: np.ndarray) -> float:
    """Immerkær's noise σ estimate of a 0..1 image, in 0..255 levels: the mean over its colour channels (noise
    of generated frames is per channel; luma would average a third of it away). 0 for a tiny image."""
    image = np.asarray(image, dtype=np.float32)
    planes = [image] if image.ndim == 2 else [image[..., c] for c in range(min(3, image.shape[2]))]
    if planes[0].shape[0] < 3 or planes[0].shape[1] < 3:
        return 0.0
    sigmas = [np.abs(cv2.filter2D(np.ascontiguousarray(plane) * 255.0, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]).mean()
              for plane in planes]
    return float(np.sqrt(np.pi / 2.0) * np.mean(sigmas) / 6.0)


def blown_share(image: np.ndarray, grey: np.ndarray) -> float:
    """The share of pixels blown: luma at >= 254/255, or at least two colour channels there (washed out to
    yellow, cyan, magenta or white). One channel at its top is a vivid colour, not lost detail: 82 % of the
    pixels of ComfyUI's own example picture have one."""
    level = 254.0 / 255.0
    blown = grey >= level
    if image.ndim == 3 and image.shape[2] >= 3:
        blown |= np.count_nonzero(image[..., :3] >= level, axis=-1) >= 2
    return float(np.count_nonzero(blown) / grey.size)


def assess_image(image: np.ndarray, thresholds: QualityThresholds = QualityThresholds(),
                 faces=None) -> ImageQuality:
    """The verdict for one frame. `faces`: face boxes (x0, y0, x1, y1) found in it, e.g. by Identity Check; the
    sharpness is then measured on them."""
    image = np.asarray(image, dtype=np.float32)
    not_finite = ~np.isfinite(image)
    invalid = 0.0
    if not_finite.any():
        invalid = float((not_finite.any(axis=-1) if image.ndim == 3 else not_finite).mean())
        image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    grey = np.clip(luma(image), 0.0, 1.0)
    height, width = grey.shape
    faces = [tuple(float(v) for v in box) for box in faces or ()]
    sharpness = subject_sharpness(grey, faces)
    _, std = cv2.meanStdDev(grey)
    contrast = float(std[0, 0])
    shadows = float(np.count_nonzero(grey <= 1.0 / 255.0) / grey.size)
    highlights = blown_share(image, grey)
    noise = noise_sigma(np.clip(image, 0.0, 1.0))
    shortest = min(height, width)

    # Each score is linear in its measurement, 0.5 at the threshold and 1 from twice the threshold on.
    scores = {
        "sharpness": min(1.0, sharpness / (2.0 * thresholds.min_sharpness)),
        "contrast": min(1.0, contrast / (2.0 * thresholds.min_contrast)),
        "exposure": max(0.0, 1.0 - max(shadows, highlights) / (2.0 * thresholds.max_clipped)),
        "resolution": min(1.0, shortest / float(thresholds.min_side)),
        # 1 up to half the allowed noise (clean frames read 0.2-5.9), 0.5 at it, 0 at one and a half times it
        "noise": min(1.0, max(0.0, 1.5 - noise / thresholds.max_noise)),
    }
    reasons = []
    if invalid:
        reasons.append(f"invalid pixels: {invalid:.1%} are NaN or infinite (a failed decode, e.g. fp16 overflow)")
    if sharpness < thresholds.min_sharpness:
        reasons.append(f"blurry: sharpness {sharpness:.1f} < {thresholds.min_sharpness:g}"
                       f"{' on the faces' if faces else ''}")
    if contrast < thresholds.min_contrast:
        reasons.append(f"low contrast: {contrast:.3f} < {thresholds.min_contrast:g}")
    if shadows > thresholds.max_clipped:
        reasons.append(f"underexposed: {shadows:.1%} of pixels crushed to black > {thresholds.max_clipped:.0%}")
    if highlights > thresholds.max_clipped:
        reasons.append(f"overexposed: {highlights:.1%} of pixels blown (white, or two channels at their top) > "
                       f"{thresholds.max_clipped:.0%}")
    if noise > thresholds.max_noise:
        reasons.append(f"noisy: noise {noise:.1f} > {thresholds.max_noise:g} levels (noise also inflates "
                       "sharpness)")
    if shortest < thresholds.min_side:
        reasons.append(f"too small: {width}x{height}, shortest side {shortest} < {thresholds.min_side}")

    return ImageQuality(
        width=width,
        height=height,
        sharpness=sharpness,
        contrast=contrast,
        clipped_shadows=shadows,
        clipped_highlights=highlights,
        noise=round(noise, 3),
        invalid_pixels=invalid,
        scores={name: round(value, 4) for name, value in scores.items()},
        score=0.0 if invalid else round(float(np.mean(list(scores.values()))), 4),
        passed=not reasons,
        reasons=reasons,
        sharpness_region="faces" if faces else "sharpest quarter",
    )


def assess_batch(images, thresholds: QualityThresholds = QualityThresholds(), on_image=None,
                 faces=None) -> dict:
    """Verdict for a batch (N, H, W, C): per-image results, the batch score (the worst image) and pass (all pass).

    `faces`: per image, its face boxes (or None); `on_image` is called after each image, for progress reporting.
    """
    results = []
    for index, image in enumerate(images):
        results.append(assess_image(image, thresholds, faces[index] if faces and index < len(faces) else None))
        if on_image is not None:
            on_image()
    if not results:
        return {"check": "quality", "score": 0.0, "passed": False, "reasons": ["empty batch"], "images": [],
                "thresholds": asdict(thresholds)}
    return {
        "check": "quality",
        "score": min(result.score for result in results),
        "passed": all(result.passed for result in results),
        "reasons": [f"image {index}: {reason}" for index, result in enumerate(results) for reason in result.reasons],
        "images": [result.as_dict() for result in results],
        "thresholds": asdict(thresholds),
    }
