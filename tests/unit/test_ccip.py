"""CCIP as deepghs publish it, and their YOLOv8 face detector exports, with tiny models of the same layouts.

Layouts (dghs-imgutils 0.19.0): `<model>/model_feat.onnx` "input" (N, 3, 384, 384) -> "output" (N, 768);
`<model>/model_metrics.onnx` "input" (N, 768) -> "output" (N, N) differences; `<model>/metrics.json` with
threshold, f1_score, accuracy, precision, recall. face_detect_*/model.onnx (ultralytics, dynamic axes): "images"
(batch, 3, height, width) -> "output0" (batch, 5, boxes), metadata imgsz and names.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from shotline.core.face_embedding import (
    CCIP_MEAN,
    CCIP_STD,
    AnimeEmbedder,
    character_box,
    load_embedder,
)
from shotline.core.faces import AnimeFaceDetector, Face
from shotline.core.gallery_cache import backend_key, reference_embedder
from shotline.core.identity import (
    CCIP_IMPOSTOR_GAP,
    DEFAULT_AGGREGATION,
    aggregate_frames,
    check_identity,
    identity_verdict,
    match_gallery,
)

from tests.unit.test_faces import export_onnx

THRESHOLD = 0.17847511429108218   # metrics.json of ccip-caformer-24-randaug-pruned
METRICS = {"accuracy": 0.97, "f1_score": 0.92, "precision": 0.93, "recall": 0.91, "threshold": THRESHOLD}
POOL = 16                          # 3 x 16 x 16 = 768, CCIP's feature size


def export_ccip(folder, metric_head: bool = True, metrics: dict | None = METRICS):
    """deepghs' folder: model_feat.onnx (block means of the normalised input: 768 features), and unless told
    otherwise model_metrics.onnx ((1 - cosine) / 2, clipped to 0..1) and metrics.json. Returns model_feat.onnx."""
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    feature = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(POOL), torch.nn.Flatten())
    export_onnx(feature, torch.zeros(1, 3, 384, 384), folder / "model_feat.onnx", input_names=["input"],
                output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})

    class Head(torch.nn.Module):
        def forward(self, x):
            x = x / x.norm(dim=1, keepdim=True)
            return torch.clamp((1.0 - x @ x.t()) / 2.0, 0.0, 1.0)

    if metric_head:
        export_onnx(Head(), torch.zeros(3, 768), folder / "model_metrics.onnx", input_names=["input"],
                    output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch", 1: "batch"}})
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=4, sort_keys=True))
    return folder / "model_feat.onnx"


def expected_feature(rgb: np.ndarray) -> np.ndarray:
    """What the tiny feature model gives for a uint8 RGB picture preprocessed as imgutils does."""
    resized = np.asarray(Image.fromarray(rgb).resize((384, 384), resample=Image.BILINEAR)).astype(np.float32) / 255
    data = ((resized - CCIP_MEAN) / CCIP_STD).transpose(2, 0, 1)
    return data.reshape(3, POOL, 384 // POOL, POOL, 384 // POOL).mean(axis=(2, 4)).reshape(-1)


def difference(a, b) -> float:
    cosine = float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
    return min(1.0, max(0.0, (1.0 - cosine) / 2.0))


def plain(colour, size=(120, 160)) -> np.ndarray:
    """A float RGB picture of one colour given in 0..255."""
    return np.broadcast_to(np.asarray(colour, np.float32) / 255.0, (*size, 3)).copy()


RED, REDDISH, BLUE = (200, 60, 60), (190, 75, 60), (60, 60, 200)


@pytest.fixture(scope="module")
def ccip_dir(tmp_path_factory):
    return export_ccip(tmp_path_factory.mktemp("ccip") / "ccip-caformer-24-randaug-pruned")


def test_the_metric_head_and_metrics_json_beside_model_feat_calibrate_it(ccip_dir):
    embedder = AnimeEmbedder(ccip_dir)
    inputs, outputs = embedder.session.get_inputs()[0], embedder.session.get_outputs()[0]
    assert (inputs.name, inputs.shape[1:], outputs.name, outputs.shape[1:]) == ("input", [3, 384, 384], "output", [768])
    head = embedder.metric_session
    assert [(i.name, i.shape[1:]) for i in head.get_inputs()] == [("input", [768])]
    assert head.get_outputs()[0].name == "output" and len(head.get_outputs()[0].shape) == 2
    assert embedder.size == 384 and embedder.dim == 768 and embedder.has_metric_head
    calibration = embedder.calibration
    assert (calibration.metric, calibration.boundary, calibration.calibrated) == ("difference", THRESHOLD, True)
    assert calibration.idr(THRESHOLD) == pytest.approx(0.75)
    assert calibration.idr(THRESHOLD + CCIP_IMPOSTOR_GAP) == pytest.approx(0.25)
    assert "metrics.json" in calibration.source


def test_the_difference_and_its_threshold_decide(ccip_dir, tmp_path):
    embedder = AnimeEmbedder(ccip_dir)
    red, reddish, blue = (embedder.embed(plain(colour), None) for colour in (RED, REDDISH, BLUE))
    # raw features (what the head takes), as imgutils preprocesses: the whole picture, no face needed
    assert red == pytest.approx(expected_feature((plain(RED) * 255 + 0.5).astype(np.uint8)), abs=1e-4)
    near, far = difference(reddish, red), difference(blue, red)
    assert near < THRESHOLD < far  # the pictures are chosen so
    assert embedder.differences(np.stack([reddish, blue]), red[None])[:, 0] == pytest.approx([near, far], abs=1e-5)

    gallery = {"Aka": red[None]}
    same = identity_verdict([reddish], gallery, embedder)
    other = identity_verdict([blue], gallery, embedder)
    assert same.passed and same.notes == [] and same.characters["Aka"]["idr"] > 0.75
    assert not other.passed and other.reasons[0].startswith("low identity: Aka ")
    match = match_gallery(reddish, red[None], embedder)
    assert match.raw == pytest.approx(near, abs=1e-5)   # the head's difference, not a cosine
    assert match.idr == pytest.approx(1 / (1 + math.exp(-(math.log(3) + 2 * math.log(3) / CCIP_IMPOSTOR_GAP
                                                           * (THRESHOLD - near)))), abs=1e-4)
    # a model whose metrics.json puts its threshold exactly at this pair's difference: IDR 0.75 on the boundary
    at_boundary = AnimeEmbedder(export_ccip(tmp_path / "other-model", metrics={**METRICS, "threshold": near}))
    assert match_gallery(reddish, red[None], at_boundary).idr == pytest.approx(0.75, abs=1e-3)


def test_without_the_metric_head_it_is_cosine_and_says_it_is_uncalibrated(tmp_path):
    features_only = AnimeEmbedder(export_ccip(tmp_path / "feat-only", metric_head=False, metrics=None))
    warning = "ccip: uncalibrated (no model_metrics.onnx/metrics.json beside model_feat.onnx)"
    assert features_only.calibration.metric == "cosine" and features_only.calibration.warning == warning
    assert not features_only.has_metric_head and not features_only.calibration.calibrated
    red = features_only.embed(plain(RED), None)
    assert np.linalg.norm(red) == pytest.approx(1.0, abs=1e-5)
    verdict = identity_verdict([features_only.embed(plain(REDDISH), None)], {"Aka": red[None]}, features_only)
    assert verdict.passed and verdict.notes == [warning] and warning not in verdict.reasons  # a note, not a failure
    shot = aggregate_frames([verdict, verdict])
    assert shot["passed"] and shot["reasons"] == [warning]   # once per batch, where the node's summary shows it
    assert identity_verdict([red], {"Aka": red[None]}, "ccip").notes[0].startswith("ccip: uncalibrated")
    half = AnimeEmbedder(export_ccip(tmp_path / "no-json", metrics=None))
    assert half.calibration.warning == "ccip: uncalibrated (no metrics.json beside model_feat.onnx)"
    with pytest.raises(ValueError, match="choose the feature model"):
        AnimeEmbedder(tmp_path / "no-json" / "model_metrics.onnx")
    shutil.copy(tmp_path / "no-json" / "model_metrics.onnx", tmp_path / "feat-only" / "model_metrics.onnx")
    (tmp_path / "feat-only" / "metrics.json").write_text('{"f1_score": 0.9}')
    with pytest.raises(ValueError, match="numeric 'threshold'"):
        AnimeEmbedder(tmp_path / "feat-only" / "model_feat.onnx")


def test_a_solo_shot_is_embedded_whole_and_several_characters_by_their_boxes(ccip_dir):
    embedder = AnimeEmbedder(ccip_dir)
    image = np.random.default_rng(3).random((300, 400, 3)).astype(np.float32)
    rgb = (image * 255 + 0.5).astype(np.uint8)
    left, right = Face((50, 40, 90, 80), 0.9), Face((130, 50, 170, 90), 0.9)
    assert embedder.character_boxes(image, [left]) == [(0.0, 0.0, 400.0, 300.0)]
    # 3 face widths wide, half a face above, 3 faces below; each stops half way (x = 110) to the other
    assert embedder.character_boxes(image, [left, right]) == [(10.0, 20.0, 110.0, 200.0), (110.0, 30.0, 210.0, 210.0)]
    assert embedder.embed(image, left, faces=[left]) == pytest.approx(expected_feature(rgb), abs=1e-4)
    pair = embedder.embed_all(image, [left, right])
    assert pair[0] == pytest.approx(expected_feature(rgb[20:200, 10:110]), abs=1e-4)
    assert pair[1] == pytest.approx(expected_feature(rgb[30:210, 110:210]), abs=1e-4)
    assert embedder.embed(image, right, faces=[left, right]) == pytest.approx(pair[1], abs=1e-6)
    # a face below another: the cut is vertical; the frame clips the box
    above, below = Face((180, 10, 220, 50), 0.9), Face((185, 130, 225, 170), 0.9)
    assert character_box(above, [above, below], (400, 300)) == (140.0, 0.0, 260.0, 90.0)
    assert character_box(below, [above, below], (400, 300)) == (145.0, 110.0, 265.0, 290.0)  # no cut needed


def test_a_person_detector_gives_the_character_boxes(ccip_dir, tmp_path):
    persons = np.array([[60, 100, 80, 180, 0.9], [170, 110, 90, 200, 0.8]], np.float32).T[None]
    person_model = export_yolo(tmp_path / "person_detect_v1.1_m" / "model.onnx", persons, imgsz=(400, 300),
                               names="{0: 'person'}")
    embedder = load_embedder("ccip", ccip_dir, person_detector=person_model)
    assert embedder.person_detector.min_score == 0.3 and embedder.person_detector.iou_threshold == 0.5
    image = np.zeros((400, 300, 3), np.float32)
    left, right = Face((45, 30, 75, 60), 0.9), Face((155, 40, 185, 70), 0.9)
    assert embedder.character_boxes(image, [left, right]) == [(20.0, 10.0, 100.0, 190.0),
                                                              (125.0, 10.0, 215.0, 210.0)]
    stranger = Face((250, 300, 280, 330), 0.9)  # in no person box: the estimate from its face
    assert embedder.character_boxes(image, [left, right, stranger])[2] == character_box(
        stranger, [left, right, stranger], (300, 400))


def test_check_identity_gives_each_character_its_own_box(ccip_dir, tmp_path):
    embedder = AnimeEmbedder(ccip_dir)
    frame = np.concatenate([plain(RED, (200, 200)), plain(BLUE, (200, 200))], axis=1)  # two characters, side by side
    faces = np.array([[100, 50, 40, 40, 0.9], [300, 50, 40, 40, 0.9]], np.float32).T[None]
    detector = AnimeFaceDetector(export_yolo(tmp_path / "face_detect_v1.4_s" / "model.onnx", faces,
                                             imgsz=(200, 400)))
    galleries = {"Ao": embedder.embed(plain(BLUE), None)[None], "Aka": embedder.embed(plain(REDDISH), None)[None]}
    verdict = check_identity(frame, galleries, detector, embedder)
    assert verdict.passed, verdict.reasons
    assert verdict.characters["Aka"]["face"] == 0 and verdict.characters["Ao"]["face"] == 1


def test_gallery_references_are_whole_pictures_and_the_key_names_the_head(ccip_dir, tmp_path):
    class Fixed:
        name = "fixed"

        def __init__(self, faces):
            self.faces = faces

        def detect(self, image):
            return self.faces

    embedder = AnimeEmbedder(ccip_dir)
    picture = tmp_path / "aka.png"
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., :3] = (60, 60, 200)   # BGR on disk: red
    rgba[:, :80, 3] = 255           # the right half transparent: white, as imgutils fills it
    import cv2
    cv2.imwrite(str(picture), rgba)
    expected = np.full((120, 160, 3), 255, np.uint8)
    expected[:, :80] = (200, 60, 60)
    for faces in ([], [Face((20, 20, 50, 50), 0.9)]):   # no face found, or one: the whole picture either way
        vector = reference_embedder(Fixed(faces), embedder)(picture)
        assert vector == pytest.approx(expected_feature(expected), abs=1e-4)
    features_only = AnimeEmbedder(export_ccip(tmp_path / "feat-only", metric_head=False, metrics=None))
    keys = {backend_key(Fixed([]), embedder), backend_key(Fixed([]), features_only)}
    assert len(keys) == 2 and all(key.startswith("fixed-ccip-") and key.endswith("-character") for key in keys)


def test_gallery_aggregations(ccip_dir):
    embedder = AnimeEmbedder(ccip_dir)
    assert DEFAULT_AGGREGATION == {"dlib": "centroid", "arcface": "centroid", "ccip": "best_k"}
    references = np.stack([embedder.embed(plain(colour), None)
                           for colour in ((200, 60, 60), (180, 90, 70), (210, 40, 90), (60, 60, 200))])
    face = embedder.embed(plain(REDDISH), None)
    singles = sorted(difference(face, reference) for reference in references)
    best_k = match_gallery(face, references, embedder)
    assert best_k.aggregation == "best_k" and best_k.raw == pytest.approx(np.mean(singles[:3]), abs=1e-5)
    assert best_k.best_single_idr == pytest.approx(embedder.calibration.idr(singles[0]), abs=1e-4)
    # centroid under the head: imgutils' ccip_merge (unit mean scaled to the mean length) through the head
    lengths = np.linalg.norm(references, axis=1)
    merged = (references / lengths[:, None]).mean(axis=0)
    merged = merged / np.linalg.norm(merged) * lengths.mean()
    centroid = match_gallery(face, references, embedder, aggregation="centroid")
    assert centroid.raw == pytest.approx(difference(face, merged), abs=1e-5)
    # cosine backends: best_k is the mean of the k best cosines (k = min(3, n))
    gallery = np.eye(4)[:2]
    probe = np.array([1.0, 0.0, 0.0, 0.0])
    assert match_gallery(probe, gallery, "arcface", aggregation="best_k").raw == pytest.approx(0.5)
    assert match_gallery(probe, gallery, "arcface").raw == pytest.approx(math.sqrt(0.5))  # centroid, the default
    with pytest.raises(ValueError, match="unknown gallery aggregation"):
        match_gallery(probe, gallery, "arcface", aggregation="median")


# --- deepghs' YOLOv8 face detector exports -----------------------------------------------------------------------

def export_yolo(path, candidates: np.ndarray, imgsz=(640, 640), names: str = "{0: 'face'}", red_score: bool = False):
    """An ONNX of the ultralytics export layout deepghs publish: "images" (batch, 3, height, width) dynamic in,
    "output0" fixed candidates (cx, cy, w, h, score rows, in input pixels) out, metadata imgsz and names as
    ultralytics writes them. With `red_score`, the first candidate's score is the mean of the red input channel."""
    import onnx
    import torch

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("candidates", torch.from_numpy(np.ascontiguousarray(candidates)))

        def forward(self, images):
            out = self.candidates + 0.0 * images.mean()
            if red_score:
                out = out.clone()
                out[0, 4, 0] = images[0, 0].mean()
            return out

    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(Detector(), torch.zeros(1, 3, *imgsz), path, input_names=["images"], output_names=["output0"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}})
    model = onnx.load(str(path))
    for key, value in {"imgsz": str(list(imgsz)), "names": names, "task": "detect", "stride": "32"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


CANDIDATES = np.array([
    # cx,  cy,   w,   h, score (input pixels of the 320 x 320 model input)
    [100, 120, 60, 80, 0.90],
    [104, 118, 62, 78, 0.70],   # the same face again: NMS keeps the stronger
    [220, 150, 40, 50, 0.80],
    [200, 40, 30, 30, 0.20],    # under imgutils' 0.25
    [310, 300, 40, 60, 0.60],   # past the bottom right corner: clipped
    [20, 20, 10, 10, 0.05],
], dtype=np.float32).T[None]


def test_the_face_detector_takes_deepghs_exports_as_they_are(tmp_path):
    detector = AnimeFaceDetector(export_yolo(tmp_path / "face_detect_v1.4_s" / "model.onnx", CANDIDATES,
                                             imgsz=(320, 320)))
    model_input = detector.session.get_inputs()[0]
    assert (model_input.name, model_input.shape) == ("images", ["batch", 3, "height", "width"])
    assert detector.input_size == (320, 320) and detector.labels == ["face"]
    assert (detector.min_score, detector.iou_threshold) == (0.25, 0.7)   # imgutils' detect_faces defaults
    image = np.zeros((480, 640, 3), np.float32)   # stretched to 320 x 320: x / 0.5, y / (2 / 3)
    faces = detector.detect(image)
    assert [face.score for face in faces] == pytest.approx([0.9, 0.8, 0.6])
    assert faces[0].box == pytest.approx((140.0, 120.0, 260.0, 240.0))
    assert faces[1].box == pytest.approx((400.0, 187.5, 480.0, 262.5))
    assert faces[2].box == pytest.approx((580.0, 405.0, 640.0, 480.0))
    assert len(detector.detect(image, min_score=0.1)) == 4
    transposed = AnimeFaceDetector(export_yolo(tmp_path / "t" / "model.onnx", CANDIDATES.transpose(0, 2, 1).copy(),
                                               imgsz=(320, 320)))   # (1, boxes, 5)
    assert [face.box for face in transposed.detect(image)] == [face.box for face in faces]


def test_the_face_detector_feeds_the_whole_picture_stretched_rgb_0_to_1(tmp_path):
    detector = AnimeFaceDetector(export_yolo(tmp_path / "m.onnx", CANDIDATES[:, :, :1].copy(), imgsz=(256, 256),
                                             red_score=True))
    image = np.zeros((300, 600, 3), np.float32)
    image[:, :300, 0] = 1.0    # red on the left half
    image[:, :, 2] = 1.0       # blue everywhere: a BGR feed would score 1
    score = detector.detect(image, min_score=0.0)[0].score
    assert score == pytest.approx(0.5, abs=0.01)   # letterboxing would add grey bands (114 / 255) above and below
    letterboxed = AnimeFaceDetector(tmp_path / "m.onnx", letterbox=True).detect(image, min_score=0.0)[0].score
    assert letterboxed == pytest.approx((0.5 * 128 + 114 / 255 * 128) / 256, abs=0.01)
