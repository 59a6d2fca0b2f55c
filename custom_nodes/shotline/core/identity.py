"""Identity verdicts: does each character's face in a frame match that character's reference gallery?

Pure numpy/scipy, no ComfyUI import. Embeddings come from `face_embedding`; a gallery is an (N, D) array of one
character's reference embeddings.

IDR, one scale for every backend
--------------------------------
Each backend has its own raw measure: dlib a euclidean distance (lower = same), ArcFace a cosine (higher = same),
CCIP the *difference* its metric head (model_metrics.onnx) computes from two features (lower = same), or, when that
head is not installed, a cosine on its features. A `Calibration` maps the raw value to an identity-retention score
IDR in 0..1 with a logistic curve

    IDR = sigmoid(ln 3 + slope * (x - boundary)),   x = cosine, or minus the distance / difference

which is 0.75 exactly at the backend's decision boundary and 0.25 at the impostors' mean. So the same threshold
(`DEFAULT_THRESHOLD` 0.75) means "at the backend's same/different boundary" for every backend, and a user can raise it
to be stricter without knowing the backend's units. `calibrate(genuine, impostor)` fits both constants from two
measured distributions: the boundary is the value with the fewest misclassified pairs (balanced between the two
sets, centred in the widest gap when several values tie); the slope puts IDR 0.25 at the impostors' mean.

A calibration with a `warning` (CCIP without its metric head) is a guess: every verdict made with it carries the
warning in `notes`, and a batch's verdict adds it to its reasons, so the user sees it on the node.

How the built-in constants were derived
---------------------------------------
dlib (unit-norm vectors of a face and its mirror image, `DlibEmbedder`; faces from DEFAULT_DETECTOR): fitted
  with `calibrate` by bench/bench_verdicts.py on its labelled set (bench/identity_eval/: 266 pictures from
  ComfyUI's template media and InsightFace's photos, labelled by eye): 156 genuine pairs (one character in two
  pictures: edit inputs and outputs, frames of one clip; photo, 3D, anime, illustration) at 0.092-0.421 and 212
  look-alike pairs (different characters of the same gender, style and hair) at 0.307-0.517 (5th-95th
  percentiles). Boundary 0.320, slope 21.0 (IDR 0.25 at the look-alikes' mean). The earlier constants, from 21
  genuine and 31 impostor pairs of t1.jpg and a few templates, had the same boundary (0.323) and a slope of 12
  set by easy impostors (different people in a group photo). dlib's own rule "same if distance < 0.6" is on its
  raw vectors and lets 55 of the 187 look-alike pairs through; generated faces look more alike than photos.
ArcFace (w600k_r50 / buffalo_l): no weights are reachable here, so not measured. InsightFace users commonly take
  cosine 0.36 as the same-person boundary (0.28-0.4 are in use), and impostor cosines centred near 0.05 give
  slope 7.1.
CCIP with its metric head (`ccip_calibration`, built by the embedder from the files beside model_feat.onnx): the
  boundary is the `threshold` of the model's metrics.json (deepghs computed it as the F1-best difference on their
  test set; 0.1785 for ccip-caformer-24-randaug-pruned), used as published: same character when difference <=
  threshold. metrics.json holds no impostor statistics (its keys: threshold, f1_score, accuracy, precision,
  recall), so the slope puts IDR 0.25 at threshold + `CCIP_IMPOSTOR_GAP` 0.235: the gap between 0.1785 and 0.414,
  the mean difference of the five different-character pairs in imgutils' own `ccip_difference` examples
  (imgutils/metrics/ccip.py, 0.392-0.437; its same-character pair is at 0.166, IDR 0.77). Slope 9.35 per unit of
  difference, for every CCIP model (their thresholds differ: 0.1785, 0.1951, 0.1840).
CCIP without its metric head (`CALIBRATIONS["ccip"]`, uncalibrated): cosine on the features. deepghs' metric head
  is a function of the two features' cosine only (their training code: normalised features, cosine times a learnt
  scale, mapped to a difference clipped to 0..1); reading that difference as (1 - cosine) / 2 gives a cosine
  boundary of 1 - 2 x 0.1785 = 0.643 and an impostor mean of 1 - 2 x 0.414 = 0.172, slope 4.67. That reading is
  not verified against the real head, hence the warning. Put model_metrics.onnx and metrics.json beside
  model_feat.onnx (deepghs' layout) to calibrate.

Gallery aggregation
-------------------
A face is scored against a character's gallery with one of `AGGREGATIONS` (`aggregate_references`):
  centroid  the raw measure against the gallery's centre: the unit mean of the references (FaceAnalysis'
            averaging); under CCIP's metric head, the merged feature imgutils' `ccip_merge` builds (unit mean scaled
            to the references' mean length), since the head takes a feature, not a direction.
  best_k    the mean of the k most alike per-reference raw values, k = min(BEST_K 3, references).
`DEFAULT_AGGREGATION` picks one per backend (centroid for dlib and ArcFace; best_k for CCIP, whose references are
whole pictures in different poses and outfits); every scoring function takes `aggregation=` to override it, so a
benchmark can compare them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_THRESHOLD = 0.75
IDR_AT_BOUNDARY = 0.75  # where every calibration puts its decision boundary on the IDR scale
_LOGIT_BOUNDARY = math.log(IDR_AT_BOUNDARY / (1 - IDR_AT_BOUNDARY))  # ln 3
METRICS = ("euclidean", "cosine", "difference")
LOWER_IS_SAME = ("euclidean", "difference")


@dataclass(frozen=True)
class Calibration:
    backend: str
    metric: str        # "euclidean" or "difference" (lower means same), "cosine" (higher means same)
    boundary: float    # raw value at which IDR = 0.75
    slope: float       # logistic slope per raw unit, > 0
    source: str = ""   # how the constants were obtained
    warning: str = ""  # set when the constants are a guess: shown with every verdict made with them

    def __post_init__(self):
        if self.metric not in METRICS or not self.slope > 0 or not math.isfinite(self.boundary):
            raise ValueError(f"invalid calibration: {self}")

    @property
    def calibrated(self) -> bool:
        return not self.warning

    def similarity(self, raw: float) -> float:
        """The raw value oriented so that higher means more alike."""
        return -raw if self.metric in LOWER_IS_SAME else raw

    def idr(self, raw) -> float | np.ndarray:
        """Identity-retention score 0..1 for a raw distance, difference or cosine."""
        x = np.asarray(raw, dtype=np.float64)
        z = _LOGIT_BOUNDARY + self.slope * (self.similarity(x) - self.similarity(self.boundary))
        value = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
        return float(value) if value.ndim == 0 else value

    def raw(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The backend's raw measure between rows of `a` (M, D) and rows of `b` (N, D): an (M, N) array."""
        if self.metric == "difference":
            raise ValueError(f"{self.backend}: a difference comes from the embedder's metric head, not from the "
                             "calibration; pass the embedder as the backend")
        a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
        if self.metric == "euclidean":
            squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
            return np.sqrt(np.maximum(squared, 0.0))
        norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
        return (a @ b.T) / np.maximum(norms, 1e-12)


