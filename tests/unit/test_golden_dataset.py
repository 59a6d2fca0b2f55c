"""Golden datasets' pure parts: the perceptual hash against near-copies and different pictures, bucket sizes, aligned
face crops, captions, selection by score from identity verdicts as the node emits them, near-copy removal, and the
manifest."""
import hashlib
import json
import math

import cv2
import numpy as np
import pytest
from shotline.core.faces import load_detector
from shotline.core.identity import IdentityVerdict, aggregate_frames

from shotline_controller.golden_dataset import (
    BUCKETS,
    EMBEDDING_MAX_DISTANCE,
    PHASH_MAX_DISTANCE,
    Candidate,
    DatasetError,
    Plan,
    aligned_face,
    bucket_for,
    candidates,
    caption,
    check_min_score,
    dataset_files,
    deduplicated,
    embedding_distance,
    frame_pictures,
    hamming,
    measured,
    phash,
    prompt_tags,
    select_by_score,
    square_at_bucket,
)
from tests.images import hanks_photo, jpeg, t1_photo, template_image

PICTURES = ("image_flux2-1", "image2image-1", "controlnet_example-1", "flux_dev_checkpoint_example-1",
            "flux1_krea_dev-1", "depth_controlnet-2")


def near_copies(image: np.ndarray) -> dict[str, np.ndarray]:
    height, width = image.shape[:2]
    return {"jpeg q60": jpeg(image, 60), "brighter": np.clip(image * 1.12, 0, 1),
            "darker": np.clip(image - 0.06, 0, 1),
            "0.9x": cv2.resize(image, (int(width * 0.9), int(height * 0.9)), interpolation=cv2.INTER_AREA),
            "1.1x": cv2.resize(image, (int(width * 1.1), int(height * 1.1))),
            "2 % shifted": image[int(height * 0.02):, int(width * 0.02):]}


@pytest.mark.parametrize("name", PICTURES)
def test_phash_finds_a_near_copy_re_encoded_brightness_shifted_or_slightly_resized(name):
    image = template_image(name)
    for how, copy in near_copies(image).items():
        assert hamming(phash(image), phash(copy)) <= PHASH_MAX_DISTANCE, how


def test_phash_tells_different_pictures_apart():
    hashes = {name: phash(template_image(name)) for name in PICTURES}
    hashes["hanks"] = phash(hanks_photo())
    names = sorted(hashes)
    distances = [hamming(hashes[a], hashes[b]) for i, a in enumerate(names) for b in names[i + 1:]]
    assert min(distances) > PHASH_MAX_DISTANCE, distances
    mirrored = template_image(PICTURES[0])[:, ::-1]
    assert hamming(phash(mirrored), hashes[PICTURES[0]]) > PHASH_MAX_DISTANCE  # a flip is another picture to pHash


def test_phash_takes_float_and_uint8_pictures_alike():
    image = template_image(PICTURES[1])
    assert hamming(phash(image), phash((image * 255 + 0.5).astype(np.uint8))) <= 1
    assert 0 <= phash(image) < 2 ** 64


def test_embedding_distance_is_the_unit_vectors_euclidean_distance():
    assert embedding_distance([3, 0], [1, 0]) == pytest.approx(0.0)
    assert embedding_distance([1, 0], [0, 2]) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize("short_side, bucket", [
    (200, None), (255, None), (256, 512), (400, 512), (512, 512), (767, 512), (768, 768), (1023, 768),
    (1024, 1024), (4000, 1024)])
def test_a_picture_goes_to_the_largest_bucket_its_short_side_reaches(short_side, bucket):
    assert bucket_for(short_side) == bucket


