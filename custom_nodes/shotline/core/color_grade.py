"""Colour grade for a whole shot: exposure, contrast, saturation, gamma, and a match to a reference frame.

Pure numpy/OpenCV, no ComfyUI import. Frames are float32 RGB in 0..1, [N,H,W,3] (or one [H,W,3]).

A shot must not flicker, so the grade is one per-pixel mapping applied to every frame alike: nothing is measured
per frame. The reference match is Reinhard et al.'s colour transfer (2001) in CIELAB (OpenCV's float Lab:
L 0..100, a/b about -127..127): each Lab channel is shifted and scaled so that the mean and standard deviation
of the shot, pooled over ALL its frames, become those of the reference (pooled over all reference frames), then
blended with the original by `match_strength`. The statistics are computed once per call; the same input pixel
value gives the same output value wherever it appears in the batch.

Order: match, exposure (stops, x * 2**exposure), contrast (around mid-grey 0.5), saturation (around Rec.709
luma), gamma (x ** (1 / gamma): above 1 lifts the mid-tones, below 1 darkens them; black and white stay put), then
a clip to 0..1. Neutral settings (0, 1, 1, 1, no reference or strength 0) return the input unchanged.

Drift is measured in CIEDE2000: `mean_delta_e` pixel for pixel, `color_drift` between shots of other content
(bench/bench_color_drift.py measures anchoring a continuity chain to its first shot with them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_MIN_STD = 1e-3  # a flat channel (e.g. a grey shot's a/b) is not stretched into noise


@dataclass(frozen=True)
class GradeSettings:
    exposure: float = 0.0        # stops: +1 doubles the light
    contrast: float = 1.0        # 1 = unchanged; 0 = flat mid-grey
    saturation: float = 1.0      # 1 = unchanged; 0 = grey
    gamma: float = 1.0           # 1 = unchanged; > 1 brighter mid-tones
    match_strength: float = 1.0  # 0..1 blend of the reference match (used only with a reference)

    def __post_init__(self):
        if not -10 <= self.exposure <= 10:
            raise ValueError(f"exposure must be -10..10 stops, got {self.exposure}")
        if not 0 <= self.contrast <= 10 or not 0 <= self.saturation <= 10:
            raise ValueError(f"contrast and saturation must be 0..10, got {self.contrast}, {self.saturation}")
        if not 0.05 <= self.gamma <= 20:
            raise ValueError(f"gamma must be 0.05..20, got {self.gamma}")
        if not 0 <= self.match_strength <= 1:
            raise ValueError(f"match_strength must be 0..1, got {self.match_strength}")


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of L, a, b over every pixel of a set of frames."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def _as_batch(frames) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be float RGB [N,H,W,3] (or [H,W,3]), got shape {list(frames.shape)}")
    return frames


def to_lab(frame: np.ndarray) -> np.ndarray:
    frame = np.clip(np.asarray(frame, dtype=np.float32), np.float32(0), np.float32(1))
    return cv2.cvtColor(frame, cv2.COLOR_RGB2Lab)


def lab_stats(frames) -> LabStats:
    """Lab mean and std pooled over all pixels of all frames: per-frame sums of x and x^2 (float64, from
    OpenCV's meanStdDev), combined, so one frame at a time is in Lab."""
    frames = _as_batch(frames)
    total, squares = np.zeros(3), np.zeros(3)
    pixels = frames.shape[1] * frames.shape[2]
    for frame in frames:
        mean, std = (v.ravel() for v in cv2.meanStdDev(to_lab(frame)))
        total += mean * pixels
        squares += (np.square(std) + np.square(mean)) * pixels
    count = pixels * len(frames)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return LabStats(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def is_neutral(settings: GradeSettings, matching: bool) -> bool:
    return (settings.exposure == 0 and settings.contrast == 1 and settings.saturation == 1 and settings.gamma == 1
            and not (matching and settings.match_strength > 0))


class Grade:
    """One fixed per-pixel mapping; build it once per shot (`Grade.for_shot`) and apply it to every frame."""

    def __init__(self, settings: GradeSettings, source: LabStats | None = None, target: LabStats | None = None):
        if (source is None) != (target is None):
            raise ValueError("a reference match needs both the shot's and the reference's Lab statistics")
        self.settings = settings
        self.source, self.target = source, target
        self._match = source is not None and settings.match_strength > 0
        if self._match:
            src_mean, tgt_mean = np.array(source.mean), np.array(target.mean)
            scale = np.maximum(np.array(target.std), _MIN_STD) / np.maximum(np.array(source.std), _MIN_STD)
            # lab' = lab + s * ((lab - mu_s) * k + mu_t - lab)  ==  lab * gain + offset, per channel
            strength = settings.match_strength
            gain, offset = 1 + strength * (scale - 1), strength * (tgt_mean - src_mean * scale)
            self._lab_matrix = np.hstack([np.diag(gain), offset[:, None]]).astype(np.float32)
        # exposure, contrast and saturation compose into one affine map of RGB, applied in one OpenCV pass:
        # saturation S = s*I + (1-s) * [luma weights in every row]; S keeps greys, so the contrast pivot passes
        s, c, e = settings.saturation, settings.contrast, 2.0 ** settings.exposure
        saturation = s * np.eye(3) + (1 - s) * np.tile(REC709.astype(np.float64), (3, 1))
        self._rgb_matrix = np.hstack([c * e * saturation, np.full((3, 1), 0.5 * (1 - c))]).astype(np.float32)
        self._affine = not (s == 1 and c == 1 and e == 1)

    @classmethod
    def for_shot(cls, frames, settings: GradeSettings, reference=None) -> Grade:
        """The grade of a shot: with a reference (frames, or its LabStats), the match statistics of the whole
        shot and the whole reference are measured here, once."""
        if reference is None or settings.match_strength == 0:
            return cls(settings)
        target = reference if isinstance(reference, LabStats) else lab_stats(reference)
        return cls(settings, lab_stats(frames), target)

    @property
    def neutral(self) -> bool:
        return is_neutral(self.settings, self._match)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The graded copy of one float RGB frame [H,W,3] in 0..1."""
        out = np.clip(np.asarray(frame, dtype=np.float32), np.float32(0), np.float32(1))
        if self._match:
            lab = cv2.transform(cv2.cvtColor(out, cv2.COLOR_RGB2Lab), self._lab_matrix)
            out = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
        if self._affine:
            out = cv2.transform(out, self._rgb_matrix)
        if self.settings.gamma != 1:
            out = cv2.pow(np.clip(out, np.float32(0), np.float32(1)), 1.0 / self.settings.gamma)
        return np.clip(out, np.float32(0), np.float32(1))


def grade_frames(frames, settings: GradeSettings = GradeSettings(), reference=None,
                 on_frame: Callable[[], None] | None = None) -> np.ndarray:
    """Grade a shot ([N,H,W,3] or [H,W,3] float RGB 0..1) with one mapping for all its frames; `reference` is a
    frame, a batch of frames or their LabStats. Returns float32 [N,H,W,3]."""
    frames = _as_batch(frames)
    grade = Grade.for_shot(frames, settings, reference)
    out = np.empty_like(frames)
    for index, frame in enumerate(frames):
        out[index] = grade.apply(frame)
        if on_frame is not None:
            on_frame()
    return out


# --- colour difference: how far a shot's colour has drifted from a reference -------------------------------

def delta_e_2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005, kL = kC = kH = 1) of Lab values [..., 3], broadcast;
    float64. About 1 is a just-noticeable difference between flat patches."""
    lab1, lab2 = np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)
    (L1, a1, b1), (L2, a2, b2) = np.moveaxis(lab1, -1, 0), np.moveaxis(lab2, -1, 0)
    c7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c7 / (c7 + 25.0 ** 7)))
    a1, a2 = a1 * (1 + g), a2 * (1 + g)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    chroma = c1 * c2 != 0  # a grey has no hue: its hue difference is 0 and the mean hue is the sum
    dh = h2 - h1
    dh = np.where(chroma, dh - 360 * np.sign(dh) * (np.abs(dh) > 180), 0.0)
    dH = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh) / 2)
    h_mean = np.where(chroma & (np.abs(h1 - h2) > 180), (h1 + h2 + np.where(h1 + h2 < 360, 360, -360)) / 2,
                      np.where(chroma, (h1 + h2) / 2, h1 + h2))
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    l50 = ((L1 + L2) / 2 - 50) ** 2
    c_mean = (c1 + c2) / 2
    c7 = c_mean ** 7
    rt = -2 * np.sqrt(c7 / (c7 + 25.0 ** 7)) * np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2))))
    dl = (L2 - L1) / (1 + 0.015 * l50 / np.sqrt(20 + l50))
    dc = (c2 - c1) / (1 + 0.045 * c_mean)
    dH = dH / (1 + 0.015 * c_mean * t)
    return np.sqrt(np.maximum(dl ** 2 + dc ** 2 + dH ** 2 + rt * dc * dH, 0.0))


