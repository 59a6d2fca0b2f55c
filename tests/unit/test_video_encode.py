"""MP4 writing and probing with PyAV: H.264 + AAC, exact timestamps (23.976 too), streaming writes, round trips."""
import json
from fractions import Fraction

import av
import numpy as np
import pytest

from shotline.core.video_encode import (MediaInfo, Mp4Writer, encode_mp4, frame_rate, probe_media, read_audio,
                                        read_last_frames, read_video, to_uint8_rgb)
from tests.images import t1_photo


def pan_frames(count: int, width: int = 128, height: int = 96) -> np.ndarray:
    """uint8 frames of a slow pan over t1.jpg (real content with motion)."""
    photo = to_uint8_rgb(t1_photo())
    return np.stack([photo[80:80 + height, 150 + 2 * i:150 + 2 * i + width] for i in range(count)])


def tone(seconds: float, sample_rate: int, channels: int = 2) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([left, 0.2 * np.sin(2 * np.pi * 660 * t)][:channels]).astype(np.float32)


def assert_probes(info: MediaInfo, *, duration: float, fps: float, frames: int, size, audio: bool, rate=None,
                  channels=None):
    assert info.video_codec == "h264"
    assert info.audio_codec == ("aac" if audio else None)
    assert info.fps == pytest.approx(fps, abs=1e-3)
    assert info.frame_count == frames
    assert (info.width, info.height) == size
    assert info.duration_s == pytest.approx(duration, abs=min(0.05, 1 / fps))
    if audio:
        assert (info.sample_rate, info.audio_channels) == (rate, channels)


def test_encode_mp4_with_audio_probes_as_written(tmp_path):
    path = tmp_path / "shot.mp4"
    info = encode_mp4(path, pan_frames(48), 24, tone(2.0, 48000), 48000, crf=20, preset="veryfast",
                      metadata={"prompt": {"1": {"class_type": "EmptyImage"}}, "shot": "s01"})
    assert_probes(info, duration=2.0, fps=24, frames=48, size=(128, 96), audio=True, rate=48000, channels=2)
    assert probe_media(path) == info
    assert info.as_dict()["frame_count"] == 48
    with av.open(str(path)) as container:  # the graph travels with the file, as with core Save Video
        assert json.loads(container.metadata["prompt"]) == {"1": {"class_type": "EmptyImage"}}
        assert container.metadata["shot"] == "s01"


def test_streaming_writer_takes_clips_and_odd_audio_chunks(tmp_path):
    path = tmp_path / "episode.mp4"
    audio = tone(3.0, 44100, channels=1)
    with Mp4Writer(path, 128, 96, 30, preset="ultrafast", sample_rate=44100, audio_channels=1) as writer:
        for clip in range(3):  # three 1 s clips, one after the other
            writer.write_frames(pan_frames(30))
        writer.write_frames(pan_frames(1)[0])  # a single [H,W,3] frame too
        for chunk in np.array_split(audio, [1, 777, 5000, 44100, 90001], axis=1):
            writer.write_audio(chunk)
    assert_probes(probe_media(path), duration=91 / 30, fps=30, frames=91, size=(128, 96), audio=True,
                  rate=44100, channels=1)


@pytest.mark.parametrize("fps", [23.976, Fraction(23.976), Fraction(24000, 1001)])
def test_ntsc_film_rate(tmp_path, fps):
    info = encode_mp4(tmp_path / "film.mp4", pan_frames(24), fps, tone(1.001, 48000), 48000, preset="ultrafast")
    assert_probes(info, duration=24 * 1001 / 24000, fps=24000 / 1001, frames=24, size=(128, 96), audio=True,
                  rate=48000, channels=2)
    assert frame_rate(fps) == Fraction(24000, 1001)


