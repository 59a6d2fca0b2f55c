"""MP4 files (H.264 video + AAC audio) written and read with PyAV, no ComfyUI import.

- `Mp4Writer` streams: frames and audio go to the encoders as they arrive, so a long episode assembled from many
  clips never sits in memory. Video is libx264 in yuv420p (what every player and browser decodes), which needs an
  even width and height: an odd size is a ValueError naming it, never a silent pad or crop.
- Timestamps: frame i has pts i in a time base of 1/fps, with fps a Fraction, so 23.976 (24000/1001) probes as
  exactly that and the duration is frames / fps. Audio pts counts samples. Audio is kept as given (neither padded
  nor trimmed to the video): the file lasts as long as the longer stream.
- `+faststart` puts the index (moov) before the media, so a browser starts playing before the download ends.
- `probe_media` reads what a file holds without decoding it; `read_video` and `read_audio` decode it all (tests, small
  clips, speech engines' MP3s).
"""
from __future__ import annotations

import collections
import io
import itertools
import json
import math
import numbers
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
AUDIO_BIT_RATE = {1: 128_000, 2: 192_000}
_NTSC_RATES = tuple(Fraction(base * 1000, 1001) for base in (24, 30, 48, 60, 120))  # 23.976, 29.97, ...


@dataclass(frozen=True)
class MediaInfo:
    """What a media file probes as; None where the file has no such stream."""
    duration_s: float
    video_codec: str | None
    audio_codec: str | None
    fps: float | None
    frame_count: int | None
    width: int | None
    height: int | None
    sample_rate: int | None
    audio_channels: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def frame_rate(fps) -> Fraction:
    """`fps` (float, int or Fraction) as an exact, small Fraction: 23.976 and 29.97 become 24000/1001 and
    30000/1001; other rates keep at most 3 decimals (core CreateVideo passes Fraction(float), whose denominator is
    a power of two in the millions)."""
    if not isinstance(fps, numbers.Real) or not math.isfinite(fps) or not 0 < fps <= 1000:
        raise ValueError(f"frame rate must be a number in (0, 1000], got {fps!r}")
    # a float as written (23.976 -> 2997/125), not as stored in binary
    value = Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(repr(float(fps)))
    for ntsc in _NTSC_RATES:
        if abs(value - ntsc) < Fraction(2, 1000):
            return ntsc
    return value if value.denominator <= 1001 else value.limit_denominator(1000)


def to_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    """Float frames in 0..1 ([N,]H,W,C with C = 1, 3 or 4) as uint8 RGB, rounded; alpha is dropped, NaN is black.
    Numpy only (no OpenCV), so the controller's environment needs nothing more than numpy and PyAV."""
    frames = np.asarray(frames)
    if frames.ndim < 3 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames need 1, 3 or 4 channels in the last axis, got shape {list(frames.shape)}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames[..., :3])
    scaled = np.multiply(frames[..., :3], np.float32(255), dtype=np.float32)
    scaled += np.float32(0.5)
    np.clip(scaled, np.float32(0), np.float32(255), out=scaled)  # float32 bounds: twice as fast as int bounds
    if np.isnan(scaled).any():  # rare, so tested for rather than scrubbed every time
        np.nan_to_num(scaled, copy=False, nan=0.0)
    return scaled.astype(np.uint8)


def _check_size(width: int, height: int):
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even width and height, got {width}x{height}; "
                         f"crop or scale the frames to an even size (e.g. {width + width % 2}x{height + height % 2})")


class Mp4Writer:
    """Streaming H.264 (+ AAC) MP4 writer; use as a context manager or call `close()`.

    `write_frames` takes uint8 RGB [N,H,W,3] (or one [H,W,3]) in the size given here; `write_audio` takes float32
    [channels, n] in -1..1 in chunks of any length (only with a `sample_rate`). `metadata` (str -> str or JSON-able)
    is stored in the file's tags, as core SaveVideo stores the prompt.
    """

    def __init__(self, path, width: int, height: int, fps: float, crf: float = 18, preset: str = "medium",
                 sample_rate: int | None = None, audio_channels: int = 2, *, metadata: dict | None = None,
                 threads: int = 0):
        _check_size(int(width), int(height))
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51 (0 is lossless, 18 visually lossless, 23 x264's default), "
                             f"got {crf}")
        if preset not in PRESETS:
            raise ValueError(f"unknown x264 preset {preset!r}; one of {', '.join(PRESETS)}")
        if sample_rate is not None and not 8000 <= int(sample_rate) <= 96000:
            raise ValueError(f"audio sample rate must be 8000..96000 Hz for AAC, got {sample_rate}")
        if audio_channels not in (1, 2):
            raise ValueError(f"audio must be mono or stereo (1 or 2 channels), got {audio_channels}")
        self.path = path
        self.width, self.height = int(width), int(height)
        self.rate = frame_rate(fps)
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.audio_channels = audio_channels if sample_rate is not None else 0
        self.frames_written = 0
        self.samples_written = 0
        self._closed = False
        options = {"movflags": "+faststart" + ("+use_metadata_tags" if metadata else "")}
        target = str(path) if isinstance(path, (str, Path)) else path
        self._container = av.open(target, mode="w", format="mp4", options=options)
        try:
            for key, value in (metadata or {}).items():
                self._container.metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
            self._video = self._container.add_stream("libx264", rate=self.rate)
            self._video.width, self._video.height, self._video.pix_fmt = self.width, self.height, "yuv420p"
            self._video.options = {"crf": f"{crf:g}", "preset": preset}
            self._video.codec_context.thread_count = threads  # 0: x264 picks from the cores it sees
            self._time_base = 1 / self.rate
            self._audio = None
            if sample_rate is not None:
                self._audio = self._container.add_stream("aac", rate=self.sample_rate)
                self._layout = "stereo" if audio_channels == 2 else "mono"
                self._audio.layout = self._layout
                self._audio.format = "fltp"
                self._audio.bit_rate = AUDIO_BIT_RATE[audio_channels]
        except BaseException:
            self._container.close()
            raise

    def write_frames(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames must be uint8 RGB [N,{self.height},{self.width},3] (height, width of this "
                             f"writer), got {frames.dtype} {list(frames.shape)}; convert floats with to_uint8_rgb")
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts, video_frame.time_base = self.frames_written, self._time_base
            self._container.mux(self._video.encode(video_frame))
            self.frames_written += 1

    def write_audio(self, samples: np.ndarray) -> None:
        if self._audio is None:
            raise ValueError("this writer has no audio stream: pass sample_rate= when creating it")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 2 or samples.shape[0] != self.audio_channels:
            raise ValueError(f"audio must be float32 [{self.audio_channels}, n] (channels first), "
                             f"got {list(samples.shape)}")
        if samples.shape[1] == 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=self._layout)
        frame.sample_rate, frame.pts, frame.time_base = self.sample_rate, self.samples_written, Fraction(
            1, self.sample_rate)
        # PyAV re-chunks to AAC's 1024-sample frames inside the encoder
        self._container.mux(self._audio.encode(frame))
        self.samples_written += samples.shape[1]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.frames_written == 0:
                raise ValueError(f"no video frames were written to {self.path}")
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:  # keep the original error; do not add "no frames" on top of it
            self._closed = True
            self._container.close()


