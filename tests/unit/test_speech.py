"""Dialogue speech: each offline engine really speaks, the disk cache, edge-tts falling back, missing engines named."""
import os
import time

import numpy as np
import pytest

from shotline.core import speech as speech_module
from shotline.core.models import ModelMissingError
from shotline.core.speech import (BUNDLED_PIPER_VOICE, SpeechCache, SpeechEngineError, cache_key, piper_voice_files,
                                  speak)

LINE = "The quick brown fox jumps over the lazy dog."
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # nothing listens there: edge-tts fails at once, as it does offline


@pytest.fixture(autouse=True)
def no_remembered_edge_failure(monkeypatch):
    """Each test starts with no memory of an earlier edge-tts failure (which makes "auto" skip it for a while)."""
    monkeypatch.setattr(speech_module, "_edge_failures", {})


def rms_db(waveform) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))) + 1e-12))


def assert_spoken(speech, words: int):
    assert speech.waveform.dtype == np.float32 and speech.waveform.ndim == 2 and speech.waveform.shape[0] == 1
    assert np.isfinite(speech.waveform).all()
    assert rms_db(speech.waveform) > -35, f"speech is nearly silent: {rms_db(speech.waveform):.1f} dBFS"
    words_per_second = words / speech.duration_s
    assert 1.0 < words_per_second < 6.0, f"{speech.duration_s:.2f} s for {words} words is no speech"
    # speech has pauses: its loudest and quietest 20 ms windows differ a lot
    hop = speech.sample_rate // 50
    windows = speech.waveform[0, :speech.waveform.shape[1] // hop * hop].reshape(-1, hop)
    levels = np.sqrt(np.mean(np.square(windows), axis=1))
    assert 20 * np.log10(levels.max() / (np.percentile(levels, 5) + 1e-9)) > 20


def voice_folder(tmp_path, name="en_US-test-medium"):
    """A user's models/piper_voices folder holding the bundled voice under another name (linked, not copied)."""
    folder = tmp_path / "piper_voices"
    folder.mkdir()
    model, config = piper_voice_files(BUNDLED_PIPER_VOICE)
    (folder / f"{name}.onnx").symlink_to(model)
    (folder / f"{name}.onnx.json").symlink_to(config)
    return folder


def test_espeak_speaks(tmp_path):
    speech = speak(LINE, "espeak-ng", cache_dir=tmp_path)
    assert (speech.engine, speech.voice, speech.cached) == ("espeak-ng", "en-us", False)
    assert speech.sample_rate == 22050
    assert_spoken(speech, 9)


def test_bundled_piper_voice_speaks():
    speech = speak(LINE + " And then it runs away!", "piper")
    assert (speech.engine, speech.voice) == ("piper", BUNDLED_PIPER_VOICE)
    assert speech.sample_rate == 22050
    assert_spoken(speech, 14)


def test_rate_changes_the_speed_and_is_part_of_the_cache_key(tmp_path):
    normal = speak(LINE, "espeak-ng", cache_dir=tmp_path)
    fast = speak(LINE, "espeak-ng", rate=1.6, cache_dir=tmp_path)
    assert not fast.cached
    assert 1.3 < normal.duration_s / fast.duration_s < 2.0
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_cache_hit_returns_the_same_audio_without_the_engine(tmp_path, monkeypatch):
    first = speak(LINE, "espeak-ng", cache_dir=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng any more: only the cache can answer
    second = speak(LINE, "espeak-ng", cache_dir=tmp_path)
    assert second.cached and not first.cached
    assert np.array_equal(first.waveform, second.waveform) and second.sample_rate == first.sample_rate
    with pytest.raises(SpeechEngineError, match="espeak-ng is not installed"):
        speak("A line that was never spoken.", "espeak-ng", cache_dir=tmp_path)


def test_user_piper_voice_speaks_and_replays_from_the_cache_after_it_is_gone(tmp_path):
    folder = voice_folder(tmp_path)
    cache = tmp_path / "cache"
    voices = {"piper": "en_US-test-medium"}
    first = speak("Hello from a voice of my own.", "piper", voices, cache_dir=cache, piper_voice_dirs=[folder])
    assert (first.engine, first.voice, first.cached) == ("piper", "en_US-test-medium", False)
    assert_spoken(first, 6)
    for file in folder.iterdir():
        file.unlink()
    started = time.perf_counter()
    second = speak("Hello from a voice of my own.", "piper", voices, cache_dir=cache, piper_voice_dirs=[folder])
    print(f"\npiper: spoken in {first.seconds:.2f} s, cache hit in {time.perf_counter() - started:.4f} s")
    assert second.cached and np.array_equal(first.waveform, second.waveform)


def test_edge_tts_unreachable_falls_back_and_leaves_no_file_behind(tmp_path):
    started = time.perf_counter()
    speech = speak(LINE, "auto", cache_dir=tmp_path, edge_proxy=CLOSED_PORT_PROXY)
    elapsed = time.perf_counter() - started
    assert speech.engine == "piper" and not speech.cached
    assert_spoken(speech, 9)
    [reason] = speech.fallbacks
    assert reason.startswith("edge-tts could not get speech") and "ClientProxyConnectionError" in reason
    # the cache folder holds exactly one complete entry: the piper line; nothing empty, no temp files
    files = sorted(tmp_path.iterdir())
    assert [file.name for file in files] == [f"{cache_key('piper', BUNDLED_PIPER_VOICE, LINE, 1.0)}.npz"]
    assert all(file.stat().st_size > 1000 for file in files)
    # the next line does not knock on the network again for a while
    again = speak("Another line.", "auto", cache_dir=tmp_path, edge_proxy=CLOSED_PORT_PROXY)
    assert again.engine == "piper" and again.fallbacks[0].startswith("edge-tts: skipped, it failed")
    print(f"\nauto with edge-tts unreachable: piper spoke in {elapsed:.2f} s")


def test_edge_tts_speaks_online_or_says_it_needs_internet(tmp_path):
    try:
        speech = speak(LINE, "edge-tts", cache_dir=tmp_path)
    except SpeechEngineError as error:  # offline, as CI machines are
        assert "needs internet" in str(error)
        assert list(tmp_path.iterdir()) == []
    else:
        assert speech.engine == "edge-tts" and speech.voice == "en-US-AriaNeural"
        assert_spoken(speech, 9)


def test_forced_missing_engines_name_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(ModelMissingError) as missing:
        speak(LINE, "piper", {"piper": "en_GB-nobody-medium"}, piper_voice_dirs=[tmp_path])
    message = str(missing.value)
    assert "en_GB-nobody-medium.onnx" in message and "models/piper_voices/" in message and ".onnx.json" in message

    (tmp_path / "half.onnx").write_bytes(b"a model without its config")
    with pytest.raises(ModelMissingError, match=r"half\.onnx\.json"):
        speak(LINE, "piper", {"piper": "half"}, piper_voice_dirs=[tmp_path])

    with pytest.raises(SpeechEngineError, match="espeak-ng could not speak with voice 'xx-nowhere'"):
        speak(LINE, "espeak-ng", {"espeak-ng": "xx-nowhere"})

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpeechEngineError) as no_binary:
        speak(LINE, "espeak-ng")
    assert "no `espeak-ng` program on PATH" in str(no_binary.value) and "apt-get install espeak-ng" in str(
        no_binary.value)


def test_a_broken_piper_voice_is_named_and_auto_falls_back(tmp_path):
    folder = voice_folder(tmp_path)
    (folder / "broken.onnx").write_bytes(b"not an onnx model")
    (folder / "broken.onnx.json").write_text((folder / "en_US-test-medium.onnx.json").read_text())
    with pytest.raises(SpeechEngineError, match=r"the Piper voice .*broken\.onnx does not load"):
        speak(LINE, "piper", {"piper": "broken"}, piper_voice_dirs=[folder])
    speech = speak(LINE, "auto", {"piper": "broken"}, piper_voice_dirs=[folder], edge_proxy=CLOSED_PORT_PROXY)
    assert speech.engine == "espeak-ng" and speech.fallbacks[1].startswith("piper: the Piper voice")


def test_auto_with_no_engine_left_lists_every_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SpeechEngineError) as caught:
        speak(LINE, "auto", {"piper": "en_GB-nobody-medium"}, piper_voice_dirs=[tmp_path],
              edge_proxy="http://127.0.0.1:10")
    message = str(caught.value)
    assert message.startswith("no speech engine could speak")
    assert "edge-tts could not" in message and "en_GB-nobody-medium.onnx" in message and "espeak-ng is not" in message


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="text is empty"):
        speak("   ", "espeak-ng")
    with pytest.raises(ValueError, match="unknown speech engine"):
        speak(LINE, "festival")
    with pytest.raises(ValueError, match="rate"):
        speak(LINE, "espeak-ng", rate=0)


def test_a_damaged_cache_entry_is_spoken_again_and_replaced(tmp_path):
    entry = SpeechCache(tmp_path).path(cache_key("espeak-ng", "en-us", LINE, 1.0))
    for damage in (b"", b"PK\x03\x04 cut short"):  # an empty file, a truncated one
        entry.write_bytes(damage)
        speech = speak(LINE, "espeak-ng", cache_dir=tmp_path)
        assert not speech.cached and entry.stat().st_size > 1000
    assert speak(LINE, "espeak-ng", cache_dir=tmp_path).cached
    assert [name for name in os.listdir(tmp_path) if not name.endswith(".npz")] == []
