"""Scenes cut from clips, and episodes cut from scenes: one H.264 + AAC MP4 with crossfades, and a thumbnail.

Pure media work on files (PyAV + numpy, no database, no ComfyUI): `assemble(clips, output)` takes ordered clips
(a video file, with or without audio, or a still image held for its `duration`) and writes one MP4.

- Size: the one given, else the first clip's (rounded down to even, as H.264 4:2:0 needs); every other clip is
  scaled to fit and letterboxed (black bars), never stretched or cropped.
- Frame rate: the one given, else the first video clip's, else 24. A clip at another rate is resampled by time
  (each output frame shows the source frame on screen at that moment), so its duration is kept.
- Video crossfades have ffmpeg `xfade=transition=fade` semantics: consecutive clips overlap by
  k = round(crossfade_s * fps) frames, and frame j of the overlap is `a * (1 - j/k) + b * j/k` (truncated, as
  xfade's 8-bit path does). The scene lasts sum(clip frames) - (n - 1) * k frames. The blend is done here in
  numpy while streaming rather than in an `xfade` filter graph: one graph per clip pair (or an N-input graph
  with stills looped and every input scaled and padded) is much more to read than a loop that holds back the
  last k frames of a clip and blends them with the first k of the next. Only those k frames are ever kept,
  so a long scene never sits in memory.
- Audio crossfades have `acrossfade` (curves tri/tri) semantics over the same overlap: sample i of d overlapping
  samples is `a * (d - 1 - i) / d + b * i / d`. Each clip's audio is resampled to 48 kHz stereo and padded or cut
  to its picture's length, so sound stays in sync over any number of clips. A clip without audio is silence;
  when no clip has audio the file still gets a (silent) AAC track, so every output is H.264 + AAC.
- Music (optional) is looped or trimmed to the scene, faded out over its last second, and ducked under the scene's
  dialogue (the clips' own audio) by `shotline.core.audio_mix.mix_dialogue_over_music`. The scene's audio is
  held in memory (23 MB a minute at 48 kHz stereo): ducking and loudness need all of it.

Episodes are scenes assembled the same way; `episode_paths` names them for media libraries (Plex, Jellyfin,
Kodi): `<library>/Season 01/S01E02 - Title.mp4` with `S01E02 - Title.jpg` beside it.
"""
from __future__ import annotations

import collections
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av
import numpy as np
from shotline.core.audio_mix import loop_to_length, match_channels, mix_dialogue_over_music, pad_to_length
from shotline.core.characters import IMAGE_SUFFIXES
from shotline.core.video_encode import Mp4Writer, frame_rate, read_audio

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv")
SAMPLE_RATE = 48_000
CHANNELS = 2
DEFAULT_FPS = 24.0
MIN_FPS, MAX_FPS = 1.0, 240.0
MAX_CROSSFADE_S = 10.0
MIN_SIDE, MAX_SIDE = 16, 8192
MUSIC_FADE_OUT_S = 1.0
THUMBNAIL_QSCALE = 2                   # MJPEG quantiser: 2 is near the top quality, about 1.5 bits a pixel
MAX_TITLE_BYTES = 180                  # "S01E01 - " + title + ".mp4" stays well under 255 bytes
FORBIDDEN_IN_NAMES = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')  # Windows' list, the strictest of the three
WRITE_BATCH = 8                        # frames handed to the encoder at once


class AssemblyError(ValueError):
    """Clips that cannot be assembled as asked; `field` names the request value at fault, when one is."""

    def __init__(self, field: str | None, message: str):  # the order of contract.InputError's arguments
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ClipSource:
    path: Path
    label: str                       # how errors and records name it, e.g. "shot s02"
    duration: float | None = None    # seconds a still image is held; a video keeps its own length


@dataclass(frozen=True)
class Part:
    """Where a clip sits in the cut: it starts at `start_s` and lasts `duration_s`, its crossfades included."""
    label: str
    start_s: float
    duration_s: float
    start_frame: int
    frame_count: int


