"""Face and character embedding backends: dlib's ResNet (weights ship on PyPI), InsightFace ArcFace ONNX, and
deepghs' CCIP anime character ONNX (with its metric head when installed).

Each backend has a `name`, a `dim` and `embed(image, face, faces=None) -> float32 vector`, where `image` is a float
RGB (H, W, C) array in 0..1, `face` a `faces.Face` and `faces` all the faces found in the image (only CCIP uses
them: it embeds the character, and needs to know where the others are). dlib and ArcFace vectors are unit-norm;
CCIP's are its raw features when its metric head is installed (the head takes those). `identity.py` maps each
backend's raw measure to a common 0..1 score; a backend may carry its own `calibration` (CCIP does).

Loading is once per process per (backend, path) through `load_embedder`. A missing model file raises
`ModelMissingError`.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from .faces import Face
from .identity import CALIBRATIONS, ccip_calibration
from .models import load_insightface_model, require_model
from .video_encode import to_uint8_rgb

# InsightFace's ArcFace template: where the 5 landmarks sit in a 112 x 112 aligned crop.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# CCIP normalises with CLIP's mean and standard deviation (deepghs imgutils, ccip._preprocess_image).
CCIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CCIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CCIP_SIZE = 384                         # model_feat.onnx's input side
CCIP_FEATURE_MODEL = "model_feat.onnx"  # deepghs' layout: <model name>/ holds these three files
CCIP_METRIC_MODEL = "model_metrics.onnx"
CCIP_METRICS_FILE = "metrics.json"
# `character_box`, in face widths and heights: the character estimated from its face when frames hold several
CHARACTER_WIDTH = 3.0   # wide, centred on the face: shoulders and arms of a drawn character
CHARACTER_ABOVE = 0.5   # above the face's top: hair, ears, hats
CHARACTER_BELOW = 3.0   # below the face's bottom: the upper body (kept short of a full figure, whose height
                        # CCIP's square input would squeeze several times)


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 and np.isfinite(norm) else vector


def crop_box(rgb: np.ndarray, box, margin: float = 0.0, square: bool = True) -> np.ndarray:
    """The face box grown by `margin` (share of its size on each side), squared, padded with black at the edges."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    if square:
        w = h = max(w, h)
    left, top = int(round(cx - w / 2)), int(round(cy - h / 2))
    right, bottom = left + max(1, int(round(w))), top + max(1, int(round(h)))
    height, width = rgb.shape[:2]
    pad = max(0, -left, -top, right - width, bottom - height)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return rgb[top + pad:bottom + pad, left + pad:right + pad]


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, shift) taking `source` points onto `target`.

    Umeyama's closed form, the estimate skimage's SimilarityTransform (and so InsightFace's norm_crop) makes.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_c, target_c = source - source_mean, target - target_mean
    covariance = target_c.T @ source_c / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    variance = (source_c ** 2).sum() / len(source)
    if variance <= 1e-12:
        raise ValueError("landmarks do not define an alignment")
    scale = float(np.trace(np.diag(singular) @ sign) / variance)
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]]).astype(np.float32)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped so its 5 landmarks sit on InsightFace's ArcFace template (what face_align.norm_crop does)."""
    matrix = similarity_transform(np.asarray(landmarks).reshape(5, 2), ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(rgb, matrix, (size, size), borderValue=0.0)


def _dlib_models_dir() -> Path:
    """face_recognition_models' data folder, found without importing it.

    Its __init__ imports pkg_resources, which setuptools 81+ removed; the .dat files are plain package data.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib embeddings need the `face_recognition_models` package: "
                          "pip install face_recognition_models dlib-bin")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibEmbedder:
    """dlib's 128-d face ResNet (dlib_face_recognition_resnet_model_v1) with its 5-point shape predictor.

    A face's vector is the mean of the face's and its mirror image's descriptors (`mirror`): on the labelled set
    of bench/bench_verdicts.py that lifts the AUC between genuine and look-alike pairs from 0.923 to 0.933, for
    twice dlib's time. dlib's own threshold is a euclidean distance of 0.6 between its raw vectors; ours are
    unit-norm, and `identity.CALIBRATIONS["dlib"]` was measured on them.
    """

    name = "dlib"
    dim = 128
    metric = "euclidean"

    def __init__(self, models_dir=None, num_jitters: int = 0, mirror: bool = True):
        import dlib

        folder = Path(models_dir) if models_dir else _dlib_models_dir()
        predictor = require_model(folder / "shape_predictor_5_face_landmarks.dat", "dlib")
        resnet = require_model(folder / "dlib_face_recognition_resnet_model_v1.dat", "dlib")
        self._dlib = dlib
        self.model_path = str(resnet)
        self.shape_predictor = dlib.shape_predictor(str(predictor))
        self.resnet = dlib.face_recognition_model_v1(str(resnet))
        self.num_jitters = num_jitters
        self.mirror = mirror
        self.cache_tag = "mirror" if mirror else ""  # gallery caches of plain vectors are not reused

    def descriptor(self, rgb: np.ndarray, box) -> np.ndarray:
        """dlib's raw descriptor of the face in `box` of a uint8 RGB image."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self.shape_predictor(rgb, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array(self.resnet.compute_face_descriptor(rgb, shape, self.num_jitters), dtype=np.float32)

    def embed(self, image, face: Face, faces=None) -> np.ndarray:
        rgb = to_uint8_rgb(image)
        vector = self.descriptor(rgb, face.box)
        if self.mirror:
            x0, y0, x1, y1 = face.box
            width = rgb.shape[1]
            vector = vector + self.descriptor(np.ascontiguousarray(rgb[:, ::-1]), (width - x1, y0, width - x0, y1))
        return unit(vector)


class ArcFaceEmbedder:
    """An InsightFace recognition ONNX (w600k_r50.onnx, glintr100.onnx, ...) through `insightface.model_zoo`.

    With landmarks, the face is aligned onto the ArcFace template (what InsightFace's FaceAnalysis does); without
    (e.g. from the anime detector) the box, grown by 10 %, is squared and resized. InsightFace's own `get_feat` does
    the normalisation it reads from the model ((x - 127.5) / 127.5, BGR, or none for MXNet exports).
    """

    name = "arcface"
    metric = "cosine"

    def __init__(self, model_path):
        path, model = load_insightface_model(model_path, "recognition")
        self.model = model
        self.model_path = str(path)
        self.size = int(model.input_size[0])
        self.dim = int(model.output_shape[-1]) if isinstance(model.output_shape[-1], int) else None

    def crop(self, image, face: Face) -> np.ndarray:
        """The aligned (or box-cropped) face, RGB uint8, size x size."""
        rgb = to_uint8_rgb(image)
        if face.landmarks is not None:
            try:
                return align_face(rgb, face.landmarks, self.size)
            except ValueError:
                pass
        return cv2.resize(crop_box(rgb, face.box, margin=0.1), (self.size, self.size), interpolation=cv2.INTER_AREA)

    def embed(self, image, face: Face, faces=None) -> np.ndarray:
        bgr = np.ascontiguousarray(self.crop(image, face)[..., ::-1])  # get_feat expects OpenCV BGR
        return unit(self.model.get_feat(bgr))


class AnimeEmbedder:
    """deepghs' CCIP character embedder: model_feat.onnx, with its metric head and threshold when they sit beside it.

    Layout and preprocessing as deepghs publish and run them (dghs-imgutils 0.19.0, imgutils/metrics/ccip.py):
    - `<model>/model_feat.onnx`: input "input" (N, 3, 384, 384), output "output" (N, 768) features. The picture is
      converted to RGB (transparency over white), resized to 384 x 384 with PIL's bilinear filter (the aspect is not
      kept), scaled to 0..1 and normalised with CLIP's mean and std.
    - `<model>/model_metrics.onnx`: input "input" (N, 768) features, output "output" (N, N) pairwise differences in
      0..1, lower = same character; `<model>/metrics.json`: {"threshold", "f1_score", "accuracy", "precision",
      "recall"}, same character when difference <= threshold.
    With both files the calibration is `identity.ccip_calibration(threshold)`, vectors are the model's raw features
    (what the head takes) and `differences` runs the head. Without them it falls back to cosine on unit features,
    labelled uncalibrated (`calibration.warning`, which every verdict carries).

    CCIP was trained on pictures of one whole character, not on faces, so it is given the character
    (`character_boxes`): the whole frame when one face is in it (a solo shot, a reference picture); with several,
    each character's box from a person detector when one is given (deepghs' person_detect ONNX through
    `AnimeFaceDetector`, whose layout it shares), else `character_box`'s estimate from the face.
    """

    name = "ccip"
    cache_tag = "character"   # gallery cache key: what it embeds (whole characters, not faces as before)

    def __init__(self, model_path, person_detector=None):
        path = require_model(model_path, "ccip")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.model_path = str(path)
        model_input = self.session.get_inputs()[0]
        if len(model_input.shape) != 4:
            raise ValueError(f"{path.name} takes {list(model_input.shape)}, not images: choose the feature model "
                             f"({CCIP_FEATURE_MODEL}), not the metric head ({CCIP_METRIC_MODEL})")
        self.input_name = model_input.name
        size = model_input.shape[2]
        self.size = size if isinstance(size, int) and size > 0 else CCIP_SIZE  # deepghs export dynamic batch only
        batch = model_input.shape[0]
        self.batched = not isinstance(batch, int) or batch != 1
        output_dim = self.session.get_outputs()[0].shape[-1]
        self.dim = output_dim if isinstance(output_dim, int) else None
        self.person_detector = person_detector
        self.metric_session, self.metrics = None, None
        self.calibration_files: tuple[str, ...] = ()
        head, metrics = path.parent / CCIP_METRIC_MODEL, path.parent / CCIP_METRICS_FILE
        if head.is_file() and metrics.is_file():
            self.metrics = _read_ccip_metrics(metrics)
            self.metric_session = onnxruntime.InferenceSession(str(head), providers=["CPUExecutionProvider"])
            self.metric_input = self.metric_session.get_inputs()[0].name
            self.calibration = ccip_calibration(
                self.metrics["threshold"],
                source=f"CCIP metric head {path.parent.name}/{CCIP_METRIC_MODEL}, threshold "
                       f"{self.metrics['threshold']:g} from {CCIP_METRICS_FILE}")
            self.calibration_files = (str(head), str(metrics))
        else:
            missing = "/".join(file.name for file in (head, metrics) if not file.is_file())
            self.calibration = replace(CALIBRATIONS["ccip"],
                                       warning=f"ccip: uncalibrated (no {missing} beside {path.name})")
        self.metric = self.calibration.metric

    @property
    def has_metric_head(self) -> bool:
        return self.metric_session is not None

    def differences(self, a, b) -> np.ndarray:
        """The metric head's difference between rows of `a` (M, D) and rows of `b` (N, D): (M, N), lower = same.

        The head takes one batch and returns its pairwise matrix (imgutils' ccip_batch_differences), so `a` and `b`
        go in together and the (a, b) block comes out."""
        if self.metric_session is None:
            raise ValueError(self.calibration.warning)
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        batch = np.ascontiguousarray(np.concatenate([a, b]), dtype=np.float32)
        matrix = np.asarray(self.metric_session.run(None, {self.metric_input: batch})[0], dtype=np.float64)
        return matrix[:len(a), len(a):]

    def person_boxes(self, image) -> list[tuple[float, float, float, float]]:
        if self.person_detector is None:
            return []
        return [person.box for person in self.person_detector.detect(image)]

    def character_boxes(self, image, faces) -> list[tuple[float, float, float, float]]:
        """The character box of each face: the frame for a face alone in it, else a person box that holds that
        face alone, else `character_box`'s estimate."""
        height, width = np.asarray(image).shape[:2]
        faces = list(faces or [])
        if len(faces) <= 1:
            return [(0.0, 0.0, float(width), float(height))] * len(faces)
        persons = self.person_boxes(image)
        return [_person_box(face, faces, persons) or character_box(face, faces, (width, height)) for face in faces]

    def features(self, crops: list[np.ndarray]) -> np.ndarray:
        """(len(crops), D) features of uint8 RGB crops, preprocessed as imgutils does."""
        blobs = np.stack([ccip_input(crop, self.size) for crop in crops])
        if self.batched:
            outputs = self.session.run(None, {self.input_name: blobs})[0]
        else:
            outputs = np.concatenate([self.session.run(None, {self.input_name: blob[None]})[0] for blob in blobs])
        outputs = np.asarray(outputs, dtype=np.float32).reshape(len(crops), -1)
        return outputs if self.has_metric_head else np.stack([unit(row) for row in outputs])

    def embed_all(self, image, faces) -> list[np.ndarray]:
        """One vector per face, each of its character (see `character_boxes`), in one batch."""
        if not faces:
            return []
        rgb = to_uint8_rgb(image)
        return list(self.features([_crop(rgb, box) for box in self.character_boxes(rgb, faces)]))

    def embed(self, image, face: Face | None, faces=None) -> np.ndarray:
        """The vector of `face`'s character. `faces` (all the faces of the image) decides the crop: None (not known)
        takes `character_box`'s estimate; `face` None or alone in `faces` takes the whole image."""
        rgb = to_uint8_rgb(image)
        height, width = rgb.shape[:2]
        if face is None:
            box = (0.0, 0.0, float(width), float(height))
        elif faces is None:
            box = _person_box(face, [face], self.person_boxes(rgb)) or character_box(face, [face], (width, height))
        else:
            same = [i for i, other in enumerate(faces) if other is face or tuple(other.box) == tuple(face.box)]
            others = list(faces) if same else [*faces, face]
            box = self.character_boxes(rgb, others)[same[0] if same else len(faces)]
        return self.features([_crop(rgb, box)])[0]


def _read_ccip_metrics(path: Path) -> dict:
    import json
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(metrics["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a CCIP metrics file with a numeric 'threshold' ({error})") from error
    return {**metrics, "threshold": threshold}


def ccip_input(crop: np.ndarray, size: int = CCIP_SIZE) -> np.ndarray:
    """imgutils' ccip._preprocess_image: PIL bilinear resize to size x size, /255, CLIP mean/std, CHW float32."""
    from PIL import Image
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), resample=Image.BILINEAR))
    data = resized.astype(np.float32) / 255.0
    return np.ascontiguousarray(((data - CCIP_MEAN) / CCIP_STD).transpose(2, 0, 1), dtype=np.float32)


