"""Save MP4 (H.264 + AAC): core SaveVideo with the quality controls it lacks (CRF, x264 preset), a streaming-
friendly file (+faststart), and what the file probes as in the ui output, where the controller reads it."""
import os

import comfy.utils
import folder_paths
from comfy.cli_args import args
from comfy_api.latest import Input, InputImpl, io, ui

from .core.video_encode import PRESETS, Mp4Writer, probe_media, to_uint8_rgb

MEDIA_UI_KEY = "shotline_media"


class SaveMP4(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineSaveMP4",
            display_name="Save MP4 (H.264 + AAC)",
            category="Shotline/video",
            description="Encodes a video (e.g. from core Create Video) as H.264 + AAC MP4 into the output folder, "
                        "with a chosen quality. Width and height must be even.",
            is_output_node=True,
            inputs=[
                io.Video.Input("video", tooltip="Frames, frame rate and optional audio, e.g. from Create Video."),
                io.String.Input("filename_prefix", default="video/Shotline",
                                tooltip="Prefix inside the output folder; may hold a subfolder and %date:...% or "
                                        "%width%/%height% like core Save Video."),
                io.Int.Input("crf", default=18, min=0, max=51, step=1,
                             tooltip="x264 constant quality: lower is better and bigger. 0 lossless, 18 visually "
                                     "lossless, 23 x264's default, 28 small."),
                io.Combo.Input("preset", options=list(PRESETS), default="medium",
                               tooltip="x264 speed/size trade-off: slower presets give smaller files at the same "
                                       "quality."),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The saved MP4, to chain further."),
                io.String.Output(display_name="path", tooltip="Full path of the saved file."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, video: Input.Video, filename_prefix: str, crf: int, preset: str) -> io.NodeOutput:
        components = video.get_components()
        images, audio = components.images, components.audio
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"the video has no frames (images of shape {list(images.shape)})")
        height, width = int(images.shape[1]), int(images.shape[2])
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, output_dir, width, height)
        file = f"{filename}_{counter:05}_.mp4"
        path = os.path.join(folder, file)

        waveform = sample_rate = None
        if audio is not None:
            waveform, sample_rate = audio["waveform"], int(audio["sample_rate"])
            if waveform.ndim != 3 or waveform.shape[0] != 1 or waveform.shape[1] not in (1, 2):
                raise ValueError(f"audio must be one mono or stereo clip [1, 1|2, samples], got "
                                 f"{list(waveform.shape)}; mix it down first")
            waveform = waveform[0].float().cpu().numpy()

        metadata = None
        if not args.disable_metadata:
            metadata = {"prompt": cls.hidden.prompt} if cls.hidden.prompt is not None else {}
            metadata.update(cls.hidden.extra_pnginfo or {})
        progress = comfy.utils.ProgressBar(images.shape[0])
        with Mp4Writer(path, width, height, components.frame_rate, crf=crf, preset=preset,
                       sample_rate=sample_rate, audio_channels=waveform.shape[0] if waveform is not None else 2,
                       metadata=metadata or None) as writer:
            for frame in images:
                writer.write_frames(to_uint8_rgb(frame.cpu().numpy()))
                progress.update(1)
            if waveform is not None:
                writer.write_audio(waveform)

        info = {**probe_media(path).as_dict(), "filename": file, "subfolder": subfolder, "type": "output"}
        saved = ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]).as_dict()
        return io.NodeOutput(InputImpl.VideoFromFile(path), path, ui={**saved, MEDIA_UI_KEY: [info]})