# CCIP: see the module docstring. The mean impostor difference of imgutils' examples minus the published threshold.
CCIP_DEFAULT_THRESHOLD = 0.1785       # metrics.json of ccip-caformer-24-randaug-pruned (0.17847511429108218)
CCIP_IMPOSTOR_GAP = 0.235             # 0.414 - 0.1785: IDR 0.25 sits this far above the threshold
CCIP_UNCALIBRATED = "ccip: uncalibrated (no model_metrics.onnx/metrics.json beside model_feat.onnx)"


def ccip_calibration(threshold: float, source: str = "") -> Calibration:
    """CCIP's calibration on its metric head's difference: IDR 0.75 at `threshold` (from metrics.json), 0.25 at
    threshold + CCIP_IMPOSTOR_GAP."""
    threshold = float(threshold)
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ValueError(f"a CCIP threshold is a difference between 0 and 1, got {threshold!r}")
    return Calibration("ccip", "difference", boundary=threshold, slope=2.0 * _LOGIT_BOUNDARY / CCIP_IMPOSTOR_GAP,
                       source=source or f"CCIP metric head, threshold {threshold:g} from metrics.json")


CALIBRATIONS = {
    "dlib": Calibration("dlib", "euclidean", boundary=0.320, slope=21.0,
                        source="measured: bench/bench_verdicts.py's labelled set, see module docstring"),
    "arcface": Calibration("arcface", "cosine", boundary=0.36, slope=7.1,
                           source="not measured: InsightFace users' usual cosine boundary"),
    "ccip": Calibration("ccip", "cosine", boundary=round(1 - 2 * CCIP_DEFAULT_THRESHOLD, 3),
                        slope=round(2 * _LOGIT_BOUNDARY / (2 * CCIP_IMPOSTOR_GAP), 2),
                        source="uncalibrated: cosine on CCIP features, the published difference threshold 0.1785 "
                               "read as (1 - cosine) / 2",
                        warning=CCIP_UNCALIBRATED),
}


