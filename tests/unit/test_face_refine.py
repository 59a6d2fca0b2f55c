"""Face Refine's pure parts: crop/scale/paste geometry, feather masks, seam colour match, and the cycle loop with
a fake sampler and scorer (plus the real scorer on a real photo face)."""
import numpy as np
import pytest

from shotline.core.face_embedding import load_embedder
from shotline.core.face_refine import (FACE_LOST, NON_FINITE, FacePrompt, FaceScorer, FaceToRefine, RefineSettings,
                                       character_prompt, crop_region, faces_to_refine, feather_mask, paste_refined,
                                       preview_faces, ramp_pixels, refine_frame, refine_record, resize, scaled_size,
                                       seam_offset, summary)
from shotline.core.faces import load_detector
from tests.images import t1_photo
from tests.unit.test_identity import group_picture, t1_tiles


PROMPT = FacePrompt("Ben, detailed face", "blurry")


def photo(height=240, width=320) -> np.ndarray:
    """A real photo, resized: high-frequency detail where resampling errors would show."""
    return resize(t1_photo()[:height * 2, :width * 2], (width, height)).astype(np.float32)


def identity_sampler(crop, mask, seed, prompt):
    return crop.copy()


def one_cycle(image, box, sample, settings: RefineSettings | None = None):
    """The geometry of one cycle, as refine_face runs it."""
    settings = settings or RefineSettings()
    region = crop_region(box, (image.shape[1], image.shape[0]), settings.crop_factor)
    local = region.local_box(box)
    mask = feather_mask((region.width, region.height), local, ramp_pixels(local, settings.feather), region.open_sides)
    size = scaled_size(region.width, region.height, settings.guide_size)
    scaled = resize(image[region.slices], size)
    return paste_refined(image, region, scaled, sample(scaled, resize(mask, size), 0, PROMPT), mask), region, mask


# --- geometry ----------------------------------------------------------------------------------------------------

def test_crop_region_is_the_box_times_crop_factor_shifted_inside_the_image():
    region = crop_region((100, 80, 140, 130), (320, 240), 3.0)
    assert (region.width, region.height) == (120, 150)
    assert (region.x0 + region.x1) / 2 == pytest.approx(120, abs=1)
    assert region.open_sides == (False, False, False, False)
    corner = crop_region((0, 0, 40, 50), (320, 240), 3.0)  # shifted, not cut: same size, on the image border
    assert (corner.x0, corner.y0, corner.width, corner.height) == (0, 0, 120, 150)
    assert corner.open_sides[:2] == (True, True)
    huge = crop_region((10, 10, 300, 230), (320, 240), 3.0)  # larger than the image: the whole image
    assert (huge.x0, huge.y0, huge.x1, huge.y1) == (0, 0, 320, 240) and all(huge.open_sides)


def test_scaled_size_has_the_guide_size_as_long_side_and_multiples_of_8():
    assert scaled_size(120, 150, 512) == (408, 512)
    assert scaled_size(150, 120, 512) == (512, 408)
    assert scaled_size(600, 900, 256) == (168, 256)   # large crops are scaled down
    assert scaled_size(30, 3, 128) == (128, 16)
    assert scaled_size(30, 1, 128) == (128, 8)   # never under one latent pixel
    for width, height in ((97, 131), (1000, 17), (64, 64)):
        assert all(side % 8 == 0 for side in scaled_size(width, height, 200))


@pytest.mark.parametrize("guide_size", [128, 512])
def test_an_identity_sampler_round_trips_the_image_within_1_255(guide_size):
    image = photo()
    for box in [(130, 90, 180, 150), (0, 0, 45, 60), (280, 180, 320, 240)]:
        result, _, _ = one_cycle(image, box, identity_sampler, RefineSettings(guide_size=guide_size))
        assert np.abs(result - image).max() <= 1 / 255, box
        assert result.shape == image.shape and result.dtype == image.dtype


def test_the_paste_mask_has_no_step_anywhere_and_is_zero_on_inner_crop_edges():
    box = (50.3, 40.7, 110.2, 120.9)
    region = crop_region(box, (640, 480), 3.0)
    local = region.local_box(box)
    ramp = ramp_pixels(local, 0.3)
    mask = feather_mask((region.width, region.height), local, ramp, region.open_sides)
    steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steps <= 1.6 / ramp  # smoothstep's steepest slope is 1.5 / ramp
    x0, y0, x1, y1 = (int(v) for v in local)
    assert mask[y0 + 2:y1 - 2, x0 + 2:x1 - 2].min() == 1.0  # the face itself is fully refined
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0.0
    # a crop factor leaving no room for the ramp: it moves inside the box, still 0 on the edges, still smooth
    tight = crop_region(box, (640, 480), 1.1)
    local = tight.local_box(box)
    mask = feather_mask((tight.width, tight.height), local, ramp, tight.open_sides)
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0.0
    assert max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max()) <= 1.6 / ramp
    assert mask.max() == 1.0


