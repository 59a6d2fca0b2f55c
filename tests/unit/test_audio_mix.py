"""Dialogue over music: the music dips under real speech, loudness lands on target (checked against ffmpeg's
ebur128), resampling and channel matching."""
import av
import numpy as np
import pytest

from shotline.core.audio_mix import (duck_music, ducking_gain_db, integrated_loudness, loop_to_length,
                                     match_channels, mix_dialogue_over_music, normalise_loudness, resample)
from shotline.core.speech import speak

RATE = 48000


def ebur128_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness by ffmpeg's own ebur128 filter (through PyAV): an independent meter."""
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    graph = av.filter.Graph()
    source = graph.add_abuffer(format="fltp", sample_rate=sample_rate, layout=layout)
    meter = graph.add("ebur128", "metadata=1")
    convert = graph.add("aformat", f"sample_fmts=fltp:channel_layouts={layout}")
    sink = graph.add("abuffersink")
    source.link_to(meter)
    meter.link_to(convert)
    convert.link_to(sink)
    graph.configure()
    hop, value = sample_rate // 10, None
    for start in range(0, audio.shape[1], hop):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + hop], dtype=np.float32),
                                           format="fltp", layout=layout)
        frame.sample_rate, frame.pts = sample_rate, start
        graph.push(frame)
    graph.push(None)
    while True:
        try:
            value = float(graph.pull().metadata.get("lavfi.r128.I", value))
        except (av.BlockingIOError, av.EOFError):
            return value


def rms_db(audio) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-20))


@pytest.fixture(scope="module")
def line() -> np.ndarray:
    """A real spoken line (espeak-ng), mono at 48 kHz."""
    speech = speak("Meet me at the old lighthouse when the tide goes out.", "espeak-ng")
    return resample(speech.waveform, speech.sample_rate, RATE)


