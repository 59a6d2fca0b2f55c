"""What the editor makes of the Shotline nodes' schemas, read from the real server's /object_info: every node found
by searching "shotline", number widgets that keep the values the presets and the controller write, and device
combos that list only the Vulkan devices this machine has (a saved graph naming another one is refused clearly).

The frontend's rules are ported from comfyui-frontend-package 1.32.9 (ComfyUI 0.3.75): the node search matches a
node's id and display name (Fuse over `name`, `display_name`; no category, no aliases); an INT widget snaps a value
to `min % step + k * step`; a FLOAT widget rounds to 10^-precision, precision from its step (or to its `round`).
tests/integration/test_editor_browser.py checks the same in the real editor.
"""
from __future__ import annotations

import json
import math

import pytest

from shotline.core.ncnn_device import count_vulkan_devices, device_choices
from shotline_controller.comfy.presets import preset_path
from workflows.make_editor_format import _is_link, _ordered_inputs

pytestmark = pytest.mark.integration

API_PRESETS = sorted(path.stem for path in preset_path("x").parent.glob("*.json"))


@pytest.fixture(scope="module")
def object_info(comfy) -> dict:
    return comfy.get("/object_info")


def shotline_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items() if "shotline" in info["python_module"].lower()}


def js_round(value: float) -> int:
    """JavaScript's Math.round: halves go up (Python's round goes to the even one)."""
    return math.floor(value + 0.5)


def int_widget_value(value: int, options: dict) -> int:
    """The value an INT widget holds after it is set to `value` (the frontend's onValueChange)."""
    step = options.get("step", 1)
    if step == 1:
        return js_round(value)
    offset = options.get("min", 0) % step
    return js_round((value - offset) / step) * step + offset


def float_widget_value(value: float, options: dict) -> float:
    """The value a FLOAT widget holds after it is set to `value` (the frontend's onFloatValueChange, with the
    default settings: rounding on, precision from the step)."""
    step = options.get("step", 0.5)
    precision = max(0, -math.floor(math.log10(step)))
    rounding = options.get("round") if options.get("round") else (10 ** -precision if precision else None)
    if not rounding:
        return value
    return min(max(round(js_round(value / rounding) * rounding, precision), options.get("min", -math.inf)),
               options.get("max", math.inf))


def widget_value(value, spec: list):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if kind == "INT":
        return int_widget_value(value, options)
    if kind == "FLOAT":
        return float_widget_value(value, options)
    return value


def test_every_shotline_node_is_found_by_searching_shotline(object_info):
    nodes = shotline_nodes(object_info)
    assert len(nodes) >= 17
    assert {name: info["display_name"] for name, info in nodes.items()
            if "shotline" not in f"{name} {info['display_name']}".lower()} == {}
    # the ids saved graphs name stay what they were
    assert {"ShotQualityScore", "ShotVerdict", "ShotlineUpscale", "ShotlineInterpolateFrames"} <= set(nodes)


def test_shotline_number_widgets_keep_their_defaults_and_every_value_on_their_step(object_info):
    moved = {}
    for name, info in shotline_nodes(object_info).items():
        for input_name, spec in _ordered_inputs(info):
            options = spec[1] if len(spec) > 1 else {}
            if spec[0] not in ("INT", "FLOAT") or "default" not in options:
                continue
            if widget_value(options["default"], spec) != options["default"]:
                moved[f"{name}.{input_name} default"] = (options["default"], widget_value(options["default"], spec))
            if spec[0] == "INT" and options.get("min", 0) % options.get("step", 1):
                moved[f"{name}.{input_name} min"] = (options["min"], options["step"])
    assert moved == {}


def test_the_snapping_port_is_the_one_the_issue_saw():
    assert int_widget_value(512, {"min": 1, "step": 8}) == 513  # Quality's min_side before the fix
    assert int_widget_value(75, {"min": 1, "step": 1}) == 75
    assert float_widget_value(12.0, {"min": 0.1, "step": 0.5}) == 12.0
    assert float_widget_value(0.3333, {"min": 0.0, "step": 0.01}) == 0.33


@pytest.mark.parametrize("name", API_PRESETS)
def test_api_preset_values_survive_the_editor_widgets(object_info, name):
    graph = json.loads(preset_path(name).read_text())
    changed = {}
    for node_id, node in graph.items():
        specs = dict(_ordered_inputs(object_info[node["class_type"]]))
        for input_name, value in node["inputs"].items():
            if input_name not in specs or _is_link(value) or not isinstance(value, (int, float)):
                continue
            if (held := widget_value(value, specs[input_name])) != value:
                changed[f"{node_id} {node['class_type']}.{input_name}"] = (value, held)
    assert changed == {}


def test_device_combos_offer_only_the_vulkan_devices_found(object_info):
    expected = list(device_choices(count_vulkan_devices().gpu_count))
    for node in ("ShotlineUpscale", "ShotlineInterpolateFrames"):
        kind, options = object_info[node]["input"]["required"]["device"]  # V3 combos: ["COMBO", {"options": ...}]
        assert (kind, options["options"]) == ("COMBO", expected), node


def test_a_saved_graph_naming_an_absent_vulkan_device_is_refused_with_the_choices(comfy):
    absent = f"vulkan:{count_vulkan_devices().gpu_count + 3}"
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ShotlineUpscale", "inputs": {"images": ["1", 0], "model": "realesr-animevideov3-x2",
                                                          "device": absent, "tile_size": 0, "output_scale": 0.0,
                                                          "cpu_processes": 1}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ShotlineInterpolateFrames", "inputs": {
            "images": ["1", 0], "mode": "x2", "source_fps": 12.0, "target_fps": 24.0, "engine": "auto",
            "rife_model": "none", "device": absent, "flow_detail": "medium"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    errors = comfy.rejection(graph)["node_errors"]
    for node in ("2", "4"):
        text = json.dumps(errors[node])
        assert f"device '{absent}' is not on this machine" in text and "choose one of cpu, auto" in text, text
