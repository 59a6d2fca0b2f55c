"""The pack inside a real ComfyUI server: it loads, and its node reports real numbers."""

import cv2
import pytest

from shotline.core.image_quality import QualityThresholds, assess_image
from tests.images import blurred, comfy_example_image, save_png

pytestmark = pytest.mark.integration


def quality_graph(filename: str, min_side: int = 256) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": filename}},
        "2": {"class_type": "ShotQualityScore",
              "inputs": {"image": ["1", 0], "min_sharpness": 100.0, "min_contrast": 0.08, "max_clipped": 0.15,
                         "min_side": min_side}},
    }


def test_pack_loads_without_import_failure(comfy, comfy_server):
    info = comfy.get("/object_info/ShotQualityScore")["ShotQualityScore"]
    assert info["output_node"] is True
    assert info["category"] == "Shotline/checks"
    assert info["output"] == ["IMAGE", "FLOAT", "BOOLEAN", "STRING"]
    assert comfy_server.import_failures() == []
    assert "custom_nodes/shotline" in comfy_server.log_text()


def test_quality_node_numbers_on_known_images(comfy, comfy_server):
    example = comfy_example_image()
    as_loaded = {
        "sharp.png": save_png(example, comfy_server.input_dir / "sharp.png"),
        "soft.png": save_png(blurred(example, 3.0), comfy_server.input_dir / "soft.png"),
        "tiny.png": save_png(cv2.resize(example, (64, 64), interpolation=cv2.INTER_AREA),
                             comfy_server.input_dir / "tiny.png"),
    }
    verdicts = {}
    for name, pixels in as_loaded.items():
        entry = comfy.run(quality_graph(name))
        assert entry["status"]["status_str"] == "success"
        verdicts[name] = entry["outputs"]["2"]["shotline_verdict"][0]
        # the server computes exactly what the pure function computes on the same pixels
        expected = assess_image(pixels, QualityThresholds(min_sharpness=100.0, min_side=256))  # the graph's values
        assert verdicts[name]["images"][0]["sharpness"] == pytest.approx(expected.sharpness, rel=1e-4)
        assert verdicts[name]["score"] == pytest.approx(expected.score, abs=1e-4)

    sharp, soft, tiny = verdicts["sharp.png"], verdicts["soft.png"], verdicts["tiny.png"]
    assert sharp["passed"] and sharp["reasons"] == []
    assert soft["images"][0]["sharpness"] < sharp["images"][0]["sharpness"] / 10
    assert not soft["passed"] and soft["reasons"][0].startswith("image 0: blurry")
    assert soft["score"] < sharp["score"]
    assert not tiny["passed"]
    assert any("too small: 64x64" in reason for reason in tiny["reasons"])
    assert tiny["images"][0]["scores"]["resolution"] == 0.25


def test_out_of_range_threshold_is_a_validation_error(comfy, comfy_server):
    save_png(comfy_example_image(), comfy_server.input_dir / "sharp.png")
    errors = comfy.rejection(quality_graph("sharp.png", min_side=0))["node_errors"]["2"]["errors"]
    assert errors[0]["extra_info"]["input_name"] == "min_side"
