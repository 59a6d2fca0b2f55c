"""Speed of dialogue speech and of the dialogue-over-music mix, printed as a table.

    .venv/bin/python bench/bench_audio.py [--repeat 3]

Speech: real-time factor (synthesis seconds / seconds of audio; target <= 0.2) per engine over a few sentences,
the one-off Piper voice load, a cache hit, and what an unreachable edge-tts costs before "auto" falls back.
Mix: 60 s of stereo 48 kHz music under 60 s of dialogue (a real spoken line repeated): ducking alone, the
BS.1770 loudness measure, and the whole mix with normalisation to -16 LUFS.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "custom_nodes")]

import numpy as np  # noqa: E402

from shotline.core import speech as speech_module  # noqa: E402
from shotline.core.audio_mix import (duck_music, integrated_loudness, mix_dialogue_over_music,  # noqa: E402
                                     resample)
from shotline.core.speech import SpeechEngineError, load_piper_voice, piper_voice_files, speak  # noqa: E402
from timing import best_seconds  # noqa: E402  (bench/timing.py, beside this script)

SENTENCES = [
    "Meet me at the old lighthouse when the tide goes out.",
    "I told you already, the key was never in the drawer!",
    "If the storm holds off until morning, we can still make the crossing before the harbour closes.",
    "Why would anyone leave a light burning in an empty house?",
]
RATE = 48000


def speech_rows(repeat: int) -> list[tuple]:
    rows = []
    start = time.perf_counter()
    load_piper_voice(*piper_voice_files(speech_module.DEFAULT_VOICES["piper"]))
    rows.append(("piper: load the voice (once per process)", time.perf_counter() - start, "s", None))
    for engine in ("piper", "espeak-ng", "edge-tts"):
        synthesis, audio = 0.0, 0.0
        try:
            for sentence in SENTENCES:
                seconds = best_seconds(lambda sentence=sentence, engine=engine: speak(sentence, engine), repeat)
                synthesis += seconds
                audio += speak(sentence, engine).duration_s
        except SpeechEngineError as error:
            rows.append((f"{engine}: unavailable ({str(error)[:60]}...)", None, "", None))
            continue
        rows.append((f"{engine}: real-time factor, {len(SENTENCES)} sentences ({audio:.1f} s of speech)",
                     synthesis / audio, "x RT", 0.2))
    with tempfile.TemporaryDirectory() as folder:
        line = speak(SENTENCES[2], "piper", cache_dir=folder)
        hit = best_seconds(lambda: speak(SENTENCES[2], "piper", cache_dir=folder), repeat * 5)
        rows.append((f"cache hit ({line.duration_s:.1f} s line)", hit * 1000, "ms", None))
        speech_module._edge_failures.clear()
        start = time.perf_counter()
        fallback = speak(SENTENCES[0], "auto", cache_dir=folder)
        edge = next((reason for reason in fallback.fallbacks if reason.startswith("edge-tts")), None)
        rows.append((f"auto, first line: {fallback.engine} spoke"
                     + (" after edge-tts failed" if edge else ""), time.perf_counter() - start, "s", None))
        start = time.perf_counter()
        again = speak(SENTENCES[1], "auto", cache_dir=folder)
        rows.append((f"auto, next line: {again.engine} spoke"
                     + (" (edge-tts skipped)" if any("skipped" in r for r in again.fallbacks) else ""),
                     time.perf_counter() - start, "s", None))
    return rows


def mix_rows(repeat: int) -> list[tuple]:
    line = speak(" ".join(SENTENCES), "piper")
    voice = resample(line.waveform, line.sample_rate, RATE)
    length = 60 * RATE
    dialogue = np.zeros((1, length), np.float32)
    for start in range(0, length - voice.shape[1], voice.shape[1] + 2 * RATE):  # lines with 2 s pauses
        dialogue[:, start:start + voice.shape[1]] = voice
    t = np.arange(length) / RATE
    noise = np.random.default_rng(0).standard_normal((2, length)) * 0.02
    music = (np.stack([0.2 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)]) + noise)
    music = music.astype(np.float32)
    mix = lambda: mix_dialogue_over_music(dialogue, music, RATE)  # noqa: E731
    return [
        ("ducking (duck_music), 60 s stereo 48 kHz", best_seconds(lambda: duck_music(music, dialogue, RATE), repeat),
         "s", None),
        ("BS.1770 integrated loudness, 60 s stereo", best_seconds(lambda: integrated_loudness(music, RATE), repeat),
         "s", None),
        ("duck + mix + normalise to -16 LUFS, 60 s", best_seconds(mix, repeat), "s", None),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = speech_rows(args.repeat) + mix_rows(args.repeat)
    print(f"{'step':<72} {'value':>9} {'unit':>5} {'target':>7}  ok")
    for name, value, unit, target in rows:
        shown = "" if value is None else f"{value:9.3f}"
        ok = "" if target is None or value is None else ("yes" if value <= target else "NO")
        print(f"{name:<72} {shown:>9} {unit:>5} {'' if target is None else f'{target:g}':>7}  {ok}")


if __name__ == "__main__":
    main()
