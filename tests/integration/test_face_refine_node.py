"""Face Refine inside the real ComfyUI server: real photo faces, the random test checkpoint (its pictures are
noise, so a refinement can only score lower and the node must keep the input), each character's own gallery and
prompt, the cycle budget, and the history in /history."""
import cv2
import numpy as np
import pytest

from shotline.core.characters import parse_sheet, write_character
from shotline.core.face_embedding import load_embedder
from shotline.core.faces import DEFAULT_DETECTOR
from shotline.core.face_refine import FACE_LOST, FaceScorer
from shotline.core.faces import load_detector
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from tests.images import jpeg
from tests.integration.test_identity_nodes import png_bytes, save_input
from tests.unit.test_identity import group_picture, t1_tiles


pytestmark = pytest.mark.integration

CYCLES = 3
VAE_SCALE = "first_stage_model.vae_scale"


@pytest.fixture(scope="module")
def checkpoint(model_cache) -> str:
    """The random test checkpoint; its TAESD must encode (vae_scale 1: a 0 there made every refined crop NaN)."""
    from safetensors import safe_open
    with safe_open(str(model_cache / "checkpoints" / RANDOM_CHECKPOINT_NAME), "pt") as file:
        assert float(file.get_tensor(VAE_SCALE)) == 1.0
    return RANDOM_CHECKPOINT_NAME


@pytest.fixture(scope="module")
def refine_characters(comfy_server):
    """Rita and Sam, t1's first two people; references are re-encoded and mirrored copies of their faces."""
    tiles = t1_tiles()
    for folder, name, person in (("refine_rita", "Rita", 0), ("refine_sam", "Sam", 1)):
        sheet = {"name": name, "style": "photo", "design_prompt": f"{name}, a person from t1",
                 "negative_prompt": f"not {name}"}
        write_character(comfy_server.characters_dir, folder, parse_sheet(sheet), {
            "jpeg.png": png_bytes(jpeg(tiles[person], 40)),
            "mirror.png": png_bytes(np.ascontiguousarray(tiles[person][:, ::-1])),
        })
    return tiles


def refine_graph(checkpoint: str, image_name: str, *characters: str, target: float = 1.0,
                 max_cycles: int = CYCLES) -> dict:
    graph = {
        "ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image_name}},
    }
    galleries = {}
    for slot, folder in zip(("gallery", "gallery_2", "gallery_3", "gallery_4"), characters):
        graph[f"c_{folder}"] = {"class_type": "ShotlineLoadCharacter", "inputs": {"character": folder}}
        graph[f"g_{folder}"] = {"class_type": "ShotlineCharacterGallery", "inputs": {
            "character": [f"c_{folder}", 0], "backend": "auto", "insightface_pack": "(none installed)",
            "anime_face_detector": "(none installed)", "character_embedder": "(none installed)"}}
        galleries[slot] = [f"g_{folder}", 0]
    graph["refine"] = {"class_type": "ShotlineFaceRefine", "inputs": {
        "image": ["img", 0], "model": ["ck", 0], "clip": ["ck", 1], "vae": ["ck", 2], **galleries,
        "seed": 5, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.45,
        "crop_factor": 3.0, "guide_size": 128, "feather": 0.3, "max_cycles": max_cycles, "target": target,
        "face_prompt": "detailed face", "negative": "blurry"}}
    graph["save"] = {"class_type": "SaveImage", "inputs": {"images": ["refine", 0], "filename_prefix": "refined"}}
    return graph


