"""Dialogue over music: ducking, mixing, loudness normalisation, resampling and channel matching.

Pure numpy/scipy, no ComfyUI import. Audio is float32 [channels, samples] in -1..1.

- Ducking (`duck_music`): an envelope follower on the dialogue drives the music's gain. The dialogue's RMS level
  in 5 ms blocks is compared with `threshold_db` (dBFS); from the threshold to KNEE_DB above it the music's gain
  falls to -`duck_db`, held for HOLD_MS after the level drops (to bridge the gaps between words), and smoothed by
  one-pole filters with time constants `attack_ms` (going down) and `release_ms` (coming back). ffmpeg's
  `sidechaincompress` was the alternative; it was not used because a compressor's gain reduction grows with the
  speech level without bound, while a ducker should dip the music by a set depth however loud the voice is.
- Loudness (`integrated_loudness`, `normalise_loudness`): ITU-R BS.1770-4 integrated loudness (K-weighting, 400 ms
  blocks with 75 % overlap, -70 LUFS absolute gate, -10 LU relative gate), the measure EBU R128 and the streaming
  platforms use; the tests check it against ffmpeg's `ebur128` filter. Normalising applies one gain, and where
  that would push sample peaks over PEAK_CEILING_DB a look-ahead peak limiter holds them below it (then the gain is
  corrected for what the limiter took off, so the result still lands on the target).
- Lengths (`mix_dialogue_over_music`): the mix is as long as the longer input. Music shorter than the dialogue is
  LOOPED, with a LOOP_CROSSFADE_MS crossfade at each seam so the seam does not click; dialogue shorter than the
  music is padded with silence.
"""
from __future__ import annotations

from math import gcd

import numpy as np
from scipy import ndimage, signal

BLOCK_MS = 5.0             # envelope follower resolution
KNEE_DB = 6.0              # the music reaches full depth this far above the threshold
HOLD_MS = 100.0            # keep the music down through short pauses between words
LOOP_CROSSFADE_MS = 20.0
PEAK_CEILING_DB = -1.0     # normalised audio keeps its sample peaks below this (dBFS)
LIMITER_LOOKAHEAD_MS = 5.0
LIMITER_RELEASE_MS = 80.0
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0


