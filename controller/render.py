"""Render a shot list on one ComfyUI server and record every attempt in PostgreSQL."""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Callable

from .comfy_client import ComfyBackend, ComfyUnavailable, PromptLost, PromptRejected
from .presets import fill_preset, load_preset
from .settings import RANDOM_CHECKPOINT_NAME
from .shot_list import Shot
from .shot_store import ShotStore

log = logging.getLogger("shotline.render")
VERDICT_UI_KEY = "shotline_verdict"  # what our check nodes put in their ui output


class RenderError(RuntimeError):
    pass


@dataclass
class ShotOutcome:
    shot: Shot
    status: str
    prompt_id: str
    score: float | None
    reasons: list[str]


def combo_options(object_info: dict, node_class: str, input_name: str) -> list[str]:
    """The choices of a combo input in /object_info, in either of the formats ComfyUI uses."""
    spec = object_info.get(node_class, {}).get("input", {}).get("required", {}).get(input_name)
    if not spec:
        return []
    if spec[0] == "COMBO":
        return list(spec[1].get("options", []))
    return list(spec[0]) if isinstance(spec[0], list) else []


def choose_checkpoint(shot: Shot, available: list[str]) -> str:
    """The shot's checkpoint when it names one; else the user's first checkpoint; else the random test one."""
    if shot.checkpoint:
        if shot.checkpoint not in available:
            raise RenderError(f"shot {shot.id}: checkpoint {shot.checkpoint!r} is not in ComfyUI's "
                              f"models/checkpoints (found: {', '.join(available) or 'none'})")
        return shot.checkpoint
    real = [name for name in available if name != RANDOM_CHECKPOINT_NAME]
    if real:
        return real[0]
    if RANDOM_CHECKPOINT_NAME in available:
        return RANDOM_CHECKPOINT_NAME
    raise RenderError("no checkpoint found: put a .safetensors checkpoint in ComfyUI's models/checkpoints "
                      "(or run `python3 install.py` to build the random test checkpoint)")


def collect_results(history_outputs: dict) -> tuple[list[dict], list[dict]]:
    """Files and verdicts from a /history entry's outputs."""
    files, verdicts = [], []
    for node_id, ui in history_outputs.items():
        for kind, items in ui.items():
            if kind == VERDICT_UI_KEY:
                verdicts += [{**verdict, "node_id": node_id} for verdict in items]
            elif isinstance(items, list):
                files += [{"node_id": node_id, "kind": kind, "filename": item["filename"],
                           "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")}
                          for item in items if isinstance(item, dict) and "filename" in item]
    return files, verdicts


BAND_STATUS = {"approve": "approved", "review": "needs_review", "reject": "rejected"}


def shot_status(verdicts: list[dict]) -> str:
    """A ShotVerdict node's band decides (the worst band if several); without one, every check must pass."""
    bands = [verdict["band"] for verdict in verdicts if verdict.get("check") == "shot"]
    if bands:
        return next(BAND_STATUS[band] for band in ("reject", "review", "approve") if band in bands)
    return "approved" if verdicts and all(verdict["passed"] for verdict in verdicts) else "rejected"


async def render_shots(shots: list[Shot], source: str, store: ShotStore, client: ComfyBackend,
                       on_shot: Callable[[ShotOutcome], None] | None = None) -> uuid.UUID:
    presets = {name: load_preset(name) for name in {shot.workflow for shot in shots}}  # fail before queueing
    available = combo_options(await client.object_info("CheckpointLoaderSimple"), "CheckpointLoaderSimple",
                              "ckpt_name")
    checkpoints = {shot.id: choose_checkpoint(shot, available) for shot in shots}
    if RANDOM_CHECKPOINT_NAME in checkpoints.values():
        log.warning("rendering with %s: random weights, so the images are coloured noise. Put a real checkpoint "
                    "in ComfyUI's models/checkpoints to get pictures.", RANDOM_CHECKPOINT_NAME)

    batch_id, shot_ids = await store.create_batch(source, shots)
    for shot, shot_id in zip(shots, shot_ids):
        prompt_id = str(uuid.uuid4())
        graph, inputs = fill_preset(presets[shot.workflow], shot, checkpoints[shot.id],
                                    filename_prefix=f"shotline/{str(batch_id)[:8]}/{shot.id}")
        attempt_id = await store.start_attempt(shot_id, prompt_id, client.base_url, inputs)
        try:
            result = await client.run(graph, prompt_id)
        except PromptRejected as rejected:
            await store.finish_attempt(attempt_id, shot_id, "failed", [], [], error=rejected.body)
            outcome = ShotOutcome(shot, "failed", prompt_id, None, [str(rejected)])
        except (ComfyUnavailable, PromptLost) as error:
            # The shot goes back to the queue: nothing the user queued is lost to a server that went away.
            await store.finish_attempt(attempt_id, shot_id, "queued", [], [], error={"exception_message": str(error)})
            raise RenderError(f"ComfyUI at {client.base_url} became unavailable: {error}") from error
        else:
            files, verdicts = collect_results(result.outputs)
            if result.status == "error":
                status = "failed"
                reasons = [f"{result.error.get('node_type', '?')} (node {result.error.get('node_id')}): "
                           f"{result.error.get('exception_message', '').strip()}"]
            else:
                status = shot_status(verdicts)
                reasons = [reason for verdict in verdicts for reason in verdict.get("reasons", [])]
                if not verdicts:
                    reasons.append(f"preset {shot.workflow!r} reported no verdict")
            await store.finish_attempt(attempt_id, shot_id, status, files, verdicts,
                                       error=result.error if result.status == "error" else None)
            score = min((verdict["score"] for verdict in verdicts), default=None)
            outcome = ShotOutcome(shot, status, prompt_id, score, reasons)
        if on_shot:
            on_shot(outcome)
    return batch_id
