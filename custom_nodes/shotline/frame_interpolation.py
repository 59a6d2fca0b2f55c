"""Interpolate Frames: x2 / x4 frames, or frames at a new fps, by optical flow (no model) or RIFE (ncnn)."""
import os

import comfy.utils
import torch
from comfy_api.latest import io

from . import model_folders
from .core.frame_interpolation import (DEFAULT_FLOW_DETAIL, ENGINES, FLOW_DETAIL, MULTIPLIERS, assemble,
                                       choose_engine, generated_jobs, interpolate_flow, interpolate_rife,
                                       list_rife_folders, plan_frames)
from .core.ncnn_device import available_device_choices, cached_device_count, device_problem, resolve_gpuid

NONE = "none"
MODES = (*MULTIPLIERS, "target_fps")


def rife_folders() -> list[str]:
    return list_rife_folders(model_folders.folders(model_folders.RIFE))


def rife_folder_path(name: str):
    """The first models/rife/<name> folder, or None for "none"."""
    if name == NONE:
        return None
    roots = model_folders.folders(model_folders.RIFE)
    return next((os.path.join(root, name) for root in roots if os.path.isdir(os.path.join(root, name))),
                os.path.join(roots[0], name))


class InterpolateFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineInterpolateFrames",
            display_name="Interpolate Frames",
            category="Shotline/video",
            description="Makes in-between frames: x2 or x4 as many, or frames at a target fps over the same span "
                        "of time. Optical flow (OpenCV DIS, both directions, no model) by default; RIFE when a "
                        "RIFE ncnn model folder is chosen (models/rife/<name>/flownet.param + flownet.bin).",
            inputs=[
                io.Image.Input("images", tooltip="The frames of one shot, in order."),
                io.Combo.Input("mode", options=list(MODES), default="x2",
                               tooltip="x2 / x4: 1 or 3 new frames between each pair ((N-1)*m+1 frames at m times "
                                       "the fps). target_fps: frames at the new rate, from the first frame to the "
                                       "last."),
                io.Float.Input("source_fps", default=12.0, min=0.1, max=240.0, step=0.5,
                               tooltip="Frame rate of the input frames."),
                io.Float.Input("target_fps", default=24.0, min=0.1, max=240.0, step=0.5,
                               tooltip="Frame rate of the output in target_fps mode (ignored by x2 / x4)."),
                io.Combo.Input("engine", options=list(ENGINES), default="auto",
                               tooltip="auto: RIFE when a valid RIFE folder is chosen, else optical flow. "
                                       "optical_flow: no model, fast on the CPU; reliable for motion up to about "
                                       "6% of the frame width between two input frames. rife: the chosen folder "
                                       "or an error."),
                io.Combo.Input("rife_model", options=[NONE, *rife_folders()], default=NONE,
                               tooltip="A folder in models/rife from rife-ncnn-vulkan's model downloads, keeping "
                                       "its name (rife-v4.6, rife-v4.26, ...): flownet.param + flownet.bin. v4 "
                                       "models take any time step."),
                io.Combo.Input("device", options=list(available_device_choices()), default="cpu",
                               tooltip="For RIFE: cpu; auto: Vulkan GPU 0 when it passes a test run, else the CPU; "
                                       "vulkan:N (only the Vulkan devices found on this machine are listed): that "
                                       "GPU or an error. Optical flow always runs on the CPU."),
                io.Combo.Input("flow_detail", options=list(FLOW_DETAIL), default=DEFAULT_FLOW_DETAIL,
                               tooltip="Optical flow effort: fast (DIS FAST), medium (DIS MEDIUM without "
                                       "variational refinement: the default), fine (DIS MEDIUM as OpenCV ships "
                                       "it, about 1.5x slower)."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Float.Output(display_name="fps", tooltip="Frame rate of the output frames."),
            ],
        )

    @classmethod
    def validate_inputs(cls, mode, engine, rife_model, device, flow_detail) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo values against their options, so the node does
        for name, value, options in (("mode", mode, MODES), ("engine", engine, ENGINES),
                                     ("flow_detail", flow_detail, FLOW_DETAIL)):
            if value is not None and value not in options:
                return f"unknown {name} {value!r}; choose one of {', '.join(options)}"
        if device is not None and (problem := device_problem(device, cached_device_count())):
            return problem
        if rife_model is not None and rife_model != NONE and rife_model not in rife_folders():
            roots = ", ".join(model_folders.folders(model_folders.RIFE))
            return f"RIFE model folder {rife_model!r} not found in {roots}"
        if engine == "rife" and rife_model == NONE:
            return "engine 'rife' needs a RIFE model folder (models/rife/<name>/flownet.param + flownet.bin)"
        return True

    @classmethod
    def execute(cls, images, mode, source_fps, target_fps, engine, rife_model, device,
                flow_detail) -> io.NodeOutput:
        frames = images.cpu().numpy()
        plan, fps = plan_frames(frames.shape[0], mode, source_fps, target_fps)
        used, model = choose_engine(engine, rife_folder_path(rife_model))
        progress = comfy.utils.ProgressBar(max(1, len(generated_jobs(plan))))
        if used == "rife":
            generated = interpolate_rife(frames, plan, model, resolve_gpuid(device), on_frame=lambda: progress.update(1))
        else:
            generated = interpolate_flow(frames, plan, flow_detail, on_frame=lambda: progress.update(1))
        return io.NodeOutput(torch.from_numpy(assemble(frames, plan, generated)), float(fps))
