"""ShotQualityScore: sharpness, contrast, exposure, noise and resolution verdict for an IMAGE batch."""
import json

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
            display_name="Shot Quality Score (Shotline)",
            category="Shotline/checks",
            description="Scores each image of the batch for sharpness, contrast, exposure clipping, noise and "
                        "resolution. "
                        "A failing image gives a verdict with reasons; the node never stops the graph.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image"),
                io.Float.Input("min_sharpness", default=DEFAULTS.min_sharpness, min=0.1, max=10000.0, step=1.0,
                               tooltip="Minimum Laplacian variance (0-255 grey levels) of the subject: the faces "
                                       "Identity Check found when its verdict is connected, else the sharpest "
                                       "quarter of the frame; on a copy resampled to 512x512 pixels so that frames "
                                       "of any size compare."),
                io.Float.Input("min_contrast", default=DEFAULTS.min_contrast, min=0.001, max=1.0, step=0.005,
                               tooltip="Minimum RMS contrast: standard deviation of luma in 0..1."),
                io.Float.Input("max_clipped", default=DEFAULTS.max_clipped, min=0.001, max=1.0, step=0.01,
                               tooltip="Largest share of pixels crushed to black, or blown to white, allowed."),
                # step 1: the editor snaps an INT to min + k * step, and a shot's own size (e.g. 75 px) is kept
                io.Int.Input("min_side", default=DEFAULTS.min_side, min=1, max=16384, step=1,
                             tooltip="Shortest side in pixels an image must have. The controller sets it to the "
                                     "shot's own size unless the shot names min_side."),
                io.Float.Input("max_noise", default=DEFAULTS.max_noise, min=0.1, max=255.0, step=0.5, optional=True,
                               tooltip="Largest noise σ (0-255 grey levels, Immerkær's estimate) allowed: noise "
                                       "raises the sharpness measure, so it is checked on its own."),
                io.String.Input("identity_verdict", force_input=True, optional=True,
                                tooltip="Identity Check's verdict_json: sharpness is then measured on the faces "
                                        "it found, so a defocused background does not fail a sharp portrait. "
                                        "Without it, on the sharpest quarter of the frame."),
            ],
            outputs=check_outputs(score_tooltip="0..1; the worst image's score for a batch."),
        )

    @classmethod
    def execute(cls, image, min_sharpness, min_contrast, max_clipped, min_side,
                max_noise=DEFAULTS.max_noise, identity_verdict=None) -> io.NodeOutput:
        thresholds = QualityThresholds(min_sharpness, min_contrast, max_clipped, min_side, max_noise)
        progress = comfy.utils.ProgressBar(image.shape[0])
        verdict = assess_batch(image.cpu().numpy(), thresholds, on_image=lambda: progress.update(1),
                               faces=face_boxes(identity_verdict))
        return verdict_output(image, verdict, cls=cls)


def face_boxes(identity_verdict: str | None) -> list[list] | None:
    """Per frame, the face boxes of an identity verdict (Identity Check's verdict_json), or None."""
    if not identity_verdict:
        return None
    try:
        verdict = json.loads(identity_verdict)
    except json.JSONDecodeError:
        raise ValueError("identity_verdict is not JSON: connect Identity Check's verdict_json") from None
    frames = verdict.get("frames") if isinstance(verdict, dict) else None
    if not isinstance(frames, list):
        raise ValueError("identity_verdict has no frames: connect Identity Check's verdict_json")
    return [[face["box"] for face in frame.get("faces", []) if isinstance(face, dict) and "box" in face]
            for frame in frames]
