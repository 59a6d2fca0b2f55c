"""Cost of a check node's canvas preview (boxes + caption, then the PNG ComfyUI writes), printed as a table.

    .venv/bin/python bench/bench_verdict_preview.py [--repeat 5]

A generated portrait from ComfyUI's templates (comfyui-workflow-templates-media-image), its longest side scaled to
512, 1024 and 2048 px (2048 is shrunk to 1024 by the preview), faces found by MTCNN once (not timed). The PNG step
does what `comfy_api.latest.ui.PreviewImage` does: uint8 -> float tensor (check_outputs), float -> uint8 and a PIL
PNG at compress_level 1, with a workflow-sized text chunk.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from shotline.core.faces import load_detector  # noqa: E402
from shotline.core.identity import aggregate_frames, identity_verdict  # noqa: E402
from shotline.core.verdict_preview import annotate  # noqa: E402

from tests.images import template_image  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/timing.py, beside this script)


def scaled(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape[:2]
    factor = side / max(height, width)
    return cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)


def verdict_for(image: np.ndarray) -> dict:
    faces = load_detector("mtcnn").detect(image)
    embeddings = [np.eye(8)[index % 8] for index in range(len(faces))]
    return aggregate_frames([identity_verdict(embeddings, {"Ada": np.eye(8)[:1]}, "dlib", faces=faces)])


def comfy_png(preview: np.ndarray, metadata: PngInfo) -> int:
    tensor = torch.from_numpy((preview.astype(np.float32) + 0.5) / 255.0)
    pixels = np.clip(255.0 * tensor.numpy(), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png", pnginfo=metadata, compress_level=1)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    metadata = PngInfo()
    metadata.add_text("prompt", json.dumps({str(n): {"class_type": "Node", "inputs": {"x": n}} for n in range(40)}))
    portrait = template_image("image_flux2-1")
    print(f"{'frame':>11} {'faces':>5} {'preview':>11} {'annotate ms':>11} {'PNG ms':>7} {'total ms':>8} "
          f"{'PNG KiB':>8}")
    for side in (512, 1024, 2048):
        image = scaled(portrait, side)
        verdict = verdict_for(image)
        preview = annotate(image, verdict)
        drawing = best_seconds(lambda image=image, verdict=verdict: annotate(image, verdict), args.repeat)
        saving = best_seconds(lambda preview=preview: comfy_png(preview, metadata), args.repeat)
        size = comfy_png(preview, metadata)
        print(f"{image.shape[1]:>5}x{image.shape[0]:<5} {len(verdict['frames'][0]['faces']):>5} "
              f"{preview.shape[1]:>5}x{preview.shape[0]:<5} {drawing * 1000:>11.1f} {saving * 1000:>7.1f} "
              f"{(drawing + saving) * 1000:>8.1f} {size / 1024:>8.0f}")


if __name__ == "__main__":
    main()