def test_a_changed_face_leaves_everything_outside_the_feather_untouched():
    image = photo()
    box = (130, 90, 180, 150)

    def repaint(crop, mask, seed, prompt):
        return np.clip(crop * 0.2 + 0.7 * mask[..., None], 0, 1)  # a different face, no colour match possible
    result, region, mask = one_cycle(image, box, repaint)
    changed = np.abs(result - image).max(axis=-1) > 1 / 255
    rows, columns = region.slices
    outside = np.ones(changed.shape, bool)
    outside[rows, columns] = mask == 0
    assert not changed[outside].any()
    assert changed[100:140, 140:170].all()


def test_colour_match_removes_a_constant_offset():
    image = photo()
    offset = np.array([0.08, -0.05, 0.03], np.float32)
    result, _, _ = one_cycle(image[60:200, 80:260].copy(), (50, 30, 100, 90),
                             lambda crop, mask, seed, prompt: crop + offset)
    assert np.abs(result - image[60:200, 80:260]).max() <= 1 / 255
    change = np.tile(offset, (20, 30, 1))
    mask = feather_mask((30, 20), (10, 5, 20, 15), 4.0)
    assert seam_offset(change, mask) == pytest.approx(-offset, abs=1e-6)
    assert seam_offset(change, np.ones((20, 30), np.float32)) == pytest.approx(0)  # no ring: nothing to match


def test_prompts_join_the_design_prompt_and_the_face_text():
    assert character_prompt("Ben, a person", "cartoon", " detailed face ", "") == FacePrompt(
        "Ben, a person, detailed face", "cartoon")
    assert character_prompt("Ben", "", "", "blurry") == FacePrompt("Ben", "blurry")


# --- the cycle loop --------------------------------------------------------------------------------------------

class FakeScorer:
    """Scores a face by how bright its box is (a fake sampler brightens faces), and records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, box, character):
        x0, y0, x1, y1 = (int(v) for v in box)
        self.calls.append((character, tuple(box)))
        return round(float(image[y0:y1, x0:x1].mean()), 4)


def brightening_sampler(by_seed: dict):
    """Adds by_seed[seed] inside the noise mask: each cycle's result depends on its seed only."""
    seen = []

    def sample(crop, mask, seed, prompt):
        seen.append((seed, prompt))
        return np.clip(crop + by_seed.get(seed, 0.0) * mask[..., None], 0, 1)
    sample.seen = seen
    return sample


def dim_frame():
    image = np.full((200, 300, 3), 0.3, np.float32)
    return image, FaceToRefine((120, 70, 170, 130), "Ben", PROMPT, target=0.75)


def test_every_cycle_runs_while_the_score_stays_low_and_the_best_is_kept():
    image, face = dim_frame()
    sample = brightening_sampler({7: 0.05, 8: 0.2, 9: -0.1})   # the middle cycle is the best, all under target
    settings = RefineSettings(seed=7, max_cycles=3, colour_match=False)
    result, [history] = refine_frame(image, [face], sample, FakeScorer(), settings)
    assert [c.seed for c in history.cycles] == [7, 8, 9] and [s for s, _ in sample.seen] == [7, 8, 9]
    assert [c.kept for c in history.cycles] == [True, True, False]
    assert history.score_in == pytest.approx(0.3) and history.score_out == pytest.approx(0.5, abs=0.01)
    assert history.cycles[1].score_before == history.cycles[0].score_after
    assert history.cycles[2].score_before == history.score_out
    assert history.refined and all(c.denoise == settings.denoise for c in history.cycles)
    assert float(result[70:130, 120:170].mean()) == pytest.approx(history.score_out, abs=1e-4)
    assert history.prompt == PROMPT.positive and history.negative == PROMPT.negative


def test_the_loop_stops_once_the_target_is_reached():
    image, face = dim_frame()
    _, [history] = refine_frame(image, [face], brightening_sampler({0: 0.2, 1: 0.6}), FakeScorer(),
                                RefineSettings(max_cycles=5, colour_match=False))
    assert len(history.cycles) == 2 and history.score_out >= 0.75
    assert [c.kept for c in history.cycles] == [True, True]


def test_the_first_cycle_runs_even_above_target_but_a_worse_result_is_dropped():
    image, face = dim_frame()
    face.target = 0.1   # already above target: one cycle, no more
    result, [history] = refine_frame(image, [face], brightening_sampler({0: -0.2}), FakeScorer(),
                                     RefineSettings(max_cycles=3, colour_match=False))
    assert len(history.cycles) == 1 and not history.cycles[0].kept
    assert history.score_out == history.score_in and not history.refined
    assert "input kept" in history.reason
    assert np.array_equal(result, image)


def test_the_output_never_scores_lower_than_the_input():
    rng = np.random.default_rng(0)
    for trial in range(20):
        image, face = dim_frame()
        by_seed = {seed: float(rng.uniform(-0.3, 0.3)) for seed in range(4)}
        scorer = FakeScorer()
        result, [history] = refine_frame(image, [face], brightening_sampler(by_seed), scorer,
                                         RefineSettings(max_cycles=4))
        assert history.score_out >= history.score_in
        assert scorer(result, face.box, "Ben") == history.score_out   # the image returned is the one scored
        assert len(history.cycles) <= 4