def _crop(rgb: np.ndarray, box) -> np.ndarray:
    """The whole pixels covering `box`, clipped to the image (at least one pixel)."""
    height, width = rgb.shape[:2]
    x0, y0 = int(np.clip(np.floor(box[0]), 0, width - 1)), int(np.clip(np.floor(box[1]), 0, height - 1))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 1, width)), int(np.clip(np.ceil(box[3]), y0 + 1, height))
    return rgb[y0:y1, x0:x1]


def character_box(face: Face, faces, size) -> tuple[float, float, float, float]:
    """An estimate of the character around `face` when there is no person box: CHARACTER_WIDTH face widths wide
    (centred), from CHARACTER_ABOVE face heights above the face (hair) to CHARACTER_BELOW face heights below it
    (the body), clipped to the frame (`size` = width, height). Each other face in `faces` stops the box half way
    to it, along the axis on which they are further apart, but never inside `face` itself."""
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in face.box)
    cx, cy, fw, fh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    left, right = cx - CHARACTER_WIDTH * fw / 2, cx + CHARACTER_WIDTH * fw / 2
    top, bottom = y0 - CHARACTER_ABOVE * fh, y1 + CHARACTER_BELOW * fh
    for other in faces:
        if other is face or tuple(other.box) == tuple(face.box):
            continue
        dx = (other.box[0] + other.box[2]) / 2 - cx
        dy = (other.box[1] + other.box[3]) / 2 - cy
        if abs(dx) >= abs(dy):
            if dx > 0:
                right = min(right, max(cx + dx / 2, x1))
            else:
                left = max(left, min(cx + dx / 2, x0))
        elif dy > 0:
            bottom = min(bottom, max(cy + dy / 2, y1))
        else:
            top = max(top, min(cy + dy / 2, y0))
    return max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom)


