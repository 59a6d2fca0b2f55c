"""Face detection on real photos and generated images, and the ONNX detector path with a model the test exports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shotline.core.faces import AnimeFaceDetector, Face, InsightFaceDetector, letterbox, load_detector
from shotline.core.models import ModelMissingError
from tests.images import t1_photo, template_image

@pytest.fixture(scope="module")
def mtcnn():
    return load_detector("mtcnn")


def test_mtcnn_finds_the_six_people_in_t1(mtcnn):
    faces = mtcnn.detect(t1_photo())
    assert len(faces) == 6
    assert all(face.score > 0.95 for face in faces)
    centres = [(face.box[0] + face.box[2]) / 2 for face in faces]
    assert centres == sorted(centres)  # left to right
    for face in faces:
        assert 50 < face.width < 200 and 50 < face.height < 250
        landmarks = face.landmarks
        assert landmarks.shape == (5, 2)
        x0, y0, x1, y1 = face.box
        assert ((landmarks[:, 0] > x0) & (landmarks[:, 0] < x1) & (landmarks[:, 1] > y0) & (landmarks[:, 1] < y1)).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = landmarks
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_mtcnn_finds_the_face_in_generated_and_anime_pictures(mtcnn):
    for name in ("flux1_dev_uso_reference_image_gen-1", "image_flux2-1", "image_netayume_lumina_t2i-1"):
        faces = mtcnn.detect(template_image(name))
        assert len(faces) == 1, name
    assert mtcnn.detect(template_image("controlnet_example-1")) == []  # a cottage landscape


@pytest.mark.parametrize("image", [
    np.full((256, 256, 3), 0.5, np.float32),
    np.full((256, 256, 3), np.nan, np.float32),
    np.zeros((8, 8, 3), np.float32),
    np.zeros((0, 0, 3), np.float32),
    np.random.default_rng(0).random((128, 96, 1), dtype=np.float32),
    np.random.default_rng(1).random((128, 96, 4), dtype=np.float32),
])
def test_bad_images_give_no_faces_and_do_not_raise(mtcnn, image):
    assert mtcnn.detect(image) == []


def test_detectors_are_loaded_once(mtcnn, tmp_path):
    assert load_detector("mtcnn") is mtcnn
    model = export_anime_detector(tmp_path / "faces.onnx", CANDIDATES)
    assert load_detector("anime", model) is load_detector("anime", str(model))
    with pytest.raises(ValueError, match="unknown face detector"):
        load_detector("haar")


def test_missing_model_names_the_file_and_its_folder(tmp_path):
    with pytest.raises(ModelMissingError) as error:
        InsightFaceDetector(tmp_path / "det_10g.onnx")
    assert "det_10g.onnx" in str(error.value)
    assert "ComfyUI/models/insightface/models/buffalo_l/det_10g.onnx" in str(error.value)
    with pytest.raises(ModelMissingError, match="ComfyUI/models/anime_face_detectors/yolo.onnx"):
        load_detector("anime", tmp_path / "yolo.onnx")
    assert isinstance(error.value, FileNotFoundError)


# A YOLOv8-style output, 1 x 5 x N in letterboxed input pixels: two overlapping boxes on one face (NMS keeps the
# stronger), one below the score threshold, one on a second face.
CANDIDATES = np.array([
    # cx,  cy,   w,   h, score
    [100, 120, 60, 80, 0.90],
    [104, 118, 62, 78, 0.70],
    [200, 40, 30, 30, 0.10],
    [220, 150, 40, 50, 0.80],
], dtype=np.float32).T[None]


def export_onnx(module, example_input, path: Path, **names) -> Path:
    """Export a small torch module with the TorchScript exporter (the dynamo one needs onnxscript)."""
    import warnings
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), example_input, str(path), dynamo=False, **names)
    return path


def export_anime_detector(path: Path, candidates: np.ndarray, size: int = 320) -> Path:
    """A single-class detector ONNX whose output is fixed candidates (plus 0 x the input, so the graph uses it)."""
    import torch

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("candidates", torch.from_numpy(candidates))

        def forward(self, image):
            return self.candidates + 0.0 * image.mean()

    return export_onnx(Detector(), torch.zeros(1, 3, size, size), path, input_names=["images"],
                       output_names=["output0"])


def test_anime_detector_decodes_letterboxed_boxes_and_suppresses_overlaps(tmp_path):
    detector = AnimeFaceDetector(export_anime_detector(tmp_path / "anime.onnx", CANDIDATES), letterbox=True)
    assert detector.size == 320
    image = np.zeros((480, 640, 3), np.float32)  # landscape: scale 0.5, 40 px of padding above and below
    faces = detector.detect(image)
    assert len(faces) == 2
    first, second = faces
    assert first.score == pytest.approx(0.9) and second.score == pytest.approx(0.8)
    # (cx - w/2 - left) / scale, (cy - h/2 - top) / scale
    assert first.box == pytest.approx(((100 - 30) / 0.5, (120 - 40 - 40) / 0.5, (100 + 30) / 0.5, (120 + 40 - 40) / 0.5))
    assert second.box == pytest.approx((400.0, 170.0, 480.0, 270.0))
    assert first.landmarks is None
    assert len(detector.detect(image, min_score=0.85)) == 1
    assert len(detector.detect(image, min_score=0.05)) == 3  # the weak box is apart from the others


def test_letterbox_keeps_the_picture_centred():
    image = np.full((100, 200, 3), 255, np.uint8)
    square, scale, (left, top) = letterbox(image, 64)
    assert scale == 0.32 and (left, top) == (0, 16)
    assert square[16:48].min() == 255 and square[:16].max() == 114 and square[48:].max() == 114


def test_insightface_loader_rejects_a_model_that_is_not_a_detector(tmp_path):
    import torch
    path = tmp_path / "recogniser.onnx"
    export_onnx(torch.nn.AdaptiveAvgPool2d(1), torch.zeros(1, 3, 112, 112), path)
    with pytest.raises(ValueError, match="not an InsightFace face detector"):
        InsightFaceDetector(path)


def test_face_as_dict_is_plain_json_values():
    face = Face((1.04, 2.0, 3.0, 4.0), 0.98765, np.arange(10, dtype=np.float32).reshape(5, 2))
    assert face.as_dict() == {"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9877,
                              "landmarks": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0], [8.0, 9.0]], "sure": True}


def export_scrfd_like(path: Path, hit_stride: int, hit_anchor: int, size: int = 640) -> Path:
    """An ONNX with SCRFD's nine outputs (scores, box distances and landmark offsets for strides 8, 16, 32, two
    anchors each): one anchor fires with a box 2 strides around its centre. insightface's loader takes it as a
    detector by its outputs, exactly as it takes det_10g.onnx."""
    import torch

    class ScrfdLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for stride in (8, 16, 32):
                count = (size // stride) ** 2 * 2
                scores = torch.zeros(count, 1)
                if stride == hit_stride:
                    scores[hit_anchor] = 0.97
                offsets = torch.tensor([-1.0, -1.0, 1.0, -1.0, 0.0, 0.0, -0.8, 1.0, 0.8, 1.0]).repeat(count, 1)
                self.register_buffer(f"scores{stride}", scores)
                self.register_buffer(f"boxes{stride}", torch.full((count, 4), 2.0))
                self.register_buffer(f"kps{stride}", offsets)

        def forward(self, image):
            zero = image.mean() * 0  # keeps the input in the graph
            strides = (8, 16, 32)
            return (*(getattr(self, f"scores{s}") + zero for s in strides),
                    *(getattr(self, f"boxes{s}") + zero for s in strides),
                    *(getattr(self, f"kps{s}") + zero for s in strides))

    torch.onnx.export(ScrfdLike(), torch.zeros(1, 3, size, size), str(path), dynamo=False,
                      input_names=["input.1"], output_names=[f"out{i}" for i in range(9)])
    return path


def test_insightface_detector_decodes_a_scrfd_model_through_insightfaces_loader(tmp_path):
    stride, anchor = 16, 2 * (10 * 40 + 25)  # grid 40x40 at stride 16: row 10, column 25, first anchor
    detector = InsightFaceDetector(export_scrfd_like(tmp_path / "det_10g.onnx", stride, anchor), det_size=640)
    image = np.full((640, 640, 3), 0.5, np.float32)
    [face] = detector.detect(image)
    centre_x, centre_y = 25 * stride, 10 * stride
    assert face.box == pytest.approx((centre_x - 32, centre_y - 32, centre_x + 32, centre_y + 32), abs=0.5)
    assert face.score == pytest.approx(0.97, abs=1e-4)
    assert face.landmarks[0] == pytest.approx((centre_x - 16, centre_y - 16), abs=0.5)  # left eye
    assert face.landmarks[2] == pytest.approx((centre_x, centre_y), abs=0.5)            # nose
    # the score threshold is honoured, and a half-size frame gives boxes in its own pixels
    assert detector.detect(image, min_score=0.98) == []
    [small] = detector.detect(image[::2, ::2].copy())
    assert small.box == pytest.approx(tuple(v / 2 for v in face.box), abs=0.5)


def test_animeface_finds_the_anime_face_mtcnn_misses():
    """The cat-eared girl of mixing_controlnets-1 escapes MTCNN; animeface (through the struct it was built
    for: `animeface.detect` itself finds nothing with Pillow 12+) finds her, with her eyes above her mouth."""
    from shotline.core.faces import AnimefaceDetector

    detector = load_detector("animeface")
    assert isinstance(detector, AnimefaceDetector)
    picture = template_image("mixing_controlnets-1")
    assert load_detector("mtcnn").detect(picture) == []
    faces = detector.detect(picture)
    assert len(faces) == 1 and faces[0].score >= 0.5
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < 240 and 80 < y0 < 160 and 90 < x1 - x0 < 160  # the face, in the 1024 px picture
    left_eye, right_eye, nose, mouth_left, mouth_right = faces[0].landmarks
    assert left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth_left[1]
    assert len(detector.detect(template_image("image_netayume_lumina_t2i-1"))) == 1
    assert detector.detect(template_image("controlnet_example-1")) == []  # a cottage landscape


def test_combined_detector_adds_only_the_faces_the_first_one_missed():
    combined = load_detector("mtcnn+animeface")
    assert combined.name == "mtcnn+animeface"
    netayume = template_image("image_netayume_lumina_t2i-1")  # both find her: one face, MTCNN's box
    mtcnn_box = load_detector("mtcnn").detect(netayume)[0].box
    assert [face.box for face in combined.detect(netayume)] == [mtcnn_box]
    assert len(combined.detect(template_image("mixing_controlnets-1"))) == 1  # animeface's alone
    assert len(combined.detect(t1_photo())) == 6


def test_plausible_face_wants_a_face_geometry():
    from shotline.core.faces import plausible_face

    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    assert plausible_face(Face((0, 0, 100, 110), 0.8, landmarks))
    assert plausible_face(Face((0, 0, 100, 110), 0.8, None))          # nothing to check but the box
    assert not plausible_face(Face((0, 0, 100, 20), 0.8, None))       # a strip
    upside_down = landmarks.copy()
    upside_down[:, 1] = 110 - upside_down[:, 1]
    assert not plausible_face(Face((0, 0, 100, 110), 0.8, upside_down))
    squeezed = landmarks.copy()
    squeezed[1, 0] = 35                                                 # eyes 5 % of the width apart
    assert not plausible_face(Face((0, 0, 100, 110), 0.8, squeezed))
    outside = landmarks.copy()
    outside[3] = (35, 200)
    assert not plausible_face(Face((0, 0, 100, 110), 0.8, outside))