@dataclass(frozen=True)
class AssemblyResult:
    path: Path
    thumbnail: Path
    duration_s: float
    frame_count: int
    fps: float
    width: int
    height: int
    crossfade_s: float               # as applied: a whole number of frames
    parts: list[Part] = field(default_factory=list)
    music: Path | None = None


@dataclass
class _Clip:
    source: ClipSource
    is_video: bool
    width: int
    height: int
    fps: float | None
    has_audio: bool
    duration: float | None = None    # a video's own length in seconds
    frame_count: int = 0             # in the output, at the output frame rate


# --- names -----------------------------------------------------------------------------------------------------

def sanitise_title(title) -> str:
    """A title safe as part of a file name on Windows, macOS and Linux: forbidden characters dropped (a colon
    becomes " - "), spaces collapsed, no leading or trailing dots or spaces, at most 180 bytes of UTF-8."""
    if not isinstance(title, str):
        raise AssemblyError("episode.title", f"must be a text, got {title!r}")
    text = unicodedata.normalize("NFC", title)
    text = re.sub(r"\s*:\s*", " - ", text)
    text = FORBIDDEN_IN_NAMES.sub(" ", text)
    text = " ".join(text.split()).strip(" .")
    while len(text.encode()) > MAX_TITLE_BYTES:
        text = text[:-1]
    text = text.rstrip(" .")
    if not text:
        raise AssemblyError("episode.title", f"must have letters or digits a file name can hold, got {title!r}")
    return text


