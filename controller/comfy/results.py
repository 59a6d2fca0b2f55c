"""What a render needs around a preset: the checkpoint to use, and the files and verdicts a prompt produced."""
from __future__ import annotations


from shotline_controller.settings import RANDOM_CHECKPOINT_NAME, is_random_checkpoint
from shotline_controller.contract import Shot

VERDICT_UI_KEY = "shotline_verdict"  # what our check nodes put in their ui output
REFINE_UI_KEY = "shotline_refine"    # Face Refine's record: every face, every cycle, its seed and scores
REFINE_CHECK = "face_refine"
TEMP_FOLDER = "temp"                 # ComfyUI's folder type of previews


class RenderError(RuntimeError):
    pass


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
    real = [name for name in available if not is_random_checkpoint(name)]
    if real:
        return real[0]
    if RANDOM_CHECKPOINT_NAME in available:
        return RANDOM_CHECKPOINT_NAME
    raise RenderError("no checkpoint found: put a .safetensors checkpoint in ComfyUI's models/checkpoints "
                      "(or run `python3 install.py` to build the random test checkpoint)")


def collect_results(history_outputs: dict) -> tuple[list[dict], list[dict]]:
    """Files and verdicts from a /history entry's outputs. A file a node reports under two keys (Save MP4: its
    video preview and its probed media) is one file, kept under the first key. Files of type temp (the check
    nodes' annotated previews, PreviewImage) are no shot output: ComfyUI empties its temp folder at every start."""
    files, verdicts, seen = [], [], set()
    for node_id, ui in history_outputs.items():
        for kind, items in ui.items():
            if kind == VERDICT_UI_KEY:
                verdicts += [{**verdict, "node_id": node_id} for verdict in items]
            elif kind == REFINE_UI_KEY:
                verdicts += [{**refine_verdict(record), "node_id": node_id} for record in items]
            elif isinstance(items, list):
                for item in items:
                    if not isinstance(item, dict) or "filename" not in item or item.get("type") == TEMP_FOLDER:
                        continue
                    file = {"node_id": node_id, "kind": kind, "filename": item["filename"],
                            "subfolder": item.get("subfolder", ""), "type": item.get("type", "output")}
                    key = (file["filename"], file["subfolder"], file["type"])
                    if key not in seen:
                        seen.add(key)
                        files.append(file)
    return files, verdicts


def refine_verdict(record: dict) -> dict:
    """Face Refine's record as a verdict row, with the node's own score and pass flag; a record with no score (no
    face of a character was found) scores 0. A repair, not a check: it never decides a shot's status by itself
    (`shot_status`)."""
    return {**record, "check": REFINE_CHECK, "score": record.get("score") or 0.0,
            "passed": bool(record.get("passed"))}


BAND_STATUS = {"approve": "approved", "review": "needs_review", "reject": "rejected"}


def shot_status(verdicts: list[dict]) -> str:
    """A ShotVerdict node's band decides (the worst band if several); without one, every check must pass."""
    bands = [verdict["band"] for verdict in verdicts if verdict.get("check") == "shot"]
    if bands:
        return next(BAND_STATUS[band] for band in ("reject", "review", "approve") if band in bands)
    checks = [verdict for verdict in verdicts if verdict.get("check") != REFINE_CHECK]
    return "approved" if checks and all(verdict["passed"] for verdict in checks) else "rejected"
