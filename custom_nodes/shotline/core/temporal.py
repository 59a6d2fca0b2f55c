"""Temporal checks for a batch of frames (a shot): structural stability and brightness flicker.

Pure numpy/OpenCV, no ComfyUI import. Frames are float RGB arrays in 0..1, (N, H, W, C) or a list of (H, W, C).

- Stability: SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5) between consecutive frames, on grey copies
  shrunk to at most `analysis_side` pixels (fine detail is noise for this purpose, and it keeps a 512 px pair
  under a few milliseconds). A scene cut or a frame that collapses into noise scores low.
- Flicker: the jump in mean luma (0..1) from one frame to the next. A slow fade moves a little every frame and
  passes; a frame that flashes brighter or darker than its neighbours does not.

Never raises on a bad frame: NaN is read as black, and a batch of fewer than two frames passes with nothing to compare.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from .image_quality import luma


@dataclass(frozen=True)
class TemporalThresholds:
    min_ssim: float = 0.5          # consecutive frames less alike than this are a cut or a collapse
    max_luma_jump: float = 0.06    # mean-luma change between consecutive frames (0..1; 0.06 is about 15 grey levels)
    analysis_side: int = 256       # frames are shrunk so their longest side is at most this

    def __post_init__(self):
        if not 0 < self.min_ssim <= 1 or not 0 < self.max_luma_jump <= 1 or self.analysis_side < 16:
            raise ValueError(f"invalid temporal thresholds: {self}")


@dataclass
class TemporalVerdict:
    frame_count: int
    ssim: list[float]              # between frame i and i+1
    luma: list[float]              # mean luma of each frame
    luma_jumps: list[float]        # |luma[i+1] - luma[i]|
    min_ssim: float
    max_luma_jump: float
    scores: dict[str, float]       # "stability", "flicker": 0..1
    score: float
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _grey(frame, side: int) -> np.ndarray:
    frame = np.nan_to_num(np.asarray(frame, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    grey = np.clip(luma(frame), 0.0, 1.0)
    scale = side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return grey


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two grey 0..1 images of the same shape."""
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # K1, K2 for a dynamic range of 1

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    a, b = a.astype(np.float32), b.astype(np.float32)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def assess_frames(frames, thresholds: TemporalThresholds = TemporalThresholds()) -> TemporalVerdict:
    greys = [_grey(frame, thresholds.analysis_side) for frame in frames]
    means = [float(grey.mean()) for grey in greys]
    similarities = [ssim(greys[i], greys[i + 1]) for i in range(len(greys) - 1)]
    jumps = [abs(means[i + 1] - means[i]) for i in range(len(means) - 1)]
    min_ssim = min(similarities, default=1.0)
    max_jump = max(jumps, default=0.0)
    reasons = []
    for i, value in enumerate(similarities):
        if value < thresholds.min_ssim:
            reasons.append(f"unstable: frames {i}-{i + 1} SSIM {value:.2f} < {thresholds.min_ssim:g}")
    for i, value in enumerate(jumps):
        if value > thresholds.max_luma_jump:
            reasons.append(f"flicker: brightness jump {value:.3f} between frames {i} and {i + 1} "
                           f"> {thresholds.max_luma_jump:g}")
    # Scores: 0.5 at the threshold, like the quality checks' sharpness: stability rises linearly from 0 at SSIM 0
    # to 0.5 at min_ssim and 1 at SSIM 1; flicker falls linearly from 1 (no jump) to 0.5 at the threshold and 0 at
    # twice the threshold.
    if min_ssim >= thresholds.min_ssim:
        stability = 0.5 + 0.5 * (min_ssim - thresholds.min_ssim) / max(1e-9, 1.0 - thresholds.min_ssim)
    else:
        stability = 0.5 * max(0.0, min_ssim) / thresholds.min_ssim
    flicker = max(0.0, 1.0 - max_jump / (2.0 * thresholds.max_luma_jump))
    scores = {"stability": round(min(1.0, stability), 4), "flicker": round(flicker, 4)}
    return TemporalVerdict(
        frame_count=len(greys),
        ssim=[round(v, 4) for v in similarities],
        luma=[round(v, 4) for v in means],
        luma_jumps=[round(v, 4) for v in jumps],
        min_ssim=round(min_ssim, 4),
        max_luma_jump=round(max_jump, 4),
        scores=scores,
        score=round(min(scores.values()), 4),
        passed=not reasons,
        reasons=reasons,
    )