def run_refine(comfy, comfy_server, graph) -> tuple[dict, np.ndarray]:
    entry = comfy.run(graph, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = run_refine.last_outputs = entry["outputs"]  # for a test that checks another node of the graph
    [record] = outputs["refine"]["shotline_refine"]
    assert outputs["refine"]["text"] == [record["summary"]]
    assert "shotline_verdict" not in outputs["refine"]   # a refine record is no check verdict
    [preview] = outputs["refine"]["images"]   # the frame with its faces boxed, as the check nodes show it
    assert preview["type"] == "temp"
    [saved] = outputs["save"]["images"]
    bgr = cv2.imread(str(comfy_server.output_dir / saved.get("subfolder", "") / saved["filename"]))
    return record, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def scorer_for(tiles, person: int, name: str) -> FaceScorer:
    """The node's own scorer with a gallery of the same references, to re-score the saved output here."""
    detector, embedder = load_detector("mtcnn"), load_embedder("dlib")
    references = [jpeg(tiles[person], 40), np.ascontiguousarray(tiles[person][:, ::-1])]
    gallery = np.stack([embedder.embed(image, detector.detect(image)[0]) for image in references])
    return FaceScorer(detector, embedder, {name: gallery})


def test_a_character_face_is_re_scored_every_cycle_and_never_made_worse(comfy, comfy_server, checkpoint,
                                                                       refine_characters):
    image = save_input(comfy_server, "rita.png", group_picture(refine_characters[0]))
    record, output = run_refine(comfy, comfy_server, refine_graph(checkpoint, image, "refine_rita"))
    [face] = record["faces"]
    assert face["character"] == "Rita" and face["frame"] == 0 and face["face"] == 0
    assert face["prompt"] == "Rita, a person from t1, detailed face" and face["negative"] == "not Rita, blurry"
    assert face["score_in"] >= 0.75   # her own face against her own gallery
    assert len(face["cycles"]) == CYCLES   # target 1.0 is never reached: the whole budget, no more
    assert [c["seed"] for c in face["cycles"]] == [5, 6, 7] and all(c["denoise"] == 0.45 for c in face["cycles"])
    for cycle in face["cycles"]:
        assert set(cycle) == {"cycle", "seed", "denoise", "score_before", "score_after", "kept", "note"}
        assert cycle["score_before"] is not None
        # scored: a number, or the scorer looked and found no face (the random checkpoint's crops are noise)
        assert cycle["score_after"] is not None or cycle["note"] == FACE_LOST
        assert cycle["kept"] == (cycle["score_after"] is not None and cycle["score_after"] > cycle["score_before"])
    assert face["score_out"] >= face["score_in"]
    rescored = scorer_for(refine_characters, 0, "Rita")(output, face["box"], "Rita")
    assert rescored is not None and rescored >= face["score_in"] - 0.01  # the saved image is what was scored
    if not face["refined"]:   # noise from the random checkpoint: the input comes back unchanged
        loaded = cv2.cvtColor(cv2.imread(str(comfy_server.input_dir / "rita.png")), cv2.COLOR_BGR2RGB) / 255.0
        assert np.abs(output - loaded).max() <= 1 / 255
    assert record["settings"]["targets"] == {"Rita": 1.0} and record["backend"].startswith(f"{DEFAULT_DETECTOR}-dlib")
    assert record["score"] == face["score_out"] and not record["passed"]   # 1.0 is out of reach


def test_another_persons_gallery_records_the_low_score_and_still_never_lowers_it(comfy, comfy_server, checkpoint,
                                                                                refine_characters):
    # a third person, judged against Rita's gallery
    image = save_input(comfy_server, "stranger.png", group_picture(refine_characters[2]))
    graph = refine_graph(checkpoint, image, "refine_rita", target=0.75)
    graph["check"] = {"class_type": "ShotlineIdentityCheck", "inputs": {  # the repaired image, checked after
        "image": ["refine", 0], "gallery": ["g_refine_rita", 0], "threshold": 0.75, "allow_extra_faces": False,
        "min_pass_share": 1.0}}
    record, _ = run_refine(comfy, comfy_server, graph)
    [face] = record["faces"]
    assert face["character"] == "Rita" and face["score_in"] < 0.5
    assert len(face["cycles"]) == CYCLES and face["score_out"] >= face["score_in"]
    assert "lowest IDR" in record["summary"] and not record["passed"]
    [verdict] = run_refine.last_outputs["check"]["shotline_verdict"]
    assert not verdict["passed"] and any(reason.startswith("frame 0: low identity: Rita") for reason in verdict["reasons"])


def test_two_faces_get_their_own_characters_prompts(comfy, comfy_server, checkpoint, refine_characters):
    # Sam left of Rita: faces go to characters by identity, not by the order of the inputs
    image = save_input(comfy_server, "pair_refine.png", group_picture(refine_characters[1], refine_characters[0]))
    record, _ = run_refine(comfy, comfy_server, refine_graph(checkpoint, image, "refine_rita", "refine_sam",
                                                             max_cycles=2))
    faces = record["faces"]
    assert [f["character"] for f in faces] == ["Sam", "Rita"]
    assert [f["prompt"] for f in faces] == ["Sam, a person from t1, detailed face",
                                            "Rita, a person from t1, detailed face"]
    assert [f["negative"] for f in faces] == ["not Sam, blurry", "not Rita, blurry"]
    for face in faces:
        assert len(face["cycles"]) == 2 and face["score_out"] >= face["score_in"] >= 0.75
    assert faces[0]["box"][0] < faces[1]["box"][0]


def test_no_face_passes_the_image_through_with_the_reason(comfy, comfy_server, checkpoint, refine_characters):
    empty = np.tile(np.linspace(0.2, 0.8, 300, dtype=np.float32)[None, :, None], (200, 1, 3))
    image = save_input(comfy_server, "faceless.png", empty)
    record, output = run_refine(comfy, comfy_server, refine_graph(checkpoint, image, "refine_rita"))
    assert record["faces"] == [] and record["reasons"] == ["frame 0: no face found"]
    assert "no face found" in record["summary"]
    loaded = cv2.cvtColor(cv2.imread(str(comfy_server.input_dir / "faceless.png")), cv2.COLOR_BGR2RGB) / 255.0
    assert np.abs(output - loaded).max() <= 1 / 255
