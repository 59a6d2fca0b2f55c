"""Face detection backends: MTCNN (weights ship in facenet-pytorch), InsightFace's SCRFD and a YOLOv8 anime face model.

Pure numpy/OpenCV/torch/onnxruntime, no ComfyUI import. Images are float RGB arrays in 0..1 shaped (H, W, C), as
ComfyUI's IMAGE tensors are per frame. Every detector returns a list of `Face` sorted left to right, so "face 0" is
the leftmost one in reasons and reports.

Detection never raises on a bad image (empty, NaN, one channel): it returns what it can find, often nothing. A missing
model file raises `ModelMissingError`, which names the file and the folder it belongs in. Models are loaded once per
process through `load_detector(kind, path)`.
"""
from __future__ import annotations

import ctypes
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .models import load_insightface_model, require_model
from .video_encode import to_uint8_rgb

# Landmark order everywhere (InsightFace's): left eye, right eye, nose tip, left mouth corner, right mouth corner,
# "left" and "right" as seen in the image.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
ANIMEFACE_VERSION = "2.0.3"


@dataclass
class Face:
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in pixels of the image given to the detector
    score: float                             # detector confidence 0..1
    landmarks: np.ndarray | None = None      # (5, 2) float32 x, y in LANDMARK_NAMES order, or None
    # False for a detection the detector is unsure of (MTCNN below 0.9, animeface below 0.9): it counts only
    # when it is some character's face (identity.counted_faces), never as a stranger
    sure: bool = True

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def as_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": None if self.landmarks is None else np.round(self.landmarks, 1).tolist(),
                "sure": bool(self.sure)}


def _usable(image: np.ndarray, min_side: int = 16) -> bool:
    return image.ndim == 3 and min(image.shape[:2]) >= min_side


def shrunk(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image with its long side at most `max_side` (INTER_AREA), and the scale applied."""
    if rgb.ndim < 2 or not rgb.size:
        return rgb, 1.0
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA)
    return rgb, scale


def _sorted_faces(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: (face.box[0] + face.box[2], face.box[1]))


def plausible_face(face: Face) -> bool:
    """Whether a face's landmarks sit as a face's do: both eyes above the nose and the nose above the mouth, the
    eyes apart by 20-80 % of the box width, every point inside the box (grown by 10 %), the box neither a strip
    nor a smear (height 0.7-2.2 times the width). A face without landmarks passes on its box alone.

    What lets a detector's score be cut lower on stylised faces: MTCNN scores drawn and 3D faces 0.6-0.9 and
    animeface fires on flowers; their false hits seldom have a face's geometry."""
    x0, y0, x1, y1 = face.box
    width, height = x1 - x0, y1 - y0
    if width <= 0 or not 0.7 <= height / width <= 2.2:
        return False
    if face.landmarks is None:
        return True
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = np.asarray(face.landmarks, dtype=np.float64)
    margin_x, margin_y = 0.1 * width, 0.1 * height
    inside = all(x0 - margin_x <= x <= x1 + margin_x and y0 - margin_y <= y <= y1 + margin_y
                 for x, y in face.landmarks)
    eye_gap = abs(rx - lx) / width
    return bool(inside and 0.2 <= eye_gap <= 0.8 and max(ly, ry) < ny < min(mly, mry) and lx < rx and mlx < mrx)


class MTCNNDetector:
    """facenet-pytorch's MTCNN on CPU; its P/R/O-Net weights ship inside the wheel, so it always works offline.

    `min_face_size` 40 px (MTCNN's default is 20) skips the two largest pyramid levels: about twice as fast, and a
    face under 40 px is too small to judge identity anyway (on the labelled set, 20 px found no more faces and
    13 more false ones). Images with a side over `max_side` are shrunk first.

    The plain detector ("mtcnn") keeps faces scored 0.9 and up. `low_cut_mtcnn()` ("mtcnn_low") lowers the cuts
    of its three networks and its final score to 0.5, for drawn and 3D faces, which MTCNN scores low: a face
    under `sure_score` is then kept only with a face's landmarks (`plausible_face`) and marked unsure
    (`Face.sure`), so it counts only as some character's face (identity.counted_faces). On the labelled set of
    bench/bench_verdicts.py that finds 78.6 % of the faces instead of 67.9 %.
    """

    name = "mtcnn"

    def __init__(self, min_face_size: int = 40, min_score: float = 0.9, max_side: int = 1024,
                 sure_score: float = 0.9, stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)):
        from facenet_pytorch import MTCNN  # heavy import, only when this backend is used

        self.min_score = min_score
        self.sure_score = sure_score  # below it a face must also have plausible landmarks (`plausible_face`)
        self.max_side = max_side
        self.min_face_size = min_face_size
        self.stages = "/".join(f"{value:g}" for value in stage_thresholds)  # P-, R- and O-Net cuts
        self.model = MTCNN(keep_all=True, device="cpu", min_face_size=min_face_size,
                           thresholds=list(stage_thresholds))

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb, scale = shrunk(to_uint8_rgb(image), self.max_side)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        import torch
        with torch.inference_mode():
            boxes, probs, points = self.model.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        # With keep_all, facenet-pytorch returns object arrays; make them plain floats.
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2) / scale
        faces = [Face(tuple(float(v) for v in box), float(prob), landmarks, sure=bool(prob >= self.sure_score))
                 for box, prob, landmarks in zip(boxes, probs, points) if prob >= min_score]
        return _sorted_faces([face for face in faces if face.score >= self.sure_score or plausible_face(face)])


