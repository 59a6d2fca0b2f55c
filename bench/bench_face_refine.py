"""Face Refine's own work against ComfyUI's sampling, per face on the CPU, printed as a table.

    .venv/bin/python bench/bench_face_refine.py [--steps 2] [--cycles 2] [--guide-size 512] [--save DIR]

Runs in this process through ComfyUI's own code (ComfyUI from the project settings, `--cpu`): the random test
checkpoint (built by the test fixtures or `python3 install.py`), a real photo face (t1.jpg's first person, 2x, in
a 560x400 frame) and that person's dlib gallery. Every cycle runs (target 1.0). Sampling is the node's
`ComfySampler` (CLIP encode once per prompt, VAE encode, `nodes.common_ksampler`, VAE decode); ours is the rest of
`refine_frame` (crop, resize, masks, paste, colour match) plus the re-score (MTCNN near the box, dlib, IDR) and the
frame's detection and assignment. Target: ours <= 5 % of sampling + VAE. The random UNet is smaller than SD1.5's
(two levels), so real checkpoints make sampling slower and our share smaller still.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shotline.core.face_embedding import load_embedder  # noqa: E402
from shotline.core.face_refine import (FaceScorer, RefineSettings, character_prompt, faces_to_refine,  # noqa: E402
                                       refine_frame)
from shotline.core.faces import load_detector  # noqa: E402
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME, load_settings  # noqa: E402
from tests.images import jpeg  # noqa: E402  (imported before ComfyUI's folder, which has a `tests` of its own)
from tests.unit.test_identity import group_picture, t1_tiles  # noqa: E402


TARGET_SHARE = 0.05


def start_comfy():
    settings = load_settings()
    sys.path.insert(0, str(settings.comfyui_dir))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.sd
    checkpoint = settings.state_dir / "models" / "checkpoints" / RANDOM_CHECKPOINT_NAME
    if not checkpoint.exists():
        sys.exit(f"{checkpoint} is missing: run `python3 install.py` (it builds the random test checkpoint)")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=True, output_clip=True)
    return model, clip, vae


class Timed:
    """Wraps a callable and sums the seconds spent in it."""

    def __init__(self, function):
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self.function(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="the fewest steps: our worst share")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--guide-size", type=int, default=512)
    parser.add_argument("--save", type=Path, help="write the input and every cycle's candidate here as PNG")
    args = parser.parse_args()

    model, clip, vae = start_comfy()
    from shotline.face_refine import (
        ComfySampler,  # ComfyUI's modules are importable from here on
    )

    tile = t1_tiles()[0]
    frame = cv2.resize(group_picture(tile), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC).clip(0, 1)
    detector, embedder = load_detector("mtcnn"), load_embedder("dlib")
    references = [jpeg(tile, 40), np.ascontiguousarray(tile[:, ::-1])]
    galleries = {"Rita": np.stack([embedder.embed(image, detector.detect(image)[0]) for image in references])}
    prompts = {"Rita": character_prompt("Rita, a woman", "", "detailed face", "blurry")}
    settings = RefineSettings(seed=1, denoise=0.45, crop_factor=3.0, guide_size=args.guide_size, feather=0.3,
                              max_cycles=args.cycles)

    sample = Timed(ComfySampler(model, clip, vae, args.steps, 8.0, "euler", "normal", settings.denoise))
    sample(np.zeros((64, 64, 3), np.float32), np.ones((64, 64), np.float32), 0, prompts["Rita"])  # warm-up:
    sample.seconds = sample.calls = 0                                                           # load + encode
    faces_to_refine(frame, detector, embedder, galleries, prompts, {"Rita": 1.0})
    detect_start = time.perf_counter()
    faces = faces_to_refine(frame, detector, embedder, galleries, prompts, {"Rita": 1.0})
    detect_seconds = time.perf_counter() - detect_start
    candidates = []   # every image the scorer sees: the input, then each cycle's candidate

    def score_and_keep(image, box, character):
        if args.save:
            candidates.append(image)
        return scorer(image, box, character)
    scorer = FaceScorer(detector, embedder, galleries)
    score = Timed(score_and_keep)
    start = time.perf_counter()
    result, histories = refine_frame(frame, faces, sample, score, settings)
    total = time.perf_counter() - start
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for name, image in [("output", result)] + [(f"candidate{i}", c) for i, c in enumerate(candidates)]:
            cv2.imwrite(str(args.save / f"{name}.png"),
                        cv2.cvtColor((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR))

    face_count = len(faces)
    cycles = sum(len(h.cycles) for h in histories)
    sampling = sample.seconds
    geometry = total - sample.seconds - score.seconds
    ours = geometry + score.seconds + detect_seconds
    print(f"Face Refine, CPU, frame {frame.shape[1]}x{frame.shape[0]}, {face_count} face(s), guide_size "
          f"{args.guide_size}, {args.steps} steps at denoise {settings.denoise}, {cycles} cycles (every cycle runs)")
    print(f"{'step':<58} {'s/face':>9} {'s/cycle':>9} {'share':>7}")
    rows = [("ComfyUI: VAE encode + common_ksampler + VAE decode", sampling),
            ("ours: crop, resize, masks, paste, colour match", geometry),
            ("ours: re-score (MTCNN near the box + dlib + IDR)", score.seconds),
            ("ours: frame detection + embedding + assignment", detect_seconds),
            ("ours, all", ours)]
    for name, seconds in rows:
        once_a_frame = name.startswith("ours: frame")
        per_cycle = "" if once_a_frame else f"{seconds / max(1, cycles):.3f}"
        print(f"{name:<58} {seconds / face_count:9.3f} {per_cycle:>9} {seconds / sampling:7.1%}")
    share = ours / sampling
    print(f"\nours / sampling = {share:.1%} (target <= {TARGET_SHARE:.0%}): {'yes' if share <= TARGET_SHARE else 'NO'}")
    for history in histories:
        print(f"face {history.face} ({history.character}): IDR {history.score_in} -> {history.score_out}, cycles "
              + ", ".join(f"{c.score_after}" for c in history.cycles))


if __name__ == "__main__":
    import torch
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        main()
