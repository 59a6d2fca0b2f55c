"""Colour Grade: one grade for a whole shot (no flicker), with an optional colour match to a reference frame."""
import comfy.utils
import torch
from comfy_api.latest import io

from .core.color_grade import GradeSettings, grade_frames

DEFAULTS = GradeSettings()


class ColorGrade(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineColorGrade",
            display_name="Colour Grade",
            category="Shotline/video",
            description="Exposure, contrast, saturation and gamma, plus an optional match of the colours to a "
                        "reference (Reinhard transfer in Lab). The same mapping is applied to every frame, with "
                        "statistics measured once over the whole batch, so a shot does not flicker.",
            inputs=[
                io.Image.Input("images", tooltip="The frames of one shot."),
                io.Image.Input("reference", optional=True,
                               tooltip="A frame (or frames) whose colour mood the shot should take on, e.g. a "
                                       "keyframe of the first shot of the scene."),
                io.Float.Input("match_strength", default=DEFAULTS.match_strength, min=0.0, max=1.0, step=0.05,
                               tooltip="How far to move the shot's Lab mean and spread to the reference's "
                                       "(0 off, 1 full). Used only with a reference."),
                io.Float.Input("exposure", default=DEFAULTS.exposure, min=-4.0, max=4.0, step=0.05,
                               tooltip="Stops: +1 doubles the light, -1 halves it."),
                io.Float.Input("contrast", default=DEFAULTS.contrast, min=0.0, max=3.0, step=0.01,
                               tooltip="Stretch around mid-grey: 1 unchanged, above 1 more contrast."),
                io.Float.Input("saturation", default=DEFAULTS.saturation, min=0.0, max=3.0, step=0.01,
                               tooltip="1 unchanged, 0 black and white, above 1 more colourful."),
                io.Float.Input("gamma", default=DEFAULTS.gamma, min=0.1, max=5.0, step=0.01,
                               tooltip="Mid-tones: 1 unchanged, above 1 brighter, below 1 darker; black and white "
                                       "stay put."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, images, match_strength, exposure, contrast, saturation, gamma, reference=None) -> io.NodeOutput:
        settings = GradeSettings(exposure=exposure, contrast=contrast, saturation=saturation, gamma=gamma,
                                 match_strength=match_strength)
        progress = comfy.utils.ProgressBar(images.shape[0])
        graded = grade_frames(images[..., :3].cpu().numpy(), settings,
                              None if reference is None else reference[..., :3].cpu().numpy(),
                              on_frame=lambda: progress.update(1))
        return io.NodeOutput(torch.from_numpy(graded))