def mean_delta_e(frames_a, frames_b) -> float:
    """Mean CIEDE2000 difference, pixel for pixel, of two RGB frames or batches of the same shape (one frame at a
    time in Lab, so a long shot does not need its float64 copy in memory)."""
    frames_a, frames_b = _as_batch(frames_a), _as_batch(frames_b)
    if frames_a.shape != frames_b.shape:
        raise ValueError(f"mean_delta_e compares frames of one shape, got {list(frames_a.shape)} and "
                         f"{list(frames_b.shape)}")
    return float(np.mean([delta_e_2000(to_lab(a), to_lab(b)).mean() for a, b in zip(frames_a, frames_b)]))


def color_drift(shot, reference) -> float:
    """How far a shot's colour is from a reference shot's when their content differs (chained shots: a new
    angle, a moved camera), so no pixel has a partner: CIEDE2000 between the two mean Lab colours (the cast and
    exposure seen across a cut) plus the Euclidean distance between the Lab standard deviations (contrast and
    colourfulness), both in Lab units. Each side is frames, a batch, or its LabStats; pooled over all frames.
    Two framings of one picture score near 0, not 0. The grade matches exactly these statistics, so it scores
    the grade's own aim; a benchmark should also measure pixel for pixel against ground truth (mean_delta_e)."""
    shot = shot if isinstance(shot, LabStats) else lab_stats(shot)
    reference = reference if isinstance(reference, LabStats) else lab_stats(reference)
    spread = np.linalg.norm(np.subtract(shot.std, reference.std))
    return float(delta_e_2000(shot.mean, reference.mean) + spread)
