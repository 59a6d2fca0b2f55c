"""Speed of scene assembly (decode, letterbox, crossfade, H.264 + AAC encode), printed as a table.

    .venv/bin/python bench/bench_assembly.py [--preset medium] [--side 512] [--repeat 1]

Scenes of 3 and 10 shots at 512 px, 24 fps, 2 s a shot with 0.5 s crossfades: once from stills (PNG, what the
txt2img preset renders), once from video clips with a tone each (what a video preset renders), and once from
video clips with music ducked under their audio. The clips are made first (not timed).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import av  # noqa: E402
import numpy as np  # noqa: E402
from shotline.core.video_encode import encode_mp4  # noqa: E402

from shotline_controller.media.assembly import SAMPLE_RATE, ClipSource, assemble  # noqa: E402
from tests.images import write_wav  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/timing.py, beside this script)

FPS, SHOT_SECONDS, CROSSFADE_S = 24, 2.0, 0.5


def picture(rng: np.random.Generator, side: int, shift: int = 0) -> np.ndarray:
    """A render-like picture: smooth colour fields with some grain (pure noise would be unfairly hard to encode)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.random(6)
    image = np.stack([np.sin((x + shift / 200) * 6 * base[0] + base[1] * 6),
                      np.cos(y * 5 * base[2] + base[3] * 6 + shift / 50),
                      np.sin((x + y) * 4 * base[4] + base[5] * 6)], axis=-1) * 0.4 + 0.5
    image += rng.normal(0, 0.02, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_clips(folder: Path, count: int, side: int, kind: str) -> list[ClipSource]:
    rng = np.random.default_rng(count)
    clips = []
    for index in range(count):
        if kind == "stills":
            path = folder / f"still{index:02d}.png"
            with av.open(str(path), mode="w", format="image2") as container:
                stream = container.add_stream("png", rate=1)
                stream.width, stream.height, stream.pix_fmt = side, side, "rgb24"
                frame = av.VideoFrame.from_ndarray(picture(rng, side), format="rgb24")
                for packet in [*stream.encode(frame), *stream.encode(None)]:
                    container.mux(packet)
            clips.append(ClipSource(path, f"shot {index}", SHOT_SECONDS))
        else:
            path = folder / f"clip{index:02d}.mp4"
            frames = np.stack([picture(np.random.default_rng(index), side, shift)
                               for shift in range(round(SHOT_SECONDS * FPS))])
            t = np.arange(round(SHOT_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
            audio = np.repeat((0.2 * np.sin(2 * np.pi * (300 + 50 * index) * t)).astype(np.float32)[None], 2, 0)
            encode_mp4(path, frames, FPS, audio, SAMPLE_RATE, preset="ultrafast")
            clips.append(ClipSource(path, f"shot {index}"))
    return clips


def make_music(folder: Path, seconds: float) -> Path:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return write_wav(folder / "music.wav", np.repeat((0.2 * np.sin(2 * np.pi * 110 * t))[None], 2, 0), SAMPLE_RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="medium", help="x264 preset of the scene (default medium)")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs, after a warm-up run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        music = make_music(folder, 10.0)
        for count in (3, 10):
            for kind in ("stills", "videos", "videos + music"):
                work = folder / f"{count}-{kind.split()[0]}"
                work.mkdir(exist_ok=True)
                clips = make_clips(work, count, args.side, kind.split()[0])
                results = []
                seconds = best_seconds(lambda: results.append(assemble(
                    clips, folder / "scene.mp4", crossfade_s=CROSSFADE_S, preset=args.preset,
                    music=music if "music" in kind else None)), args.repeat)
                rows.append((count, kind, results[-1].frame_count, results[-1].duration_s, seconds))
    print(f"scene assembly at {args.side}x{args.side}, {FPS} fps, x264 preset {args.preset}, "
          f"{SHOT_SECONDS:g} s a shot, {CROSSFADE_S:g} s crossfades")
    headers = ("shots", "clips", "frames", "scene s", "time s", "frames/s", "x realtime")
    table = [(str(count), kind, str(frames), f"{duration:.2f}", f"{seconds:.2f}", f"{frames / seconds:.1f}",
              f"{duration / seconds:.2f}") for count, kind, frames, duration, seconds in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
