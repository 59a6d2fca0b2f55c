"""What every Shotline check node outputs: the images passed through, a score, a pass flag and the verdict JSON.

The verdict also goes into the node's ui output under `shotline_verdict`, which lands in ComfyUI's /history;
that is where the controller reads it. Beside it the ui holds what the editor shows on the node: preview images
(ComfyUI's temp folder) with the faces boxed and the verdict as a caption, and the same one-line summary as text.
"""
import json

import numpy as np
import torch
from comfy_api.latest import io, ui

from .core.verdict_preview import MAX_PREVIEW_FRAMES, preview_frames, summary_line

VERDICT_UI_KEY = "shotline_verdict"


def check_outputs(images: str = "image", score_tooltip: str = "0..1") -> list:
    return [
        io.Image.Output(display_name=images, tooltip="The input, unchanged, to chain further checks."),
        io.Float.Output(display_name="score", tooltip=score_tooltip),
        io.Boolean.Output(display_name="passed"),
        io.String.Output(display_name="verdict_json", tooltip="Every measurement, score and reason."),
    ]


def verdict_ui(images, verdict: dict, cls=None, faces_from: dict | None = None, key: str = VERDICT_UI_KEY) -> dict:
    """The ui dict of a check node: preview images + "text" (as PreviewImage and PreviewText give them) + the
    verdict under `key` (VERDICT_UI_KEY, which the controller collects as verdicts). Faces are drawn from
    `faces_from` (an identity verdict) or the verdict itself."""
    first = images[:MAX_PREVIEW_FRAMES]  # only these are drawn: a long video stays where it is
    previews = preview_frames(first.cpu().numpy() if isinstance(first, torch.Tensor) else first, verdict, faces_from)
    shown = {}
    if previews:
        # ComfyUI saves 255 * value truncated to uint8: the half step makes it give back exactly our pixels
        batch = torch.from_numpy((np.stack(previews).astype(np.float32) + 0.5) / 255.0)
        shown = ui.PreviewImage(batch, cls=cls).as_dict()
    return {**shown, **ui.PreviewText(summary_line(verdict)).as_dict(), key: [verdict]}


def verdict_output(images, verdict: dict, *values, cls=None, faces_from: dict | None = None) -> io.NodeOutput:
    """NodeOutput of the images, `values` (default: the verdict's score and passed), the JSON and the ui
    (`verdict_ui`). `cls` is the node class, for the workflow ComfyUI writes into the preview PNGs."""
    values = values or (verdict["score"], verdict["passed"])
    return io.NodeOutput(images, *values, json.dumps(verdict), ui=verdict_ui(images, verdict, cls, faces_from))
