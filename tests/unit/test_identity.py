"""Identity verdicts on real faces with dlib, the calibration curve, and the ArcFace / CCIP ONNX paths."""
from __future__ import annotations

import functools
import itertools

import cv2
import numpy as np
import pytest

from shotline.core.face_embedding import (AnimeEmbedder, ArcFaceEmbedder, CCIP_MEAN, CCIP_STD, align_face,
                                          load_embedder)
from shotline.core.faces import Face, box_iou, load_detector
from shotline.core.gallery_cache import GalleryCache, backend_key, reference_embedder
from shotline.core.identity import (CALIBRATIONS, DEFAULT_THRESHOLD, Calibration, aggregate_frames, assign_faces,
                                    calibrate, check_identity, identity_score, identity_verdict, match_gallery)
from shotline.core.models import ModelMissingError
from tests.images import hanks_photo, jpeg, t1_photo, template_image
from tests.unit.test_faces import export_onnx


@pytest.fixture(scope="module")
def detector():
    return load_detector("mtcnn")


@pytest.fixture(scope="module")
def dlib():
    return load_embedder("dlib")


def variants(image):
    """The same picture re-encoded, mirrored and shrunk: the faces in it are the same people."""
    return {"jpeg q40": jpeg(image, 40), "mirrored": np.ascontiguousarray(image[:, ::-1]),
            "0.6x": cv2.resize(image, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)}


@functools.lru_cache(maxsize=None)
def t1_embeddings(variant: str | None = None) -> tuple[np.ndarray, ...]:
    """dlib embeddings of t1's six people, left to right as in the original photo."""
    image = t1_photo() if variant is None else variants(t1_photo())[variant]
    faces = load_detector("mtcnn").detect(image)
    assert len(faces) == 6, variant
    embeddings = [load_embedder("dlib").embed(image, face) for face in faces]
    return tuple(embeddings[::-1] if variant == "mirrored" else embeddings)


def face_tile(image, face: Face, margin: float = 0.8, size: int = 200) -> np.ndarray:
    """The face with `margin` of its size around it, as a size x size tile."""
    x0, y0, x1, y1 = face.box
    pad_x, pad_y = (x1 - x0) * margin, (y1 - y0) * margin
    h, w = image.shape[:2]
    crop = image[max(0, int(y0 - pad_y)):min(h, int(y1 + pad_y)), max(0, int(x0 - pad_x)):min(w, int(x1 + pad_x))]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def group_picture(*tiles) -> np.ndarray:
    """Tiles side by side with grey between them: a frame with exactly these people, left to right."""
    gap = np.full((tiles[0].shape[0], 40, 3), 0.5, np.float32)
    parts = [gap]
    for tile in tiles:
        parts += [tile, gap]
    return np.ascontiguousarray(np.hstack(parts))


@functools.lru_cache(maxsize=None)
def t1_tiles() -> tuple[np.ndarray, ...]:
    image = t1_photo()
    return tuple(face_tile(image, face) for face in load_detector("mtcnn").detect(image))


def galleries_for(*people: int) -> dict:
    """Reference galleries from the re-encoded and shrunk copies of t1 (not the frames under test)."""
    names = ["Aiko", "Ben", "Chiara", "Dev", "Emi", "Farid"]
    return {names[p]: np.stack([t1_embeddings("jpeg q40")[p], t1_embeddings("0.6x")[p]]) for p in people}


# --- calibration -----------------------------------------------------------------------------------------------

def test_every_backend_puts_its_boundary_at_the_same_idr():
    for calibration in CALIBRATIONS.values():
        assert calibration.idr(calibration.boundary) == pytest.approx(0.75)
    dlib = CALIBRATIONS["dlib"]
    distances = np.linspace(0, 1, 21)
    assert np.all(np.diff(dlib.idr(distances)) < 0)  # farther is worse
    cosines = np.linspace(-1, 1, 21)
    assert np.all(np.diff(CALIBRATIONS["arcface"].idr(cosines)) > 0)  # closer is better


