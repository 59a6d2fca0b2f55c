"""Temporal Coherence: consecutive-frame SSIM and brightness flicker of a video shot's frames."""
from comfy_api.latest import io

from .check_outputs import check_outputs, verdict_output
from .core.temporal import TemporalThresholds, assess_frames

DEFAULTS = TemporalThresholds()


class TemporalCoherence(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineTemporalCoherence",
            display_name="Temporal Coherence",
            category="Shotline/checks",
            description="Scores a frame batch for stability (SSIM of consecutive frames) and flicker (jumps of mean "
                        "brightness). A failing shot gives a verdict with reasons; the node never stops the graph.",
            is_output_node=True,
            inputs=[
                io.Image.Input("frames"),
                io.Float.Input("min_ssim", default=DEFAULTS.min_ssim, min=0.01, max=1.0, step=0.01,
                               tooltip="Consecutive frames less alike than this are a cut or a collapse."),
                io.Float.Input("max_luma_jump", default=DEFAULTS.max_luma_jump, min=0.001, max=1.0, step=0.005,
                               tooltip="Largest change of mean brightness (0..1) between consecutive frames."),
            ],
            outputs=check_outputs(images="frames"),
        )

    @classmethod
    def execute(cls, frames, min_ssim, max_luma_jump) -> io.NodeOutput:
        result = assess_frames(frames.cpu().numpy(), TemporalThresholds(min_ssim=min_ssim, max_luma_jump=max_luma_jump))
        verdict = {"check": "temporal", **result.as_dict()}
        return verdict_output(frames, verdict, cls=cls)
