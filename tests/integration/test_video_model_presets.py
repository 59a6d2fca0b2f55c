"""The video-model and music presets (Wan 2.1 i2v and first-last-frame, LTX-Video i2v, ACE-Step) on the real server.

No test machine has their weights, so each preset is queued as it is and must be refused only for the model files
the official template names: every error a `value_not_in_list` on a model loader's file input, naming that file.
Any other error (a wrong wire, a missing node, a value out of range) would show among them. That the editor twins
convert back to these API files is checked for every preset in test_preset_workflow.py.
"""
import json
from pathlib import Path

import pytest
from PIL import Image

from shotline_controller.comfy.presets import preset_path

pytestmark = pytest.mark.integration
templates_json = pytest.importorskip("comfyui_workflow_templates_json")
TEMPLATES = Path(templates_json.__file__).parent / "templates"
TEST_IMAGE = "video_model_preset_input.png"

WAN_COMMON = {("CLIPLoader", "clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
              ("VAELoader", "vae_name", "wan_2.1_vae.safetensors"),
              ("CLIPVisionLoader", "clip_name", "clip_vision_h.safetensors")}
# preset -> (the official template it follows, the model files it needs: (loader, input, file))
MODEL_FILES = {
    "wan_i2v": ("image_to_video_wan", WAN_COMMON | {
        ("UNETLoader", "unet_name", "wan2.1_i2v_480p_14B_fp16.safetensors")}),
    "wan_flf2v": ("wan2.1_flf2v_720_f16", WAN_COMMON | {
        ("UNETLoader", "unet_name", "wan2.1_flf2v_720p_14B_fp16.safetensors")}),
    "ltxv_i2v": ("ltxv_image_to_video", {
        ("CheckpointLoaderSimple", "ckpt_name", "ltx-video-2b-v0.9.5.safetensors"),
        ("CLIPLoader", "clip_name", "t5xxl_fp16.safetensors")}),
    "music_ace_step": ("audio_ace_step_1_t2a_instrumentals", {
        ("CheckpointLoaderSimple", "ckpt_name", "ace_step_v1_3.5b.safetensors")}),
}


@pytest.fixture(scope="module")
def test_image(comfy_server) -> str:
    Image.new("RGB", (64, 64), (180, 90, 40)).save(Path(comfy_server.input_dir) / TEST_IMAGE)
    return TEST_IMAGE


def queued_as_is(name: str, image: str) -> dict:
    """The API preset with every LoadImage (Input, End, Anchor Image) pointed at a picture the server has."""
    graph = json.loads(preset_path(name).read_text())
    for node in graph.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
    return graph


def errors_of(answer: dict) -> list[tuple[str, str, str | None, object]]:
    return [(info["class_type"], error["type"], error["extra_info"].get("input_name"),
             error["extra_info"].get("received_value"))
            for info in answer["node_errors"].values() for error in info["errors"]]


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_the_server_refuses_a_preset_only_for_its_missing_model_files(comfy, test_image, name):
    answer = comfy.rejection(queued_as_is(name, test_image))
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    errors = errors_of(answer)
    assert {error_type for _, error_type, _, _ in errors} == {"value_not_in_list"}, errors
    assert {(loader, input_name, value) for loader, _, input_name, value in errors} == MODEL_FILES[name][1]


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_the_model_files_are_the_official_templates(name):
    template, files = MODEL_FILES[name]
    data = json.loads((TEMPLATES / f"{template}.json").read_text())
    listed = {model["name"] for node in data["nodes"] for model in node.get("properties", {}).get("models", [])}
    assert {file for _, _, file in files} <= listed


def test_an_error_besides_the_missing_models_would_be_seen(comfy, test_image):
    graph = queued_as_is("wan_i2v", test_image)
    next(node for node in graph.values() if node["class_type"] == "KSampler")["inputs"]["steps"] = 0
    errors = errors_of(comfy.rejection(graph))
    assert ("KSampler", "value_smaller_than_min", "steps", 0) in errors
