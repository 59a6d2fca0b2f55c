"""The check nodes' canvas preview: boxes, labels and caption drawn from the verdict dict alone."""
import time

import cv2
import numpy as np

from shotline.core.faces import Face
from shotline.core.identity import aggregate_frames, identity_verdict
from shotline.core.image_quality import assess_batch
from shotline.core.shot_verdict import decide_band
from shotline.core.verdict_preview import (FAIL_COLOUR, MAX_PREVIEW_FRAMES, PASS_COLOUR, REVIEW_COLOUR,
                                           SUMMARY_MAX_CHARS, annotate, face_labels, preview_frames, summary_line)

GREY = 0.5
BEN_BOX, CHIARA_BOX, STRANGER_BOX = (40.0, 50.0, 140.0, 170.0), (220.0, 60.0, 320.0, 180.0), (340.0, 40.0, 390.0, 100.0)


def embedding(axis: int) -> np.ndarray:
    vector = np.zeros(8)
    vector[axis] = 1.0
    return vector


GALLERIES = {"Ben": np.stack([embedding(0)]), "Chiara": np.stack([embedding(1)])}


def identity_of(*frames, allow_extra_faces=False) -> dict:
    """An aggregated identity verdict, as Identity Check emits it: each frame a list of (box, embedding axis)."""
    per_frame = [identity_verdict([embedding(axis) for _, axis in faces], GALLERIES, "dlib",
                                  allow_extra_faces=allow_extra_faces,
                                  faces=[Face(box, 0.99) for box, _ in faces]) for faces in frames]
    return aggregate_frames(per_frame)


def frame(height=200, width=400) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.float32)


def colour_at(image: np.ndarray, x: float, y: float) -> tuple:
    return tuple(int(v) for v in image[round(y), round(x)])


def on_box_edges(image, box, colour, scale=1.0):
    x0, y0, x1, y1 = (v * scale for v in box)
    middle_x, middle_y = (x0 + x1) / 2, (y0 + y1) / 2
    for x, y in ((middle_x, y0), (middle_x, y1), (x0, middle_y), (x1, middle_y)):
        assert colour_at(image, x, y) == colour, (x, y)


def test_each_face_is_boxed_in_its_characters_colour_where_the_verdict_puts_it():
    # Ben's face matches his gallery; Chiara's slot holds a face like nobody's (axis 5): low identity
    verdict = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 5)])
    preview = annotate(frame(), verdict)
    assert preview.dtype == np.uint8 and preview.shape[1] == 400 and preview.shape[0] > 200  # caption bar below
    on_box_edges(preview, BEN_BOX, PASS_COLOUR)
    on_box_edges(preview, CHIARA_BOX, FAIL_COLOUR)
    grey = round(GREY * 255)
    assert colour_at(preview, 90, 110) == (grey, grey, grey)       # inside a box: the picture untouched
    assert colour_at(preview, 200, 195) == (grey, grey, grey)      # between the faces too
    assert colour_at(preview, 2, preview.shape[0] - 2) == FAIL_COLOUR  # the bar wears the verdict's colour


def test_labels_name_the_character_and_its_score_and_extra_faces_are_marked():
    verdict = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 1), (STRANGER_BOX, 6)])
    labels = face_labels(verdict)
    ben_idr = verdict["frames"][0]["characters"]["Ben"]["idr"]
    assert [label.text for label in labels] == [f"Ben {ben_idr:.2f}", labels[1].text, "unexpected"]
    assert labels[1].text.startswith("Chiara ") and labels[2].colour == FAIL_COLOUR
    allowed = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 1), (STRANGER_BOX, 6)], allow_extra_faces=True)
    assert allowed["passed"]
    [*_, extra] = face_labels(allowed)
    assert extra.text == "extra" and extra.colour == REVIEW_COLOUR
    on_box_edges(annotate(frame(), allowed), STRANGER_BOX, REVIEW_COLOUR)


def test_a_large_frame_is_shrunk_with_its_boxes():
    verdict = identity_of([(tuple(v * 4 for v in BEN_BOX), 0), (tuple(v * 4 for v in CHIARA_BOX), 1)])
    preview = annotate(frame(800, 1600), verdict, max_side=400)
    assert preview.shape[1] == 400
    on_box_edges(preview, BEN_BOX, PASS_COLOUR)


