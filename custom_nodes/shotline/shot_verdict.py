"""ShotVerdict: quality, identity and temporal verdicts combined into approve / review / reject."""
import json

from comfy_api.latest import io

from .check_outputs import verdict_output
from .core.shot_verdict import BandThresholds, decide_band

DEFAULTS = BandThresholds()


def _parse(name: str, text: str | None) -> dict | None:
    if text is None or not text.strip():
        return None
    try:
        verdict = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not a verdict JSON from a Shotline check node: {error}") from None
    if not isinstance(verdict, dict) or "score" not in verdict:
        raise ValueError(f"{name} is not a verdict JSON from a Shotline check node (no score)")
    return verdict


class ShotVerdict(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        def threshold(name, default, tooltip):
            return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01, tooltip=tooltip)
        return io.Schema(
            node_id="ShotVerdict",
            display_name="Shot Verdict (Shotline)",
            category="Shotline/checks",
            description="Combines the check verdicts into a band: approve, review or reject. Weights: identity "
                        "0.6, quality 0.4, temporal 0.2, over the checks connected.",
            is_output_node=True,
            inputs=[
                io.Image.Input("image"),
                io.String.Input("quality_verdict", force_input=True, tooltip="verdict_json of Shot Quality Score"),
                io.String.Input("identity_verdict", force_input=True, optional=True,
                                tooltip="verdict_json of Identity Check"),
                io.String.Input("temporal_verdict", force_input=True, optional=True,
                                tooltip="verdict_json of Temporal Coherence (video shots)"),
                threshold("approve_at", DEFAULTS.approve_at, "Overall score at or above which a shot whose "
                                                               "checks all pass is approved."),
                threshold("reject_below", DEFAULTS.reject_below, "Overall score below which a shot is rejected."),
                threshold("identity_pass", DEFAULTS.identity_pass, "Identity score a character needs, unless its "
                                                                     "sheet sets its own."),
                threshold("golden_at", DEFAULTS.golden_at, "An approved shot whose every character scores at "
                                                             "least this is golden (dataset material)."),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                io.Boolean.Output(display_name="approved"),
                io.String.Output(display_name="band"),
                io.String.Output(display_name="verdict_json"),
            ],
        )

    @classmethod
    def execute(cls, image, quality_verdict, approve_at, reject_below, identity_pass, golden_at,
                identity_verdict=None, temporal_verdict=None) -> io.NodeOutput:
        thresholds = BandThresholds(approve_at=approve_at, reject_below=reject_below, identity_pass=identity_pass,
                                    golden_at=golden_at)
        identity = _parse("identity_verdict", identity_verdict)
        verdict = decide_band(_parse("quality_verdict", quality_verdict), identity,
                              _parse("temporal_verdict", temporal_verdict), thresholds)
        # the shot verdict holds no faces: its preview boxes them from the identity verdict it judged
        return verdict_output(image, verdict, verdict["passed"], verdict["band"], cls=cls, faces_from=identity)
