"""Test pictures and media: ComfyUI's own example.png (a drawing with hard edges), photos and generated pictures
that installed packages ship, synthetic cel-style frames, and writers for PNG and WAV files."""
import functools
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from shotline_controller.settings import load_settings


def comfy_example_image() -> np.ndarray:
    """ComfyUI's input/example.png as an (H, W, 3) float RGB array in 0..1."""
    comfyui = load_settings().comfyui_dir
    path = Path(comfyui) / "input" / "example.png"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships with ComfyUI; run `python3 install.py`")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def cel_background(size: int, seed: int = 0) -> np.ndarray:
    """An anime-like (size, size, 3) float RGB scene: flat sky and ground, flat discs with dark outlines."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (0.55, 0.75, 0.95)
    cv2.rectangle(image, (0, int(size * 0.65)), (size, size), (0.35, 0.6, 0.3), -1)
    for _ in range(6):
        colour = tuple(float(v) for v in rng.random(3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        radius = int(rng.integers(size // 16, size // 6))
        cv2.circle(image, (x, y), radius, colour, -1, cv2.LINE_AA)
        cv2.circle(image, (x, y), radius, (0.1, 0.1, 0.1), max(1, size // 128), cv2.LINE_AA)
    return image


def cel_sprite(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured outlined face, size // 3 px square, and its alpha (both float)."""
    rng = np.random.default_rng(seed + 1)
    side = size // 3
    sprite = np.empty((side, side, 3), np.float32)
    sprite[:] = (0.95, 0.8, 0.7)
    alpha = np.zeros((side, side), np.float32)
    axes = (side // 2 - 2, side // 2 - 6)
    cv2.ellipse(alpha, (side // 2, side // 2), axes, 0, 0, 360, 1, -1, cv2.LINE_AA)
    cv2.ellipse(sprite, (side // 2, side // 2), axes, 0, 0, 360, (0.1, 0.1, 0.1), max(1, size // 128), cv2.LINE_AA)
    for k in range(5):
        colour = tuple(float(v) for v in rng.random(3))
        centre = (int(side * 0.3 + k * side * 0.1), int(side * 0.35 + (k % 2) * side * 0.25))
        cv2.circle(sprite, centre, side // 12, colour, -1, cv2.LINE_AA)
    cv2.line(sprite, (side // 4, int(side * 0.7)), (3 * side // 4, int(side * 0.7)), (0.6, 0.1, 0.1),
             max(1, size // 100), cv2.LINE_AA)
    return sprite, alpha


def cel_frame(size: int, offset: tuple[int, int] = (0, 0), seed: int = 0) -> np.ndarray:
    """The cel background with the sprite pasted at (size // 6, size // 3) + offset (x, y) pixels."""
    image = cel_background(size, seed)
    sprite, alpha = cel_sprite(size, seed)
    side = sprite.shape[0]
    x, y = size // 6 + offset[0], size // 3 + offset[1]
    region = image[y:y + side, x:x + side]
    image[y:y + side, x:x + side] = alpha[..., None] * sprite + (1 - alpha[..., None]) * region
    return image


def moving_sprite_clip(count: int, size: int, step: int, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) frames: the sprite moves `step` px right and step/2 px down per frame over a still
    background, so frame k is the ground truth for any in-between of frames 0 and count-1."""
    return np.stack([cel_frame(size, (k * step, k * step // 2), seed) for k in range(count)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two float images in 0..1."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


TEMPLATES = "comfyui_workflow_templates_media_image"


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package (no network: the wheels carry these images)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{package} is not installed: run the tests with `python3 install.py --test`")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    assert path.is_file(), path
    return path


@functools.lru_cache(maxsize=None)
def _read(path: str) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    image.setflags(write=False)
    return image


def read_rgb(path) -> np.ndarray:
    """An image file as (H, W, 3) float RGB in 0..1 (read-only, cached)."""
    return _read(str(path))


def t1_photo() -> np.ndarray:
    """InsightFace's t1.jpg: six people in a row."""
    return read_rgb(package_file("insightface", "data", "images", "t1.jpg"))


def hanks_photo() -> np.ndarray:
    return read_rgb(package_file("insightface", "data", "images", "Tom_Hanks_54745.png"))


def template_image(name: str) -> np.ndarray:
    """A picture from ComfyUI's workflow templates (generated images: portraits, anime, landscapes)."""
    return read_rgb(package_file(TEMPLATES, "templates", f"{name}.webp"))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor((image * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
    _, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def save_png(image: np.ndarray, path) -> np.ndarray:
    """Write an RGB float image as PNG; returns what ComfyUI's LoadImage will read back (8-bit rounding)."""
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return pixels.astype(np.float32) / 255.0


def write_wav(path, audio: np.ndarray, sample_rate: int) -> Path:
    """A 16-bit WAV of float audio [channels, samples] in -1..1, as a user would upload it."""
    audio = np.atleast_2d(np.asarray(audio, np.float32))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(audio.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(audio.T, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)
