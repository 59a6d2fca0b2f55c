"""Users' own .pth upscalers run through ComfyUI core's nodes in the `shot_txt2img_upscaled` preset.

The model is a random-initialised Real-ESRGAN Compact (the animevideov3 architecture) saved as a state dict, so
core's UpscaleModelLoader recognises it with spandrel exactly as it does a downloaded one.
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

from shotline_controller.comfy.presets import fill_preset, load_preset, nodes_titled
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from shotline_controller.contract import shots_of

pytestmark = pytest.mark.integration


def test_preset_upscales_with_a_users_pth_model(comfy, comfy_server):
    torch.manual_seed(0)
    model = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2)
    torch.save(model.state_dict(), Path(comfy_server.upscale_models_dir) / "tiny-compact-x2.pth")
    shot = shots_of([{"id": "u1", "prompt": "a red scarf", "size": "96x64", "steps": 2, "seed": 5,
                             "workflow": "shot_txt2img_upscaled"}])[0]
    graph, _ = fill_preset(load_preset("shot_txt2img_upscaled"), shot, RANDOM_CHECKPOINT_NAME, "tests/upscaled")
    [loader] = nodes_titled(graph, "Upscale Model")
    loader["inputs"]["model_name"] = "tiny-compact-x2.pth"
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    [save] = nodes_titled(graph, "Save")
    save_id = next(node_id for node_id, node in graph.items() if node is save)
    [saved] = entry["outputs"][save_id]["images"]
    with Image.open(Path(comfy_server.output_dir) / saved["subfolder"] / saved["filename"]) as image:
        assert image.size == (192, 128)


def test_preset_names_a_missing_upscaler(comfy):
    # ComfyUI 0.3.75 does not check V3 combo values before queueing, so the loader's own error names the file
    shot = shots_of([{"id": "u2", "prompt": "a red scarf", "size": "64x64", "steps": 1,
                             "workflow": "shot_txt2img_upscaled"}])[0]
    graph, _ = fill_preset(load_preset("shot_txt2img_upscaled"), shot, RANDOM_CHECKPOINT_NAME, "tests/upscaled")
    entry = comfy.run(graph)
    assert entry["status"]["status_str"] == "error"
    assert "RealESRGAN_x4plus_anime_6B.pth" in json.dumps(entry["status"]["messages"])
