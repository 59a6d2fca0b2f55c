"""Character Gallery, Identity Check and Shot Verdict inside the real ComfyUI server, read back by the controller."""
import asyncio
import urllib.parse
import urllib.request

import aiohttp
import cv2
import numpy as np
import pytest

from shotline_controller.comfy.client import ComfyBackend
from shotline_controller.comfy.results import collect_results, shot_status
from shotline.core.characters import parse_sheet, write_character
from shotline.core.faces import DEFAULT_DETECTOR
from shotline.core.verdict_preview import FAIL_COLOUR, PASS_COLOUR, annotate, summary_line, verdict_status
from tests.images import jpeg
from tests.unit.test_identity import group_picture, t1_tiles

pytestmark = pytest.mark.integration


def png_bytes(image: np.ndarray) -> bytes:
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture(scope="module")
def two_characters(comfy_server):
    """Characters made of t1's first two people: references are re-encoded and mirrored copies of their faces."""
    tiles = t1_tiles()
    for folder, name, person, identity in (("ben", "Ben", 0, None), ("chiara", "Chiara", 1, 0.8)):
        sheet = {"name": name, "style": "photo", "design_prompt": f"{name}, a person from t1"}
        if identity:
            sheet["thresholds"] = {"identity": identity}
        write_character(comfy_server.characters_dir, folder, parse_sheet(sheet), {
            "jpeg.png": png_bytes(jpeg(tiles[person], 40)),
            "mirror.png": png_bytes(np.ascontiguousarray(tiles[person][:, ::-1])),
        })
    return tiles


def save_input(comfy_server, name: str, image: np.ndarray) -> str:
    (comfy_server.input_dir / name).write_bytes(png_bytes(image))
    return name


def identity_graph(image_name: str, allow_extra_faces=False) -> dict:
    def character(node, folder):
        return {node: {"class_type": "ShotlineLoadCharacter", "inputs": {"character": folder}},
                f"{node}g": {"class_type": "ShotlineCharacterGallery", "inputs": {
                    "character": [node, 0], "backend": "auto", "insightface_pack": "(none installed)",
                    "anime_face_detector": "(none installed)", "character_embedder": "(none installed)"}}}
    return {
        **character("1", "ben"), **character("2", "chiara"),
        "3": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "4": {"class_type": "ShotlineIdentityCheck", "inputs": {
            "image": ["3", 0], "gallery": ["1g", 0], "gallery_2": ["2g", 0], "threshold": 0.75,
            "allow_extra_faces": allow_extra_faces, "min_pass_share": 1.0}},
        "5": {"class_type": "ShotQualityScore", "inputs": {
            "image": ["4", 0], "min_sharpness": 20.0, "min_contrast": 0.05, "max_clipped": 0.15, "min_side": 128,
            "identity_verdict": ["4", 3]}},
        "6": {"class_type": "ShotVerdict", "inputs": {
            "image": ["5", 0], "quality_verdict": ["5", 3], "identity_verdict": ["4", 3], "approve_at": 0.8,
            "reject_below": 0.4, "identity_pass": 0.75, "golden_at": 0.85}},
    }


def run_with_controller_client(url: str, graph: dict):
    """The controller's own client: queue, follow the websocket, read /history."""
    async def run():
        async with aiohttp.ClientSession() as session:
            return await ComfyBackend(url, session).run(graph)
    result = asyncio.run(run())
    assert result.status == "success", result.error
    _, verdicts = collect_results(result.outputs)
    return {verdict["check"]: verdict for verdict in verdicts}