def low_cut_mtcnn() -> MTCNNDetector:
    """MTCNN with every cut at 0.5 and unsure faces marked (see MTCNNDetector): the "mtcnn_low" kind."""
    detector = MTCNNDetector(min_score=0.5, stage_thresholds=(0.5, 0.5, 0.5))
    detector.name = "mtcnn_low"  # its own gallery caches and reports
    return detector


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
    """A YOLOv8 detector ONNX as deepghs publish them (anime_face_detection's face_detect_*/model.onnx; their
    person_detect_* share the layout), or any ultralytics YOLOv8 detection export.

    deepghs export with ultralytics (`export(format="onnx", dynamic=True, opset=14)`): input "images"
    (batch, 3, height, width) RGB 0..1, output "output0" (batch, 4 + classes, boxes), rows cx, cy, w, h in input
    pixels then one score per class; metadata `imgsz` ("[640, 640]") and `names` ("{0: 'face'}"). The transposed
    output (batch, boxes, 4 + classes) is read too. Fed as imgutils feeds them (imgutils/generic/yolo.py,
    `YOLOModel.predict`, allow_dynamic False): the whole picture resized with PIL's default bicubic filter to the
    model's size, aspect not kept, no padding; the size is a static input shape, else the metadata's `imgsz`
    ([height, width], as ultralytics writes it), else 640. Boxes are scaled back by width and height separately
    and clipped to the picture; a face's score is its best class score; candidates above `min_score` go through
    imgutils' non-maximum suppression at `iou_threshold`. Defaults as imgutils' detect_faces: score 0.25, IoU 0.7.
    `letterbox=True` feeds the picture letterboxed instead (grey padding, ultralytics' own predictor). Such models
    give no landmarks.
    """

    name = "anime"

    def __init__(self, model_path, min_score: float = 0.25, iou_threshold: float = 0.7, letterbox: bool = False):
        path = require_model(model_path, "anime_face")
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_size = _yolo_input_size(model_input.shape, metadata)
        self.labels = _yolo_labels(metadata)
        self.size = max(self.input_size)  # the letterbox square
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.letterbox = letterbox

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb = to_uint8_rgb(image)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        height, width = rgb.shape[:2]
        if self.letterbox:
            fed, scale, (left, top) = letterbox(rgb, self.size)
            scale_x = scale_y = scale
        else:
            from PIL import Image
            in_h, in_w = self.input_size
            fed = np.asarray(Image.fromarray(rgb).resize((in_w, in_h)))  # PIL's default filter, as imgutils
            scale_x, scale_y, left, top = in_w / width, in_h / height, 0, 0
        blob = np.ascontiguousarray((fed.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
        output = np.asarray(self.session.run([self.output_name], {self.input_name: blob})[0], dtype=np.float32)
        rows = output.reshape(output.shape[-2], output.shape[-1])
        attributes = 4 + len(self.labels) if self.labels else 5  # cx, cy, w, h + a score per class
        if rows.shape[0] != attributes and (rows.shape[1] == attributes or rows.shape[0] > rows.shape[1]):
            rows = rows.T  # (boxes, 4 + classes): the transposed export
        scores = rows[4:].max(axis=0)
        keep = scores > min_score
        if not keep.any():
            return []
        cx, cy, w, h = rows[:4, keep]
        scores = scores[keep]
        boxes = np.stack([(cx - w / 2 - left) / scale_x, (cy - h / 2 - top) / scale_y,
                          (cx + w / 2 - left) / scale_x, (cy + h / 2 - top) / scale_y], axis=1)
        boxes = np.clip(boxes, 0.0, [width, height, width, height])
        return _sorted_faces([Face(tuple(float(v) for v in boxes[index]), float(scores[index]), None)
                              for index in _yolo_nms(boxes, scores, self.iou_threshold)])


def _yolo_input_size(shape, metadata: dict) -> tuple[int, int]:
    """(height, width) the model is fed at: its static input shape, else ultralytics' `imgsz` metadata, else 640."""
    if len(shape) == 4 and all(isinstance(side, int) and side > 0 for side in shape[2:]):
        return int(shape[2]), int(shape[3])
    try:
        imgsz = json.loads(metadata.get("imgsz", "null"))
    except ValueError:
        imgsz = None
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(side, int) and side > 0 for side in imgsz):
        return int(imgsz[0]), int(imgsz[1])
    return 640, 640


def _yolo_labels(metadata: dict) -> list[str]:
    """Class names from ultralytics' `names` metadata ("{0: 'face'}"), in class order; [] without it."""
    import ast
    try:
        names = ast.literal_eval(metadata.get("names", "{}"))
        return [str(names[index]) for index in range(len(names))] if isinstance(names, dict) else []
    except (ValueError, SyntaxError, KeyError, TypeError):
        return []


def _yolo_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """imgutils' greedy NMS (generic/yolo.py `_yolo_nms`, areas with its + 1): indices kept, best score first."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter = (np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
                 * np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1))
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou_threshold]
    return keep


class _PillowImaging421(ctypes.Structure):
    """Pillow 4.2.1's `ImagingMemoryInstance`, the image struct animeface's C code was compiled against."""
    _fields_ = [("mode", ctypes.c_char * 7), ("type", ctypes.c_int), ("depth", ctypes.c_int),
                ("bands", ctypes.c_int), ("xsize", ctypes.c_int), ("ysize", ctypes.c_int),
                ("palette", ctypes.c_void_p), ("image8", ctypes.c_void_p), ("image32", ctypes.c_void_p),
                ("image", ctypes.c_void_p), ("block", ctypes.c_void_p), ("pixelsize", ctypes.c_int),
                ("linesize", ctypes.c_int), ("destroy", ctypes.c_void_p)]


def animeface_raw(rgb: np.ndarray) -> list[dict]:
    """animeface's detections of a uint8 RGB image, as the dicts its C function returns.

    animeface 2.0.3 reads `Image.getdata()` as a Pillow 4.2.1 image struct; Pillow 12 changed that struct (its
    mode became an enum), so `animeface.detect` silently finds nothing with current Pillow. We hand its C
    function the struct it expects, built over our own pixels (RGBX rows, as Pillow stores RGB): a ctypes
    object's data pointer sits where the C code reads the image pointer of a Pillow object.
    """
    from animeface import _nvxs

    height, width = rgb.shape[:2]
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[..., :3], pixels[..., 3] = rgb[..., :3], 255
    rows = (ctypes.c_void_p * height)(*(pixels.ctypes.data + y * width * 4 for y in range(height)))
    rows_pointer = ctypes.cast(rows, ctypes.c_void_p)
    image = _PillowImaging421(b"RGB", 0, 8, 3, width, height, None, None, rows_pointer, rows_pointer,
                              pixels.ctypes.data, 4, width * 4, None)
    return list(_nvxs.detect(image))  # `pixels` and `rows` stay alive until it returns


class AnimefaceDetector:
    """nagadomi's classical anime face detector (the `animeface` 2.0.3 wheel: its model is compiled in, no
    download; called through `animeface_raw`).

    Finds drawn faces MTCNN misses (and few photo faces); it also fires on flowers and patterns, so a face needs
    `min_score` likelihood and a face's geometry (`plausible_face` on its eyes, nose and mouth). Landmarks are
    its eye centres, nose and the corners of its mouth box. Images are shrunk to `max_side` first.
    """

    name = "animeface"

    def __init__(self, min_score: float = 0.5, max_side: int = 768, sure_score: float = 0.9):
        from importlib.metadata import version

        if version("animeface") != ANIMEFACE_VERSION:  # the struct layout above is that wheel's
            raise ImportError(f"the anime face detector needs animeface=={ANIMEFACE_VERSION} "
                              f"(found {version('animeface')}): pip install animeface=={ANIMEFACE_VERSION}")
        self.min_score = min_score
        self.sure_score = sure_score  # on the labelled set: 12 faces and 1 false hit above 0.9, 5 and 8 below
        self.max_side = max_side

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        rgb, scale = shrunk(to_uint8_rgb(image), self.max_side)
        if not _usable(rgb):
            return []
        min_score = self.min_score if min_score is None else min_score
        faces = []
        for found in animeface_raw(rgb):
            if found["likelihood"] < min_score:
                continue
            x, y, w, h = found["face_box"]
            points = [(bx + bw / 2, by + bh / 2) for bx, by, bw, bh in (found["left_eye_box"],
                                                                       found["right_eye_box"])]
            mx, my, mw, mh = found["mouth_box"]
            points = sorted(points) + [tuple(found["nose_point"]), (mx, my + mh / 2), (mx + mw, my + mh / 2)]
            face = Face((x / scale, y / scale, (x + w) / scale, (y + h) / scale), float(found["likelihood"]),
                        np.array(points, dtype=np.float32) / scale, sure=found["likelihood"] >= self.sure_score)
            if plausible_face(face):
                faces.append(face)
        return _sorted_faces(faces)


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _overlaps(a: Face, b: Face) -> bool:
    """The same face seen by two detectors: boxes overlapping by IoU 0.3, or one's centre inside the other
    (animeface's box takes in more hair and chin than MTCNN's)."""
    def centre_in(inner, outer):
        cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
        return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]
    return box_iou(a.box, b.box) >= 0.3 or centre_in(a.box, b.box) or centre_in(b.box, a.box)


class CombinedDetector:
    """Several detectors as one: the first one's faces, then each later one's faces that none before found.

    `mtcnn+animeface`: MTCNN for photos, 3D and the drawn faces it sees (its boxes suit dlib's landmark model),
    animeface for the anime faces it misses."""

    def __init__(self, *detectors):
        self.detectors = detectors
        self.name = "+".join(detector.name for detector in detectors)

    def detect(self, image, min_score: float | None = None) -> list[Face]:
        faces: list[Face] = []
        for detector in self.detectors:
            faces += [face for face in detector.detect(image, min_score)
                      if not any(_overlaps(face, kept) for kept in faces)]
        return _sorted_faces(faces)


DETECTORS = {"mtcnn": MTCNNDetector, "mtcnn_low": low_cut_mtcnn, "insightface": InsightFaceDetector,
             "anime": AnimeFaceDetector, "animeface": AnimefaceDetector}


# What Identity Check's offline backend (dlib) detects faces with: MTCNN at low cuts for photos, 3D and the drawn
# faces it sees, animeface for the anime faces it misses (measured in bench/bench_verdicts.py).
DEFAULT_DETECTOR = "mtcnn_low+animeface"


def load_detector(kind: str, path=None):
    """The detector of `kind` ("mtcnn", "mtcnn_low", "insightface", "anime", "animeface", or several joined by
    "+", e.g. DEFAULT_DETECTOR: see `CombinedDetector`), built once per process per (kind, path)."""
    needs_path = kind in ("insightface", "anime")
    return _load_detector(kind, str(Path(path).expanduser().resolve()) if needs_path and path is not None else None)


@functools.lru_cache(maxsize=8)
def _load_detector(kind: str, path: str | None):
    if "+" in kind:
        return CombinedDetector(*(_load_detector(part, path) for part in kind.split("+")))
    if kind not in DETECTORS:
        raise ValueError(f"unknown face detector {kind!r}; choose one of {sorted(DETECTORS)}")
    if kind in ("mtcnn", "mtcnn_low", "animeface"):
        return DETECTORS[kind]()
    return DETECTORS[kind](path)