def _person_box(face: Face, faces, persons):
    """The smallest person box holding `face`'s centre and no other face's centre, or None."""
    def holds(box, f):
        x, y = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        return box[0] <= x <= box[2] and box[1] <= y <= box[3]
    own = [box for box in persons if holds(box, face)
           and not any(holds(box, other) for other in faces if other is not face and other.box != face.box)]
    return min(own, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]), default=None)


# imgutils' detect_person defaults (imgutils/detect/person.py): score 0.3, NMS IoU 0.5
PERSON_DETECTOR_SETTINGS = {"min_score": 0.3, "iou_threshold": 0.5}
EMBEDDERS = {"dlib": DlibEmbedder, "arcface": ArcFaceEmbedder, "ccip": AnimeEmbedder}


def load_embedder(kind: str, path=None, person_detector=None):
    """The embedder of `kind` ("dlib", "arcface", "ccip"), built once per process per (kind, path, person detector).

    `person_detector` (CCIP only): a YOLO person detector ONNX (deepghs' person_detect_*), to crop each character
    of a frame with several by its person box instead of an estimate from its face."""
    def resolved(value):
        return None if value is None else str(Path(value).expanduser().resolve())
    return _load_embedder(kind, resolved(path), resolved(person_detector))


@functools.lru_cache(maxsize=8)
def _load_embedder(kind: str, path: str | None, person_detector: str | None = None):
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown face embedder {kind!r}; choose one of {sorted(EMBEDDERS)}")
    if person_detector is not None:
        if kind != "ccip":
            raise ValueError(f"only the ccip embedder crops characters by a person detector, not {kind!r}")
        from .faces import AnimeFaceDetector
        return AnimeEmbedder(path, AnimeFaceDetector(person_detector, **PERSON_DETECTOR_SETTINGS))
    return EMBEDDERS[kind](path)