def test_calibrate_puts_the_boundary_in_the_gap_and_0_25_at_the_impostor_mean():
    genuine = [0.06, 0.1, 0.2, 0.26]
    impostor = [0.39, 0.45, 0.5, 0.6]
    fitted = calibrate(genuine, impostor, metric="euclidean", backend="mine")
    assert fitted.boundary == pytest.approx((0.26 + 0.39) / 2)
    assert fitted.idr(np.mean(impostor)) == pytest.approx(0.25)
    assert all(fitted.idr(g) > 0.75 for g in genuine) and all(fitted.idr(i) < 0.75 for i in impostor)
    cosine = calibrate([0.7, 0.8, 0.5], [0.0, 0.1, -0.05, 0.3])
    assert cosine.boundary == pytest.approx(0.4) and cosine.metric == "cosine"
    overlapping = calibrate([0.3, 0.5, 0.7, 0.9], [0.1, 0.2, 0.4, 0.6])  # one error each side at best
    assert 0.2 < overlapping.boundary < 0.7
    with pytest.raises(ValueError):
        calibrate([], [0.1])
    with pytest.raises(ValueError):
        Calibration("x", "manhattan", 0.5, 1.0)


# --- dlib on real faces ------------------------------------------------------------------------------------------

def test_dlib_embeddings_are_unit_norm_and_128_d(dlib):
    for embedding in t1_embeddings():
        assert embedding.shape == (128,) and embedding.dtype == np.float32
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("variant", ["jpeg q40", "mirrored", "0.6x"])
def test_the_same_person_scores_above_the_threshold(variant):
    for original, copy in zip(t1_embeddings(), t1_embeddings(variant)):
        assert identity_score(copy, original[None], "dlib") > DEFAULT_THRESHOLD


def test_different_people_score_below_the_threshold():
    people = t1_embeddings()
    scores = [identity_score(a, b[None], "dlib") for a, b in itertools.combinations(people, 2)]
    assert len(scores) == 15 and max(scores) < DEFAULT_THRESHOLD
    hanks = load_embedder("dlib").embed(hanks_photo(), load_detector("mtcnn").detect(hanks_photo())[0])
    assert max(identity_score(hanks, person[None], "dlib") for person in people) < DEFAULT_THRESHOLD


def test_one_person_in_two_generated_pictures_is_the_same_identity(detector, dlib):
    def embedding(name):
        image = template_image(name)
        return dlib.embed(image, detector.detect(image)[0])
    same = identity_score(embedding("flux1_dev_uso_reference_image_gen-2"),
                          embedding("flux1_dev_uso_reference_image_gen-1")[None], "dlib")
    other = identity_score(embedding("flux1_dev_uso_reference_image_gen-2"), embedding("image_flux2-1")[None], "dlib")
    assert same > DEFAULT_THRESHOLD > other


def test_gallery_is_judged_on_its_centroid_and_reports_the_best_single_reference():
    people = t1_embeddings()
    gallery = np.stack([people[0], people[1]])  # a bad gallery: two different people
    match = match_gallery(t1_embeddings("jpeg q40")[0], gallery, "dlib")
    assert match.best_single_idr > DEFAULT_THRESHOLD  # one reference is this person...
    assert match.idr < match.best_single_idr  # ...but the gallery as a whole is not
    assert identity_score(people[0], np.zeros((0, 128)), "dlib") == 0.0


# --- assignment and verdicts -------------------------------------------------------------------------------------

def test_two_characters_are_matched_to_the_right_faces(detector, dlib):
    tiles = t1_tiles()
    frame = group_picture(tiles[4], tiles[1])  # Emi on the left, Ben on the right
    verdict = check_identity(frame, galleries_for(1, 4), detector, dlib)
    assert verdict.passed, verdict.reasons
    assert verdict.face_count == 2
    assert verdict.characters["Ben"]["face"] == 1 and verdict.characters["Emi"]["face"] == 0
    assert verdict.score > DEFAULT_THRESHOLD and verdict.reasons == []
    assert len(verdict.faces) == 2 and verdict.faces[0]["box"][0] < verdict.faces[1]["box"][0]