def test_a_face_the_scorer_loses_is_never_kept():
    image, face = dim_frame()
    result, [history] = refine_frame(image, [face], brightening_sampler({0: 0.5}), lambda *args: None,
                                     RefineSettings(max_cycles=2))
    assert [c.score_after for c in history.cycles] == [None, None] and not history.refined
    assert all(c.note == FACE_LOST for c in history.cycles)
    assert np.array_equal(result, image)


def test_a_sampler_returning_nan_is_recorded_and_neither_pasted_nor_scored():
    image, face = dim_frame()
    scorer = FakeScorer()
    result, [history] = refine_frame(image, [face], lambda crop, *args: np.full_like(crop, np.nan), scorer,
                                     RefineSettings(max_cycles=2))
    assert [c.note for c in history.cycles] == [NON_FINITE, NON_FINITE] and len(scorer.calls) == 1  # the input
    assert np.array_equal(result, image) and history.score_out == history.score_in


def test_a_face_of_no_character_is_untouched_and_each_face_gets_its_own_prompt():
    image = np.full((200, 400, 3), 0.3, np.float32)
    chiara = FacePrompt("Chiara, detailed face", "")
    faces = [FaceToRefine((40, 60, 90, 120), "Ben", PROMPT), FaceToRefine((170, 60, 220, 120), None),
             FaceToRefine((300, 60, 350, 120), "Chiara", chiara)]
    sample = brightening_sampler({0: 0.2, 1: 0.2})
    scorer = FakeScorer()
    result, histories = refine_frame(image, faces, sample, scorer, RefineSettings(max_cycles=2), frame=3)
    assert [h.character for h in histories] == ["Ben", None, "Chiara"]
    assert [h.frame for h in histories] == [3, 3, 3] and [h.face for h in histories] == [0, 1, 2]
    assert histories[1].cycles == [] and histories[1].score_in is None and "no character" in histories[1].reason
    assert np.array_equal(result[:, 130:260], image[:, 130:260])  # the stranger's face and its surroundings
    assert [prompt for _, prompt in sample.seen] == [PROMPT, PROMPT, chiara, chiara]
    assert {character for character, _ in scorer.calls} == {"Ben", "Chiara"}
    assert histories[2].prompt == "Chiara, detailed face"
    line = summary(histories, 1)
    assert "2/2 character faces refined" in line and "1 face(s) of no character" in line
    assert summary([], 2) == "Face Refine: no face found in 2 frames"

    record = refine_record(histories, 4, ["a reason"])
    assert record["check"] == "face_refine" and record["summary"] == line and record["reasons"] == ["a reason"]
    assert set(record["characters"]) == {"Ben", "Chiara"} and len(record["faces"]) == 3
    assert record["score"] == min(h.score_out for h in (histories[0], histories[2]))
    assert record["passed"] == (record["score"] >= 0.75)
    assert record["characters"]["Ben"]["score_in"] == histories[0].score_in
    shaped = preview_faces(histories, 4)["frames"]
    assert [len(frame["faces"]) for frame in shaped] == [0, 0, 0, 3]
    assert shaped[3]["characters"]["Chiara"] == {"face": 2, "idr": histories[2].score_out,
                                                 "passed": histories[2].score_out >= 0.75}
    assert "None" not in str(shaped[3]["characters"]) and shaped[3]["faces"][1]["box"] == histories[1].box


# --- real faces --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_backend():
    return load_detector("mtcnn"), load_embedder("dlib")


def test_the_scorer_finds_the_face_at_its_box_and_scores_it_against_that_gallery(face_backend):
    detector, embedder = face_backend
    tiles = t1_tiles()
    pair = group_picture(tiles[0], tiles[1])
    faces = detector.detect(pair)
    galleries = {"Ben": np.stack([embedder.embed(tiles[0], detector.detect(tiles[0])[0])]),
                 "Chiara": np.stack([embedder.embed(tiles[1], detector.detect(tiles[1])[0])])}
    score = FaceScorer(detector, embedder, galleries)
    assert score(pair, faces[0].box, "Ben") > 0.75 > score(pair, faces[0].box, "Chiara")
    assert score(pair, faces[1].box, "Chiara") > 0.75
    assert score(np.full_like(pair, 0.5), faces[0].box, "Ben") is None   # no face there any more
    prompts = {"Ben": PROMPT, "Chiara": FacePrompt("Chiara", "")}
    found = faces_to_refine(group_picture(tiles[1], tiles[0], tiles[2]), detector, embedder, galleries, prompts,
                            {"Ben": 0.75, "Chiara": 0.8})
    assert [f.character for f in found] == ["Chiara", "Ben", None]
    assert [f.prompt for f in found] == [prompts["Chiara"], PROMPT, None] and found[0].target == 0.8
    assert faces_to_refine(np.full_like(pair, 0.5), detector, embedder, galleries, prompts, {}) == []

