"""Speed of the identity pipeline on one CPU core, printed as a table (accuracy and dlib's calibration:
bench/bench_verdicts.py).

    .venv/bin/python bench/bench_identity.py [--repeat 5]

Images: InsightFace's t1.jpg (six people, shipped in the insightface wheel) and ComfyUI's template pictures
(comfyui-workflow-templates-media-image). Targets: quality <= 5 ms, MTCNN <= 250 ms and MTCNN + animeface
<= 350 ms per 512 px image, dlib <= 160 ms per face (it embeds the face and its mirror image), a 20-reference
gallery from the cache <= 50 ms. Accuracy on labelled pictures: bench/bench_verdicts.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from shotline.core.face_embedding import load_embedder  # noqa: E402
from shotline.core.faces import DEFAULT_DETECTOR, load_detector  # noqa: E402
from shotline.core.gallery_cache import GalleryCache, backend_key, reference_embedder  # noqa: E402
from shotline.core.image_quality import assess_image  # noqa: E402
from tests.images import t1_photo  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/, the script's own folder)


def best_ms(function, repeat: int) -> float:
    return best_seconds(function, repeat) * 1000


def bench(repeat: int):
    t1 = t1_photo()
    image512 = cv2.resize(t1, (512, round(512 * t1.shape[0] / t1.shape[1])), interpolation=cv2.INTER_AREA)
    detector, embedder = load_detector(DEFAULT_DETECTOR), load_embedder("dlib")
    mtcnn = load_detector("mtcnn")
    faces = detector.detect(image512)
    rows = [("quality check (assess_image), 512 px", best_ms(lambda: assess_image(image512), repeat * 4), 5.0, "image")]
    rows.append((f"MTCNN detection, 512x{image512.shape[0]} ({len(faces)} faces)",
                 best_ms(lambda: mtcnn.detect(image512), repeat), 250.0, "image"))
    rows.append((f"{DEFAULT_DETECTOR} detection (the dlib backend's)",
                 best_ms(lambda: detector.detect(image512), repeat), 350.0, "image"))
    rows.append(("dlib embedding (face + its mirror)",
                 best_ms(lambda: [embedder.embed(image512, f) for f in faces], repeat) / len(faces), 160.0, "face"))
    with tempfile.TemporaryDirectory() as folder:
        references = Path(folder) / "refs"
        references.mkdir()
        full_faces = detector.detect(t1)
        for index in range(20):  # 20 references: crops of the six people, varied in size and JPEG quality
            face = full_faces[index % len(full_faces)]
            x0, y0, x1, y1 = (int(v) for v in face.box)
            pad = (x1 - x0) // 2 + index
            crop = t1[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
            cv2.imwrite(str(references / f"ref_{index:02d}.jpg"),
                        cv2.cvtColor((crop * 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 70 + index])
        paths = sorted(references.glob("*.jpg"))
        key, embed = backend_key(detector, embedder), reference_embedder(detector, embedder)
        start = time.perf_counter()
        GalleryCache(Path(folder) / "cache").gallery(paths, key, embed)
        first = (time.perf_counter() - start) * 1000
        cached = best_ms(lambda: GalleryCache(Path(folder) / "cache").gallery(paths, key, embed), repeat)
    rows.append(("20-reference gallery, first build (detect + embed)", first, None, "gallery"))
    rows.append(("20-reference gallery from the on-disk cache", cached, 50.0, "gallery"))

    print(f"{'step':<56} {'ms':>9} {'per':>8} {'target':>8}  ok")
    for name, ms, target, unit in rows:
        ok = "" if target is None else ("yes" if ms <= target else "NO")
        print(f"{name:<56} {ms:9.1f} {unit:>8} {'' if target is None else f'{target:.0f}':>8}  {ok}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    bench(args.repeat)


if __name__ == "__main__":
    main()