def test_the_right_two_people_pass_and_the_controller_reads_it(comfy, comfy_server, two_characters):
    # the frame shows Chiara left of Ben: assignment must not go by order
    frame = group_picture(two_characters[1], two_characters[0])
    verdicts = run_with_controller_client(comfy.url, identity_graph(save_input(comfy_server, "pair.png", frame)))
    identity = verdicts["identity"]
    assert identity["passed"], identity["reasons"]
    assert identity["backend"].startswith(f"{DEFAULT_DETECTOR}-dlib")
    [quality_image] = verdicts["quality"]["images"]
    assert quality_image["sharpness_region"] == "faces"  # measured on the faces Identity Check found
    [frame_verdict] = identity["frames"]
    assert frame_verdict["characters"]["Chiara"]["face"] == 0 and frame_verdict["characters"]["Ben"]["face"] == 1
    assert identity["characters"]["Ben"]["score"] >= 0.75 and identity["characters"]["Ben"]["threshold"] == 0.75
    assert identity["characters"]["Chiara"]["score"] >= 0.8 and identity["characters"]["Chiara"]["threshold"] == 0.8
    shot = verdicts["shot"]
    assert shot["checks"]["identity"]["passed"] and shot["band"] in ("approve", "review")
    assert shot_status([shot]) == {"approve": "approved", "review": "needs_review"}[shot["band"]]