def as_audio(audio, name: str = "audio") -> np.ndarray:
    """float32 [channels, samples]; a 1-D array is read as mono."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise ValueError(f"{name} must be [channels, samples], got shape {audio.shape}")
    return audio


def db_to_gain(db) -> np.ndarray | float:
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 20.0)


# ---------------------------------------------------------------------------------------------------- ducking

def _asymmetric_one_pole(target: np.ndarray, falling: float, rising: float) -> np.ndarray:
    """y follows target with coefficient `falling` when target is below y and `rising` when above it
    (coefficient 0 = instant, close to 1 = slow)."""
    out = np.empty_like(target)
    level = target[0] if len(target) else 0.0
    for index, value in enumerate(target.tolist()):
        coefficient = falling if value < level else rising
        level = value + coefficient * (level - value)
        out[index] = level
    return out


def _coefficient(time_ms: float, step_s: float) -> float:
    return float(np.exp(-step_s / (time_ms / 1000.0))) if time_ms > 0 else 0.0


def ducking_gain_db(dialogue: np.ndarray, sample_rate: int, length: int, duck_db: float = 12.0,
                    attack_ms: float = 20.0, release_ms: float = 250.0, threshold_db: float = -40.0) -> np.ndarray:
    """The music's gain in dB for each of `length` samples (0 where the dialogue is quiet, down to -duck_db)."""
    dialogue = as_audio(dialogue, "dialogue")
    if duck_db < 0 or attack_ms < 0 or release_ms < 0:
        raise ValueError("duck_db, attack_ms and release_ms must not be negative")
    if length == 0:
        return np.zeros(0)
    hop = max(1, round(sample_rate * BLOCK_MS / 1000.0))
    blocks = -(-length // hop)
    power = np.zeros(blocks * hop)
    speech = dialogue[:, :blocks * hop].astype(np.float64)
    power[:speech.shape[1]] = np.mean(speech * speech, axis=0)
    level_db = 10.0 * np.log10(power.reshape(blocks, hop).mean(axis=1) + 1e-12)
    depth = np.clip((level_db - threshold_db) / KNEE_DB, 0.0, 1.0)
    hold = max(1, round(HOLD_MS / BLOCK_MS))
    depth = ndimage.maximum_filter1d(depth, size=hold, origin=(hold - 1) // 2, mode="nearest")  # trailing max
    step_s = hop / sample_rate
    gain_db = _asymmetric_one_pole(-duck_db * depth, _coefficient(attack_ms, step_s),
                                   _coefficient(release_ms, step_s))
    centres = (np.arange(blocks) + 0.5) * hop
    return np.interp(np.arange(length), centres, gain_db)


def duck_music(music: np.ndarray, dialogue: np.ndarray, sample_rate: int, duck_db: float = 12.0,
               attack_ms: float = 20.0, release_ms: float = 250.0, threshold_db: float = -40.0) -> np.ndarray:
    """The music with its gain lowered by up to `duck_db` where the dialogue speaks (both float32 [C, n] at
    `sample_rate`; the dialogue is only listened to, so its length and channel count may differ)."""
    music = as_audio(music, "music")
    gain_db = ducking_gain_db(dialogue, sample_rate, music.shape[1], duck_db, attack_ms, release_ms, threshold_db)
    return (music * db_to_gain(gain_db)[None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- loudness

def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """BS.1770's two K-weighting biquads (high shelf, then high pass) for any sample rate, from the analogue
    prototypes by the bilinear transform (libebur128's derivation; at 48 kHz it gives the standard's table)."""
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sample_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    f0, q = 38.13547087602444, 0.5003270373238773
    k = np.tan(np.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    high_pass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, high_pass])


def _channel_weights(channels: int) -> np.ndarray:
    if channels == 6:   # 5.1 in the usual order L R C LFE Ls Rs: no LFE, surrounds +1.5 dB
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
    if channels == 5:   # L R C Ls Rs
        return np.array([1.0, 1.0, 1.0, 1.41, 1.41])
    return np.ones(channels)


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS; -inf for silence. Audio shorter than one 400 ms block is measured
    as a single block."""
    audio = as_audio(audio)
    if audio.shape[1] == 0:
        return float("-inf")
    weighted = signal.sosfilt(k_weighting_sos(sample_rate), audio.astype(np.float64), axis=1)
    step = max(1, round(0.1 * sample_rate))  # blocks are four 100 ms steps: 400 ms, overlapping by 75 %
    segments = audio.shape[1] // step
    if segments < 4:
        powers = np.mean(weighted * weighted, axis=1, keepdims=True)
    else:
        energy = np.square(weighted[:, :segments * step]).reshape(audio.shape[0], segments, step).sum(axis=2)
        powers = (energy[:, :-3] + energy[:, 1:-2] + energy[:, 2:-1] + energy[:, 3:]) / (4 * step)  # [C, blocks]
    summed = _channel_weights(audio.shape[0]) @ powers
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10.0 * np.log10(summed)
    gated = summed[block_loudness > ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return float("-inf")
    relative_gate = -0.691 + 10.0 * np.log10(gated.mean()) + RELATIVE_GATE_LU
    final = summed[(block_loudness > ABSOLUTE_GATE_LUFS) & (block_loudness > relative_gate)]
    return float(-0.691 + 10.0 * np.log10(final.mean()))


def limit_peaks(audio: np.ndarray, sample_rate: int, ceiling_db: float = PEAK_CEILING_DB) -> np.ndarray:
    """A look-ahead peak limiter: every sample peak ends at or below `ceiling_db`, the gain dips smoothly
    before a peak (LIMITER_LOOKAHEAD_MS) and recovers with LIMITER_RELEASE_MS. Channels share one gain."""
    audio = as_audio(audio)
    ceiling = float(db_to_gain(ceiling_db))
    peaks = np.abs(audio).max(axis=0)
    if audio.shape[1] == 0 or peaks.max() <= ceiling:
        return audio.copy()
    needed = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    lookahead = max(1, round(sample_rate * LIMITER_LOOKAHEAD_MS / 1000.0))
    # a minimum over +-lookahead, averaged over at most +-lookahead/2: smooth, and never above `needed`
    gain = ndimage.uniform_filter1d(ndimage.minimum_filter1d(needed, size=2 * lookahead + 1, mode="nearest"),
                                    size=2 * (lookahead // 2) + 1, mode="nearest")
    # release on 1 ms blocks (instant attack), then never above the look-ahead gain
    hop = max(1, round(sample_rate / 1000.0))
    blocks = -(-len(gain) // hop)
    padded = np.concatenate([gain, np.full(blocks * hop - len(gain), gain[-1])])
    released = _asymmetric_one_pole(padded.reshape(blocks, hop).min(axis=1), 0.0,
                                    _coefficient(LIMITER_RELEASE_MS, hop / sample_rate))
    gain = np.minimum(gain, np.repeat(released, hop)[:len(gain)])
    return np.clip(audio * gain[None], -ceiling, ceiling).astype(np.float32)


def normalise_loudness(audio: np.ndarray, sample_rate: int, target_lufs: float = -16.0) -> np.ndarray:
    """The audio at `target_lufs` integrated loudness, sample peaks kept below PEAK_CEILING_DB. Silence (no block
    above the -70 LUFS gate) has no loudness and is returned unchanged."""
    audio = as_audio(audio)
    measured = integrated_loudness(audio, sample_rate)
    if not np.isfinite(measured):
        return audio.copy()
    # the limiter takes some loudness off, and more the harder it works: find the gain that lands on the target
    # by the secant method on (gain, loudness after limiting)
    gain_db, previous = target_lufs - measured, None
    for _ in range(6):
        out = limit_peaks(audio * float(db_to_gain(gain_db)), sample_rate)
        reached = integrated_loudness(out, sample_rate)
        if abs(target_lufs - reached) < 0.05:
            break
        slope = 1.0
        if previous is not None and gain_db != previous[0]:
            slope = float(np.clip((reached - previous[1]) / (gain_db - previous[0]), 0.1, 1.0))
        previous = (gain_db, reached)
        gain_db += (target_lufs - reached) / slope
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- formats

def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """The audio at `to_rate` (polyphase filtering, scipy's resample_poly with its Kaiser window)."""
    audio = as_audio(audio)
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate:
        return audio.copy()
    common = gcd(int(from_rate), int(to_rate))
    return signal.resample_poly(audio, int(to_rate) // common, int(from_rate) // common, axis=1).astype(np.float32)


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """The audio with `channels` channels: mono is copied to every channel; to mono, channels are averaged;
    otherwise channel i goes to output i mod `channels` (averaged where several land on one), and fewer
    channels are repeated in order (stereo to four: L R L R)."""
    audio = as_audio(audio)
    if channels < 1:
        raise ValueError(f"channel count must be at least 1, got {channels}")
    have = audio.shape[0]
    if have == channels:
        return audio.copy()
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if have < channels:
        return audio[np.arange(channels) % have].copy()
    out = np.zeros((channels, audio.shape[1]), np.float32)
    counts = np.zeros(channels)
    for index in range(have):
        out[index % channels] += audio[index]
        counts[index % channels] += 1
    return out / counts[:, None].astype(np.float32)


def loop_to_length(audio: np.ndarray, length: int, sample_rate: int) -> np.ndarray:
    """The audio repeated (LOOP_CROSSFADE_MS linear crossfade at each seam) and cut to `length` samples."""
    audio = as_audio(audio)
    size = audio.shape[1]
    if size >= length:
        return audio[:, :length].copy()
    if size == 0:
        raise ValueError("the music is empty: there is nothing to loop")
    fade = min(round(sample_rate * LOOP_CROSSFADE_MS / 1000.0), size // 2)
    step = size - fade
    out = np.zeros((audio.shape[0], length + size), np.float32)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32) if fade else None
    position = 0
    while position < length:
        piece = audio.copy()
        if fade:
            if position > 0:
                piece[:, :fade] *= ramp
            piece[:, size - fade:] *= ramp[::-1] if position + step < length else 1.0
        out[:, position:position + size] += piece
        position += step
    return out[:, :length]


def pad_to_length(audio: np.ndarray, length: int) -> np.ndarray:
    audio = as_audio(audio)
    if audio.shape[1] >= length:
        return audio[:, :length].copy()
    return np.pad(audio, ((0, 0), (0, length - audio.shape[1])))


# ---------------------------------------------------------------------------------------------------- mix

def mix_dialogue_over_music(dialogue, music, sample_rate, duck_db=12.0, music_gain_db=-6.0,
                            target_lufs: float | None = -16.0, *, attack_ms: float = 20.0,
                            release_ms: float = 250.0, threshold_db: float = -40.0) -> np.ndarray:
    """Dialogue over music, both float32 [C, n] at `sample_rate`: the music at `music_gain_db`, ducked under the
    dialogue, summed with it and normalised to `target_lufs` (None: levels left as they are). The mix has the
    larger channel count and the longer length: music shorter than the dialogue is looped, shorter dialogue is
    padded with silence."""
    dialogue, music = as_audio(dialogue, "dialogue"), as_audio(music, "music")
    channels = max(dialogue.shape[0], music.shape[0])
    length = max(dialogue.shape[1], music.shape[1])
    if length == 0:
        return np.zeros((channels, 0), np.float32)
    dialogue = pad_to_length(match_channels(dialogue, channels), length)
    music = loop_to_length(match_channels(music, channels), length, sample_rate) * float(db_to_gain(music_gain_db))
    mix = dialogue + duck_music(music, dialogue, sample_rate, duck_db, attack_ms, release_ms, threshold_db)
    if target_lufs is not None:
        mix = normalise_loudness(mix, sample_rate, target_lufs)
    return mix.astype(np.float32)
