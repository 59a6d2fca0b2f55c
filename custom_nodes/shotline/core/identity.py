"""Identity verdicts: does each character's face in a frame match that character's reference gallery?

Pure numpy/scipy, no ComfyUI import. Embeddings come from `face_embedding` (unit-norm vectors); a gallery is an
(N, D) array of one character's reference embeddings.

IDR, one scale for every backend
--------------------------------
Each backend has its own raw similarity: dlib a euclidean distance (lower = same), ArcFace and CCIP a cosine
(higher = same). A `Calibration` maps the raw value to an identity-retention score IDR in 0..1 with a logistic curve

    IDR = sigmoid(ln 3 + slope * (x - boundary)),   x = cosine, or minus the distance for dlib

which is 0.75 exactly at the backend's decision boundary and 0.25 at the impostors' mean. So the same threshold
(`DEFAULT_THRESHOLD` 0.75) means "at the backend's same/different boundary" for every backend, and a user can raise it
to be stricter without knowing the backend's units. `calibrate(genuine, impostor)` fits both constants from two
measured distributions: the boundary is the value with the fewest misclassified pairs (balanced between the two
sets, centred in the widest gap when several values tie); the slope puts IDR 0.25 at the impostors' mean.

How the built-in constants were derived
---------------------------------------
dlib (unit-norm vectors; measured here with `bench/bench_identity.py --calibrate`, MTCNN faces):
  genuine (same person): the six faces of InsightFace's t1.jpg against JPEG q40, mirrored and 0.6x copies,
  0.067-0.195 (18 pairs), plus three generated pairs of one person in two pictures from ComfyUI's templates
  (flux1_dev_uso -1/-2, image_flux2 -1/-2, flux_fill_inpaint -1/-2): 0.06, 0.23, 0.26.
  impostor: the 15 pairs of different people in t1.jpg 0.425-0.617, Tom Hanks against those six 0.504-0.578, and
  ten pairs of different generated women 0.390-0.527. Boundary 0.323, slope 12.0 (IDR 0.25 at the impostor mean
  0.506). dlib's own rule "same if distance < 0.6" is on its raw vectors, whose norms we measured at 1.36-1.58: on
  unit vectors it corresponds to about 0.41; generated faces look more alike than photos ("same face" syndrome),
  so the measured boundary sits lower.
ArcFace (w600k_r50 / buffalo_l): no weights are reachable here, so not measured. InsightFace users commonly take
  cosine 0.28-0.4 as the same-person boundary; we take 0.36, and impostor cosines centred near 0.05 give slope 7.1.
CCIP: not measured either (weights unreachable). Its authors publish a threshold of 0.178 on the *difference* from
  their metric head (model_metrics.onnx), not on cosine; we assume difference ~ 1 - cosine, giving a cosine boundary
  of 0.82, and slope 4.4 from an assumed impostor mean of 0.57. Recalibrate with `calibrate` on your own
  references before trusting CCIP verdicts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_THRESHOLD = 0.75
IDR_AT_BOUNDARY = 0.75  # where every calibration puts its decision boundary on the IDR scale
_LOGIT_BOUNDARY = math.log(IDR_AT_BOUNDARY / (1 - IDR_AT_BOUNDARY))  # ln 3


@dataclass(frozen=True)
class Calibration:
    backend: str
    metric: str        # "euclidean" (lower means same) or "cosine" (higher means same)
    boundary: float    # raw value at which IDR = 0.75
    slope: float       # logistic slope per raw unit, > 0
    source: str = ""   # how the constants were obtained

    def __post_init__(self):
        if self.metric not in ("euclidean", "cosine") or not self.slope > 0 or not math.isfinite(self.boundary):
            raise ValueError(f"invalid calibration: {self}")

    def similarity(self, raw: float) -> float:
        """The raw value oriented so that higher means more alike."""
        return -raw if self.metric == "euclidean" else raw

    def idr(self, raw) -> float | np.ndarray:
        """Identity-retention score 0..1 for a raw distance (euclidean) or cosine."""
        x = np.asarray(raw, dtype=np.float64)
        z = _LOGIT_BOUNDARY + self.slope * (self.similarity(x) - self.similarity(self.boundary))
        value = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        return float(value) if value.ndim == 0 else value

    def raw(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The backend's raw measure between rows of `a` (M, D) and rows of `b` (N, D): an (M, N) array."""
        a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
        if self.metric == "euclidean":
            squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
            return np.sqrt(np.maximum(squared, 0.0))
        norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
        return (a @ b.T) / np.maximum(norms, 1e-12)