def encode_mp4(path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
               sample_rate: int | None = None, crf: float = 18, preset: str = "medium", *,
               metadata: dict | None = None) -> MediaInfo:
    """Write uint8 RGB frames [N,H,W,3] (+ float32 audio [C,n]) to an MP4 and return what it probes as."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty uint8 batch [N,H,W,3], got shape {list(frames.shape)}")
    if audio is not None and sample_rate is None:
        raise ValueError("audio was given without its sample_rate")
    audio = None if audio is None else np.asarray(audio, dtype=np.float32)
    channels = 2 if audio is None else audio.shape[0]
    with Mp4Writer(path, frames.shape[2], frames.shape[1], fps, crf, preset,
                   sample_rate=sample_rate if audio is not None else None, audio_channels=channels,
                   metadata=metadata) as writer:
        writer.write_frames(frames)
        if audio is not None:
            writer.write_audio(audio)
    return probe_media(path)


def _open(source):
    if isinstance(source, io.IOBase):
        source.seek(0)
        return av.open(source, mode="r")
    return av.open(str(source), mode="r")


def probe_media(path) -> MediaInfo:
    """Streams, codecs, duration, fps and frame count of a media file, read from its headers (no decoding; frames
    are counted from packets only if the container does not say)."""
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        durations = [float(s.duration * s.time_base) for s in (video, audio) if s is not None and s.duration]
        if container.duration is not None:
            durations.append(container.duration / av.time_base)
        frame_count = fps = None
        if video is not None:
            fps = float(video.average_rate) if video.average_rate else None
            frame_count = video.frames or sum(1 for packet in container.demux(video) if packet.size)
        return MediaInfo(
            duration_s=round(max(durations, default=0.0), 6),
            video_codec=video.codec_context.name if video is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            fps=fps, frame_count=frame_count,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
        )


def read_video(path) -> tuple[np.ndarray, float, np.ndarray | None, int | None]:
    """All frames (uint8 RGB [N,H,W,3]), fps, audio (float32 [C,n], or None) and its sample rate of a file."""
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {path}")
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
    return (np.stack(frames), fps, *read_audio(path))


def read_audio(source, rate: int | None = None,
               max_samples: int | None = None) -> tuple[np.ndarray | None, int | None]:
    """The first audio stream of a file (a path or a file object such as BytesIO) as float32 [C, n] in its own
    channel layout, whatever the sample format (packed int16, planar float...), and its sample rate; (None, None)
    when it has no audio stream or no samples. `rate` resamples to that rate; `max_samples` stops decoding once
    that many samples are read (at the output rate) and cuts there."""
    with _open(source) as container:
        if not container.streams.audio:
            return None, None
        stream = container.streams.audio[0]
        rate = rate or stream.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        chunks, samples = [], 0
        for frame in itertools.chain(container.decode(stream), [None]):  # None drains the resampler
            for resampled in resampler.resample(frame):
                chunks.append(resampled.to_ndarray())
                samples += chunks[-1].shape[1]
            if max_samples is not None and samples >= max_samples:
                break
        if not chunks:
            return None, None
        return np.concatenate(chunks, axis=1)[:, :max_samples].astype(np.float32), rate


def read_last_frames(path, count: int = 1) -> np.ndarray:
    """The last `count` frames of a video (uint8 RGB [k,H,W,3], k <= count), decoding as a stream and keeping
    only `count` frames in memory."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = collections.deque(maxlen=count)
        for frame in container.decode(stream):
            last.append(frame)
        if not last:
            raise ValueError(f"no frames could be decoded from {path}")
        return np.stack([frame.to_ndarray(format="rgb24") for frame in last])
