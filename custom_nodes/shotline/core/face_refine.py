"""Face Refine: re-sample each character's face at a higher resolution, re-score it, keep the best version.

Pure numpy/OpenCV, no ComfyUI import: the sampler and the scorer are callables the node injects.

One face, one cycle (Impact Pack FaceDetailer's crop -> upscale -> sample -> downscale -> feathered paste):
1. `crop_region`: the face box enlarged by `crop_factor` around its centre, shifted (then clipped) to stay inside
   the image.
2. `scaled_size`: the crop resized so its long side is `guide_size`, both sides multiples of the VAE's 8.
3. The sampler gets the scaled crop and a feathered noise mask over the face and returns the refined crop.
4. `paste_refined`: what the sampler *changed* (refined minus the scaled crop) is scaled back and added under the
   feathered paste mask. Pasting the change rather than the refined pixels means that whatever the sampler left
   alone comes back exactly, not blurred by the up-and-down resampling; an identity sampler round-trips the image.
   The change is colour-matched first: its weighted mean over the feather ring is removed, so the refined face
   meets its surroundings with no colour step.
5. The candidate image is scored against the face's own character (`FaceScorer`: re-detect near the box, take the
   face overlapping the box most, embed, IDR).

`refine_frame` runs the cycles: the first always, further ones (seed + cycle) while the best score is under the
character's target, up to `max_cycles`. The unrefined input is a candidate too and a refinement must beat it
strictly, so the output never scores lower than the input. A sample with NaN or infinite pixels (an fp16 VAE that
overflowed) is recorded and dropped, never pasted. `faces_to_refine` finds the faces and gives each its
character as Identity Check does; a face of no character is recorded and left as it is.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from .faces import box_iou
from .identity import DEFAULT_THRESHOLD, assign_faces, counted_faces, embed_faces, identity_score

VAE_MULTIPLE = 8          # SD-family VAEs downscale by 8: the sampled crop's sides must divide by it
MIN_OVERLAP = 0.3         # IoU with the original box below which a re-detected face is some other face
SCORE_CONTEXT = 2.0       # the scorer detects in the box enlarged this much (MTCNN needs some context)
FACE_LOST = "no face found at the box in the refined image"
NON_FINITE = "the sampler returned NaN or infinite pixels: not pasted"


@dataclass(frozen=True)
class CropRegion:
    """A rectangle of whole pixels, [x0, x1) x [y0, y1), inside an image of `image_size` (width, height)."""
    x0: int
    y0: int
    x1: int
    y1: int
    image_size: tuple[int, int]

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def open_sides(self) -> tuple[bool, bool, bool, bool]:
        """Left, top, right, bottom: True where the crop edge is the image border (no seam can show there)."""
        width, height = self.image_size
        return self.x0 == 0, self.y0 == 0, self.x1 == width, self.y1 == height

    def local_box(self, box) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (float(v) for v in box)
        return x0 - self.x0, y0 - self.y0, x1 - self.x0, y1 - self.y0


def _span(centre: float, length: float, limit: int) -> tuple[int, int]:
    length = min(limit, max(1, math.ceil(length)))
    start = round(centre - length / 2)
    start = min(max(start, 0), limit - length)  # shift inside rather than cut: keeps the context around the face
    return start, start + length


def crop_region(box, image_size: tuple[int, int], crop_factor: float) -> CropRegion:
    """The box (x0, y0, x1, y1) enlarged `crop_factor` times around its centre, inside an image (width, height)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = image_size
    left, right = _span((x0 + x1) / 2, (x1 - x0) * crop_factor, width)
    top, bottom = _span((y0 + y1) / 2, (y1 - y0) * crop_factor, height)
    return CropRegion(left, top, right, bottom, (width, height))