def test_a_frame_is_squared_at_its_bucket_around_the_face():
    frame = np.zeros((900, 1600, 3), np.uint8)
    frame[400:500, 1400:1500] = 255  # the "face", near the right edge
    square = square_at_bucket(frame, 768, centre=(1450, 450))
    assert square.shape == (768, 768, 3)
    xs = np.nonzero(square[..., 0] > 128)[1]
    assert xs.size and xs.mean() > 768 / 2  # the crop moved right to keep the face, stopped by the edge
    assert square_at_bucket(frame, 512).shape == (512, 512, 3)
    small = np.zeros((300, 400, 3), np.uint8)
    assert square_at_bucket(small, 512).shape == (512, 512, 3)  # upscaled


def eye_angle(detector, image) -> tuple[object, float]:
    face = max(detector.detect(image), key=lambda f: f.width * f.height)
    (lx, ly), (rx, ry) = face.landmarks[:2]
    return face, math.degrees(math.atan2(ry - ly, rx - lx))


def test_a_tilted_face_is_aligned_with_its_eyes_level():
    detector = load_detector("mtcnn")
    people = t1_people()
    after = []
    for photo, _ in (people[0], people[2]):
        height, width = photo.shape[:2]
        _, natural = eye_angle(detector, photo)
        for tilt in (0, 18 if natural < 0 else -18):  # as it is, and turned further the way it leans
            turn = cv2.getRotationMatrix2D((width / 2, height / 2), tilt, 1.0)
            tilted = cv2.warpAffine(photo, turn, (width, height), borderMode=cv2.BORDER_REFLECT_101)
            face, before = eye_angle(detector, tilted)
            assert abs(before) > 9  # the eyes are tilted in the frame (t1's people lean 13-29 degrees)
            crop = aligned_face(tilted, face.box, face.landmarks.tolist())
            assert crop.shape[0] == crop.shape[1]
            assert crop.shape[0] == pytest.approx(min(max(face.width, face.height) * 1.8, width, height), abs=2)
            _, level = eye_angle(detector, crop)  # MTCNN's landmarks move a few degrees with the pose
            assert abs(level) < abs(before) / 2, (tilt, before, level)
            after.append(abs(level))
            plain = aligned_face(tilted, face.box)  # no landmarks: a plain square crop of the same size
            assert plain.shape == crop.shape
    assert np.mean(after) < 5, after
    assert aligned_face(people[0][0], [10, 10, 10, 50]) is None and aligned_face(people[0][0], "box") is None


def test_captions_put_the_trigger_first_and_each_tag_once():
    assert prompt_tags("(red scarf:1.2), Silver  hair,, [smile]\nnight") == ["red scarf", "Silver hair", "smile",
                                                                             "night"]
    text = caption("Aiko", "Aiko walking, red scarf, night city", "Aiko, a girl with silver hair, RED SCARF",
                   extra=("face close-up",))
    assert text == "Aiko, face close-up, Aiko walking, red scarf, night city, a girl with silver hair"


def test_min_score_must_be_a_number_between_0_and_1():
    assert check_min_score("0.85") == 0.85
    for bad in ("high", "1.5", "-0.1", "nan", None):
        with pytest.raises(DatasetError) as error:
            check_min_score(bad)
        assert error.value.field == "min_score"


# --- from verdicts to a dataset ---------------------------------------------------------------------------------

def identity_verdict(idr: float | None, box=(40.0, 30.0, 140.0, 150.0)) -> dict:
    """An identity verdict for one frame, built with the node's own aggregate_frames."""
    found = idr is not None
    frame = IdentityVerdict(
        score=idr or 0.0, passed=bool(found and idr >= 0.75), face_count=1 if found else 0,
        characters={"Aiko": {"face": 0 if found else None, "idr": idr or 0.0, "passed": bool(found and idr >= 0.75)}},
        unmatched_faces=[], missing=[] if found else ["Aiko"], threshold=0.75,
        faces=[{"box": list(box), "score": 0.99, "landmarks": None, "sure": True}] if found else [])
    return aggregate_frames([frame])


