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


def character_graph() -> dict:
    """Two character slots: each a Load Character feeding its gallery, both feeding the prompt and the check."""
    def node(class_type, title, **inputs):
        return {"class_type": class_type, "_meta": {"title": title}, "inputs": inputs}
    return {
        "1": node("ShotlineLoadCharacter", "Character 1", character="default"),
        "2": node("ShotlineLoadCharacter", "Character 2", character="default"),
        "3": node("ShotlineCharacterGallery", "Gallery 1", character=["1", 0], backend="auto"),
        "4": node("ShotlineCharacterGallery", "Gallery 2", character=["2", 0], backend="auto"),
        "5": node("ShotlineCharacterPrompt", "Character Prompt", clip=["9", 1], text="", negative="",
                  character_weight=1.0, character=["1", 0], character_2=["2", 0]),
        "6": node("KSampler", "Sampler", seed=0, steps=20, cfg=7.0, positive=["5", 0], negative=["5", 1]),
        "7": node("ShotlineIdentityCheck", "Identity Check", image=["6", 0], gallery=["3", 0], gallery_2=["4", 0],
                  threshold=0.75),
        "8": node("SaveImage", "Save", images=["7", 0], filename_prefix="x"),
        "9": node("CheckpointLoaderSimple", "Checkpoint", ckpt_name="m.safetensors"),
        "10": node("EmptyLatentImage", "Size", width=512, height=512, batch_size=1),
    }


def test_characters_fill_their_slots_in_order():
    graph, filled = fill_preset(character_graph(), shot(characters=["aiko", "kairo"], identity_threshold=0.6,
                                                        character_weight=1.3), checkpoint="m.safetensors",
                                filename_prefix="p")
    assert (graph["1"]["inputs"]["character"], graph["2"]["inputs"]["character"]) == ("aiko", "kairo")
    assert graph["5"]["inputs"]["text"] == "a red scarf" and graph["5"]["inputs"]["character_weight"] == 1.3
    assert graph["7"]["inputs"]["threshold"] == 0.6
    assert filled["Character 2.character"] == "kairo" and filled["Identity Check.threshold"] == 0.6


def test_unused_character_slots_are_taken_out_with_what_only_they_feed():
    graph, _ = fill_preset(character_graph(), shot(characters=["aiko"]), checkpoint="m.safetensors",
                           filename_prefix="p")
    assert "2" not in graph and "4" not in graph            # the slot and its gallery
    assert "character_2" not in graph["5"]["inputs"] and "gallery_2" not in graph["7"]["inputs"]
    assert graph["5"]["inputs"]["character"] == ["1", 0] and graph["7"]["inputs"]["gallery"] == ["3", 0]
    assert set(graph) == {"1", "3", "5", "6", "7", "8", "9", "10"}


def test_more_characters_than_slots_is_refused_naming_the_slots():
    with pytest.raises(PresetError, match=r"has 2 character slots \(Character 1, Character 2\) and the shot names 3"):
        fill_preset(character_graph(), shot(characters=["a", "b", "c"]), checkpoint="m.safetensors",
                    filename_prefix="p")
    with pytest.raises(PresetError, match="has 0 character slots"):
        fill_preset(load_preset("shot_txt2img"), shot(characters=["a"]), checkpoint="m", filename_prefix="p")


def test_a_shot_list_is_checked_against_its_presets_before_anything_is_queued():
    from shotline_controller.contract import InputError
    from shotline_controller.shot_list import check_presets
    check_presets(parse_shot_list([{"id": "a", "prompt": "x", "workflow": "shot_character", "characters": ["aiko"],
                                    "refine_size": 256, "identity_threshold": 0.7}]))
    with pytest.raises(InputError) as refused:  # shot_txt2img has no Face Refine for refine_cycles
        check_presets(parse_shot_list([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "refine_cycles": 4}]))
    assert refused.value.field == "shots[1].workflow" and "'Face Refine' or 'Face Repair'" in refused.value.message


def test_a_shot_naming_no_characters_keeps_the_presets_own():
    graph, filled = fill_preset(character_graph(), shot(), checkpoint="m.safetensors", filename_prefix="p")
    assert {"1", "2", "3", "4"} <= set(graph) and graph["1"]["inputs"]["character"] == "default"
    assert not any(key.startswith("Character 1") for key in filled)


def test_quality_min_side_follows_the_size_the_shot_asks_for():
    preset = load_preset("shot_character")
    quality = lambda graph: next(n for n in graph.values() if n["_meta"]["title"] == "Quality")["inputs"]  # noqa: E731
    graph, filled = fill_preset(preset, shot(size="128x192"), checkpoint="m.safetensors", filename_prefix="p")
    assert quality(graph)["min_side"] == 128 and filled["Quality.min_side"] == 128
    graph, filled = fill_preset(preset, shot(size="128x192", min_side=96), checkpoint="m.safetensors",
                                filename_prefix="p")
    assert quality(graph)["min_side"] == 96 and filled["Quality.min_side"] == 96  # the shot's own wins
    repair = load_preset("shot_face_repair")  # its Size node scales the shot's image to the shot's size
    graph, filled = fill_preset(repair, shot(size="128x192", image="sha256:" + "0" * 64), checkpoint="m.safetensors",
                                filename_prefix="p", image_name="in.png")
    assert quality(graph)["min_side"] == 128
