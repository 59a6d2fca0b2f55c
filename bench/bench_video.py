"""Speed of MP4 encoding (H.264 + AAC) and of the colour grade, printed as tables.

    .venv/bin/python bench/bench_video.py [--repeat 3]

Content: a 48-frame, 512x512 slow pan (4 px a frame) over a ComfyUI template picture (real detail, real motion;
noise would be x264's worst case and no shot looks like it), with 2 s of 48 kHz stereo audio. Target: the whole
encode (RGB conversion, x264, AAC, mux) <= 2 s on 2 CPU cores with the default crf 18 / preset medium. Each x264
preset and thread count is measured so a miss can be traced. Colour grade target: <= 20 ms per 512 px frame.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from shotline.core.color_grade import Grade, GradeSettings, lab_stats  # noqa: E402
from shotline.core.video_encode import Mp4Writer, probe_media, to_uint8_rgb  # noqa: E402
from tests.images import template_image  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/, the script's own folder)

FRAMES, SIDE, FPS, SAMPLE_RATE = 48, 512, 24, 48000


def pan_shot(picture: np.ndarray) -> np.ndarray:
    scale = (SIDE + 4 * FRAMES) / min(picture.shape[:2])
    big = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.stack([big[:SIDE, 4 * i:4 * i + SIDE] for i in range(FRAMES)])


def tone() -> np.ndarray:
    t = np.arange(FRAMES * SAMPLE_RATE // FPS) / SAMPLE_RATE
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)


def bench_encode(shot: np.ndarray, audio: np.ndarray, repeat: int):
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.mp4"

        def encode(preset: str, threads: int, with_audio: bool = True, crf: float = 18):
            with Mp4Writer(path, SIDE, SIDE, FPS, crf=crf, preset=preset, threads=threads,
                           sample_rate=SAMPLE_RATE if with_audio else None) as writer:
                for frame in shot:  # as the node does: float frame -> uint8 -> encoder
                    writer.write_frames(to_uint8_rgb(frame))
                if with_audio:
                    writer.write_audio(audio)

        convert = best_seconds(lambda: [to_uint8_rgb(frame) for frame in shot], repeat)
        rows.append(("float -> uint8 RGB only", "", "", convert, None, None))
        cases = [(preset, 0, True) for preset in ("ultrafast", "veryfast", "fast", "medium", "slow")]
        cases += [("medium", 1, True), ("medium", 2, True), ("medium", 0, False)]
        for preset, threads, with_audio in cases:
            seconds = best_seconds(lambda p=preset, t=threads, a=with_audio: encode(p, t, a), repeat)
            size_kb = path.stat().st_size / 1024
            info = probe_media(path)
            assert info.frame_count == FRAMES, info  # a benchmark of a broken file would mean nothing
            target = 2.0 if (preset, threads, with_audio) == ("medium", 0, True) else None
            label = f"crf 18 {preset}" + ("" if with_audio else ", no audio")
            rows.append((label, "auto" if threads == 0 else str(threads), f"{size_kb:.0f}", seconds, target,
                         FRAMES / seconds))
    print(f"encode {FRAMES} frames {SIDE}x{SIDE} @ {FPS} fps + 2 s AAC stereo ({os.cpu_count()} CPU cores)")
    print(f"{'case':<30} {'threads':>7} {'KiB':>6} {'s':>7} {'fps':>7} {'target':>7}  ok")
    for label, threads, size, seconds, target, fps in rows:
        ok = "" if target is None else ("yes" if seconds <= target else "NO")
        print(f"{label:<30} {threads:>7} {size:>6} {seconds:7.3f} {'' if fps is None else f'{fps:.0f}':>7} "
              f"{'' if target is None else f'{target:.1f}':>7}  {ok}")


def bench_grade(shot: np.ndarray, reference: np.ndarray, repeat: int):
    frame = shot[0]
    basic = GradeSettings(exposure=0.2, contrast=1.1, saturation=0.9, gamma=1.1)
    rows = [
        ("Lab statistics, per frame pooled", best_seconds(lambda: lab_stats(shot), repeat) / FRAMES, None),
        ("neutral (clip only)", best_seconds(lambda: Grade(GradeSettings()).apply(frame), repeat * 5), None),
    ]
    grade = Grade(basic)
    rows.append(("exposure+contrast+saturation+gamma", best_seconds(lambda: grade.apply(frame), repeat * 5), 20.0))
    matched = Grade.for_shot(shot, GradeSettings(**{**basic.__dict__, "match_strength": 0.8}), reference)
    rows.append(("the same + Lab match to reference", best_seconds(lambda: matched.apply(frame), repeat * 5), 20.0))
    print(f"\ncolour grade, one {SIDE}x{SIDE} frame (the shot's statistics are measured once per shot)")
    print(f"{'step':<40} {'ms':>8} {'target':>7}  ok")
    for label, seconds, target in rows:
        ms = seconds * 1000
        ok = "" if target is None else ("yes" if ms <= target else "NO")
        print(f"{label:<40} {ms:8.2f} {'' if target is None else f'{target:.0f}':>7}  {ok}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    picture = template_image("controlnet_example-1")
    shot = pan_shot(picture)
    bench_encode(shot, tone(), args.repeat)
    bench_grade(shot, cv2.resize(picture, (SIDE, SIDE), interpolation=cv2.INTER_AREA), args.repeat)


if __name__ == "__main__":
    main()