def get_calibration(backend) -> Calibration:
    """A `Calibration`, from itself, an embedder object carrying its own (`calibration`, e.g. CCIP with its metric
    head), a backend name, or an embedder object with a `name`."""
    if isinstance(backend, Calibration):
        return backend
    own = getattr(backend, "calibration", None)
    if isinstance(own, Calibration):
        return own
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
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    sign = -1.0 if metric in LOWER_IS_SAME else 1.0
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


def merged_feature(gallery) -> np.ndarray:
    """imgutils' `ccip_merge`: the unit mean of the references scaled to their mean length, a feature CCIP's metric
    head can take."""
    gallery = np.atleast_2d(np.asarray(gallery, dtype=np.float64))
    return gallery_centroid(gallery) * float(np.linalg.norm(gallery, axis=1).mean())


AGGREGATIONS = ("centroid", "best_k")
BEST_K = 3
# per backend name; a benchmark may change these (or pass aggregation= to the scoring functions)
DEFAULT_AGGREGATION = {"dlib": "centroid", "arcface": "centroid", "ccip": "best_k"}


def aggregation_for(backend, aggregation: str | None = None) -> str:
    """`aggregation` when given, else the backend's entry of DEFAULT_AGGREGATION (centroid for unknown ones)."""
    if aggregation is None:
        aggregation = DEFAULT_AGGREGATION.get(get_calibration(backend).backend, "centroid")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown gallery aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    return aggregation


def raw_measure(backend):
    """raw(a, b) -> (M, N) for the backend: its metric head's differences (`embedder.differences`) when its
    calibration is on a difference, else the calibration's cosine or euclidean distance."""
    calibration = get_calibration(backend)
    if calibration.metric == "difference":
        head = getattr(backend, "differences", None)
        if head is None:
            raise ValueError(f"{calibration.backend}: its calibration is on the metric head's difference; pass the "
                             "embedder (which runs the head), not its name or calibration")
        return head
    return calibration.raw


def aggregate_references(per_reference, calibration: Calibration, k: int = BEST_K) -> np.ndarray:
    """best_k: per row (face), the mean of the k most alike of its per-reference raw values, k = min(k, columns)."""
    per_reference = np.atleast_2d(np.asarray(per_reference, dtype=np.float64))
    oriented = np.sort(calibration.similarity(per_reference), axis=1)[:, ::-1]
    best = oriented[:, :max(1, min(k, oriented.shape[1]))].mean(axis=1)
    return calibration.similarity(best)  # back to the raw orientation (negation is its own inverse)