def _episode_number(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 99:
        raise AssemblyError(field, f"must be a whole number from 1 to 99, got {value!r}")
    return value


def episode_paths(library: Path, season: int, episode: int, title: str) -> tuple[Path, Path]:
    """`<library>/Season NN/SxxEyy - Title.mp4` and the `.jpg` thumbnail beside it, as media libraries expect
    (the library folder is the show's folder)."""
    season = _episode_number(season, "episode.season")
    episode = _episode_number(episode, "episode.number")
    stem = f"S{season:02d}E{episode:02d} - {sanitise_title(title)}"
    folder = Path(library) / f"Season {season:02d}"
    return folder / f"{stem}.mp4", folder / f"{stem}.jpg"


# --- reading clips ---------------------------------------------------------------------------------------------

def is_video_file(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _probe(source: ClipSource) -> _Clip:
    path = Path(source.path)
    is_video = is_video_file(path)
    if not is_video and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise AssemblyError(None, f"{source.label}: {path.name} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor an "
                            f"image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AssemblyError(None, f"{source.label}: {path.name} has no picture")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if not is_video:
                return _Clip(source, False, width, height, None, False)
            fps = float(stream.average_rate) if stream.average_rate else None
            has_audio = bool(container.streams.audio)
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                raise AssemblyError(None, f"{source.label}: {path.name} does not say how long it is")
    except av.error.FFmpegError as error:
        raise AssemblyError(None, f"{source.label}: cannot read {path.name}: {error}") from None
    return _Clip(source, True, width, height, fps, has_audio, duration)


def _fit(width: int, height: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Size and offset of a width x height picture scaled to fit inside target, centred."""
    tw, th = target
    scale = min(tw / width, th / height)
    sw, sh = max(1, min(tw, round(width * scale))), max(1, min(th, round(height * scale)))
    return sw, sh, (tw - sw) // 2, (th - sh) // 2


def _to_rgb(frame: av.VideoFrame, target: tuple[int, int]) -> np.ndarray:
    """A decoded frame as uint8 RGB [H,W,3] of the target size, scaled to fit and letterboxed."""
    sw, sh, x, y = _fit(frame.width, frame.height, target)
    if (sw, sh) == (frame.width, frame.height):
        picture = frame.to_ndarray(format="rgb24")
    else:
        shrinking = sw < frame.width or sh < frame.height
        picture = frame.reformat(width=sw, height=sh, format="rgb24",
                                 interpolation="AREA" if shrinking else "LANCZOS").to_ndarray()
    if (sw, sh) == target:
        return picture
    canvas = np.zeros((target[1], target[0], 3), np.uint8)
    canvas[y:y + sh, x:x + sw] = picture
    return canvas


def _frames(clip: _Clip, target: tuple[int, int], fps: float) -> Iterator[np.ndarray]:
    """Exactly clip.frame_count frames at the output rate: a still repeated, or a video sampled by time (output
    frame j shows the source frame on screen at j / fps; a stream that ends early holds its last frame)."""
    path, label = Path(clip.source.path), clip.source.label
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if not clip.is_video:
                still = _to_rgb(next(container.decode(stream)), target)
                for _ in range(clip.frame_count):
                    yield still
                return
            emitted, current, converted, start = 0, None, None, None
            for index, frame in enumerate(container.decode(stream)):
                seconds = frame.time if frame.time is not None else index / (clip.fps or fps)
                start = seconds if start is None else start
                seconds -= start
                while current is not None and emitted < clip.frame_count and emitted / fps < seconds - 1e-6:
                    if converted is None:
                        converted = _to_rgb(current, target)
                    yield converted
                    emitted += 1
                if emitted >= clip.frame_count:
                    return
                current, converted = frame, None
            if current is None:
                raise AssemblyError(None, f"{label}: no picture could be decoded from {path.name}")
            converted = _to_rgb(current, target)
            while emitted < clip.frame_count:
                yield converted
                emitted += 1
    except av.error.FFmpegError as error:
        raise AssemblyError(None, f"{label}: cannot decode {path.name}: {error}") from None


def decode_audio(path, label: str, max_samples: int | None = None, field: str | None = None) -> np.ndarray | None:
    """A file's first audio stream as float32 [2, n] at 48 kHz (None when it has none), read at most to
    `max_samples`. A mono source plays on both channels at its own level."""
    path = Path(path)
    try:
        audio, _ = read_audio(path, rate=SAMPLE_RATE, max_samples=max_samples)
    except av.error.FFmpegError as error:
        raise AssemblyError(field, f"{label}: cannot decode the audio of {path.name}: {error}") from None
    return None if audio is None else match_channels(audio, CHANNELS).astype(np.float32, copy=False)


# --- crossfades ------------------------------------------------------------------------------------------------

def xfade_frame(outgoing: np.ndarray, incoming: np.ndarray, step: int, steps: int) -> np.ndarray:
    """Frame `step` (0..steps-1) of an `xfade=transition=fade` overlap of `steps` frames, as ffmpeg computes it:
    progress falls from 1 by 1/steps a frame, out = a * progress + b * (1 - progress), truncated to 8 bits."""
    progress = np.float32(1.0 - step / steps)
    blend = outgoing.astype(np.float32) * progress + incoming.astype(np.float32) * (np.float32(1.0) - progress)
    return blend.astype(np.uint8)


def acrossfade_gains(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """acrossfade's tri/tri curves over `samples` samples: the outgoing gain (d-1-i)/d and the incoming i/d."""
    index = np.arange(samples, dtype=np.float32)
    return (samples - 1 - index) / samples, index / samples


# --- the cut ---------------------------------------------------------------------------------------------------

def _plan(clips: list[_Clip], fps: float, crossfade_s: float) -> tuple[int, list[int]]:
    """The overlap in frames and each clip's first frame in the cut; checks every clip is long enough."""
    overlap = round(crossfade_s * fps)
    for index, clip in enumerate(clips):
        seconds = clip.duration if clip.is_video else clip.source.duration
        clip.frame_count = max(1, round(seconds * fps))
        sides = (index > 0) + (index < len(clips) - 1)
        if overlap and clip.frame_count < sides * overlap:
            raise AssemblyError(
                "crossfade_s", f"{crossfade_s:g} s is too long for {clip.source.label}, which lasts {clip.frame_count / fps:.2f} s: "
                f"a crossfade on {'both sides' if sides == 2 else 'one side'} needs at least "
                f"{sides * overlap / fps:.2f} s")
    starts = [0]
    for clip in clips[:-1]:
        starts.append(starts[-1] + clip.frame_count - overlap)
    return overlap, starts


def _scene_audio(clips: list[_Clip], starts: list[int], total: int, fps: float) -> np.ndarray:
    """The clips' audio laid on the cut's timeline, crossfaded where their pictures overlap."""
    def sample(frame: int) -> int:
        return round(frame * SAMPLE_RATE / fps)  # from frames, so rounding never accumulates over clips

    audio = np.zeros((CHANNELS, sample(total)), np.float32)
    bounds = [(sample(start), sample(start + clip.frame_count)) for clip, start in zip(clips, starts)]
    for index, (clip, (begin, end)) in enumerate(zip(clips, bounds)):
        track = decode_audio(clip.source.path, clip.source.label, end - begin) if clip.has_audio else None
        if track is None:  # silence
            continue
        track = pad_to_length(track, end - begin)
        if index > 0 and bounds[index - 1][1] > begin:
            head = bounds[index - 1][1] - begin
            track[:, :head] *= acrossfade_gains(head)[1]
        if index < len(clips) - 1 and end > bounds[index + 1][0]:
            tail = end - bounds[index + 1][0]
            track[:, end - begin - tail:] *= acrossfade_gains(tail)[0]
        audio[:, begin:end] += track
    return audio


def _with_music(dialogue: np.ndarray, music_path: Path) -> np.ndarray:
    length = dialogue.shape[1]
    music = decode_audio(music_path, "music", length, field="music")
    if music is None:
        raise AssemblyError("music", f"{Path(music_path).name} has no audio stream")
    music = loop_to_length(music, length, SAMPLE_RATE)  # shorter music loops, as mix_dialogue_over_music does
    fade = min(length, round(MUSIC_FADE_OUT_S * SAMPLE_RATE))
    if fade:
        music[:, length - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return np.clip(mix_dialogue_over_music(dialogue, music, SAMPLE_RATE), -1.0, 1.0)  # both `length` long


def write_jpeg(path: Path, picture: np.ndarray) -> None:
    """A uint8 RGB picture as a high-quality JPEG (PyAV's MJPEG encoder: no image library needed)."""
    height, width = picture.shape[:2]
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.codec_context.qscale = THUMBNAIL_QSCALE
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _check_options(clips, crossfade_s, fps, size, music) -> None:
    if not clips:
        raise AssemblyError(None, "nothing to assemble: no clips")
    if isinstance(crossfade_s, bool) or not isinstance(crossfade_s, (int, float)) \
            or not 0 <= crossfade_s <= MAX_CROSSFADE_S:
        raise AssemblyError("crossfade_s", f"must be a number of seconds from 0 to {MAX_CROSSFADE_S:g}, got {crossfade_s!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not MIN_FPS <= fps <= MAX_FPS):
        raise AssemblyError("fps", f"must be a frame rate from {MIN_FPS:g} to {MAX_FPS:g}, got {fps!r}")
    if size is not None:
        parse_size(size)
    if music is not None and not Path(music).is_file():
        raise AssemblyError("music", f"no such file: {Path(music).name}")


def parse_size(value) -> tuple[int, int]:
    """WxH (or [W, H]) with even sides, as H.264 4:2:0 needs."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not match:
            raise AssemblyError("size", f"must look like 1280x720, got {value!r}")
        width, height = int(match[1]), int(match[2])
    elif isinstance(value, (list, tuple)) and len(value) == 2 \
            and all(isinstance(side, int) and not isinstance(side, bool) for side in value):
        width, height = value
    else:
        raise AssemblyError("size", f"must be WxH, like 1280x720, got {value!r}")
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 2:
            raise AssemblyError("size", f"sides must be even numbers from {MIN_SIDE} to {MAX_SIDE} (H.264 4:2:0), "
                                f"got {width}x{height}")
    return width, height


def assemble(clips: Sequence[ClipSource], output: Path, *, crossfade_s: float = 0.5, fps: float | None = None,
             size=None, music: Path | None = None, thumbnail: Path | None = None, crf: float = 18,
             preset: str = "medium", progress: Callable[[int, int], None] | None = None) -> AssemblyResult:
    """Cut `clips` in order into `output` (an MP4), with a JPEG of its middle frame at `thumbnail` (default: the
    output's name with .jpg). The file appears complete or not at all (written beside it, then renamed).
    `progress(done, total)` is called with the frames written so far and the frames the cut will have."""
    _check_options(clips, crossfade_s, fps, size, music)
    probed = [_probe(clip) for clip in clips]
    for clip in probed:
        if not clip.is_video and (clip.source.duration is None or not clip.source.duration > 0):
            raise AssemblyError(None, f"{clip.source.label}: a still needs a duration in seconds, "
                                f"got {clip.source.duration!r}")
    rate = frame_rate(fps if fps is not None else next((c.fps for c in probed if c.is_video and c.fps), DEFAULT_FPS))
    fps_value = float(rate)
    target = parse_size(size) if size is not None else (probed[0].width // 2 * 2, probed[0].height // 2 * 2)
    if min(target) < 2:
        raise AssemblyError(None, f"{probed[0].source.label}: a {probed[0].width}x{probed[0].height} picture is too small")
    overlap, starts = _plan(probed, fps_value, float(crossfade_s))
    total = starts[-1] + probed[-1].frame_count

    audio = _scene_audio(probed, starts, total, fps_value)
    if music is not None:
        audio = _with_music(audio, Path(music))

    output = Path(output)
    thumbnail = Path(thumbnail) if thumbnail is not None else output.with_suffix(".jpg")
    output.parent.mkdir(parents=True, exist_ok=True)
    thumbnail.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.{uuid.uuid4().hex[:8]}.partial.mp4")
    middle, middle_frame = total // 2, None
    try:
        with Mp4Writer(partial, target[0], target[1], rate, crf=crf, preset=preset, sample_rate=SAMPLE_RATE,
                       audio_channels=CHANNELS) as writer:
            batch: list[np.ndarray] = []

            def flush() -> None:
                if batch:
                    writer.write_frames(np.stack(batch))
                    # audio up to the end of the frames written, so the two streams interleave in the file
                    end = audio.shape[1] if writer.frames_written == total else \
                        round(writer.frames_written * SAMPLE_RATE / fps_value)
                    writer.write_audio(audio[:, writer.samples_written:end])
                    if progress:
                        progress(writer.frames_written, total)
                    batch.clear()

            def emit(frame: np.ndarray) -> None:
                nonlocal middle_frame
                if writer.frames_written + len(batch) == middle:
                    middle_frame = frame
                batch.append(frame)
                if len(batch) >= WRITE_BATCH:
                    flush()

            held: list[np.ndarray] = []  # the previous clip's last `overlap` frames, waiting for the next clip
            for index, clip in enumerate(probed):
                frames = _frames(clip, target, fps_value)
                for step, outgoing in enumerate(held):
                    emit(xfade_frame(outgoing, next(frames), step, overlap))
                keep = overlap if index < len(probed) - 1 else 0
                tail: collections.deque = collections.deque()
                for frame in frames:
                    tail.append(frame)
                    if len(tail) > keep:
                        emit(tail.popleft())
                held = list(tail)
            flush()
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    write_jpeg(thumbnail, middle_frame)

    parts = [Part(clip.source.label, start / fps_value, clip.frame_count / fps_value, start, clip.frame_count)
             for clip, start in zip(probed, starts)]
    return AssemblyResult(path=output, thumbnail=thumbnail, duration_s=total / fps_value, frame_count=total,
                          fps=fps_value, width=target[0], height=target[1], crossfade_s=overlap / fps_value,
                          parts=parts, music=Path(music) if music is not None else None)