def node_preview(comfy, entry: dict, node: str) -> tuple[np.ndarray, dict]:
    """A check node's canvas preview fetched as the editor does (GET /view, type temp), decoded; and its verdict."""
    ui = entry["outputs"][node]
    [verdict] = ui["shotline_verdict"]
    [image] = ui["images"]
    assert image["type"] == "temp" and ui["text"] == [summary_line(verdict)]
    query = urllib.parse.urlencode({key: image[key] for key in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{comfy.url}/view?{query}", timeout=30) as response:
        data = response.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), verdict


def assert_boxed(preview: np.ndarray, box, colour):
    """The colour on the middle of each edge of a face box."""
    x0, y0, x1, y1 = (round(value) for value in box)
    for x, y in (((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), (x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2)):
        assert tuple(int(v) for v in preview[y, x]) == colour, (x, y, preview[y, x])


VERDICT_KEYS = {
    "identity": {"check", "score", "mean", "pass_share", "passed", "threshold", "reasons", "characters", "frames",
                 "backend"},
    "quality": {"check", "score", "passed", "reasons", "images", "thresholds"},
    "shot": {"check", "band", "passed", "golden", "score", "reasons", "checks", "thresholds"},
}


def test_every_check_node_shows_its_verdict_on_the_canvas(comfy, comfy_server, two_characters):
    frame = group_picture(two_characters[1], two_characters[0])
    entry = comfy.run(identity_graph(save_input(comfy_server, "pair.png", frame)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files, verdicts = collect_results(entry["outputs"])
    assert files == []  # the previews are temp files: no shot output
    by_check = {verdict["check"]: verdict for verdict in verdicts}
    previews = {}
    for node in ("4", "5", "6"):
        preview, verdict = node_preview(comfy, entry, node)
        assert set(entry["outputs"][node]) == {"images", "animated", "text", "shotline_verdict"}
        assert set(verdict) == VERDICT_KEYS[verdict["check"]]  # shotline_verdict as before, nothing added
        assert by_check[verdict["check"]] == {**verdict, "node_id": node}
        identity = by_check["identity"] if verdict["check"] == "shot" else None
        assert preview.shape == annotate(frame, verdict, faces_from=identity).shape
        assert preview.shape[1] == frame.shape[1] and preview.shape[0] > frame.shape[0]  # caption bar below
        assert tuple(int(v) for v in preview[-2, 1]) == verdict_status(verdict)[1]
        previews[verdict["check"]] = preview
    identity = by_check["identity"]
    assert entry["outputs"]["4"]["text"][0].startswith(f"PASS identity {identity['score']:.2f} | ")
    [judged] = identity["frames"]
    for match in judged["characters"].values():
        for check in ("identity", "shot"):  # the shot verdict boxes the faces of the identity verdict it judged
            assert_boxed(previews[check], judged["faces"][match["face"]]["box"], PASS_COLOUR)
    # the quality preview is the frame untouched above its caption
    pixels = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(previews["quality"][:frame.shape[0]], pixels)


def test_an_extra_person_and_no_face_fail_with_the_right_reason(comfy, comfy_server, two_characters):
    crowd = group_picture(two_characters[0], two_characters[1], two_characters[2])
    verdicts = run_with_controller_client(comfy.url, identity_graph(save_input(comfy_server, "crowd.png", crowd)))
    assert not verdicts["identity"]["passed"]
    assert "frame 0: wrong face count: 3 faces for 2 characters" in verdicts["identity"]["reasons"]
    assert "frame 0: unexpected face(s): 1" in verdicts["identity"]["reasons"]
    assert verdicts["shot"]["band"] == "reject"

    allowed = run_with_controller_client(comfy.url, identity_graph("crowd.png", allow_extra_faces=True))
    assert allowed["identity"]["passed"], allowed["identity"]["reasons"]

    empty = np.tile(np.linspace(0.2, 0.8, 400, dtype=np.float32)[None, :, None], (200, 1, 3))
    verdicts = run_with_controller_client(comfy.url, identity_graph(save_input(comfy_server, "empty.png", empty)))
    assert verdicts["identity"]["reasons"][0] == "frame 0: no face found"
    assert verdicts["identity"]["characters"]["Ben"]["score"] is None  # never on screen: no score at all
    assert verdicts["shot"]["band"] == "reject"


def test_a_stranger_in_place_of_a_character_scores_low(comfy, comfy_server, two_characters):
    # Ben and a third person (not Chiara): Chiara's slot goes to the stranger, with a low identity score
    frame = group_picture(two_characters[0], two_characters[3])
    verdicts = run_with_controller_client(comfy.url, identity_graph(save_input(comfy_server, "swap.png", frame)))
    chiara = verdicts["identity"]["characters"]["Chiara"]
    assert chiara["score"] < 0.8 and not chiara["passed"]
    assert any(reason.startswith("frame 0: low identity: Chiara") for reason in verdicts["identity"]["reasons"])
    assert verdicts["identity"]["characters"]["Ben"]["passed"]
    entry = comfy.run(identity_graph("swap.png"))
    preview, identity = node_preview(comfy, entry, "4")
    [judged] = identity["frames"]
    chiara_face = judged["faces"][judged["characters"]["Chiara"]["face"]]
    ben_face = judged["faces"][judged["characters"]["Ben"]["face"]]
    assert_boxed(preview, chiara_face["box"], FAIL_COLOUR)
    assert_boxed(preview, ben_face["box"], PASS_COLOUR)
    assert "low identity: Chiara" in entry["outputs"]["4"]["text"][0]


def test_missing_insightface_pack_names_the_file(comfy, comfy_server, two_characters):
    graph = identity_graph(save_input(comfy_server, "pair.png", group_picture(two_characters[0])))
    graph["1g"]["inputs"]["backend"] = "insightface"
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert "det_10g.onnx" in error["exception_message"]
    assert "models/insightface/models/buffalo_l/" in error["exception_message"]


def test_a_continuity_face_joins_the_characters_gallery(comfy, comfy_server, two_characters):
    """The controller feeds a character's face from its best approved shot into its gallery: the same frame as
    before then scores the face it was given as that character much higher."""
    frame = group_picture(two_characters[0], two_characters[3])
    graph = identity_graph(save_input(comfy_server, "swap.png", frame))
    before = run_with_controller_client(comfy.url, graph)["identity"]["characters"]["Chiara"]["score"]
    graph["7"] = {"class_type": "LoadImage", "inputs": {"image": save_input(comfy_server, "kept_face.png",
                                                                            two_characters[3])}}
    graph["2g"]["inputs"]["continuity_face"] = ["7", 0]
    after = run_with_controller_client(comfy.url, graph)["identity"]["characters"]["Chiara"]
    assert after["score"] > before + 0.2, (before, after)  # measured: 0.03 -> 0.52 (the centroid moves)
