"""Colour drift along a continuity chain, without and with anchoring to the scene's first shot, printed as a table.

    .venv/bin/python bench/bench_color_drift.py [--side 512] [--frames 3] [--seed 0] [--repeat 20]

A chain is six shots; shot N+1 starts from shot N's last frame. The start pictures are ComfyUI's template media
(generated pictures shipped in the venv's comfyui_workflow_templates_media_image), centre-cropped to a square
and resized to --side; the numbers are means over those chains.

No model runs here: the generation step is a stand-in that drifts colour, applied to the previous shot's last
frame. Per shot, with a fixed seed: a per-channel colour cast (gain 1 + N(0, 0.03)), an exposure wander
(N(0, 0.1) stops), a gamma wander (exp N(0, 0.06)), a saturation creep (x1.05 a shot, times exp N(0, 0.02)),
Gaussian noise (sigma 0.01) and a small camera move (4 % zoom, a few pixels of shift, a pan across the shot's
frames). Each step's change is small; it accumulates because each shot starts from the last one. Shot 1 is the
start picture with only the camera move: the approved look. Anchored, each generated shot is graded with
grade_frames(reference=shot 1's frames, match_strength 0.8 or 1.0) before its last frame starts the next shot.

Two measures, both CIEDE2000 (core/color_grade.py):
- drift to shot 1: `color_drift`, ΔE00 of the mean Lab colours + distance of the Lab std, as the content differs;
  the grade matches these very statistics, so this measure flatters anchoring;
- error to truth: `mean_delta_e`, pixel for pixel, against the same camera moves applied to the start picture with
  no colour change and no noise: what the shot should look like. Its floor, the same chain with noise and
  camera moves but no colour change, is printed beside it: the part no colour grade can remove.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes"), str(ROOT)]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from shotline.core.color_grade import (REC709, GradeSettings, color_drift, grade_frames, lab_stats,  # noqa: E402
                                       mean_delta_e)

from timing import best_seconds  # noqa: E402  (bench/timing.py, beside this script)

SHOTS = 6
STRENGTHS = (0.8, 1.0)
TEMPLATES = "comfyui_workflow_templates_media_image"
PICTURES = ("flux_schnell-1", "sdxl_simple_example-1", "image_qwen_image-1", "flux1_krea_dev-1", "image_flux2-1",
            "controlnet_example-1", "image_chroma_text_to_image-1", "sdxlturbo_example-1",
            "flux_dev_checkpoint_example-1", "image_netayume_lumina_t2i-1", "image_omnigen2_t2i-1",
            "sdxl_refiner_prompt_example-1")
ZOOM, PAN_PX, NOISE = 1.04, 3.0, 0.01
FLOOR = "floor"  # the variant with noise and camera moves but no colour change: what no grade can remove


def start_picture(name: str, side: int) -> np.ndarray:
    import PIL
    path = Path(PIL.__file__).resolve().parents[1] / TEMPLATES / "templates" / f"{name}.webp"
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    edge = min(rgb.shape[:2])
    top, left = (rgb.shape[0] - edge) // 2, (rgb.shape[1] - edge) // 2
    return cv2.resize(rgb[top:top + edge, left:left + edge], (side, side), interpolation=cv2.INTER_AREA)


def camera_moves(rng: np.random.Generator, side: int, frames: int) -> list[np.ndarray]:
    """One affine map per frame of a shot: a zoom about the centre, a random shift, a pan across the frames."""
    centre, room = side / 2, (ZOOM - 1) * side / 2 - PAN_PX * (frames - 1)
    shift = rng.uniform(-room, room, 2)
    return [np.array([[ZOOM, 0, centre * (1 - ZOOM) + shift[0] + PAN_PX * k],
                      [0, ZOOM, centre * (1 - ZOOM) + shift[1]]], np.float32) for k in range(frames)]


def move(frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    side = frame.shape[0]
    return cv2.warpAffine(frame, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def colour_step(rng: np.random.Generator):
    """The colour change of one generation step, the same for all frames of the shot."""
    gain = (1 + rng.normal(0, 0.03, 3)) * 2.0 ** rng.normal(0, 0.1)
    gamma = float(np.exp(rng.normal(0, 0.06)))
    saturation = 1.05 * float(np.exp(rng.normal(0, 0.02)))

    def apply(frame: np.ndarray) -> np.ndarray:
        out = np.clip(frame * gain.astype(np.float32), 0, 1)
        luma = out @ REC709
        out = np.clip(luma[..., None] + saturation * (out - luma[..., None]), 0, 1)
        return out ** np.float32(1 / gamma)
    return apply


def generate(start: np.ndarray, rng: np.random.Generator, frames: int, drift: bool, colour: bool = True
             ) -> np.ndarray:
    """A shot's frames from its start frame: the camera move, and (`drift`) the colour change (unless not
    `colour`: the noise floor) and noise. The draws are the same whatever is applied."""
    moves = camera_moves(rng, start.shape[0], frames)
    shot = np.stack([move(start, matrix) for matrix in moves])
    if drift:
        step = colour_step(rng)
        if colour:
            shot = np.stack([step(frame) for frame in shot])
        shot = np.clip(shot + rng.normal(0, NOISE, shot.shape).astype(np.float32), 0, 1)
    return shot


def run_chain(picture: np.ndarray, seed: int, frames: int) -> dict:
    """Per variant (None = not anchored, a match strength, or FLOOR): per shot, drift to shot 1 and error to
    truth."""
    variants = (None, *STRENGTHS)
    truth = [generate(picture, np.random.default_rng([seed, 0]), frames, drift=False)]
    for shot in range(1, SHOTS):
        truth.append(generate(truth[-1][-1], np.random.default_rng([seed, shot]), frames, drift=False))
    first = truth[0]
    reference = lab_stats(first)
    results = {}
    for strength in (*variants, FLOOR):
        shots = [first]
        for shot in range(1, SHOTS):
            # the same draws in every variant: only the anchoring differs
            frames_out = generate(shots[-1][-1], np.random.default_rng([seed, shot]), frames, drift=True,
                                  colour=strength != FLOOR)
            if strength not in (None, FLOOR):
                frames_out = grade_frames(frames_out, GradeSettings(match_strength=strength), reference)
            shots.append(frames_out)
        results[strength] = ([color_drift(s, reference) for s in shots],
                             [mean_delta_e(s, t) for s, t in zip(shots, truth)])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--frames", type=int, default=3, help="frames a shot (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=20, help="timing: best of N calls, after a warm-up call")
    args = parser.parse_args()
    pictures = [start_picture(name, args.side) for name in PICTURES]
    runs = [run_chain(picture, args.seed * 1000 + index, args.frames) for index, picture in enumerate(pictures)]
    variants = (None, *STRENGTHS)
    drift = {v: np.mean([run[v][0] for run in runs], axis=0) for v in variants}
    error = {v: np.mean([run[v][1] for run in runs], axis=0) for v in (*variants, FLOOR)}

    print(f"colour drift along a {SHOTS}-shot chain: {len(pictures)} chains (ComfyUI template pictures), "
          f"{args.frames} frames a shot at {args.side}x{args.side}, seed {args.seed}")
    print("simulated generation step (no model): per shot a colour cast (per-channel gain, sd 3 %), exposure "
          "(sd 0.1 stop) and gamma (sd 6 %) wander,\n  saturation creep (+5 % a shot), noise (sd 0.01), a 4 % zoom "
          "with a shift and a pan; accumulated because each shot starts from the last")
    print("ΔE00 means over the chains; 'drift' = color_drift to shot 1 (mean-colour ΔE00 + Lab std distance), "
          "'error' = mean_delta_e per pixel to the undrifted truth;\n  'error floor' = the same chain "
          "with no colour change (noise and camera moves only): the part no colour grade can remove")
    names = {None: "none", 0.8: "anch 0.8", 1.0: "anch 1.0", FLOOR: "floor"}
    headers = ("shot", *(f"drift {names[v]}" for v in variants), *(f"error {names[v]}" for v in error))
    table = [(str(shot + 1), *(f"{drift[v][shot]:.2f}" for v in variants),
              *(f"{error[v][shot]:.2f}" for v in error)) for shot in range(SHOTS)]
    table.append((f"mean 2..{SHOTS}", *(f"{drift[v][1:].mean():.2f}" for v in variants),
                  *(f"{error[v][1:].mean():.2f}" for v in error)))
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))

    shot = generate(pictures[0], np.random.default_rng(1), args.frames, drift=True)
    first = generate(pictures[1], np.random.default_rng(2), args.frames, drift=False)
    for label, reference in (("reference frames", first), ("reference LabStats", lab_stats(first))):
        seconds = best_seconds(lambda reference=reference: grade_frames(shot, GradeSettings(match_strength=0.8),
                                                                         reference), args.repeat)
        print(f"anchoring call, {label}: {seconds * 1000:.1f} ms for a {args.frames}-frame shot = "
              f"{seconds * 1000 / args.frames:.1f} ms per {args.side} px frame ({os.cpu_count()} CPU cores, "
              f"OpenCV {cv2.getNumThreads()} threads)")


if __name__ == "__main__":
    main()
