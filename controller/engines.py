"""Engine selection: which preset renders a shot that names no workflow of its own, by what the shot is.

    lora             a character of the shot has LoRAs on its sheet      (its identity rides on them)
    image_to_video   at most one character and a source image            (its own `image`, or `continuity:
                                                                          previous`: the last frame before it)
    text_to_video    several characters, or no source image

The rules are given in a shot list's `defaults.engines` (or a shot's own `engines`), each naming a preset; the
first rule that applies and names one wins; when none does, the shot keeps its workflow (the defaults', else
shot_txt2img). A shot with its own `workflow` is never chosen for. The rule that fired is kept with the shot
(`engine_rule`) and so in every attempt's record. Pure logic: the character library is asked through `has_loras`.
"""
from __future__ import annotations

from typing import Callable

RULE_REASONS = {  # the rules, in the order they are tried
    "lora": "a character with LoRAs",
    "image_to_video": "at most one character and a source image",
    "text_to_video": "several characters, or no source image",
}


def applying_rules(characters: list[str], has_source: bool, has_loras: Callable[[str], bool]) -> list[str]:
    """The rules that apply to a shot, in the order they are tried."""
    applying = []
    if any(has_loras(name) for name in characters):
        applying.append("lora")
    if len(characters) <= 1 and has_source:
        applying.append("image_to_video")
    else:
        applying.append("text_to_video")
    return applying


def choose_engine(engines: dict | None, characters: list[str], has_source: bool,
                  has_loras: Callable[[str], bool]) -> tuple[str, str] | None:
    """(preset, what fired, e.g. "image_to_video: at most one character and a source image") or None when no
    rule names a preset for this shot."""
    if not engines:
        return None
    for rule in applying_rules(characters, has_source, has_loras):
        if engines.get(rule):
            return engines[rule], f"{rule}: {RULE_REASONS[rule]}"
    return None
