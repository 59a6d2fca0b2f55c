"""Known test images: ComfyUI's own example.png (a drawing with hard edges) and versions of it."""
from pathlib import Path

import cv2
import numpy as np

from controller.settings import load_settings


def comfy_example_image() -> np.ndarray:
    """ComfyUI's input/example.png as an (H, W, 3) float RGB array in 0..1."""
    comfyui = load_settings().comfyui_dir
    path = Path(comfyui) / "input" / "example.png"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships with ComfyUI; run `python3 install.py`")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)
