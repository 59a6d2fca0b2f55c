"""Face detection backends: MTCNN (weights ship in facenet-pytorch), InsightFace's SCRFD and a YOLOv8 anime face model.

Pure numpy/OpenCV/torch/onnxruntime, no ComfyUI import. Images are float RGB arrays in 0..1 shaped (H, W, C), as
ComfyUI's IMAGE tensors are per frame. Every detector returns a list of `Face` sorted left to right, so "face 0" is
the leftmost one in reasons and reports.

Detection never raises on a bad image (empty, NaN, one channel): it returns what it can find, often nothing. A missing
model file raises `ModelMissingError`, which names the file and the folder it belongs in. Models are loaded once per
process through `load_detector(kind, path)`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .models import load_insightface_model, require_model
from .video_encode import to_uint8_rgb

# Landmark order everywhere (InsightFace's): left eye, right eye, nose tip, left mouth corner, right mouth corner,
# "left" and "right" as seen in the image.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the image given to the detector
    score: float                             # detector confidence 0..1
    landmarks: np.ndarray | None = None      # (5, 2) float32 x, y in LANDMARK_NAMES order, or None

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def as_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist()}


def _usable(image: np.ndarray, min_side: int = 16) -> bool:
    return image.ndim == 3 and min(image.shape[:2]) >= min_side


def _sorted_faces(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: (face.box[0] + face.box[2], face.box[1]))


class MTCNNDetector:
    """facenet-pytorch's MTCNN on CPU; its P/R/O-Net weights ship inside the wheel, so it always works offline.

    `min_face_size` 40 px (MTCNN's default is 20) skips the two largest pyramid levels: about twice as fast, and a
    face under 40 px is too small to judge identity anyway. Images with a side over `max_side` are shrunk first.
    """

    name = "mtcnn"

    def __init__(self, min_face_size: int = 40, min_score: float = 0.9, max_side: int = 1024):
        from facenet_pytorch import MTCNN  # heavy import, only when this backend is used

        self.min_score = min_score
        self.max_side = max_side
        self.model = MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size)

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb = to_uint8_rgb(image)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        scale = min(1.0, self.max_side / max(rgb.shape[:2]))
        if scale < 1.0:
            rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
        import torch
        with torch.inference_mode():
            boxes, probs, points = self.model.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        # With keep_all, facenet-pytorch returns object arrays; make them plain floats.
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2) / scale
        return _sorted_faces([Face(tuple(float(v) for v in box), float(prob), landmarks)
                              for box, prob, landmarks in zip(boxes, probs, points) if prob >= min_score])


class InsightFaceDetector:
    """An InsightFace pack's detector ONNX (det_10g.onnx, SCRFD) loaded through `insightface.model_zoo.get_model`."""

    name = "insightface"

    def __init__(self, model_path, det_size: int = 640, min_score: float = 0.5):
        _, model = load_insightface_model(model_path, "detection")
        model.prepare(-1, input_size=(det_size, det_size), det_thresh=min_score)
        self.model = model
        self.min_score = min_score
        self.det_size = det_size

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb = to_uint8_rgb(image)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        self.model.det_thresh = min_score  # read by insightface's forward (0.7 and 2.x); detect() takes no threshold
        boxes, points = self.model.detect(bgr, input_size=(self.det_size, self.det_size))
        faces = []
        for index, row in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 5)):
            landmarks = None if points is None else np.asarray(points[index], dtype=np.float32).reshape(5, 2)
            faces.append(Face(tuple(float(v) for v in row[:4]), float(row[4]), landmarks))
        return _sorted_faces(faces)


def letterbox(rgb: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio so the long side is `size`, pad the rest (centred) with grey, as YOLOv8 does.

    Returns the square image, the scale and the (left, top) padding, to map boxes back.
    """
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, scale, (left, top)


class AnimeFaceDetector:
    """A YOLOv8-style single-class face detector exported to ONNX (input 1x3xSxS RGB 0..1, output 1x5xN).

    Output rows are cx, cy, w, h (input pixels) and the face score; boxes are mapped back through the letterbox
    and merged with non-maximum suppression. Such models give no landmarks.
    """

    name = "anime"

    def __init__(self, model_path, min_score: float = 0.35, iou_threshold: float = 0.5):
        path = require_model(model_path, "anime_face")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        size = model_input.shape[2] if len(model_input.shape) == 4 else None
        self.size = size if isinstance(size, int) and size > 0 else 640  # dynamic axes: YOLOv8's default
        self.min_score = min_score
        self.iou_threshold = iou_threshold

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb = to_uint8_rgb(image)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        square, scale, (left, top) = letterbox(rgb, self.size)
        blob = (square.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        output = np.asarray(self.session.run(None, {self.input_name: blob})[0], dtype=np.float32)
        rows = output.reshape(output.shape[-2], output.shape[-1])
        if rows.shape[0] != 5 and rows.shape[1] == 5:  # some exports are transposed (N x 5)
            rows = rows.T
        cx, cy, w, h, scores = rows[:5]
        keep = scores >= min_score
        if not keep.any():
            return []
        cx, cy, w, h, scores = cx[keep], cy[keep], w[keep], h[keep], scores[keep]
        x0 = (cx - w / 2 - left) / scale
        y0 = (cy - h / 2 - top) / scale
        boxes_xywh = np.stack([x0, y0, w / scale, h / scale], axis=1)
        kept = cv2.dnn.NMSBoxes(boxes_xywh.tolist(), scores.tolist(), min_score, self.iou_threshold)
        height, width = rgb.shape[:2]
        faces = []
        for index in np.asarray(kept, dtype=int).reshape(-1):
            x, y, bw, bh = boxes_xywh[index]
            box = (max(0.0, float(x)), max(0.0, float(y)), min(float(width), float(x + bw)),
                   min(float(height), float(y + bh)))
            faces.append(Face(box, float(scores[index]), None))
        return _sorted_faces(faces)


DETECTORS = {"mtcnn": MTCNNDetector, "insightface": InsightFaceDetector, "anime": AnimeFaceDetector}


def load_detector(kind: str, path=None):
    """The detector of `kind` ("mtcnn", "insightface", "anime"), built once per process per (kind, path)."""
    return _load_detector(kind, None if path is None or kind == "mtcnn" else str(Path(path).expanduser().resolve()))


@functools.lru_cache(maxsize=8)
def _load_detector(kind: str, path: str | None):
    if kind not in DETECTORS:
        raise ValueError(f"unknown face detector {kind!r}; choose one of {sorted(DETECTORS)}")
    if kind == "mtcnn":
        return MTCNNDetector()
    return DETECTORS[kind](path)
