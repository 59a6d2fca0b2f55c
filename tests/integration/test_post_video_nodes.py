"""Save MP4, Last Frame and Colour Grade inside the real ComfyUI, fed by core nodes (EmptyImage, LoadAudio,
CreateVideo), with the saved files probed from the output folder."""

import cv2
import numpy as np
import pytest

from shotline.core.video_encode import probe_media, read_video

from tests.images import write_wav

pytestmark = pytest.mark.integration

BLUE, RED, GREY = 0x2040C0, 0xE02010, 0x808080


def write_tone(path, seconds: float, sample_rate: int = 44100):
    """A stereo 16-bit tone, as a user would upload it."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    write_wav(path, np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 550 * t)]), sample_rate)


def shot_nodes(frames: int = 24) -> dict:
    """A 64x64 shot with a cut: blue frames, then red ones (the last frame differs from the first)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": frames // 2,
                                                     "color": BLUE}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": frames - frames // 2,
                                                     "color": RED}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
    }


def saved_png(entry: dict, node: str, output_dir) -> np.ndarray:
    [image] = entry["outputs"][node]["images"]
    path = output_dir / image["subfolder"] / image["filename"]
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.int32)


def rgb(color: int) -> np.ndarray:
    return np.array([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF])


@pytest.mark.parametrize("fps, expected_fps", [(24.0, 24.0), (23.976, 24000 / 1001)])
def test_save_mp4_from_core_create_video_probes_as_h264_aac(comfy, comfy_server, fps, expected_fps):
    write_tone(comfy_server.input_dir / "tone.wav", 24 / expected_fps)
    graph = shot_nodes(24) | {
        "4": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": fps, "audio": ["4", 0]}},
        "6": {"class_type": "ShotlineSaveMP4", "inputs": {"video": ["5", 0], "filename_prefix": "shots/clip",
                                                          "crf": 20, "preset": "veryfast"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 1]}},
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    ui = entry["outputs"]["6"]
    [media] = ui["shotline_media"]
    assert ui["images"] == [{"filename": media["filename"], "subfolder": "shots", "type": "output"}]
    assert ui["animated"] == [True]  # shown as a video in the UI, like core Save Video
    path = comfy_server.output_dir / "shots" / media["filename"]
    assert entry["outputs"]["7"]["text"] == [str(path)]
    info = probe_media(path)
    assert {k: media[k] for k in info.as_dict()} == info.as_dict()  # what the controller reads is the file's truth
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.frame_count) == (64, 64, 24)
    assert info.fps == pytest.approx(expected_fps, abs=1e-6)
    assert info.duration_s == pytest.approx(24 / expected_fps, abs=0.05)
    assert (info.sample_rate, info.audio_channels) == (44100, 2)
    frames, _, audio, _ = read_video(path)
    assert np.abs(frames[0].astype(int) - rgb(BLUE)).mean() < 6 and np.abs(frames[-1].astype(int) - rgb(RED)).mean() < 6
    assert audio is not None and np.abs(audio).max() > 0.2


def test_last_frame_of_a_batch_and_of_a_saved_video(comfy, comfy_server):
    graph = shot_nodes(6) | {
        "4": {"class_type": "ShotlineLastFrame", "inputs": {"images": ["3", 0], "offset_from_end": 0}},
        "5": {"class_type": "ShotlineLastFrame", "inputs": {"images": ["3", 0], "offset_from_end": 3}},
        "6": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 12.0}},
        "7": {"class_type": "ShotlineSaveMP4", "inputs": {"video": ["6", 0], "filename_prefix": "last",
                                                          "crf": 10, "preset": "ultrafast"}},
        "8": {"class_type": "ShotlineLastFrame", "inputs": {"video": ["7", 0], "offset_from_end": 0}},
    }
    for node, source in (("4", "4"), ("5", "5"), ("8", "8")):
        graph[f"save{node}"] = {"class_type": "SaveImage", "inputs": {"images": [source, 0],
                                                                      "filename_prefix": f"last_frame_{node}"}}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    last, fourth_from_end, from_video = (saved_png(entry, f"save{n}", comfy_server.output_dir) for n in "458")
    assert last.shape == (64, 64, 3)
    assert np.abs(last - rgb(RED)).max() == 0
    assert np.abs(fourth_from_end - rgb(BLUE)).max() == 0  # frames 0-2 are blue, 3-5 red
    assert np.abs(from_video - rgb(RED)).mean() < 4  # through H.264 and back


@pytest.mark.parametrize("inputs, message", [
    ({}, "connect exactly one of images or video (got neither)"),
    ({"images": ["3", 0], "video": ["9", 0]}, "connect exactly one of images or video (got images and video)"),
    ({"images": ["9", 0]}, "images must be IMAGE, got VIDEO"),  # its own check stands in for ComfyUI's type check
])
def test_last_frame_needs_exactly_one_input_of_its_type(comfy, inputs, message):
    graph = shot_nodes(2) | {
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 12.0}},
        "4": {"class_type": "ShotlineLastFrame", "inputs": {**inputs, "offset_from_end": 0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "never"}},
    }
    body = comfy.rejection(graph)
    assert message in str(body["node_errors"]["4"])


def test_colour_grade_in_a_graph(comfy, comfy_server):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": GREY}},
        "2": {"class_type": "ShotlineColorGrade", "inputs": {
            "images": ["1", 0], "match_strength": 1.0, "exposure": 0.0, "contrast": 1.0, "saturation": 1.0,
            "gamma": 2.0}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": RED}},
        "4": {"class_type": "ShotlineColorGrade", "inputs": {
            "images": ["1", 0], "reference": ["3", 0], "match_strength": 1.0, "exposure": 0.0, "contrast": 1.0,
            "saturation": 1.0, "gamma": 1.0}},
        "5": {"class_type": "ShotlineLastFrame", "inputs": {"images": ["2", 0], "offset_from_end": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "graded_gamma"}},
        "7": {"class_type": "ShotlineLastFrame", "inputs": {"images": ["4", 0], "offset_from_end": 0}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "graded_match"}},
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    lifted = saved_png(entry, "6", comfy_server.output_dir)
    expected = round(255 * (128 / 255) ** 0.5)  # gamma 2 lifts mid-grey
    assert np.abs(lifted - expected).max() <= 1
    matched = saved_png(entry, "8", comfy_server.output_dir)  # a flat grey shot takes on the flat red reference
    assert np.abs(matched - rgb(RED)).max() <= 2