def scaled_size(width: int, height: int, guide_size: int, multiple: int = VAE_MULTIPLE) -> tuple[int, int]:
    """(width, height) with the long side `guide_size` (rounded to `multiple`) and the same aspect ratio."""
    long_side = max(multiple, round(guide_size / multiple) * multiple)
    scale = long_side / max(width, height)

    def side(value: int) -> int:
        if value == max(width, height):
            return long_side
        return max(multiple, round(value * scale / multiple) * multiple)
    return side(width), side(height)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at (width, height): area averaging to shrink, bicubic (clipped to the input range) to grow."""
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image.copy()
    shrinking = size[0] * size[1] < width * height
    result = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    if not shrinking:  # bicubic overshoots at edges
        result = np.clip(result, float(image.min()), float(image.max()))
    return result.reshape(size[1], size[0], *image.shape[2:])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _profile(length: int, start: float, end: float, ramp: float, open_low: bool, open_high: bool) -> np.ndarray:
    """1 on [start, end], a smoothstep down to 0 over `ramp` px on each side; 0 on the first/last pixel unless open."""
    centres = np.arange(length, dtype=np.float64) + 0.5
    ramp = max(1.0, min(ramp, length / 2 - 1.0)) if length > 4 else 1.0
    zero_low = start - ramp if open_low else max(start - ramp, 1.0)           # pixel centre 0.5 stays at 0
    zero_high = end + ramp if open_high else min(end + ramp, length - 1.0)
    return np.minimum(_smoothstep((centres - zero_low) / ramp), _smoothstep((zero_high - centres) / ramp))


def feather_mask(size: tuple[int, int], box, ramp: float, open_sides=(False, False, False, False)) -> np.ndarray:
    """(height, width) float32 mask: 1 over `box`, falling smoothly to 0 over `ramp` px outside it.

    Where a side of the box is closer than `ramp` to the crop's edge, that side's ramp moves inwards so that the
    mask is 0 on the crop's edge pixels: the pasted crop never shows its square. Sides on the image border
    (`open_sides`: left, top, right, bottom) need no such room. Separable smoothsteps: the largest step between
    neighbouring pixels is about 1.5 / ramp, and there is none at the box edge.
    """
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top, right, bottom = open_sides
    columns = _profile(width, x0, x1, ramp, left, right)
    rows = _profile(height, y0, y1, ramp, top, bottom)
    return (rows[:, None] * columns[None, :]).astype(np.float32)


def ramp_pixels(box, feather: float) -> float:
    """The feather ramp in pixels: `feather` times the box's mean side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(1.0, feather * ((x1 - x0) + (y1 - y0)) / 2)