def test_frame_rates_become_small_exact_fractions():
    assert frame_rate(np.float64(29.97)) == Fraction(30000, 1001)
    assert frame_rate(Fraction(12.5)) == Fraction(25, 2) and frame_rate(np.int64(24)) == 24
    assert frame_rate(Fraction(1 / 3)) == Fraction(1, 3)  # a binary float's huge denominator is cut down
    for bad in (0, -24, float("nan"), float("inf"), "24"):
        with pytest.raises(ValueError, match="frame rate"):
            frame_rate(bad)


def test_the_longer_stream_sets_the_duration(tmp_path):
    longer_audio = encode_mp4(tmp_path / "a.mp4", pan_frames(12), 12, tone(1.5, 48000), 48000, preset="ultrafast")
    assert longer_audio.frame_count == 12 and longer_audio.duration_s == pytest.approx(1.5, abs=0.05)
    longer_video = encode_mp4(tmp_path / "v.mp4", pan_frames(24), 12, tone(0.5, 48000), 48000, preset="ultrafast")
    assert longer_video.duration_s == pytest.approx(2.0, abs=0.05)
    silent = encode_mp4(tmp_path / "s.mp4", pan_frames(6), 25, preset="ultrafast")
    assert_probes(silent, duration=6 / 25, fps=25, frames=6, size=(128, 96), audio=False)
    assert read_audio(tmp_path / "s.mp4") == (None, None)


def test_odd_sizes_and_bad_input_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="even width and height, got 65x64"):
        Mp4Writer(tmp_path / "odd.mp4", 65, 64, 24)
    with pytest.raises(ValueError, match="even width and height, got 128x95"):
        encode_mp4(tmp_path / "odd.mp4", pan_frames(2, 128, 95), 24)
    with pytest.raises(ValueError, match="preset"):
        Mp4Writer(tmp_path / "x.mp4", 64, 64, 24, preset="warp")
    with pytest.raises(ValueError, match="crf"):
        Mp4Writer(tmp_path / "x.mp4", 64, 64, 24, crf=60)
    with Mp4Writer(tmp_path / "x.mp4", 128, 96, 24) as writer:
        with pytest.raises(ValueError, match="uint8 RGB"):
            writer.write_frames(pan_frames(1).astype(np.float32))
        with pytest.raises(ValueError, match="no audio stream"):
            writer.write_audio(tone(0.1, 48000))
        writer.write_frames(pan_frames(1))


def test_read_video_round_trips_frames_and_audio(tmp_path):
    frames, audio = pan_frames(10), tone(10 / 24, 48000)
    encode_mp4(tmp_path / "rt.mp4", frames, 24, audio, 48000, crf=12)
    decoded, fps, decoded_audio, rate = read_video(tmp_path / "rt.mp4")
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == 24 and rate == 48000
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 35  # PSNR: near-lossless at crf 12
    assert decoded_audio.shape[0] == 2 and abs(decoded_audio.shape[1] - audio.shape[1]) <= 1024
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(decoded_audio[0]) == pytest.approx(rms(audio[0]), rel=0.05)
    np.testing.assert_array_equal(read_last_frames(tmp_path / "rt.mp4", 2), decoded[-2:])


def test_faststart_puts_the_index_before_the_media(tmp_path):
    path = tmp_path / "web.mp4"
    encode_mp4(path, pan_frames(4), 24, preset="ultrafast")
    data = path.read_bytes()
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_float_frames_convert_with_rounding():
    frames = np.array([[[[0.0, 0.5, 1.2]]]], dtype=np.float32)
    assert to_uint8_rgb(frames).tolist() == [[[[0, 128, 255]]]]
    assert to_uint8_rgb(np.full((2, 2, 1), 0.2, np.float32)).shape == (2, 2, 3)
    assert to_uint8_rgb(np.array([[[np.nan, np.inf, -np.inf]]], np.float32)).tolist() == [[[0, 255, 0]]]
    rgba = np.full((2, 2, 4), 7, np.uint8)
    assert to_uint8_rgb(rgba).tolist() == np.full((2, 2, 3), 7).tolist()  # already 8-bit: alpha dropped only
