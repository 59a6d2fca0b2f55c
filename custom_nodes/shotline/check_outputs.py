"""What every Shotline check node outputs: the images passed through, a score, a pass flag and the verdict JSON.

The verdict also goes into the node's ui output under `shotline_verdict`, which lands in ComfyUI's /history;
that is where the controller reads it.
"""
import json

from comfy_api.latest import io

VERDICT_UI_KEY = "shotline_verdict"


def check_outputs(images: str = "image", score_tooltip: str = "0..1") -> list:
    return [
        io.Image.Output(display_name=images, tooltip="The input, unchanged, to chain further checks."),
        io.Float.Output(display_name="score", tooltip=score_tooltip),
        io.Boolean.Output(display_name="passed"),
        io.String.Output(display_name="verdict_json", tooltip="Every measurement, score and reason."),
    ]


def verdict_output(images, verdict: dict, *values) -> io.NodeOutput:
    """NodeOutput of the images, `values` (default: the verdict's score and passed), the JSON and the ui entry."""
    values = values or (verdict["score"], verdict["passed"])
    return io.NodeOutput(images, *values, json.dumps(verdict), ui={VERDICT_UI_KEY: [verdict]})
