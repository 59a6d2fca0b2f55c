"""LoadCharacter and ShotVerdict inside the real ComfyUI server."""
import json

import numpy as np
import pytest

from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from shotline.core.characters import parse_sheet, write_character
from tests.images import save_png
from tests.integration.test_comfy_pack import quality_graph
from tests.images import blurred, comfy_example_image

pytestmark = pytest.mark.integration


def test_character_from_an_extra_model_paths_library(comfy, comfy_server):
    sheet = parse_sheet({"name": "Aiko", "style": "anime", "design_prompt": "Aiko, silver bob, red scarf",
                         "negative_prompt": "blue eyes"})
    write_character(comfy_server.characters_dir, "aiko", sheet, {"front.png": b"not read by this node"})
    options = comfy.get("/object_info/ShotlineLoadCharacter")["ShotlineLoadCharacter"]["input"]["required"][
        "character"]
    assert options[0] == "COMBO" and "aiko" in options[1]["options"]
    graph = {
        "1": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": "aiko"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
    }
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["2"]["text"] == ["Aiko, silver bob, red scarf"]
    assert entry["outputs"]["3"]["text"] == ["blue eyes"]


def test_missing_character_is_a_validation_error(comfy):
    rejection = comfy.rejection({"1": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": "nobody"}},
                                 "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert "nobody" in json.dumps(rejection)


@pytest.mark.parametrize("picture, band", [("sharp", "approve"), ("soft", "review")])
def test_shot_verdict_bands_a_quality_verdict(comfy, comfy_server, picture, band):
    example = comfy_example_image()
    save_png(example if picture == "sharp" else blurred(example, 1.2), comfy_server.input_dir / f"{picture}.png")
    graph = quality_graph(f"{picture}.png")
    graph["3"] = {"class_type": "ShotVerdict", "inputs": {
        "image": ["2", 0], "quality_verdict": ["2", 3], "approve_at": 0.85, "reject_below": 0.4,
        "identity_pass": 0.75, "golden_at": 0.85}}
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [verdict] = entry["outputs"]["3"]["shotline_verdict"]
    [quality] = entry["outputs"]["2"]["shotline_verdict"]
    assert verdict["check"] == "shot" and verdict["band"] == band
    assert verdict["score"] == pytest.approx(quality["score"], abs=1e-4)  # quality is the only check here
    assert verdict["golden"] is False  # no identity check, so never golden


def test_temporal_coherence_flags_a_flicker_in_a_frame_batch(comfy, comfy_server):
    example = comfy_example_image()
    save_png(example, comfy_server.input_dir / "steady.png")
    save_png(np.clip(example * 1.5, 0, 1), comfy_server.input_dir / "bright.png")

    def frames(second: str) -> dict:
        return {
            "1": {"class_type": "LoadImage", "inputs": {"image": "steady.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": second}},
            "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
            "4": {"class_type": "ShotlineTemporalCoherence", "inputs": {
                "frames": ["3", 0], "min_ssim": 0.5, "max_luma_jump": 0.06}},
        }
    steady = comfy.run(frames("steady.png"))["outputs"]["4"]["shotline_verdict"][0]
    flicker = comfy.run(frames("bright.png"))["outputs"]["4"]["shotline_verdict"][0]
    assert steady["check"] == "temporal" and steady["passed"] and steady["frame_count"] == 2
    assert steady["ssim"] == [pytest.approx(1.0, abs=1e-3)]
    assert not flicker["passed"] and flicker["max_luma_jump"] > 0.06
    assert any(reason.startswith("flicker: brightness jump") for reason in flicker["reasons"])


def lora_graph(character: str | None) -> dict:
    model_and_clip = ["1", 1]
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": RANDOM_CHECKPOINT_NAME}}}
    if character:
        graph["2"] = {"class_type": "ShotlineLoadCharacter", "inputs": {"character": character}}
        graph["3"] = {"class_type": "ShotlineApplyCharacterLoras", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "character": ["2", 0], "strength_scale": 1.0}}
        model_and_clip = ["3", 1]
    graph["4"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red scarf", "clip": model_and_clip}}
    graph["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}
    return graph


def test_character_loras_change_the_text_encoder_and_a_missing_one_is_named(comfy, comfy_server):
    import torch
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(0)
    prefix = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # a LoRA on CLIP-L's first MLP layer
    save_file({f"{prefix}.lora_up.weight": torch.randn(3072, 4, generator=generator),
               f"{prefix}.lora_down.weight": torch.randn(4, 768, generator=generator),
               f"{prefix}.alpha": torch.tensor(4.0)}, str(comfy_server.loras_dir / "scarf.safetensors"))
    for folder, lora in (("with_lora", "scarf.safetensors"), ("lost_lora", "missing.safetensors")):
        write_character(comfy_server.characters_dir, folder, parse_sheet({
            "name": folder, "design_prompt": "x", "loras": [{"name": lora, "strength": 1.0}]}), {})

    plain = comfy.run(lora_graph(None))["outputs"]["5"]["text"][0]
    with_lora = comfy.run(lora_graph("with_lora"))
    assert with_lora["status"]["status_str"] == "success", with_lora["status"]
    assert with_lora["outputs"]["5"]["text"][0] != plain  # the LoRA reached the text encoder

    missing = comfy.run(lora_graph("lost_lora"))
    assert missing["status"]["status_str"] == "error"
    error = next(data for kind, data in missing["status"]["messages"] if kind == "execution_error")
    assert "missing.safetensors" in error["exception_message"] and "loras" in error["exception_message"]
