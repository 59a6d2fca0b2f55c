"""Dialogue over Music (ducking): the music dips under the speech, the mix is normalised to a loudness target.

The ducking, loudness measure and limiter are in core/audio_mix.py. Inputs of different sample rates are mixed
at the higher rate; the mix has the larger channel count of the two.
"""
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io

from .core.audio_mix import integrated_loudness, match_channels, mix_dialogue_over_music, resample

MIX_UI_KEY = "shotline_mix"


def audio_batch(audio: dict, name: str) -> tuple[np.ndarray, int]:
    """AUDIO's waveform as float32 numpy [B, C, S] and its sample rate."""
    waveform = audio["waveform"]
    if waveform.ndim != 3 or waveform.shape[-1] == 0:
        raise ValueError(f"{name} audio is empty or not [batch, channels, samples] (shape "
                         f"{tuple(waveform.shape)})")
    return waveform.detach().cpu().float().numpy(), int(audio["sample_rate"])


def finite_or_none(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None   # -inf (silence) is not valid JSON for /history


class DuckAndMix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineDuckAndMix",
            display_name="Dialogue over Music (ducking)",
            category="Shotline/audio",
            description="Mixes dialogue over music: the music is turned down while the dialogue speaks and comes "
                        "back in the pauses, and the mix is normalised to an integrated loudness (EBU R128 / ITU-R "
                        "BS.1770). Music shorter than the dialogue is looped; the mix is as long as the longer "
                        "input.",
            inputs=[
                io.Audio.Input("dialogue", tooltip="The speech, e.g. from Dialogue Speech."),
                io.Audio.Input("music", tooltip="The music bed, e.g. from Load Audio. Looped if shorter."),
                io.Float.Input("duck_db", default=12.0, min=0.0, max=60.0, step=0.5,
                               tooltip="How far the music dips while the dialogue speaks, in dB."),
                io.Float.Input("music_gain_db", default=-6.0, min=-60.0, max=12.0, step=0.5,
                               tooltip="Level of the music against the dialogue before ducking, in dB."),
                io.Float.Input("attack_ms", default=20.0, min=0.0, max=2000.0, step=1.0,
                               tooltip="How fast the music goes down when speech starts (time constant, ms)."),
                io.Float.Input("release_ms", default=250.0, min=0.0, max=10000.0, step=10.0,
                               tooltip="How fast the music comes back after speech stops (time constant, ms)."),
                io.Float.Input("threshold_db", default=-40.0, min=-90.0, max=0.0, step=1.0,
                               tooltip="Dialogue level (dBFS RMS) above which it counts as speech; the music is "
                                       "fully down 6 dB above it."),
                io.Boolean.Input("normalise", default=True,
                                 tooltip="Normalise the mix to target_lufs. Off: the levels are left as mixed."),
                io.Float.Input("target_lufs", default=-16.0, min=-40.0, max=-5.0, step=0.5,
                               tooltip="Integrated loudness of the mix in LUFS: -16 for web and podcasts, -14 "
                                       "for streaming platforms, -23 for EBU R128 broadcast. Sample peaks stay "
                                       "below -1 dBFS."),
            ],
            outputs=[io.Audio.Output(display_name="audio", tooltip="The mix, at the higher of the two sample "
                                                                   "rates.")],
        )

    @classmethod
    def execute(cls, dialogue, music, duck_db, music_gain_db, attack_ms, release_ms, threshold_db, normalise,
                target_lufs) -> io.NodeOutput:
        speech, speech_rate = audio_batch(dialogue, "dialogue")
        bed, bed_rate = audio_batch(music, "music")
        if bed.shape[0] not in (1, speech.shape[0]):
            raise ValueError(f"music batch of {bed.shape[0]} does not match the dialogue batch of "
                             f"{speech.shape[0]}: give one music clip, or one per dialogue clip")
        rate = max(speech_rate, bed_rate)
        channels = max(speech.shape[1], bed.shape[1])
        progress = comfy.utils.ProgressBar(speech.shape[0])
        mixes = []
        for index, line in enumerate(speech):
            voice = match_channels(resample(line, speech_rate, rate), channels)
            backing = match_channels(resample(bed[min(index, bed.shape[0] - 1)], bed_rate, rate), channels)
            mixes.append(mix_dialogue_over_music(voice, backing, rate, duck_db, music_gain_db,
                                                 target_lufs if normalise else None, attack_ms=attack_ms,
                                                 release_ms=release_ms, threshold_db=threshold_db))
            progress.update(1)
        length = max(mix.shape[1] for mix in mixes)  # equal unless resampling rounded one item differently
        waveform = np.stack([np.pad(mix, ((0, 0), (0, length - mix.shape[1]))) for mix in mixes])
        report = {"sample_rate": rate, "channels": channels, "duration_s": round(length / rate, 3),
                  "loudness_lufs": [finite_or_none(integrated_loudness(mix, rate)) for mix in mixes],
                  "music_looped": bool(bed.shape[2] / bed_rate < speech.shape[2] / speech_rate)}
        text = (f"{report['duration_s']:.2f} s, {rate} Hz, {channels} ch, loudness "
                + ", ".join("silent" if value is None else f"{value:.1f} LUFS" for value in report["loudness_lufs"])
                + (", music looped" if report["music_looped"] else ""))
        return io.NodeOutput({"waveform": torch.from_numpy(waveform), "sample_rate": rate},
                             ui={"text": [text], MIX_UI_KEY: [report]})