def music_bed(seconds: float, channels: int = 2, rate: int = RATE) -> np.ndarray:
    """Two chords' worth of sines and a little noise: steady, so any change in its level is the ducking's."""
    t = np.arange(round(seconds * rate)) / rate
    noise = 0.02 * np.random.default_rng(7).standard_normal((2, t.size))
    left = 0.15 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 277.2 * t)
    right = 0.15 * np.sin(2 * np.pi * 329.6 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
    return (np.stack([left, right]) + noise)[:channels].astype(np.float32)


def test_ducking_lowers_the_music_under_speech(line):
    starts = [1.0, 6.0, 11.0]
    length = round(15 * RATE)
    dialogue = np.zeros((1, length), np.float32)
    for start in starts:
        dialogue[:, round(start * RATE):round(start * RATE) + line.shape[1]] = line
    music = music_bed(15)
    ducked = duck_music(music, dialogue, RATE, duck_db=12.0, attack_ms=20.0, release_ms=250.0)

    speaking = np.zeros(length, bool)
    quiet = np.zeros(length, bool)
    spoken = line.shape[1] / RATE
    for start in starts:  # speech: from 0.1 s after it starts to its end; quiet: from 1 s after it ends
        speaking[round((start + 0.1) * RATE):round((start + spoken) * RATE)] = True
        quiet[round((start + spoken + 1.0) * RATE):round((start + 4.9) * RATE)] = True
    before = rms_db(music[:, speaking]) - rms_db(music[:, quiet])
    after = rms_db(ducked[:, speaking]) - rms_db(ducked[:, quiet])
    dip = before - after
    print(f"\nmusic under speech vs in the pauses: before {before:+.2f} dB, after ducking {after:+.2f} dB "
          f"(dip {dip:.2f} dB for duck_db 12, speech {spoken:.2f} s x3)")
    assert abs(before) < 0.5
    assert dip >= 6.0
    assert dip <= 12.0 + 0.1  # never deeper than asked
    gain = ducking_gain_db(dialogue, RATE, length, duck_db=12.0, attack_ms=20.0, release_ms=250.0)
    assert gain[quiet].min() > -0.5   # the pauses come back to (nearly) full level


def test_ducking_depth_is_bounded_and_times_follow_attack_and_release():
    length = 4 * RATE
    burst = np.zeros((1, length), np.float32)
    burst[:, RATE:2 * RATE] = np.random.default_rng(1).uniform(-1, 1, RATE)   # very loud speech: 0 dBFS peaks
    gain = ducking_gain_db(burst, RATE, length, duck_db=10.0, attack_ms=20.0, release_ms=250.0)
    assert gain.min() == pytest.approx(-10.0, abs=1e-6) and gain.max() <= 0.0
    at = lambda seconds: gain[round(seconds * RATE)]  # noqa: E731
    assert at(0.99) == 0.0
    assert at(1.0 + 3 * 0.020 + 0.010) < -9.0         # three attack time constants in: 95 % down
    assert at(2.0 + 0.090) == pytest.approx(-10.0, abs=0.05)   # held through a 100 ms pause
    assert -5.0 < at(2.0 + 0.1 + 0.25 + 0.005) < -2.5  # one release time constant after the hold: 63 % back
    assert at(3.9) > -0.01
    silent = duck_music(music_bed(1), np.zeros((1, RATE), np.float32), RATE)
    assert np.array_equal(silent, music_bed(1))        # no speech, no change


@pytest.mark.parametrize("channels", [1, 2])
def test_loudness_meter_agrees_with_ffmpeg_ebur128(line, channels):
    t = np.arange(3 * RATE) / RATE
    sine = np.repeat((0.1 * np.sin(2 * np.pi * 1000 * t))[None], channels, axis=0).astype(np.float32)
    speech = match_channels(np.pad(line, ((0, 0), (RATE // 2, RATE // 2))), channels)
    mix = mix_dialogue_over_music(line, music_bed(5, channels), RATE, target_lufs=None)
    for name, audio in (("1 kHz sine", sine), ("speech with pauses", speech), ("mix", mix)):
        ours, ffmpeg = integrated_loudness(audio, RATE), ebur128_lufs(audio, RATE)
        print(f"\n{channels} ch {name}: ours {ours:.2f} LUFS, ffmpeg ebur128 {ffmpeg:.2f} LUFS")
        assert ours == pytest.approx(ffmpeg, abs=0.2)
    expected_sine = -23.01 + 10 * np.log10(channels)   # -3.01 dB for a full-scale sine; K-weighting at 1 kHz ~ 0
    assert integrated_loudness(sine, RATE) == pytest.approx(expected_sine, abs=0.05)


@pytest.mark.parametrize("target", [-23.0, -16.0, -14.0])
def test_normalised_loudness_lands_on_target(line, target):
    for name, audio in (("speech", line), ("music", music_bed(6)), ("mix", mix_dialogue_over_music(
            line, music_bed(6), RATE, target_lufs=None))):
        out = normalise_loudness(audio, RATE, target)
        ours, ffmpeg = integrated_loudness(out, RATE), ebur128_lufs(out, RATE)
        print(f"\n{name} -> {target} LUFS: ours {ours:.2f}, ffmpeg {ffmpeg:.2f}, peak "
              f"{20 * np.log10(np.abs(out).max()):.2f} dBFS")
        assert ours == pytest.approx(target, abs=1.0) and ffmpeg == pytest.approx(target, abs=1.0)
        assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
        assert out.shape == audio.shape and out.dtype == np.float32
    silence = np.zeros((2, RATE), np.float32)
    assert np.array_equal(normalise_loudness(silence, RATE, target), silence)


def test_mix_loops_short_music_and_pads_short_dialogue(line):
    short_music = music_bed(1.0)
    mix = mix_dialogue_over_music(line, short_music, RATE, duck_db=0.0, music_gain_db=0.0, target_lufs=None)
    assert mix.shape == (2, line.shape[1])   # as long as the dialogue, stereo like the music
    looped = loop_to_length(short_music, line.shape[1], RATE)
    assert np.allclose(mix, match_channels(line, 2) + looped, atol=1e-6)
    # the loop repeats the music (a 20 ms crossfade at each seam) without a click at the seam
    fade = round(0.020 * RATE)
    assert np.allclose(looped[:, RATE + 200:RATE + 1000], short_music[:, fade + 200:fade + 1000])
    assert np.abs(np.diff(looped, axis=1)).max() <= np.abs(np.diff(short_music, axis=1)).max() * 1.5

    long_music = music_bed(line.shape[1] / RATE + 4.0)
    mix = mix_dialogue_over_music(line, long_music, RATE, target_lufs=None)
    assert mix.shape == long_music.shape
    # after the dialogue: the music alone, at music_gain_db, its ducking long released
    assert np.allclose(mix[:, -RATE:], long_music[:, -RATE:] * 10 ** (-6 / 20), rtol=1e-3, atol=1e-6)


def test_mix_normalises_to_the_target(line):
    mix = mix_dialogue_over_music(line, music_bed(3), RATE, target_lufs=-16.0)
    assert integrated_loudness(mix, RATE) == pytest.approx(-16.0, abs=0.5)


def test_resample_keeps_pitch_level_and_length():
    t = np.arange(44100) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t))[None].astype(np.float32)
    for rate in (48000, 22050, 16000):
        out = resample(tone, 44100, rate)
        assert out.dtype == np.float32 and out.shape == (1, rate)
        spectrum = np.abs(np.fft.rfft(out[0] * np.hanning(rate)))
        assert np.argmax(spectrum) == pytest.approx(1000, abs=1)  # one second of samples: 1 Hz per bin
        middle = slice(rate // 10, -rate // 10)
        assert rms_db(out[:, middle]) == pytest.approx(rms_db(tone), abs=0.05)
    assert np.array_equal(resample(tone, 44100, 44100), tone)
    with pytest.raises(ValueError, match="sample rates"):
        resample(tone, 0, 48000)


def test_match_channels():
    mono = np.arange(6, dtype=np.float32)[None]
    stereo = np.stack([mono[0], -mono[0] * 3])
    assert np.array_equal(match_channels(mono, 2), np.stack([mono[0], mono[0]]))
    assert np.array_equal(match_channels(stereo, 1), (stereo.mean(axis=0))[None])
    assert np.array_equal(match_channels(stereo, 4), stereo[[0, 1, 0, 1]])
    surround = np.arange(6, dtype=np.float32)[:, None] * np.ones((6, 3), np.float32)
    assert np.array_equal(match_channels(surround, 2)[:, 0], [(0 + 2 + 4) / 3, (1 + 3 + 5) / 3])
    assert np.array_equal(match_channels(stereo, 2), stereo)
    with pytest.raises(ValueError, match="at least 1"):
        match_channels(stereo, 0)


def test_different_rates_and_channels_mix_after_matching(line):
    speech = speak("A second line.", "espeak-ng")                      # mono, 22050 Hz
    music = music_bed(2.0, channels=2, rate=44100)                      # stereo, 44100 Hz
    voice = match_channels(resample(speech.waveform, speech.sample_rate, 44100), 2)
    mix = mix_dialogue_over_music(voice, music, 44100)
    assert mix.shape == (2, max(voice.shape[1], music.shape[1]))
    assert integrated_loudness(mix, 44100) == pytest.approx(-16.0, abs=1.0)
    with pytest.raises(ValueError, match="channels, samples"):
        mix_dialogue_over_music(np.zeros((1, 2, 3)), music, 44100)
