"""The dispatcher's learner: what a shot's first attempt runs with where the shot leaves a field open, which
correction follows a failure, and the terms the shot's characters learned from rejections.

    first attempt   for each of learner.KNOBS the preset takes (a node input holds it) and the shot does not set,
                    a grid of values around the preset's own, within the node's range on the server
                    (learner.knob_arms); the learner picks one from the outcomes of the shot's characters so far
    a failure       for each reason of corrections.FIX_OPTIONS in the verdicts, one of its corrections
    every attempt   records `knobs` (the value of every knob it ran with, chosen, given or the preset's, and the
                    fixes that made it), which its outcome is counted under, and `learned` (each choice with the
                    statistics behind it: "why cfg 8.5?")

A shot's explicit values always win; `learning: off` (per shot, or for a batch in its defaults) runs the
preset's values and the fixed ladder, still recording knobs (its outcomes teach the learner too); `exploit`
takes the best arm so far without trying others. Learned negative terms are added to the shot's negative where
a node of the preset takes it by title (an untitled graph keeps its own negative).
"""
from __future__ import annotations

import logging
import random
import uuid

from shotline_controller.comfy.corrections import FIX_OPTIONS, default_fix, failure_reasons
from shotline_controller.comfy.graph_roles import is_link
from shotline_controller.comfy.presets import ids_titled, input_spec, shot_targets
from shotline_controller.contract import Shot
from shotline_controller.learner import KNOBS, arm_value, choose, knob_arms
from shotline_controller.store.learning import LearningStore

log = logging.getLogger("shotline.learning")
NEGATIVE_TITLES = ("Negative Prompt", "Character Prompt", "Face Refine", "Face Repair")


def arm_of(value) -> str:
    """The canonical arm for a value: 8.0 -> "8", 8.5 -> "8.5", "euler" -> "euler"."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def preset_knobs(graph: dict, object_info: dict | None) -> dict[str, dict]:
    """knob -> {"value", "low", "high", "options"}: the preset's own value of each knob a node input holds
    (the node titled Sampler first), with the range or options the server gives that input."""
    found: dict[str, dict] = {}
    targets, _ = shot_targets(graph)
    for title in sorted(targets, key=lambda name: name != "Sampler"):
        for node_id, inputs in targets[title]:
            node = graph[node_id]
            for input_name, field in inputs.items():
                if field not in KNOBS or field in found or input_name not in node["inputs"]:
                    continue
                value = node["inputs"][input_name]
                if is_link(value) or isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    continue
                spec = input_spec(object_info or {}, node["class_type"], input_name) or []
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                choices = spec[0] if spec and isinstance(spec[0], list) else options.get("options")
                found[field] = {"value": value, "low": options.get("min"), "high": options.get("max"),
                                "options": choices if isinstance(choices, list) else None}
    return found


def mode_of(params) -> str:
    return (params.get("learning") if isinstance(params, dict) else params.learning) or "explore"


class ShotLearning:
    def __init__(self, pool):
        self.store = LearningStore(pool)

    async def first_attempt(self, shot_id: uuid.UUID, attempt_no: int, params: Shot, graph: dict,
                            object_info: dict | None, correction: dict | None,
                            has_loras: bool) -> tuple[Shot, dict, dict]:
        """The shot's params with the learner's choices and learned negatives, what the attempt records
        ({"knobs", "learned", "chosen": the values picked, which its corrections start from}), and what goes
        into its inputs."""
        knobs_here = preset_knobs(graph, object_info)
        if not has_loras:
            knobs_here.pop("lora_scale", None)  # no LoRA to scale: nothing to learn
        mode = mode_of(params)
        characters = params.characters or []
        learned: dict = {}
        chosen: dict = {}
        open_knobs = [knob for knob in knobs_here if getattr(params, knob) is None]
        if mode != "off" and open_knobs and correction is None:  # corrected attempts keep what the first ran
            counts = await self.store.counts(characters, open_knobs)
            rng = random.Random(f"{shot_id}:{attempt_no}")
            for knob in open_knobs:
                here = knobs_here[knob]
                default = arm_of(here["value"])
                arms = [arm_of(arm_value(knob, arm)) for arm in knob_arms(
                    knob, here["value"], low=here["low"], high=here["high"], options=here["options"])]
                if default not in arms:
                    arms.insert(0, default)
                choice = choose(knob, arms, counts.get(knob, {}), default=default, mode=mode, rng=rng)
                learned[knob] = choice.as_record()
                if choice.arm != default:
                    chosen[knob] = arm_value(knob, choice.arm)
        if chosen:
            params = params.model_copy(update=chosen)
        knobs = {knob: arm_of(getattr(params, knob) if getattr(params, knob) is not None else here["value"])
                 for knob, here in knobs_here.items()}
        for reason, option in ((correction or {}).get("fixes") or {}).items():
            knobs[f"fix:{reason}"] = option
        learned.update((correction or {}).get("learned") or {})  # the fixes chosen for this attempt, and why
        inputs = {}
        terms = await self.store.active_negatives(characters)
        if terms and (params.negative or any(ids_titled(graph, title) for title in NEGATIVE_TITLES)):
            present = {part.strip().lower() for part in params.negative.split(",")}
            added = [term for term in terms if term.lower() not in present]
            if added:
                negative = ", ".join(([params.negative] if params.negative.strip() else []) + added)
                params = params.model_copy(update={"negative": negative})
                inputs["learned.negative"] = added
        return params, {"knobs": knobs, "learned": learned, "chosen": chosen}, inputs

    async def fixes(self, shot_id: uuid.UUID, attempt_no: int, params: dict, verdicts: list[dict],
                    previous: dict | None) -> tuple[dict, dict]:
        """For each failure reason the verdicts give, the correction the learner picks: ({reason: option},
        {"fix:<reason>": the choice's record})."""
        mode = mode_of(params)
        reasons = failure_reasons(params, verdicts)
        if mode == "off" or not reasons:
            return {}, {}
        decisions = [f"fix:{reason}" for reason in reasons]
        counts = await self.store.counts(params.get("characters") or [], decisions)
        rng = random.Random(f"{shot_id}:{attempt_no}:fix")
        fixes, records = {}, {}
        for reason, decision in zip(reasons, decisions):
            choice = choose(decision, list(FIX_OPTIONS[reason]), counts.get(decision, {}),
                            default=default_fix(reason, previous), mode=mode, rng=rng)
            fixes[reason] = choice.arm
            records[decision] = choice.as_record()
        return fixes, records
