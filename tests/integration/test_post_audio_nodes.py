"""Dialogue Speech and Dialogue over Music inside the real ComfyUI: saved by core SaveAudio, music from core
LoadAudio."""
import secrets

import numpy as np
import pytest

from shotline.core.audio_mix import integrated_loudness
from shotline.core.speech import BUNDLED_PIPER_VOICE, SpeechCache, cache_key
from shotline.core.video_encode import read_audio

from tests.images import write_wav

pytestmark = pytest.mark.integration


def write_music(path, seconds: float, sample_rate: int = 44100):
    """A stereo 16-bit chord, as a user would upload a music bed."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    write_wav(path, np.stack([0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 277.2 * t),
                              0.2 * np.sin(2 * np.pi * 329.6 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)]), sample_rate)


def saved_audio(entry: dict, node: str, output_dir) -> tuple[np.ndarray, int]:
    [saved] = entry["outputs"][node]["audio"]
    path = output_dir / saved["subfolder"] / saved["filename"]
    assert path.is_file() and path.stat().st_size > 1000
    samples, rate = read_audio(path)
    assert samples is not None, f"{path} holds no audio"
    return samples, rate


def speech_node(text: str, engine: str = "piper", piper_voice: str = BUNDLED_PIPER_VOICE) -> dict:
    return {"class_type": "ShotlineDialogueSpeech", "inputs": {
        "text": text, "engine": engine, "edge_tts_voice": "en-US-AriaNeural", "piper_voice": piper_voice,
        "espeak_voice": "en-us", "rate": 1.0}}


@pytest.fixture
def fresh_line(settings):
    """A line no earlier run has spoken, removed from the server's speech cache afterwards."""
    text = f"Meet me at the old lighthouse, gate {secrets.randbelow(10 ** 6)}."
    yield text
    cache = SpeechCache(settings.comfyui_dir / "user" / "shotline" / "speech_cache")
    cache.path(cache_key("piper", BUNDLED_PIPER_VOICE, text, 1.0)).unlink(missing_ok=True)


def test_piper_speech_saved_and_mixed_over_looped_music(comfy, comfy_server, fresh_line):
    graph = {"1": speech_node(fresh_line),
             "2": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": "dialogue/line"}},
             "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [spoken] = entry["outputs"]["1"]["shotline_speech"]
    assert spoken["engine"] == "piper" and spoken["voice"] == BUNDLED_PIPER_VOICE and spoken["cached"] is False
    assert entry["outputs"]["1"]["text"][0].startswith(f"piper ({BUNDLED_PIPER_VOICE})")
    assert entry["outputs"]["3"]["text"] == ["piper"]
    speech, rate = saved_audio(entry, "2", comfy_server.output_dir)
    assert rate == 22050 and speech.shape[0] == 1
    assert speech.shape[1] / rate == pytest.approx(spoken["duration_s"], abs=0.01)
    assert 20 * np.log10(np.sqrt(np.mean(np.square(speech))) + 1e-12) > -35  # audible speech, not silence

    write_music(comfy_server.input_dir / "bed.wav", 1.5)  # shorter than the line: looped
    graph |= {"4": {"class_type": "LoadAudio", "inputs": {"audio": "bed.wav"}},
              "5": {"class_type": "ShotlineDuckAndMix", "inputs": {
                  "dialogue": ["1", 0], "music": ["4", 0], "duck_db": 12.0, "music_gain_db": -6.0,
                  "attack_ms": 20.0, "release_ms": 250.0, "threshold_db": -40.0, "normalise": True,
                  "target_lufs": -16.0}},
              "6": {"class_type": "SaveAudio", "inputs": {"audio": ["5", 0], "filename_prefix": "dialogue/mix"}}}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [report] = entry["outputs"]["5"]["shotline_mix"]
    assert report["sample_rate"] == 44100 and report["channels"] == 2 and report["music_looped"] is True
    mix, rate = saved_audio(entry, "6", comfy_server.output_dir)
    assert rate == 44100 and mix.shape[0] == 2
    assert mix.shape[1] / rate == pytest.approx(spoken["duration_s"], abs=0.01)
    assert integrated_loudness(mix, rate) == pytest.approx(-16.0, abs=1.0)
    assert report["loudness_lufs"][0] == pytest.approx(-16.0, abs=0.1)


def test_missing_piper_voice_names_the_file_and_folder(comfy):
    graph = {"1": speech_node("Hello.", piper_voice="en_GB-nobody-medium"),
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert "en_GB-nobody-medium.onnx" in error["exception_message"]
    assert "models/piper_voices/" in error["exception_message"]
