"""Simulation benchmark of the per-character learner (controller/learner.py): attempts per approved shot, the
learner in "explore" mode against the fixed policy (preset defaults and the ladder's first correction).

What the simulation assumes (pure logic, stdlib random):
- 5 characters per seed; each has a hidden best arm per knob, drawn uniformly from the knob's grid around the
  preset (so the preset's value is the best one fifth of the time, and near it more often than not).
- An attempt passes with p = 0.9 x prod_knob exp(-0.3 d^2), d the grid distance of the chosen arm from the hidden
  best, jittered per attempt by a uniform +-0.1 (clipped to 0.02 .. 0.98).
- A failure's reason follows the knob that costs the most: lora_scale / refine_* -> low identity, steps -> blurry,
  sampler -> noisy, cfg -> low contrast; a failure with every knob right is extra people or exposure.
- A correction for a reason lifts the next attempt's p by a hidden per-character amount: one option of each reason
  (drawn, not always the ladder's first) lifts it by 0.35, the others by 0.05 .. 0.15.
- At most 5 attempts per shot; a shot whose 5 attempts fail is not approved. Retries keep the first attempt's
  knobs. A pass counts for each knob's arm it ran with, a failure against the knobs its reason blames
  (corrections.BLAME, as the controller counts them: blurry -> steps and sampler, ...; so an "exposure" failure,
  which the simulation draws with every knob right, still counts against cfg), and a retry's outcome counts for
  the correction it applied (success = that attempt passed).
Measured over shots 101-150 of each character, mean +- sd over 10 seeds.
"""
from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shotline_controller.comfy.corrections import BLAME, FIX_OPTIONS  # noqa: E402
from shotline_controller.learner import Counts, choose, knob_arms  # noqa: E402

PRESET = {"cfg": 7.0, "steps": 20, "sampler": "euler", "lora_scale": 1.0, "refine_denoise": 0.45, "refine_cycles": 3}
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "uni_pc", "ddim")
REASON_OF = {"cfg": "low contrast", "steps": "blurry", "sampler": "noisy", "lora_scale": "low identity",
             "refine_denoise": "low identity", "refine_cycles": "low identity"}
CHARACTERS, SHOTS, MEASURED_FROM, SEEDS, MAX_ATTEMPTS = 5, 150, 100, 10, 5
GRIDS = {knob: knob_arms(knob, value, options=SAMPLERS) for knob, value in PRESET.items()}
DEFAULTS = {knob: knob_arms(knob, value, options=SAMPLERS)[0] if knob == "sampler" else
            next(arm for arm in GRIDS[knob] if float(arm) == float(value)) for knob, value in PRESET.items()}


class Character:
    def __init__(self, rng: random.Random):
        self.best = {knob: rng.randrange(len(arms)) for knob, arms in GRIDS.items()}
        self.lift = {}
        for reason, options in FIX_OPTIONS.items():
            good = rng.choice(options)
            self.lift[reason] = {o: 0.35 if o == good else rng.uniform(0.05, 0.15) for o in options}

    def penalties(self, arms: dict) -> dict:
        return {knob: 0.3 * (GRIDS[knob].index(arms[knob]) - self.best[knob]) ** 2 for knob in GRIDS}

    def attempt(self, arms: dict, lift: float, rng: random.Random) -> tuple[bool, str]:
        costs = self.penalties(arms)
        p = 0.9 * math.exp(-sum(costs.values())) + lift + rng.uniform(-0.1, 0.1)
        if rng.random() < min(0.98, max(0.02, p)):
            return True, ""
        worst = max(costs, key=costs.get)
        return False, REASON_OF[worst] if costs[worst] > 0 else rng.choice(("extra people", "exposure"))


