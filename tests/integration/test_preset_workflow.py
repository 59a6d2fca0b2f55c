"""The preset graph: its two formats agree, and it runs through the server with the random checkpoint."""
import json
from pathlib import Path

import pytest
from comfy_cli.workflow_to_api import convert_ui_to_api
from PIL import Image

from shotline_controller.comfy.presets import fill_preset, load_preset, preset_path
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from shotline_controller.contract import shots_of

pytestmark = pytest.mark.integration
PRESETS = sorted(path.stem for path in preset_path("x").parent.glob("*.json"))


@pytest.mark.parametrize("name", PRESETS)
def test_api_format_is_the_editor_format_converted(comfy, name):
    editor = json.loads(preset_path(name, api=False).read_text())
    assert convert_ui_to_api(editor, comfy.get("/object_info")) == json.loads(preset_path(name).read_text())


def test_preset_renders_with_random_checkpoint(comfy, comfy_server):
    assert RANDOM_CHECKPOINT_NAME in comfy.get("/object_info/CheckpointLoaderSimple")[
        "CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    shot = shots_of([{"id": "p1", "prompt": "a red scarf", "size": "128x96", "steps": 2, "seed": 3}])[0]
    graph, _ = fill_preset(load_preset("shot_txt2img"), shot, RANDOM_CHECKPOINT_NAME, "tests/preset")
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [saved] = entry["outputs"]["9"]["images"]
    with Image.open(Path(comfy_server.output_dir) / saved["subfolder"] / saved["filename"]) as image:
        assert image.size == (128, 96)
    [verdict] = entry["outputs"]["10"]["shotline_verdict"]
    assert 0.0 <= verdict["score"] <= 1.0
    assert verdict["images"][0]["width"] == 128 and verdict["images"][0]["height"] == 96
    # checked at the size the shot asked for, not at the preset's 512 px
    assert verdict["thresholds"]["min_side"] == 96 and not any("too small" in r for r in verdict["reasons"])


def test_video_preset_renders_a_speaking_mp4_and_its_last_frame(comfy, comfy_server):
    from shotline.core.video_encode import probe_media
    shot = shots_of([{"id": "v1", "prompt": "a red scarf", "size": "64x64", "steps": 1, "seed": 3,
                             "frames": 4, "fps": 6, "dialogue": "Hello there.", "workflow": "shot_video_dialogue"}])[0]
    graph, _ = fill_preset(load_preset("shot_video_dialogue"), shot, RANDOM_CHECKPOINT_NAME, "tests/video")
    entry = comfy.run(graph, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    ids = {node["class_type"]: node_id for node_id, node in graph.items()}
    [media] = entry["outputs"][ids["ShotlineSaveMP4"]]["shotline_media"]
    info = probe_media(Path(comfy_server.output_dir) / media["subfolder"] / media["filename"])
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.frame_count == 7 and info.fps == 12.0  # 4 frames x2 interpolated: 3 new ones, at twice the rate
    assert (info.width, info.height) == (128, 128)     # animevideov3 x2
    [speech] = entry["outputs"][ids["ShotlineDialogueSpeech"]]["shotline_speech"]
    assert speech["engine"] in ("edge-tts", "piper", "espeak-ng")
    assert speech["duration_s"] > 7 / 12          # the line outlasts the picture, and the file keeps all of it
    assert abs(info.duration_s - speech["duration_s"]) < 0.05
    [last] = entry["outputs"][ids["SaveImage"]]["images"]
    with Image.open(Path(comfy_server.output_dir) / last["subfolder"] / last["filename"]) as image:
        assert image.size == (128, 128)