def seam_offset(change: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel colour offset that cancels `change` (refined minus original) on average over the feather ring.

    Weighted by mask * (1 - mask): most where the refined and the original pixels mix half and half, where a
    colour step would show; 0 where the mask is 0 or 1.
    """
    weight = (mask * (1.0 - mask)).astype(np.float64)
    total = weight.sum()
    if total <= 1e-9:
        return np.zeros(change.shape[-1], np.float32)
    return (-(change * weight[..., None]).sum(axis=(0, 1)) / total).astype(np.float32)


def paste_refined(image: np.ndarray, region: CropRegion, scaled_original: np.ndarray, refined: np.ndarray,
                  mask: np.ndarray, colour_match: bool = True) -> np.ndarray:
    """A copy of `image` with the sampler's change (`refined` - `scaled_original`) scaled back into `region`
    under `mask` (region-sized), colour-matched over the feather ring."""
    change = resize((refined - scaled_original).astype(np.float32), (region.width, region.height))
    if colour_match:
        change = change + seam_offset(change, mask)
    result = image.copy()
    rows, columns = region.slices
    result[rows, columns] = np.clip(image[rows, columns] + mask[..., None] * change, 0.0, 1.0)
    return result


class FaceScorer:
    """score(image, box, character) -> IDR of the face at `box` against that character's gallery, or None.

    Detects only in the box enlarged `SCORE_CONTEXT` times (the rest of the frame did not change), takes the face
    overlapping `box` most (IoU at least `MIN_OVERLAP`), embeds it and scores it as Identity Check does.
    """

    def __init__(self, detector, embedder, galleries: dict[str, np.ndarray]):
        self.detector, self.embedder, self.galleries = detector, embedder, galleries

    def __call__(self, image: np.ndarray, box, character: str) -> float | None:
        region = crop_region(box, (image.shape[1], image.shape[0]), SCORE_CONTEXT)
        crop = image[region.slices]
        local = region.local_box(box)
        try:
            faces = self.detector.detect(crop)
        except ValueError:
            faces = []
        overlaps = [(box_iou(face.box, local), index) for index, face in enumerate(faces)]
        best = max(overlaps, default=(0.0, -1))
        if best[0] < MIN_OVERLAP:
            return None
        embedding = self.embedder.embed(crop, faces[best[1]], faces=faces)
        return round(float(identity_score(embedding, self.galleries[character], self.embedder)), 4)


@dataclass(frozen=True)
class FacePrompt:
    """What one character's face is sampled with (hashable: the node encodes each distinct prompt once)."""
    positive: str
    negative: str


def character_prompt(design_prompt: str, negative_prompt: str, face_text: str, negative_text: str) -> FacePrompt:
    """The character's design prompt followed by the node's face text; likewise for the negatives."""
    def join(*parts: str) -> str:
        return ", ".join(part.strip() for part in parts if part and part.strip())
    return FacePrompt(join(design_prompt, face_text), join(negative_prompt, negative_text))


@dataclass
class FaceToRefine:
    box: tuple[float, float, float, float]
    character: str | None          # None: assigned to no character, left as it is
    prompt: FacePrompt | None = None
    target: float = 0.75           # the character's identity threshold


@dataclass(frozen=True)
class RefineSettings:
    seed: int = 0
    denoise: float = 0.45
    crop_factor: float = 3.0
    guide_size: int = 512
    feather: float = 0.3
    max_cycles: int = 3
    multiple: int = VAE_MULTIPLE
    colour_match: bool = True


@dataclass
class CycleRecord:
    cycle: int
    seed: int
    denoise: float
    score_before: float | None    # the best score before this cycle (the input's, on the first)
    score_after: float | None     # this cycle's candidate (None: see `note`)
    kept: bool
    note: str = ""                # why there is no score_after


@dataclass
class FaceHistory:
    frame: int
    face: int
    box: list[float]
    character: str | None
    prompt: str | None
    negative: str | None
    target: float | None
    score_in: float | None
    score_out: float | None
    refined: bool = False
    reason: str = ""
    cycles: list[CycleRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


Sampler = Callable[[np.ndarray, np.ndarray, int, FacePrompt], np.ndarray]
Scorer = Callable[[np.ndarray, tuple, str], "float | None"]


def _better(score: float | None, best: float | None) -> bool:
    return score is not None and (best is None or score > best)


def refine_face(image: np.ndarray, face: FaceToRefine, sample: Sampler, score: Scorer, settings: RefineSettings,
                frame: int = 0, index: int = 0) -> tuple[np.ndarray, FaceHistory]:
    """The best of the input and up to `max_cycles` refinements of one face, and what each cycle did."""
    history = FaceHistory(frame, index, [round(float(v), 1) for v in face.box], face.character,
                          face.prompt.positive if face.prompt else None, face.prompt.negative if face.prompt else None,
                          face.target if face.character is not None else None, None, None)
    if face.character is None:
        history.reason = "no character assigned: left as it is"
        return image, history
    region = crop_region(face.box, (image.shape[1], image.shape[0]), settings.crop_factor)
    local = region.local_box(face.box)
    paste_mask = feather_mask((region.width, region.height), local, ramp_pixels(local, settings.feather),
                              region.open_sides)
    size = scaled_size(region.width, region.height, settings.guide_size, settings.multiple)
    scaled_original = resize(image[region.slices], size)
    noise_mask = resize(paste_mask, size)
    best_image, best = image, score(image, face.box, face.character)
    history.score_in = best
    for cycle in range(max(1, settings.max_cycles)):
        if cycle and best is not None and best >= face.target:
            break
        seed = settings.seed + cycle
        refined = sample(scaled_original, noise_mask, seed, face.prompt)
        if not np.isfinite(refined).all():   # e.g. an fp16 VAE overflowing: nothing to paste or score
            history.cycles.append(CycleRecord(cycle, seed, settings.denoise, best, None, False, NON_FINITE))
            continue
        candidate = paste_refined(image, region, scaled_original, refined, paste_mask, settings.colour_match)
        candidate_score = score(candidate, face.box, face.character)
        kept = _better(candidate_score, best)
        history.cycles.append(CycleRecord(cycle, seed, settings.denoise, best, candidate_score, kept,
                                          FACE_LOST if candidate_score is None else ""))
        if kept:
            best_image, best = candidate, candidate_score
    history.score_out = best
    history.refined = best_image is not image
    if not history.refined:
        history.reason = "no refinement scored higher than the input: input kept"
    return best_image, history


def faces_to_refine(image: np.ndarray, detector, embedder, galleries: dict[str, np.ndarray],
                    prompts: dict[str, FacePrompt], targets: dict[str, float]) -> list[FaceToRefine]:
    """Every face in the frame, left to right, with the character it was assigned (as Identity Check assigns them:
    the highest summed IDR) and that character's prompt and target; faces of no character get None."""
    try:
        faces = detector.detect(image)
    except ValueError:
        faces = []
    embeddings = embed_faces(embedder, image, faces)
    kept = counted_faces(faces, embeddings, galleries, embedder)  # an unsure detection of no character: not a face
    faces, embeddings = [faces[i] for i in kept], [embeddings[i] for i in kept]
    assignment = assign_faces(embeddings, galleries, embedder, targets)
    owner = {match.face: name for name, match in assignment.characters.items() if match.face is not None}
    result = []
    for index, face in enumerate(faces):
        name = owner.get(index)
        result.append(FaceToRefine(tuple(float(v) for v in face.box), name, prompts.get(name),
                                   float(targets.get(name, DEFAULT_THRESHOLD))))
    return result


def refine_frame(image: np.ndarray, faces: list[FaceToRefine], sample: Sampler, score: Scorer,
                 settings: RefineSettings, frame: int = 0) -> tuple[np.ndarray, list[FaceHistory]]:
    """Each face in turn (a later face is cropped from the image with the earlier ones already refined)."""
    histories = []
    for index, face in enumerate(faces):
        image, history = refine_face(image, face, sample, score, settings, frame, index)
        histories.append(history)
    return image, histories


def refine_record(histories: list[FaceHistory], frames: int, reasons: list[str]) -> dict:
    """The node's history: every face's record, plus per character the lowest score after refining (over the
    frames) and whether every face of a character reached its target (`passed`), for a graph or a pipeline."""
    characters: dict[str, dict] = {}
    for history in histories:
        if history.character is None:
            continue
        entry = characters.setdefault(history.character, {"score": None, "score_in": None, "passed": True,
                                                          "target": history.target})
        for key, value in (("score", history.score_out), ("score_in", history.score_in)):
            if value is not None:
                entry[key] = value if entry[key] is None else min(entry[key], value)
        entry["passed"] = entry["passed"] and history.score_out is not None and history.score_out >= history.target
    scores = [entry["score"] for entry in characters.values()]
    return {"check": "face_refine", "summary": summary(histories, frames), "frames": frames,
            "score": min(scores) if scores and None not in scores else None,
            "passed": bool(characters) and all(entry["passed"] for entry in characters.values()),
            "characters": characters, "reasons": list(reasons), "faces": [h.as_dict() for h in histories]}


def preview_faces(histories: list[FaceHistory], frames: int) -> dict:
    """The faces in the shape of an identity verdict (`frames[i].faces`, `.characters`), so the check nodes'
    preview boxes them: each labelled with its character and its score after refining, green at target."""
    shaped = [{"faces": [], "characters": {}, "passed": True} for _ in range(frames)]
    for history in histories:
        frame = shaped[history.frame]
        frame["faces"].append({"box": history.box})
        if history.character is not None:
            frame["characters"][history.character] = {
                "face": len(frame["faces"]) - 1, "idr": history.score_out,
                "passed": history.score_out is not None and history.score_out >= history.target}
    return {"frames": shaped}


def summary(histories: list[FaceHistory], frames: int) -> str:
    """One line for the canvas: faces refined, cycles run, lowest score in and out."""
    scored = [h for h in histories if h.character is not None]
    if not histories:
        return f"Face Refine: no face found in {frames} frame{'s' if frames != 1 else ''}"

    def lowest(values):
        values = [v for v in values if v is not None]
        return f"{min(values):.2f}" if values else "-"
    cycles = sum(len(h.cycles) for h in histories)
    line = (f"Face Refine: {sum(h.refined for h in scored)}/{len(scored)} character faces refined in {cycles} "
            f"cycles; lowest IDR {lowest(h.score_in for h in scored)} -> {lowest(h.score_out for h in scored)}")
    strangers = len(histories) - len(scored)
    return line + (f"; {strangers} face(s) of no character left as they are" if strangers else "")
