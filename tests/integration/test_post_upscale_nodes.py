"""Upscale (Real-ESRGAN ncnn) and Interpolate Frames inside the real ComfyUI, on small pictures, with the results
read back from SaveImage's files."""
import json

import cv2
import numpy as np
import pytest

from tests.images import cel_frame, moving_sprite_clip, psnr
from tests.images import save_png

pytestmark = pytest.mark.integration


def saved_frames(entry: dict, node: str, output_dir) -> list[np.ndarray]:
    frames = []
    for image in entry["outputs"][node]["images"]:
        path = output_dir / image["subfolder"] / image["filename"]
        frames.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
    return frames


def test_upscale_doubles_a_loaded_picture(comfy, comfy_server):
    save_png(cv2.resize(cel_frame(128), (64, 48), interpolation=cv2.INTER_AREA), comfy_server.input_dir / "cel.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "cel.png"}},
        "2": {"class_type": "ShotlineUpscale", "inputs": {"images": ["1", 0], "model": "realesr-animevideov3-x2",
                                                          "device": "auto", "tile_size": 0, "output_scale": 0.0,
                                                          "cpu_processes": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "upscaled/x2"}},
        "4": {"class_type": "ShotlineUpscale", "inputs": {"images": ["1", 0], "model": "realesr-animevideov3-x4",
                                                          "device": "cpu", "tile_size": 32, "output_scale": 3.0,
                                                          "cpu_processes": 1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "upscaled/x4to3"}},
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [doubled] = saved_frames(entry, "3", comfy_server.output_dir)
    [tripled] = saved_frames(entry, "5", comfy_server.output_dir)
    assert doubled.shape == (96, 128, 3) and tripled.shape == (144, 192, 3)
    reference = cv2.resize(cel_frame(128), (128, 96), interpolation=cv2.INTER_AREA)
    assert psnr(doubled, reference) > 20  # the picture, upscaled


def test_upscale_shares_a_batch_out_over_worker_processes(comfy, comfy_server):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 24, "batch_size": 3, "color": 0x3060C0}},
        "2": {"class_type": "ShotlineUpscale", "inputs": {"images": ["1", 0], "model": "realesr-animevideov3-x3",
                                                          "device": "cpu", "tile_size": 0, "output_scale": 0.0,
                                                          "cpu_processes": 2}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "upscaled/batch"}},
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    frames = saved_frames(entry, "3", comfy_server.output_dir)
    assert len(frames) == 3 and all(frame.shape == (72, 120, 3) for frame in frames)
    blue = np.array([0x30, 0x60, 0xC0]) / 255
    assert all(np.abs(frame[36, 60] - blue).max() < 0.03 for frame in frames)  # a flat colour stays that colour


def test_bad_upscale_inputs_are_validation_errors(comfy):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ShotlineUpscale", "inputs": {"images": ["1", 0], "model": "realesrgan-x8",
                                                          "device": "cpu", "tile_size": 16, "output_scale": 0.0,
                                                          "cpu_processes": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    assert "unknown model 'realesrgan-x8'" in json.dumps(comfy.rejection(graph))


def interpolation_graph(mode: str, engine: str = "auto", rife_model: str = "none") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "clip0.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "clip2.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "ShotlineInterpolateFrames", "inputs": {
            "images": ["3", 0], "mode": mode, "source_fps": 8.0, "target_fps": 24.0, "engine": engine,
            "rife_model": rife_model, "device": "cpu", "flow_detail": "medium"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"interpolated/{mode}"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }


@pytest.mark.parametrize("mode, frames, fps", [("x4", 5, 32.0), ("target_fps", 4, 24.0)])
def test_interpolate_frames_makes_the_in_betweens(comfy, comfy_server, mode, frames, fps):
    clip = moving_sprite_clip(5, 128, 2)  # the sprite moves 8 px right, 4 down from clip[0] to clip[4]
    ends = [save_png(clip[0], comfy_server.input_dir / "clip0.png"),
            save_png(clip[4], comfy_server.input_dir / "clip2.png")]
    entry = comfy.run(interpolation_graph(mode))
    assert entry["status"]["status_str"] == "success", entry["status"]
    out = saved_frames(entry, "5", comfy_server.output_dir)
    assert len(out) == frames and float(entry["outputs"]["6"]["text"][0]) == fps
    assert psnr(out[0], ends[0]) > 45 and psnr(out[-1], ends[1]) > 45  # the source frames, untouched
    if mode == "x4":
        assert psnr(out[2], clip[2]) > psnr((ends[0] + ends[1]) / 2, clip[2]) + 6  # a real in-between


def test_rife_without_a_model_folder_is_a_validation_error(comfy, comfy_server):
    save_png(cel_frame(64), comfy_server.input_dir / "clip0.png")
    save_png(cel_frame(64, (4, 2)), comfy_server.input_dir / "clip2.png")
    rejection = comfy.rejection(interpolation_graph("x2", engine="rife"))
    assert "engine 'rife' needs a RIFE model folder" in json.dumps(rejection)