def test_assignment_maximises_the_total_not_each_character_greedily():
    # Greedy would give face 0 to A (0.95) and leave B with face 1 (0.1); the optimum is A-1, B-0.
    calibration = Calibration("toy", "cosine", boundary=0.5, slope=10.0)
    a, b = np.eye(3)[0], np.eye(3)[1]
    face0 = (a + b) / np.linalg.norm(a + b)
    assignment = assign_faces([face0, a], {"A": a[None], "B": b[None]}, calibration)
    assert assignment.characters["A"].face == 1 and assignment.characters["B"].face == 0
    assert assignment.unmatched_faces == [] and assignment.missing == []


def test_a_frame_without_a_face_fails_with_no_face_found(detector, dlib):
    verdict = check_identity(template_image("controlnet_example-1"), galleries_for(0), detector, dlib)
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.reasons == ["no face found"]
    assert verdict.missing == ["Aiko"]


def test_an_extra_person_fails_as_unexpected_unless_allowed(detector, dlib):
    tiles = t1_tiles()
    frame = group_picture(tiles[4], tiles[1], tiles[2])
    verdict = check_identity(frame, galleries_for(1, 4), detector, dlib)
    assert not verdict.passed
    assert verdict.reasons == ["wrong face count: 3 faces for 2 characters", "unexpected face(s): 1"]
    assert verdict.unmatched_faces == [2]
    assert all(match["passed"] for match in verdict.characters.values())
    relaxed = check_identity(frame, galleries_for(1, 4), detector, dlib, allow_extra_faces=True)
    assert relaxed.passed and relaxed.reasons == verdict.reasons  # still reported


def test_a_missing_character_and_a_stranger_are_named(detector, dlib):
    tiles = t1_tiles()
    missing = check_identity(group_picture(tiles[1]), galleries_for(1, 4), detector, dlib)
    assert missing.reasons == ["wrong face count: 1 face for 2 characters", "missing character: Emi"]
    assert missing.score == 0.0 and missing.characters["Ben"]["passed"]
    stranger = check_identity(group_picture(tiles[3]), galleries_for(0), detector, dlib)
    assert not stranger.passed and len(stranger.reasons) == 1
    assert stranger.reasons[0].startswith("low identity: Aiko 0.") and stranger.reasons[0].endswith(" < 0.75")


def test_bad_frames_give_a_verdict_not_an_exception(detector, dlib):
    for frame in (np.full((64, 64, 3), np.nan, np.float32), np.zeros((4, 4, 1), np.float32)):
        verdict = check_identity(frame, galleries_for(0), detector, dlib)
        assert not verdict.passed and verdict.reasons == ["no face found"]
    assert identity_verdict([], {}, "dlib").reasons == ["no face found", "no reference gallery given"]