def row(key: str, idr: float | None, outputs=None) -> dict:
    verdict = identity_verdict(idr)
    return {"shot_id": f"00000000-0000-0000-0000-0000000000{len(key):02d}", "shot_key": key, "batch_id": "b" * 8,
            "attempt_id": f"{key:0>8}-attempt", "backend": "http://127.0.0.1:1", "params": {"prompt": f"{key} shot"},
            "score": verdict["characters"]["Aiko"]["score"] or 0.0, "verdict": verdict,
            "outputs": outputs or [{"node_id": "9", "kind": "images", "filename": f"{key}.png", "subfolder": "",
                                    "type": "output"}]}


def test_candidates_are_the_frames_with_the_characters_face_and_selection_keeps_those_at_the_threshold():
    rows = [row("high", 0.93), row("edge", 0.85), row("low", 0.6), row("absent", None)]
    found = candidates(rows, "Aiko")
    assert [c.shot_key for c in found] == ["high", "edge", "low"]
    assert found[0].box == [40.0, 30.0, 140.0, 150.0] and found[0].prompt == "high shot"
    kept, dropped = select_by_score(found, 0.85)
    assert [c.shot_key for c in kept] == ["high", "edge"]
    assert dropped[0]["source"]["shot"] == "low" and "0.600 < min_score 0.85" in dropped[0]["reason"]
    assert candidates(rows, "Ren") == []


def test_a_video_that_saved_only_its_last_frame_pairs_it_with_the_last_checked_frame():
    outputs = [{"node_id": "9", "kind": "images", "filename": "last.png", "subfolder": "", "type": "output"},
               {"node_id": "9", "kind": "gifs", "filename": "clip.mp4", "subfolder": "", "type": "output"},
               {"node_id": "5", "kind": "images", "filename": "preview.png", "subfolder": "", "type": "temp"}]
    assert frame_pictures(outputs, [{}, {}, {}]) == [(2, outputs[0])]
    assert frame_pictures(outputs, [{}]) == [(0, outputs[0])]
    assert frame_pictures(outputs, []) == []


def candidate(key: str, score: float, box) -> Candidate:
    return Candidate(shot_id=key, shot_key=key, batch_id="b", attempt_id=f"{key:0>8}", backend="http://x",
                     output={"filename": f"{key}.png", "subfolder": "", "type": "output"}, frame=0, score=score,
                     shot_score=score, prompt=f"{key}, night city", box=box)


def t1_people() -> list[tuple[np.ndarray, list]]:
    """t1.jpg's first three people, each as its own 600 px picture with the face box MTCNN finds."""
    photo = t1_photo()
    detector = load_detector("mtcnn")
    faces = detector.detect(photo)
    people = []
    for face in faces[:3]:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        half = min(cx, cy, photo.shape[1] - cx, photo.shape[0] - cy, 1.6 * face.width)
        x0, y0 = int(cx - half), int(cy - half)
        crop = photo[y0:int(cy + half), x0:int(cx + half)]
        scale = 600 / crop.shape[0]
        picture = (np.clip(cv2.resize(crop, (600, 600), interpolation=cv2.INTER_CUBIC), 0, 1) * 255 + 0.5
                   ).astype(np.uint8)
        box = [(face.box[0] - x0) * scale, (face.box[1] - y0) * scale, (face.box[2] - x0) * scale,
               (face.box[3] - y0) * scale]
        people.append((picture, box))
    return people


