"""Last Frame: the final frame of a shot as an IMAGE, to start the next shot from it (continuity)."""
import torch
from comfy_api.latest import Input, InputImpl, io
from comfy_execution.validation import validate_node_input

from .core.video_encode import read_last_frames


class LastFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineLastFrame",
            display_name="Last Frame",
            category="Shotline/video",
            description="The last frame (or the one offset_from_end before it) of a frame batch or of a video, as "
                        "a one-image batch. Give exactly one of images or video.",
            inputs=[
                io.Image.Input("images", optional=True, tooltip="A frame batch, e.g. a decoded shot."),
                io.Video.Input("video", optional=True, tooltip="A video, e.g. from Load Video or Save MP4."),
                io.Int.Input("offset_from_end", default=0, min=0, max=100000, step=1,
                             tooltip="0 is the last frame, 1 the one before it, and so on."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def validate_inputs(cls, input_types) -> bool | str:
        # input_types holds the types of the linked inputs; asking for it turns off ComfyUI's own type check of
        # links, so it is done here too
        linked = {name: input_types[name] for name in ("images", "video") if name in input_types}
        if len(linked) != 1:
            return ("connect exactly one of images or video (got "
                    + (" and ".join(linked) if linked else "neither") + ")")
        [(name, received)] = linked.items()
        expected = io.Image.io_type if name == "images" else io.Video.io_type
        if not validate_node_input(received, expected):
            return f"{name} must be {expected}, got {received}"
        return True

    @classmethod
    def execute(cls, offset_from_end: int, images=None, video: Input.Video | None = None) -> io.NodeOutput:
        if (images is None) == (video is None):
            raise ValueError("Last Frame needs exactly one input: connect either images or video, not "
                             + ("both" if images is not None else "neither"))
        if video is not None and isinstance(video, InputImpl.VideoFromFile):
            # decode as a stream, keeping only the frames needed, instead of the whole file as tensors
            frames = read_last_frames(video.get_stream_source(), offset_from_end + 1)
            images = torch.from_numpy(frames).float() / 255.0
        elif video is not None:
            images = video.get_components().images
        count = images.shape[0]
        if offset_from_end >= count:
            raise ValueError(f"offset_from_end {offset_from_end} is past the start of a {count}-frame shot")
        index = count - 1 - offset_from_end
        return io.NodeOutput(images[index:index + 1].clone())
