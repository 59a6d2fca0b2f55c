"""The learner's choices: Beta-Bernoulli Thompson sampling over a small bounded grid of values ("arms") per
decision. Pure logic (stdlib only); the counts come from PostgreSQL (store/learning.py), the choices are applied
by workers/learning.py.

    knob            arms around the preset's own value v, clipped to the input's range
    cfg             v-2, v-1, v, v+1, v+2                       (0 .. 30)
    steps           v x 0.6, 0.8, 1, 1.25, 1.5 (whole steps)    (1 .. 150)
    sampler         v, and those of euler, euler_ancestral, dpmpp_2m, dpmpp_2m_sde, dpmpp_sde, uni_pc the
                    server offers
    lora_scale      v-0.4, v-0.2, v, v+0.2, v+0.4               (0 .. 2)
    refine_denoise  v-0.2, v-0.1, v, v+0.1, v+0.2               (0.05 .. 1)
    refine_cycles   v-2, v-1, v, v+1, v+2                       (1 .. 8)

A decision for a failure (`fix:<reason>`) chooses between the corrections of
corrections.FIX_OPTIONS (the first of each is the fixed ladder's own choice).

The rule, in one sentence: each arm's pass rate is Beta(1 + passed, 1 + failed) (the preset's own arm starts
two passes ahead, Beta(3, 1)), one draw is taken per arm and pulled halfway back to the arm's mean (EXPLORE), and
the highest wins, ties going to the preset's arm. So an untried grid is not explored blindly, and exploration
fades as evidence grows. `exploit` takes the highest mean; `off` is the caller not asking.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

KNOBS = ("cfg", "steps", "sampler", "lora_scale", "refine_denoise", "refine_cycles")
MODES = ("explore", "exploit", "off")
EXPLORE = 0.5          # how much of a draw's distance from its mean is kept
DEFAULT_EDGE = 2       # prior passes the preset's own arm starts with
COMMON_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "uni_pc")
_STEPS = {"cfg": (-2, -1, 0, 1, 2), "lora_scale": (-0.4, -0.2, 0, 0.2, 0.4),
          "refine_denoise": (-0.2, -0.1, 0, 0.1, 0.2), "refine_cycles": (-2, -1, 0, 1, 2)}
_STEPS_FACTORS = (0.6, 0.8, 1.0, 1.25, 1.5)
_BOUNDS = {"cfg": (0.0, 30.0), "steps": (1, 150), "lora_scale": (0.0, 2.0), "refine_denoise": (0.05, 1.0),
           "refine_cycles": (1, 8)}
_INTEGER = {"steps", "refine_cycles"}


@dataclass(frozen=True)
class Counts:
    successes: int = 0
    failures: int = 0

    @property
    def trials(self) -> int:
        return self.successes + self.failures


def _canonical(knob: str, value) -> str:
    value = arm_value(knob, str(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def arm_value(knob: str, arm: str) -> int | float | str:
    """The value an arm puts in the shot field."""
    if knob in _INTEGER:
        return int(round(float(arm)))
    if knob in _BOUNDS:
        return round(float(arm), 3)
    return arm


def knob_arms(knob: str, preset_value, *, low=None, high=None, options: Sequence[str] | None = None) -> tuple[str, ...]:
    """The grid for `knob` around the preset's value (always an arm), within [low, high] and the knob's bounds."""
    if knob == "sampler":
        offered = set(options or ())
        return tuple(dict.fromkeys([str(preset_value), *(name for name in COMMON_SAMPLERS if name in offered)]))
    lowest, highest = _BOUNDS[knob]
    lowest = max(lowest, low) if low is not None else lowest
    highest = min(highest, high) if high is not None else highest
    value = float(preset_value)
    if knob == "steps":
        candidates = [round(value * factor) for factor in _STEPS_FACTORS]
    else:
        candidates = [value + step for step in _STEPS[knob]]
    arms = [_canonical(knob, value)]
    arms += [_canonical(knob, c) for c in candidates if lowest <= c <= highest]
    return tuple(sorted(dict.fromkeys(arms), key=float))


def _prior(arm: str, default: str | None) -> tuple[int, int]:
    return (1 + DEFAULT_EDGE, 1) if arm == default else (1, 1)


def _posterior(arm: str, counts: Mapping[str, Counts], default: str | None) -> tuple[int, int]:
    a, b = _prior(arm, default)
    found = counts.get(arm, Counts())
    return a + found.successes, b + found.failures


@dataclass(frozen=True)
class Choice:
    decision: str
    arm: str
    default: str
    mode: str
    stats: dict
    why: str

    def as_record(self) -> dict:
        return {"decision": self.decision, "arm": self.arm, "default": self.default, "mode": self.mode,
                "stats": self.stats, "why": self.why}


def choose(decision: str, arms: Sequence[str], counts: Mapping[str, Counts], *, default: str, mode: str,
           rng: random.Random) -> Choice:
    """One arm of `arms` for `decision`, by the rule in the module docstring; the numbers behind it."""
    if mode not in ("explore", "exploit"):
        raise ValueError(f"learning mode {mode!r}: choose only explores or exploits")
    stats, scores = {}, {}
    for arm in arms:
        a, b = _posterior(arm, counts, default)
        mean = a / (a + b)
        draw = rng.betavariate(a, b)
        score = mean + EXPLORE * (draw - mean) if mode == "explore" else mean
        found = counts.get(arm, Counts())
        stats[arm] = {"successes": found.successes, "failures": found.failures, "mean": round(mean, 4),
                      "draw": round(draw, 4) if mode == "explore" else None}
        scores[arm] = score
    arm = max(arms, key=lambda name: (scores[name], name == default))
    name = decision.removeprefix("fix:")
    chosen = stats[arm]
    tried = chosen["successes"] + chosen["failures"]
    runner = max((other for other in arms if other != arm), key=lambda other: scores[other], default=None)
    other = (f"; next {runner}: mean {stats[runner]['mean']:.2f} over {stats[runner]['successes'] + stats[runner]['failures']}"
             if runner is not None else "")
    how = f"drew {chosen['draw']:.2f} (pulled to {scores[arm]:.2f})" if mode == "explore" else "the highest mean"
    why = (f"{name} {arm}: posterior mean {chosen['mean']:.2f} over {tried} attempts ({chosen['successes']} passed),"
           f" {how}, best of {len(arms)} arms{other}" + (" (the preset's own)" if arm == default else ""))
    return Choice(decision, arm, default, mode, stats, why)


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(math.floor(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def preferences(counts: Mapping[str, Counts], *, default: str | None = None, rng: random.Random | None = None,
                draws: int = 2000) -> dict | None:
    """What the learner prefers among the tried arms now: {"arm", "mean", "low", "high" (a 90 % credible
    interval of its pass rate), "trials", "p_best" (Monte-Carlo probability it is the best)}; None untried."""
    arms = [arm for arm, found in counts.items() if found.trials]
    if not arms:
        return None
    rng = rng or random.Random(0)
    posterior = {arm: _posterior(arm, counts, default) for arm in arms}
    samples = {arm: [rng.betavariate(a, b) for _ in range(draws)] for arm, (a, b) in posterior.items()}
    wins = dict.fromkeys(arms, 0)
    for index in range(draws):
        wins[max(arms, key=lambda arm: samples[arm][index])] += 1
    best = max(arms, key=lambda arm: (posterior[arm][0] / sum(posterior[arm]), arm == default))
    ordered = sorted(samples[best])
    a, b = posterior[best]
    return {"arm": best, "mean": a / (a + b), "low": _quantile(ordered, 0.05), "high": _quantile(ordered, 0.95),
            "trials": counts[best].trials, "p_best": wins[best] / draws}