def run_policy(learn: bool, seed: int) -> dict:
    rng, world = random.Random(seed), random.Random(seed + 1000)
    per_shot = defaultdict(list)   # shot index -> (attempts, approved, first passed)
    choose_seconds, choices = 0.0, 0
    for _ in range(CHARACTERS):
        character = Character(world)
        counts: dict[str, dict[str, Counts]] = defaultdict(dict)

        def pick(decision, arms, default):
            nonlocal choose_seconds, choices
            if not learn:
                return default
            start = time.perf_counter()
            arm = choose(decision, arms, counts[decision], default=default, mode="explore", rng=rng).arm
            choose_seconds += time.perf_counter() - start
            choices += 1
            return arm

        def count(decision, arm, passed):
            old = counts[decision].get(arm, Counts())
            counts[decision][arm] = Counts(old.successes + passed, old.failures + (not passed))

        for shot in range(SHOTS):
            arms = {knob: pick(knob, GRIDS[knob], DEFAULTS[knob]) for knob in GRIDS}
            lift, fix, approved, first = 0.0, None, False, False
            for attempt in range(1, MAX_ATTEMPTS + 1):
                passed, reason = character.attempt(arms, lift, world)
                for knob, arm in arms.items():  # a failure counts against the knobs its reason blames
                    if passed or knob in BLAME[reason]:
                        count(knob, arm, passed)
                if fix:
                    count(*fix, passed)
                if passed:
                    approved, first = True, attempt == 1
                    break
                options = FIX_OPTIONS[reason]
                correction = pick(f"fix:{reason}", options, options[0])
                fix = (f"fix:{reason}", correction)
                lift = character.lift[reason][correction]
            per_shot[shot].append((attempt, approved, first))
    return {"per_shot": per_shot, "us_per_choice": 1e6 * choose_seconds / choices if choices else 0.0}


def attempts_per_approved(per_shot: dict, shots: range) -> float:
    rows = [row for shot in shots for row in per_shot[shot]]
    return sum(a for a, _, _ in rows) / max(1, sum(ok for _, ok, _ in rows))


def first_pass(per_shot: dict, shots: range) -> float:
    rows = [row for shot in shots for row in per_shot[shot]]
    return sum(first for _, _, first in rows) / len(rows)


def main() -> None:
    measured = range(MEASURED_FROM, SHOTS)
    results = {name: [run_policy(name == "learner", seed) for seed in range(SEEDS)] for name in ("fixed", "learner")}

    def ms(values):
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    print(f"{CHARACTERS} characters x {SHOTS} shots per seed, {SEEDS} seeds, max {MAX_ATTEMPTS} attempts; "
          f"measured over shots {MEASURED_FROM + 1}-{SHOTS}")
    print(f"{'policy':<10}{'attempts/approved':>20}{'first-attempt pass':>22}{'approved':>14}")
    apa = {}
    for name, runs in results.items():
        apa[name] = [attempts_per_approved(r["per_shot"], measured) for r in runs]
        fp = [first_pass(r["per_shot"], measured) for r in runs]
        ok = [sum(ok for s in measured for _, ok, _ in r["per_shot"][s]) / (len(measured) * CHARACTERS) for r in runs]
        print(f"{name:<10}{ms(apa[name]):>20}{ms(fp):>22}{ms(ok):>14}")
    reductions = [100 * (1 - l / f) for f, l in zip(apa["fixed"], apa["learner"])]
    print(f"reduction in attempts per approved shot: {ms(reductions)} %  (target >= 40 %)")
    print("\nhow fast (attempts per approved shot over the 25 shots ending at shot N)")
    print(f"{'N':>5}{'fixed':>16}{'learner':>16}{'reduction %':>16}")
    for end in (25, 50, 100, 150):
        window = range(end - 25, end)
        f = [attempts_per_approved(r["per_shot"], window) for r in results["fixed"]]
        l = [attempts_per_approved(r["per_shot"], window) for r in results["learner"]]
        red = [100 * (1 - b / a) for a, b in zip(f, l)]
        print(f"{end:>5}{ms(f):>16}{ms(l):>16}{ms(red):>16}")
    us = [r["us_per_choice"] for r in results["learner"]]
    print(f"\ntime per choice: {statistics.mean(us):.1f} µs (mean over seeds; 2 to 7 arms)")


if __name__ == "__main__":
    main()