def test_shot_aggregate_reports_min_mean_and_share_passing(detector, dlib):
    tiles = t1_tiles()
    galleries = galleries_for(1, 4)
    frames = [check_identity(group_picture(tiles[4], tiles[1]), galleries, detector, dlib),
              check_identity(group_picture(tiles[4], tiles[1])[:, ::-1].copy(), galleries, detector, dlib),
              check_identity(group_picture(tiles[1]), galleries, detector, dlib)]
    shot = aggregate_frames(frames)
    assert shot["pass_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert not shot["passed"] and shot["score"] == 0.0
    assert shot["mean"] == pytest.approx(np.mean([frame.score for frame in frames]), abs=1e-4)
    assert shot["reasons"] == ["frame 2: wrong face count: 1 face for 2 characters", "frame 2: missing character: Emi"]
    assert shot["characters"]["Emi"]["min"] == 0.0 and shot["characters"]["Ben"]["min"] > 0.75
    tolerant = aggregate_frames(frames, min_pass_share=0.6)
    assert tolerant["passed"]
    assert aggregate_frames(frames, min_pass_share=0.9)["reasons"][0] == "frames passing: 67% < 90%"
    assert aggregate_frames([])["reasons"] == ["empty batch"]


# --- gallery cache ------------------------------------------------------------------------------------------------

def test_gallery_cache_embeds_each_reference_once(tmp_path, detector, dlib):
    references = tmp_path / "refs"
    references.mkdir()
    tiles = t1_tiles()
    for index in (0, 1):
        cv2.imwrite(str(references / f"ben_{index}.png"), cv2.cvtColor((tiles[1] * 255).astype(np.uint8),
                                                                       cv2.COLOR_RGB2BGR) if index == 0 else
                    cv2.cvtColor((jpeg(tiles[1], 60) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(references / "sky.png"), np.full((120, 120, 3), 200, np.uint8))
    calls = []
    embed = reference_embedder(detector, dlib)

    def counting(path):
        calls.append(path.name)
        return embed(path)

    key = backend_key(detector, dlib)
    assert key.startswith("mtcnn-dlib-")
    cache = GalleryCache(tmp_path / "cache")
    paths = sorted(references.glob("*.png"))
    gallery, faceless = cache.gallery(paths, key, counting)
    assert gallery.shape == (2, 128) and faceless == [str(references / "sky.png")]
    assert sorted(calls) == ["ben_0.png", "ben_1.png", "sky.png"]
    again, _ = GalleryCache(tmp_path / "cache").gallery(paths, key, counting)
    assert len(calls) == 3 and np.array_equal(again, gallery)  # nothing re-embedded, the faceless one included
    (references / "ben_1.png").rename(references / "renamed.png")
    cv2.imwrite(str(references / "ben_2.png"), cv2.cvtColor((tiles[1][:, ::-1] * 255).astype(np.uint8),
                                                           cv2.COLOR_RGB2BGR))
    grown, _ = cache.gallery(sorted(references.glob("*.png")), key, counting)
    assert calls[3:] == ["ben_2.png"] and grown.shape == (3, 128)
    assert identity_score(t1_embeddings()[1], grown, "dlib") > DEFAULT_THRESHOLD


# --- ArcFace and CCIP ONNX paths, with tiny models exported here ------------------------------------------------

class ChannelMeans:
    """A model whose output is the mean of each input channel: it shows what the pipeline fed it."""

    @staticmethod
    def export(path, size):
        import torch
        return export_onnx(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                           torch.zeros(1, 3, size, size), path, input_names=["input"], output_names=["output"])


def test_arcface_aligns_on_the_landmarks_and_normalises_as_insightface(tmp_path, detector):
    from insightface.utils import face_align

    model = ChannelMeans.export(tmp_path / "w600k_tiny.onnx", 112)
    embedder = load_embedder("arcface", model)
    assert isinstance(embedder, ArcFaceEmbedder) and embedder.size == 112 and embedder.dim == 3
    image = t1_photo()
    face = detector.detect(image)[2]
    rgb = (image * 255 + 0.5).astype(np.uint8)
    reference = face_align.norm_crop(rgb, face.landmarks, image_size=112)
    ours = align_face(rgb, face.landmarks, 112)
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 1.0
    expected = (reference.astype(np.float64) - 127.5) / 127.5  # InsightFace: (x - 127.5) / 127.5, RGB order
    expected = expected.reshape(-1, 3).mean(axis=0)
    assert embedder.embed(image, face) == pytest.approx(expected / np.linalg.norm(expected), abs=2e-3)
    no_landmarks = Face(face.box, face.score, None)
    assert np.linalg.norm(embedder.embed(image, no_landmarks)) == pytest.approx(1.0, abs=1e-5)


def test_arcface_rejects_a_model_that_is_not_a_recogniser_and_names_missing_files(tmp_path):
    import torch
    odd = export_onnx(torch.nn.AdaptiveAvgPool2d(1), torch.zeros(1, 3, 100, 100), tmp_path / "odd.onnx")
    with pytest.raises(ValueError, match="not an InsightFace recognition model"):
        ArcFaceEmbedder(odd)
    with pytest.raises(ModelMissingError, match="buffalo_l/w600k_r50.onnx"):
        load_embedder("arcface", tmp_path / "w600k_r50.onnx")


def test_ccip_reads_its_input_size_from_the_model_and_normalises_like_clip(tmp_path):
    from PIL import Image
    model = ChannelMeans.export(tmp_path / "ccip_tiny.onnx", 64)
    embedder = AnimeEmbedder(model)
    assert embedder.size == 64 and embedder.dim == 3 and not embedder.has_metric_head
    image = template_image("image_netayume_lumina_t2i-1")
    face = load_detector("mtcnn").detect(image)[0]
    vector = embedder.embed(image, face, faces=[face])
    # expected: the face alone in the frame, so the whole frame (CCIP embeds characters, not faces), resized to
    # 64 x 64 with PIL's bilinear filter as imgutils does, (x - CLIP mean) / CLIP std, RGB order
    rgb = (image * 255 + 0.5).astype(np.uint8)
    resized = np.asarray(Image.fromarray(rgb).resize((64, 64), resample=Image.BILINEAR)).astype(np.float32) / 255
    expected = ((resized - CCIP_MEAN) / CCIP_STD).reshape(-1, 3).mean(axis=0)
    assert vector == pytest.approx(expected / np.linalg.norm(expected), abs=1e-5)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_per_character_thresholds_from_the_sheets():
    from shotline.core.identity import aggregate_frames, identity_verdict
    gallery_a, gallery_b = np.eye(4, dtype=np.float32)[:1], np.eye(4, dtype=np.float32)[1:2]
    # face 0 is A exactly; face 1 is B at cosine 0.5 (IDR about 0.89 on the ArcFace calibration)
    faces = [np.array([1, 0, 0, 0], np.float32), np.array([0, 0.5, 0.75 ** 0.5, 0], np.float32)]
    lenient = identity_verdict(faces, {"A": gallery_a, "B": gallery_b}, "arcface", {"A": 0.75, "B": 0.5})
    strict = identity_verdict(faces, {"A": gallery_a, "B": gallery_b}, "arcface", {"A": 0.75, "B": 0.95})
    assert lenient.passed and not strict.passed
    assert strict.reasons == [f"low identity: B {strict.characters['B']['idr']:.2f} < 0.95"]
    shot = aggregate_frames([strict, lenient], threshold={"A": 0.75, "B": 0.95})
    assert shot["characters"]["B"]["threshold"] == 0.95 and shot["characters"]["B"]["pass_share"] == 0.5
    assert shot["characters"]["A"]["passed"] and not shot["characters"]["B"]["passed"]
    assert shot["characters"]["A"]["score"] == shot["characters"]["A"]["min"]


class ListedFaces:
    """A detector that returns the faces it was given (pure logic test of what counts)."""
    name = "listed"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image, min_score=None):
        return list(self.faces)


def test_an_unsure_detection_counts_only_as_a_characters_face(dlib):
    """MTCNN's low cuts find drawn faces and hands alike: an unsure face matching no character is dropped, not
    a stranger; an unsure face that is a character's face counts."""
    tiles = t1_tiles()
    frame = group_picture(tiles[1], tiles[4])
    ben, emi = load_detector("mtcnn").detect(frame)
    hand = Face((5.0, 5.0, 60.0, 70.0), 0.6, None, sure=False)  # what MTCNN might see in a corner
    verdict = check_identity(frame, galleries_for(1), ListedFaces([hand, ben]), dlib)
    assert verdict.passed and verdict.face_count == 1 and verdict.ignored_faces == 1, verdict.reasons
    assert verdict.faces[0]["box"] == ben.as_dict()["box"]  # the report holds what counted
    shy_emi = Face(emi.box, 0.7, emi.landmarks, sure=False)
    both = check_identity(frame, galleries_for(1, 4), ListedFaces([ben, shy_emi, hand]), dlib)
    assert both.passed and both.face_count == 2 and both.ignored_faces == 1, both.reasons
    stranger = check_identity(frame, galleries_for(1), ListedFaces([ben, emi]), dlib)  # a sure stranger stays one
    assert not stranger.passed and stranger.reasons[-1] == "unexpected face(s): 1"


def test_the_low_cut_detector_marks_what_plain_mtcnn_would_drop(detector):
    low = load_detector("mtcnn_low")
    plain = detector.detect(t1_photo())
    found = low.detect(t1_photo())
    sure = [face for face in found if face.sure]
    assert len(sure) == len(plain) == 6  # the six people, sure, where plain MTCNN has them
    assert all(box_iou(a.box, b.box) > 0.75 for a, b in zip(sure, plain))  # looser cuts move a box a little
    assert all(face.score < 0.9 for face in found if not face.sure)
    redhead = template_image("image_netayume_lumina_t2i-1")
    assert [face.sure for face in low.detect(redhead)] == [True]