CALIBRATIONS = {
    "dlib": Calibration("dlib", "euclidean", boundary=0.323, slope=12.0,
                        source="measured: t1.jpg + ComfyUI template faces, see module docstring"),
    "arcface": Calibration("arcface", "cosine", boundary=0.36, slope=7.1,
                           source="not measured: InsightFace users' usual cosine boundary"),
    "ccip": Calibration("ccip", "cosine", boundary=0.82, slope=4.4,
                        source="not measured: CCIP authors' difference threshold 0.178 read as 1 - cosine"),
}


def get_calibration(backend) -> Calibration:
    """A `Calibration`, from itself, a backend name, or an embedder object with a `name`."""
    if isinstance(backend, Calibration):
        return backend
    name = backend if isinstance(backend, str) else getattr(backend, "name", None)
    if name not in CALIBRATIONS:
        raise ValueError(f"no calibration for backend {name!r}; known: {sorted(CALIBRATIONS)} "
                         "(build one with identity.calibrate)")
    return CALIBRATIONS[name]


def calibrate(genuine_scores, impostor_scores, metric: str = "cosine", backend: str = "custom") -> Calibration:
    """Fit a `Calibration` from raw scores of same-person pairs and of different-person pairs.

    The boundary minimises the balanced error (mean of the false-reject and false-accept rates) and sits in the
    middle of the widest run of equally good values; the slope puts IDR 0.25 at the impostors' mean.
    """
    genuine = np.asarray(genuine_scores, dtype=np.float64).reshape(-1)
    impostor = np.asarray(impostor_scores, dtype=np.float64).reshape(-1)
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError("calibration needs at least one genuine and one impostor score")
    sign = -1.0 if metric == "euclidean" else 1.0
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    g, i = sign * genuine, sign * impostor  # oriented: higher means same
    values = np.unique(np.concatenate([g, i]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    errors = np.array([(g < c).mean() + (i >= c).mean() for c in candidates])
    best = np.flatnonzero(np.isclose(errors, errors.min()))
    # the widest gap among the best candidates: the interval between the neighbouring measured values
    gaps = [(values[min(k, len(values) - 1)] - values[max(k - 1, 0)], k) for k in best]
    _, k = max(gaps)
    low, high = values[max(k - 1, 0)], values[min(k, len(values) - 1)]
    boundary_oriented = (low + high) / 2 if low != high else candidates[k]
    distance_to_impostors = boundary_oriented - i.mean()
    if distance_to_impostors <= 0:
        raise ValueError("impostor scores are not below the boundary on average: the backend does not separate "
                         "these distributions")
    slope = 2.0 * _LOGIT_BOUNDARY / distance_to_impostors  # logit(0.25) = -ln 3: IDR 0.25 at the impostor mean
    return Calibration(backend, metric, boundary=float(sign * boundary_oriented), slope=float(slope),
                       source=f"calibrated on {genuine.size} genuine and {impostor.size} impostor scores")


def unit_rows(vectors) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def gallery_centroid(gallery) -> np.ndarray:
    """The unit mean of a character's reference embeddings (FaceAnalysis' averaging)."""
    return unit_rows(unit_rows(gallery).mean(axis=0))[0]


@dataclass
class GalleryMatch:
    idr: float              # against the gallery centroid: the score used for verdicts
    best_single_idr: float  # against the closest single reference, for the report
    raw: float              # the backend's raw measure against the centroid


def match_gallery(embedding, gallery, backend) -> GalleryMatch:
    calibration = get_calibration(backend)
    gallery = np.atleast_2d(np.asarray(gallery, dtype=np.float64))
    if gallery.size == 0:
        return GalleryMatch(0.0, 0.0, float("nan"))
    raw = float(calibration.raw(embedding, gallery_centroid(gallery))[0, 0])
    singles = calibration.idr(calibration.raw(embedding, unit_rows(gallery))[0])
    return GalleryMatch(calibration.idr(raw), float(np.max(singles)), raw)


def identity_score(embedding, gallery_embeddings, backend) -> float:
    """IDR 0..1 of one face embedding against a character's reference gallery.

    Compared with the gallery centroid (the unit mean of the references), not the best single reference: averaging
    cancels what one reference has by accident (a lighting, an expression, a bad crop), and one odd reference cannot
    let an impostor through. `match_gallery` reports the best single reference too.
    """
    return match_gallery(embedding, gallery_embeddings, backend).idr


def _idr_matrix(face_embeddings, galleries: dict, backend) -> np.ndarray:
    calibration = get_calibration(backend)
    names = list(galleries)
    matrix = np.zeros((len(names), len(face_embeddings)))
    if len(face_embeddings) and names:
        faces = np.stack([np.asarray(e, dtype=np.float64).reshape(-1) for e in face_embeddings])
        for row, name in enumerate(names):
            gallery = np.atleast_2d(np.asarray(galleries[name], dtype=np.float64))
            if gallery.size:
                matrix[row] = calibration.idr(calibration.raw(faces, gallery_centroid(gallery))[:, 0])
    return matrix


def threshold_for(threshold, name: str) -> float:
    """A character's own threshold when `threshold` maps names to values, else the shared one."""
    if isinstance(threshold, dict):
        return float(threshold.get(name, DEFAULT_THRESHOLD))
    return float(threshold)


@dataclass
class CharacterMatch:
    face: int | None    # index of the face assigned to the character, None if missing
    idr: float
    passed: bool


@dataclass
class Assignment:
    characters: dict[str, CharacterMatch]
    unmatched_faces: list[int]
    missing: list[str]
    idr_matrix: list[list[float]]   # characters x faces


def assign_faces(face_embeddings, galleries: dict, backend, threshold: float | dict[str, float] = DEFAULT_THRESHOLD) -> Assignment:
    """Give each character at most one face so that the summed IDR is highest (Hungarian algorithm).

    Characters left without a face are `missing`; faces left without a character are `unmatched_faces`.
    """
    from scipy.optimize import linear_sum_assignment

    names = list(galleries)
    matrix = _idr_matrix(face_embeddings, galleries, backend)
    characters = {name: CharacterMatch(None, 0.0, False) for name in names}
    used = set()
    if matrix.size:
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        for row, col in zip(rows, cols):
            idr = round(float(matrix[row, col]), 4)
            characters[names[row]] = CharacterMatch(int(col), idr, idr >= threshold_for(threshold, names[row]))
            used.add(int(col))
    return Assignment(
        characters=characters,
        unmatched_faces=[index for index in range(len(face_embeddings)) if index not in used],
        missing=[name for name, match in characters.items() if match.face is None],
        idr_matrix=np.round(matrix, 4).tolist(),
    )


@dataclass
class IdentityVerdict:
    score: float                       # the lowest character IDR (0 for a missing character)
    passed: bool
    face_count: int
    characters: dict[str, dict]        # name -> {face, idr, passed}
    unmatched_faces: list[int]
    missing: list[str]
    threshold: float | dict
    reasons: list[str] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)   # boxes and scores, when given

    def as_dict(self) -> dict:
        return asdict(self)


def identity_verdict(face_embeddings, galleries: dict, backend, threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                     allow_extra_faces: bool = False, faces=None) -> IdentityVerdict:
    """The verdict for one image: every character found once, each above the threshold, and no stranger.

    `faces` (the detector's `Face` list, same order as the embeddings) only adds boxes to the report.
    """
    face_count = len(face_embeddings)
    names = list(galleries)
    reasons = []
    if face_count == 0:
        reasons.append("no face found")
    elif face_count != len(names):
        reasons.append(f"wrong face count: {face_count} face{'s' if face_count != 1 else ''} "
                       f"for {len(names)} character{'s' if len(names) != 1 else ''}")
    assignment = assign_faces(face_embeddings, galleries, backend, threshold)
    for name in assignment.missing:
        if face_count:
            reasons.append(f"missing character: {name}")
    for name, match in assignment.characters.items():
        if match.face is not None and not match.passed:
            reasons.append(f"low identity: {name} {match.idr:.2f} < {threshold_for(threshold, name):g}")
    if assignment.unmatched_faces:
        reasons.append(f"unexpected face(s): {len(assignment.unmatched_faces)}")
    extra_ok = allow_extra_faces and face_count > len(names)
    blocking = [r for r in reasons if not (extra_ok and r.startswith(("wrong face count", "unexpected face")))]
    score = min((match.idr for match in assignment.characters.values()), default=0.0)
    return IdentityVerdict(
        score=round(float(score), 4),
        passed=bool(names) and not blocking,
        face_count=face_count,
        characters={name: asdict(match) for name, match in assignment.characters.items()},
        unmatched_faces=assignment.unmatched_faces,
        missing=assignment.missing,
        threshold=threshold,
        reasons=reasons if names else reasons + ["no reference gallery given"],
        faces=[face.as_dict() for face in faces] if faces is not None else [],
    )


def check_identity(image, galleries: dict, detector, embedder, threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                   allow_extra_faces: bool = False) -> IdentityVerdict:
    """Detect, embed and judge one float RGB image; never raises on a bad image."""
    try:
        faces = detector.detect(image)
    except ValueError:  # an image of an impossible shape: no face can be in it
        faces = []
    embeddings = [embedder.embed(image, face) for face in faces]
    return identity_verdict(embeddings, galleries, embedder, threshold, allow_extra_faces, faces)


def aggregate_frames(per_frame, min_pass_share: float = 1.0, threshold: float | None = None) -> dict:
    """Shot verdict from per-frame `IdentityVerdict`s: min, mean and share of frames passing.

    The shot passes when at least `min_pass_share` of its frames pass (all of them by default; lower it to
    tolerate a blink or a motion-blurred frame).
    """
    per_frame = list(per_frame)
    if not per_frame:
        return {"check": "identity", "score": 0.0, "mean": 0.0, "pass_share": 0.0, "passed": False,
                "reasons": ["empty batch"], "frames": [], "characters": {}}
    scores = [frame.score for frame in per_frame]
    passing = [frame.passed for frame in per_frame]
    share = sum(passing) / len(per_frame)
    threshold = per_frame[0].threshold if threshold is None else threshold
    characters = {}
    for name in per_frame[0].characters:
        matches = [frame.characters.get(name, {}) for frame in per_frame]
        values = [match.get("idr", 0.0) for match in matches]
        share_ok = sum(bool(match.get("passed")) for match in matches) / len(matches)
        # score: the worst frame, as for the shot; a character never on screen has no score at all
        on_screen = any(match.get("face") is not None for match in matches)
        characters[name] = {"score": round(min(values), 4) if on_screen else None,
                            "min": round(min(values), 4), "mean": round(float(np.mean(values)), 4),
                            "pass_share": round(share_ok, 4), "passed": share_ok >= min_pass_share,
                            "threshold": threshold_for(threshold, name)}
    reasons = [f"frame {index}: {reason}" for index, frame in enumerate(per_frame) for reason in frame.reasons]
    passed = share >= min_pass_share
    if not passed and min_pass_share < 1.0:
        reasons.insert(0, f"frames passing: {share:.0%} < {min_pass_share:.0%}")
    return {
        "check": "identity",
        "score": round(float(min(scores)), 4),
        "mean": round(float(np.mean(scores)), 4),
        "pass_share": round(share, 4),
        "passed": passed,
        "threshold": threshold,
        "reasons": reasons,
        "characters": characters,
        "frames": [frame.as_dict() for frame in per_frame],
    }