def test_a_near_copy_is_dropped_naming_the_picture_it_copies_and_the_rest_make_the_dataset():
    people = t1_people()
    (first, first_box), (second, second_box), (third, third_box) = people
    copy = cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(np.clip(first * 1.1, 0, 255).astype(
        np.uint8), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    pictures = [measured(candidate("first", 0.95, first_box), first),
                measured(candidate("copy", 0.94, first_box), copy),
                measured(candidate("second", 0.91, second_box), second),
                measured(candidate("third", 0.9, third_box), third)]
    kept, dropped = deduplicated(pictures)
    assert [p.candidate.shot_key for p in kept] == ["first", "second", "third"]
    assert len(dropped) == 1 and dropped[0]["source"]["shot"] == "copy"
    assert dropped[0]["reason"].startswith("near-copy of first-000first-0: frame pHash distance")
    assert dropped[0]["copy_of"]["shot"] == "first"

    plan = Plan(character="Aiko", folder="aiko", trigger="Aiko", design_prompt="Aiko, silver hair, red scarf",
                min_score=0.85, pictures=kept, dropped=dropped)
    files, manifest = dataset_files(plan)
    assert json.loads(files["manifest.json"]) == manifest
    assert manifest["thresholds"] == {"min_score": 0.85, "phash_max_distance": PHASH_MAX_DISTANCE,
                                      "embedding_max_distance": EMBEDDING_MAX_DISTANCE, "buckets": list(BUCKETS),
                                      "max_upscale": 2.0, "face_margin": 0.4}
    assert manifest["counts"] == {"frames": 3, "faces": 3, "dropped": 1}
    for image in manifest["images"]:
        data = files[image["file"]]
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert list(decoded.shape[:2]) == image["size"] and image["size"][0] in BUCKETS
        assert files[image["caption_file"]].decode().strip() == image["caption"]
        assert image["caption"].startswith("Aiko, ")
        assert "night city" in image["caption"] and "silver hair, red scarf" in image["caption"]
    frame = next(i for i in manifest["images"] if i["kind"] == "frame")
    face = next(i for i in manifest["images"] if i["kind"] == "face")
    assert frame["size"] == [512, 512] and not frame["upscaled"]  # 600 px: the 512 bucket
    assert face["caption"].startswith("Aiko, face close-up, ")
    assert frame["file"] == "frames/first-000first-0.png" and face["file"] == "faces/first-000first-0.png"


def test_the_face_embedding_finds_a_copied_face_and_not_another_person():
    from shotline_controller.golden_dataset import dlib_embedding
    embed, unavailable = dlib_embedding()
    assert embed is not None, unavailable
    (first, first_box), (second, second_box), _ = t1_people()
    copy = cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", cv2.cvtColor(first, cv2.COLOR_RGB2BGR),
                                                  [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    same = embedding_distance(embed(first, first_box, None), embed(copy, first_box, None))
    other = embedding_distance(embed(first, first_box, None), embed(second, second_box, None))
    assert same <= EMBEDDING_MAX_DISTANCE < other, (same, other)


def test_a_malformed_face_in_a_verdict_gives_a_frame_without_a_face_box():
    broken = row("odd", 0.9)
    broken["verdict"]["frames"][0]["faces"][0]["box"] = ["left", 1, 2]
    broken["verdict"]["frames"][0]["faces"][0]["landmarks"] = [[1, 2], [3]]
    [found] = candidates([broken], "Aiko")
    assert found.box is None and found.landmarks is None
    frame = np.zeros((600, 800, 3), np.uint8)
    picture = measured(found, frame)
    assert picture.face is None
    files, manifest = dataset_files(Plan("Aiko", "aiko", "Aiko", "Aiko", 0.85, [picture]))
    assert [image["kind"] for image in manifest["images"]] == ["frame"]
    assert manifest["dropped"][0]["kind"] == "face" and "no face box" in manifest["dropped"][0]["reason"]


def test_a_dataset_replaces_an_earlier_one_and_never_writes_into_a_foreign_folder(tmp_path):
    from shotline_controller.golden_dataset import write_dataset
    files, _ = dataset_files(Plan("Aiko", "aiko", "Aiko", "Aiko", 0.85, [measured(
        candidate("one", 0.9, None), np.zeros((600, 600, 3), np.uint8))]))
    out = tmp_path / "set"
    write_dataset(files, out)
    (out / "frames" / "stale-00000000-0.png").write_bytes(b"old")
    write_dataset(files, out)
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["one-00000one-0.png", "one-00000one-0.txt"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"mine")
    with pytest.raises(DatasetError) as error:
        write_dataset(files, foreign)
    assert error.value.field == "out" and (foreign / "holiday.png").read_bytes() == b"mine"
