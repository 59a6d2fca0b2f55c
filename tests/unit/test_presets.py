import pytest

from shotline_controller.comfy.presets import PresetError, fill_preset, load_preset
from shotline_controller.contract import Shot, parse_shot_list


def shot(**fields):
    return Shot.from_input(parse_shot_list([{"id": "s1", "prompt": "a red scarf", **fields}]).shots[0])


def test_shot_values_land_in_titled_nodes():
    preset = load_preset("shot_txt2img")
    graph, filled = fill_preset(preset, shot(seed=5, size="128x192", steps=2, negative="blurry"),
                                checkpoint="model.safetensors", filename_prefix="shotline/b/s1")
    by_title = {node["_meta"]["title"]: node["inputs"] for node in graph.values()}
    assert by_title["Prompt"]["text"] == "a red scarf"
    assert by_title["Negative Prompt"]["text"] == "blurry"
    assert (by_title["Sampler"]["seed"], by_title["Sampler"]["steps"]) == (5, 2)
    assert by_title["Sampler"]["cfg"] == preset["3"]["inputs"]["cfg"]  # not set by the shot: the preset's own
    assert (by_title["Size"]["width"], by_title["Size"]["height"]) == (128, 192)
    assert by_title["Checkpoint"]["ckpt_name"] == "model.safetensors"
    assert by_title["Save"]["filename_prefix"] == "shotline/b/s1"
    assert filled["Sampler.seed"] == 5 and "Sampler.cfg" not in filled
    assert preset["6"]["inputs"]["text"] != "a red scarf"  # the loaded preset itself is untouched


def test_missing_titled_node_is_named():
    preset = load_preset("shot_txt2img")
    preset = {key: node for key, node in preset.items() if node["_meta"]["title"] != "Size"}
    with pytest.raises(PresetError, match="no node titled 'Size' for the shot's width"):
        fill_preset(preset, shot(), checkpoint="m.safetensors", filename_prefix="p")


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(PresetError, match=r"no preset 'nope'.*available: .*shot_txt2img"):
        load_preset("nope")



def test_video_preset_takes_frames_fps_and_dialogue():
    preset = load_preset("shot_video_dialogue")
    graph, filled = fill_preset(preset, shot(frames=6, fps=8, dialogue="Where is she?"),
                                checkpoint="m.safetensors", filename_prefix="shotline/b/s1")
    by_title = {node["_meta"]["title"]: node for node in graph.values()}
    assert by_title["Size"]["inputs"]["batch_size"] == 6
    assert by_title["Interpolate"]["inputs"]["source_fps"] == 8.0
    assert by_title["Dialogue"]["inputs"]["text"] == "Where is she?"
    saves = [node for node in graph.values() if node["_meta"]["title"] == "Save"]
    assert {node["class_type"] for node in saves} == {"ShotlineSaveMP4", "SaveImage"}
    assert all(node["inputs"]["filename_prefix"] == "shotline/b/s1" for node in saves)


def test_dialogue_on_a_preset_that_does_not_speak_is_named():
    with pytest.raises(PresetError, match="no node titled 'Dialogue' for the shot's dialogue"):
        fill_preset(load_preset("shot_video"), shot(dialogue="Hello"), checkpoint="m", filename_prefix="p")
