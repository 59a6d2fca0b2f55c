"""ShotQualityScore: sharpness, contrast, exposure and resolution verdict for an IMAGE batch."""
import comfy.utils
from comfy_api.latest import io

from .check_outputs import check_outputs, verdict_output
from .core.image_quality import QualityThresholds, assess_batch

DEFAULTS = QualityThresholds()


class ShotQualityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotQualityScore",
            display_name="Shot Quality Score",
            category="Shotline/checks",
            description="Scores each image of the batch for sharpness, contrast, exposure clipping, noise and "
                        "resolution. "
                        "A failing image gives a verdict with reasons; the node never stops the graph.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image"),
                io.Float.Input("min_sharpness", default=DEFAULTS.min_sharpness, min=0.1, max=10000.0, step=1.0,
                               tooltip="Minimum Laplacian variance (0-255 grey levels), measured on a copy "
                                       "resampled to 512x512 pixels so that frames of any size compare."),
                io.Float.Input("min_contrast", default=DEFAULTS.min_contrast, min=0.001, max=1.0, step=0.005,
                               tooltip="Minimum RMS contrast: standard deviation of luma in 0..1."),
                io.Float.Input("max_clipped", default=DEFAULTS.max_clipped, min=0.001, max=1.0, step=0.01,
                               tooltip="Largest share of pixels crushed to black, or blown to white, allowed."),
                io.Int.Input("min_side", default=DEFAULTS.min_side, min=1, max=16384, step=8,
                             tooltip="Shortest side in pixels an image must have."),
                io.Float.Input("max_noise", default=DEFAULTS.max_noise, min=0.1, max=255.0, step=0.5, optional=True,
                               tooltip="Largest noise σ (0-255 grey levels, Immerkær's estimate) allowed: noise "
                                       "raises the sharpness measure, so it is checked on its own."),
            ],
            outputs=check_outputs(score_tooltip="0..1; the worst image's score for a batch."),
        )

    @classmethod
    def execute(cls, image, min_sharpness, min_contrast, max_clipped, min_side,
                max_noise=DEFAULTS.max_noise) -> io.NodeOutput:
        thresholds = QualityThresholds(min_sharpness, min_contrast, max_clipped, min_side, max_noise)
        progress = comfy.utils.ProgressBar(image.shape[0])
        verdict = assess_batch(image.cpu().numpy(), thresholds, on_image=lambda: progress.update(1))
        return verdict_output(image, verdict, cls=cls)