def gallery_raw(face_embeddings, gallery, backend, aggregation: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(aggregated raw value per face, (faces, references) raw matrix) of faces against one character's gallery."""
    calibration = get_calibration(backend)
    measure = raw_measure(backend)
    faces = np.atleast_2d(np.asarray(face_embeddings, dtype=np.float64))
    gallery = np.atleast_2d(np.asarray(gallery, dtype=np.float64))
    per_reference = np.asarray(measure(faces, gallery), dtype=np.float64).reshape(len(faces), len(gallery))
    if aggregation_for(backend, aggregation) == "best_k":
        return aggregate_references(per_reference, calibration), per_reference
    centre = merged_feature(gallery) if calibration.metric == "difference" else gallery_centroid(gallery)
    return np.asarray(measure(faces, centre[None]), dtype=np.float64).reshape(-1), per_reference


@dataclass
class GalleryMatch:
    idr: float              # against the gallery as `aggregation` combines it: the score used for verdicts
    best_single_idr: float  # against the closest single reference, for the report
    raw: float              # the backend's raw measure behind `idr`
    aggregation: str = "centroid"


def match_gallery(embedding, gallery, backend, aggregation: str | None = None) -> GalleryMatch:
    calibration = get_calibration(backend)
    aggregation = aggregation_for(backend, aggregation)
    gallery = np.atleast_2d(np.asarray(gallery, dtype=np.float64))
    if gallery.size == 0:
        return GalleryMatch(0.0, 0.0, float("nan"), aggregation)
    raw, per_reference = gallery_raw(np.asarray(embedding, dtype=np.float64).reshape(1, -1), gallery, backend,
                                     aggregation)
    singles = np.atleast_1d(calibration.idr(per_reference[0]))
    return GalleryMatch(calibration.idr(float(raw[0])), float(np.max(singles)), float(raw[0]), aggregation)


def identity_score(embedding, gallery_embeddings, backend, aggregation: str | None = None) -> float:
    """IDR 0..1 of one face embedding against a character's reference gallery.

    For dlib and ArcFace, compared with the gallery centroid (the unit mean of the references) by default, not the
    best single reference: averaging cancels what one reference has by accident (a lighting, an expression, a bad
    crop), and one odd reference cannot let an impostor through. `match_gallery` reports the best single reference
    too; see "Gallery aggregation" above for the choices.
    """
    return match_gallery(embedding, gallery_embeddings, backend, aggregation).idr


def _idr_matrix(face_embeddings, galleries: dict, backend, aggregation: str | None = None) -> np.ndarray:
    calibration = get_calibration(backend)
    names = list(galleries)
    matrix = np.zeros((len(names), len(face_embeddings)))
    if len(face_embeddings) and names:
        faces = np.stack([np.asarray(e, dtype=np.float64).reshape(-1) for e in face_embeddings])
        for row, name in enumerate(names):
            gallery = np.atleast_2d(np.asarray(galleries[name], dtype=np.float64))
            if gallery.size:
                matrix[row] = calibration.idr(gallery_raw(faces, gallery, backend, aggregation)[0])
    return matrix


def embed_faces(embedder, image, faces) -> list[np.ndarray]:
    """Every face of one image embedded. A character embedder (CCIP) is given all the faces, so that it can crop
    each character without its neighbours (`embed_all`, one batch); a face embedder embeds each face alone."""
    if not faces:
        return []
    embed_all = getattr(embedder, "embed_all", None)
    if embed_all is not None:
        return list(embed_all(image, faces))
    return [embedder.embed(image, face) for face in faces]


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


def assign_faces(face_embeddings, galleries: dict, backend, threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                 aggregation: str | None = None) -> Assignment:
    """Give each character at most one face so that the summed IDR is highest (Hungarian algorithm).

    Characters left without a face are `missing`; faces left without a character are `unmatched_faces`.
    """
    from scipy.optimize import linear_sum_assignment

    names = list(galleries)
    matrix = _idr_matrix(face_embeddings, galleries, backend, aggregation)
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
    ignored_faces: int = 0             # unsure detections that were no character's face (`counted_faces`)
    notes: list[str] = field(default_factory=list)   # what the user should know but does not fail the frame

    def as_dict(self) -> dict:
        return asdict(self)


def identity_verdict(face_embeddings, galleries: dict, backend, threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                     allow_extra_faces: bool = False, faces=None, aggregation: str | None = None) -> IdentityVerdict:
    """The verdict for one image: every character found once, each above the threshold, and no stranger.

    `faces` (the detector's `Face` list, same order as the embeddings) only adds boxes to the report. An
    uncalibrated backend's warning goes into `notes`.
    """
    face_count = len(face_embeddings)
    names = list(galleries)
    reasons = []
    if face_count == 0:
        reasons.append("no face found")
    elif face_count != len(names):
        reasons.append(f"wrong face count: {face_count} face{'s' if face_count != 1 else ''} "
                       f"for {len(names)} character{'s' if len(names) != 1 else ''}")
    assignment = assign_faces(face_embeddings, galleries, backend, threshold, aggregation)
    warning = get_calibration(backend).warning
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
        notes=[warning] if warning else [],
    )


def counted_faces(faces, face_embeddings, galleries: dict, backend, aggregation: str | None = None) -> list[int]:
    """The indices of the faces that count: every sure detection, and an unsure one (`Face.sure` False: a low
    MTCNN or animeface score) only when the assignment gives it to a character. Detectors are cut low to find
    drawn and 3D faces; what they then find on a hand or a flower matches no character and is no stranger."""
    unsure = [index for index, face in enumerate(faces) if not getattr(face, "sure", True)]
    if not unsure:
        return list(range(len(faces)))
    assigned = {match.face for match in assign_faces(face_embeddings, galleries, backend,
                                                     aggregation=aggregation).characters.values()}
    return [index for index in range(len(faces)) if index not in unsure or index in assigned]


def check_identity(image, galleries: dict, detector, embedder, threshold: float | dict[str, float] = DEFAULT_THRESHOLD,
                   allow_extra_faces: bool = False, aggregation: str | None = None) -> IdentityVerdict:
    """Detect, embed and judge one float RGB image; never raises on a bad image."""
    try:
        faces = detector.detect(image)
    except ValueError:  # an image of an impossible shape: no face can be in it
        faces = []
    embeddings = embed_faces(embedder, image, faces)
    kept = counted_faces(faces, embeddings, galleries, embedder, aggregation)
    verdict = identity_verdict([embeddings[i] for i in kept], galleries, embedder, threshold, allow_extra_faces,
                               [faces[i] for i in kept], aggregation)
    verdict.ignored_faces = len(faces) - len(kept)
    return verdict


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
    # notes (an uncalibrated backend) once per batch, last: they do not fail it, but the node's summary shows them
    reasons.extend(dict.fromkeys(note for frame in per_frame for note in getattr(frame, "notes", [])))
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