def test_uint8_input_is_not_drawn_on():
    image = np.full((200, 400, 3), 128, np.uint8)
    annotate(image, identity_of([(BEN_BOX, 0), (CHIARA_BOX, 1)]))
    assert (image == 128).all()


def test_a_shot_verdict_borrows_the_faces_of_its_identity_verdict():
    identity = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 1)])
    quality = assess_batch(frame()[None])
    shot = decide_band(quality, identity)
    preview = annotate(frame(), shot, faces_from=identity)
    on_box_edges(preview, BEN_BOX, PASS_COLOUR)
    assert colour_at(preview, 2, preview.shape[0] - 2) == {"approve": PASS_COLOUR, "review": REVIEW_COLOUR,
                                                           "reject": FAIL_COLOUR}[shot["band"]]
    assert summary_line(shot).startswith(f"{shot['band'].upper()} shot {shot['score']:.2f} | quality ")


def test_a_quality_verdict_has_only_the_caption():
    image = frame()
    verdict = assess_batch(image[None])
    preview = annotate(image, verdict)
    assert (preview[:200] == round(GREY * 255)).all()
    assert summary_line(verdict).startswith("FAIL quality ")  # a flat grey frame has no contrast


def test_summary_of_a_pass_a_fail_and_no_face():
    passing = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 1)])
    ben, chiara = (passing["characters"][name]["score"] for name in ("Ben", "Chiara"))
    assert summary_line(passing) == f"PASS identity {passing['score']:.2f} | Ben {ben:.2f}, Chiara {chiara:.2f}"

    failing = identity_of([(BEN_BOX, 0), (CHIARA_BOX, 5)])
    line = summary_line(failing)
    assert line.startswith(f"FAIL identity {failing['score']:.2f} | Ben ")
    assert "frame 0: low identity: Chiara" in line

    nobody = identity_of([])
    assert summary_line(nobody) == "FAIL identity 0.00 | Ben no face, Chiara no face | frame 0: no face found"
    assert annotate(frame(), nobody).shape[0] > 200


def test_summary_of_several_frames_and_characters_counts_what_does_not_fit():
    verdict = identity_of(*[[(BEN_BOX, 0), (CHIARA_BOX, 5), (STRANGER_BOX, 6)] for _ in range(8)])
    line = summary_line(verdict)
    assert "\n" not in line and len(line) <= SUMMARY_MAX_CHARS
    shown = line.count("frame ")
    assert 0 < shown < len(verdict["reasons"])
    assert line.endswith(f"(+{len(verdict['reasons']) - shown} more)")


def test_one_endless_reason_is_cut_to_one_line():
    verdict = {"check": "quality", "score": 0.1, "passed": False,
               "reasons": ["image 0: " + "very " * 100 + "blurry\nand dark", "image 1: dark"]}
    line = summary_line(verdict, max_chars=80)
    assert len(line) <= 80 and "\n" not in line
    assert line.startswith("FAIL quality 0.10 | image 0: very very") and line.endswith("... (+1 more)")
    # the caption bar fits it to the frame's width
    assert annotate(frame(100, 120), verdict).shape == (annotate(frame(100, 120), verdict).shape[0], 120, 3)


def test_previews_per_frame_only_where_faces_differ():
    frames = np.stack([frame()] * 6)
    identity = identity_of(*[[(BEN_BOX, 0), (CHIARA_BOX, 1)]] * 6)
    assert len(preview_frames(frames, identity)) == MAX_PREVIEW_FRAMES
    assert len(preview_frames(frames, assess_batch(frames))) == 1
    assert preview_frames(frames[:0], assess_batch(frames[:0])) == []


def test_a_1024_frame_costs_milliseconds():
    rng = np.random.default_rng(0)
    image = rng.random((1024, 1024, 3), dtype=np.float32)
    verdict = identity_of([(tuple(v * 2.5 for v in BEN_BOX), 0), (tuple(v * 2.5 for v in CHIARA_BOX), 5)])
    annotate(image, verdict)
    started = time.perf_counter()
    preview = annotate(image, verdict)
    annotated = time.perf_counter() - started
    started = time.perf_counter()
    ok, png = cv2.imencode(".png", preview, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    encoded = time.perf_counter() - started
    print(f"\n1024 px frame: annotate {annotated * 1000:.1f} ms, PNG (level 1) {encoded * 1000:.1f} ms, "
          f"{len(png) / 1e6:.1f} MB")
    assert ok and annotated < 0.2
