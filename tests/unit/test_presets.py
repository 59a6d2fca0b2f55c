import json
import os

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


def titled(graph: dict) -> dict[str, str]:
    return {node["_meta"]["title"]: node_id for node_id, node in graph.items()}


def dangling_links(graph: dict) -> list[str]:
    return [f"{node_id}.{name}" for node_id, node in graph.items() for name, value in node["inputs"].items()
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in graph]


def test_shot_character_gives_each_character_its_state_and_a_one_character_shot_drops_state_2():
    preset = load_preset("shot_character")
    ids = titled(preset)
    for number in (1, 2):  # Character N feeds State N alone; what took the character takes the state's
        state = ids[f"State {number}"]
        assert preset[state]["class_type"] == "ShotlineCharacterState"
        assert preset[state]["inputs"]["character"] == [ids[f"Character {number}"], 0]
        assert [(node_id, name) for node_id, node in preset.items() for name, value in node["inputs"].items()
                if value == [ids[f"Character {number}"], 0]] == [(state, "character")]
        assert preset[ids[f"Gallery {number}"]]["inputs"]["character"] == [state, 0]
    graph, _ = fill_preset(preset, shot(characters=["aiko"]), checkpoint="m.safetensors", filename_prefix="p")
    ids = titled(graph)
    assert {"Character 2", "State 2", "Gallery 2"}.isdisjoint(ids) and {"Character 1", "State 1"} <= set(ids)
    for title in ("Character Prompt", "Character LoRAs"):
        assert graph[ids[title]]["inputs"]["character"] == [ids["State 1"], 0]
        assert "character_2" not in graph[ids[title]]["inputs"]
    assert all("gallery_2" not in graph[ids[title]]["inputs"] for title in ("Face Refine", "Identity Check"))
    assert dangling_links(graph) == []
    graph, _ = fill_preset(preset, shot(characters=["aiko", "kairo"]), checkpoint="m.safetensors",
                           filename_prefix="p")
    assert {"State 1", "State 2", "Gallery 2"} <= set(titled(graph))


def test_shot_character_anchors_the_refined_colours_and_runs_without_an_anchor():
    preset = load_preset("shot_character")
    ids = titled(preset)
    anchor = preset[ids["Colour Anchor"]]
    assert anchor["class_type"] == "ShotlineColorGrade" and anchor["inputs"]["match_strength"] == 0.8
    assert (anchor["inputs"]["exposure"], anchor["inputs"]["contrast"], anchor["inputs"]["saturation"],
            anchor["inputs"]["gamma"]) == (0.0, 1.0, 1.0, 1.0)  # neutral: only the match moves the colours
    assert anchor["inputs"]["images"] == [ids["Face Refine"], 0]
    assert anchor["inputs"]["reference"] == [ids["Anchor Image"], 0]
    assert preset[ids["Anchor Image"]]["class_type"] == "LoadImage"
    assert preset[ids["Identity Check"]]["inputs"]["image"] == [ids["Colour Anchor"], 0]
    # no other node takes Face Refine's image: everything after it sees the anchored colours
    assert [node_id for node_id, node in preset.items() if [ids["Face Refine"], 0] in node["inputs"].values()] == \
        [ids["Colour Anchor"]]
    # a shot with no anchor loses the loader and its link; the grade stays, with nothing to match
    graph, _ = fill_preset(preset, shot(characters=["aiko"]), checkpoint="m.safetensors", filename_prefix="p")
    ids = titled(graph)
    assert "Anchor Image" not in ids and "Colour Anchor" in ids
    assert "reference" not in graph[ids["Colour Anchor"]]["inputs"]
    assert graph[ids["Colour Anchor"]]["inputs"]["images"] == [ids["Face Refine"], 0]
    assert dangling_links(graph) == []


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


# --- naming and precedence -------------------------------------------------------------------------------------

def editor_file(title: str) -> dict:
    return {"nodes": [{"id": 1, "type": "SaveImage", "title": title}], "links": []}


def test_preset_names_may_hold_dots(tmp_path, monkeypatch):
    from shotline_controller.comfy.presets import available_presets, find_preset
    from shotline_controller.contract import InputError
    (tmp_path / "wan2.1_fun_control.json").write_text(json.dumps(editor_file("Save")))
    monkeypatch.setenv("SHOTLINE_PRESETS", str(tmp_path))
    assert find_preset("wan2.1_fun_control") == tmp_path / "wan2.1_fun_control.json"
    assert "wan2.1_fun_control" in available_presets()
    assert shot(workflow="sd3.5_simple_example").workflow == "sd3.5_simple_example"
    for bad in (".hidden", "a/b", "x" * 65):
        with pytest.raises(InputError, match="workflow"):
            shot(workflow=bad)
        with pytest.raises(PresetError, match="invalid preset name"):
            find_preset(bad)


@pytest.mark.parametrize("user_format", ["editor", "api"])
def test_a_user_folder_wins_over_the_built_ins_in_either_format(tmp_path, monkeypatch, user_format):
    from shotline_controller.comfy.presets import find_preset
    path = tmp_path / ("api/shot_txt2img.json" if user_format == "api" else "shot_txt2img.json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(editor_file("Mine") if user_format == "editor" else load_preset("shot_txt2img")))
    monkeypatch.setenv("SHOTLINE_PRESETS", str(tmp_path))
    assert find_preset("shot_txt2img") == path  # a built-in api/shot_txt2img.json does not hide it
    if user_format == "editor":
        assert [node["_meta"]["title"] for node in load_preset("shot_txt2img").values()] == ["Mine"]


def test_within_one_folder_the_api_format_wins_and_earlier_folders_win(tmp_path, monkeypatch):
    from shotline_controller.comfy.presets import find_preset
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second / "api"):
        folder.mkdir(parents=True)
    (first / "mine.json").write_text(json.dumps(editor_file("Save")))
    (second / "api" / "mine.json").write_text(json.dumps(load_preset("shot_txt2img")))
    monkeypatch.setenv("SHOTLINE_PRESETS", os.pathsep.join(map(str, (first, second))))
    assert find_preset("mine") == first / "mine.json"
    (first / "api").mkdir()
    (first / "api" / "mine.json").write_text(json.dumps(load_preset("shot_txt2img")))
    assert find_preset("mine") == first / "api" / "mine.json"


# --- set ---------------------------------------------------------------------------------------------------------

OBJECT_INFO = {
    "KSampler": {"input": {"required": {
        "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}], "steps": ["INT", {"min": 1, "max": 10000}],
        "cfg": ["FLOAT", {"min": 0.0, "max": 100.0}], "sampler_name": [["euler", "dpmpp_2m"], {}],
        "scheduler": ["COMBO", {"options": ["normal", "karras"]}], "model": ["MODEL"], "positive": ["CONDITIONING"],
        "negative": ["CONDITIONING"], "latent_image": ["LATENT"], "denoise": ["FLOAT", {"min": 0.0, "max": 1.0}]}}},
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["random.safetensors"], {}]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}}},
}


def test_set_names_nodes_by_title_or_id_after_the_shots_own_fields():
    preset = load_preset("shot_txt2img")
    graph, filled = fill_preset(preset, shot(seed=5, set={"Sampler.sampler_name": "dpmpp_2m", "3.seed": 11,
                                                          "Checkpoint.ckpt_name": "random.safetensors"}),
                                checkpoint="model.safetensors", filename_prefix="p", object_info=OBJECT_INFO)
    assert graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m" and graph["3"]["inputs"]["seed"] == 11
    assert next(n for n in graph.values() if n["_meta"]["title"] == "Checkpoint")["inputs"]["ckpt_name"] == \
        "random.safetensors"
    assert filled["set.3.seed"] == 11


@pytest.mark.parametrize("entry, problem", [
    ({"Nope.seed": 1}, "no node with id or title 'Nope'"),
    ({"Sampler.sede": 1}, "has no input 'sede'"),
    ({"Sampler.positive": "x"}, "is wired from node"),
    ({"Sampler.steps": 0}, "must be from 1 to 10000, got 0"),
    ({"Sampler.steps": 2.5}, "must be a whole number"),
    ({"Sampler.cfg": "high"}, "must be a number"),
    ({"Sampler.sampler_name": "ddim"}, "must be one of the server's options ('euler', 'dpmpp_2m')"),
    ({"Sampler.scheduler": "exponential"}, "must be one of the server's options ('normal', 'karras')"),
    ({"Checkpoint.ckpt_name": "missing.safetensors"}, "one of the server's options ('random.safetensors')"),
])
def test_a_set_entry_the_server_would_refuse_is_named_before_queueing(entry, problem):
    from shotline_controller.contract import InputError
    from shotline_controller.shot_list import check_presets
    shots = parse_shot_list([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "set": entry}])
    with pytest.raises(InputError) as refused:
        check_presets(shots, object_info=OBJECT_INFO)
    assert refused.value.field == f"shots[1].set.{next(iter(entry))}"
    assert problem in refused.value.message


def test_without_object_info_set_is_checked_against_the_graph():
    from shotline_controller.contract import InputError
    from shotline_controller.shot_list import check_presets
    check_presets(parse_shot_list([{"id": "a", "prompt": "x", "set": {"Sampler.denoise": 0.5}}]))
    with pytest.raises(InputError) as refused:
        check_presets(parse_shot_list([{"id": "a", "prompt": "x", "set": {"Sampler.noise": 1}}]))
    assert refused.value.field == "shots[0].set.Sampler.noise" and "has no input 'noise'" in refused.value.message


def test_set_in_defaults_merges_key_by_key():
    shots = parse_shot_list({"defaults": {"set": {"Sampler.cfg": 5.0, "Sampler.denoise": 0.9}},
                             "shots": [{"id": "a", "prompt": "x", "set": {"Sampler.cfg": 6.0}}]}).shots
    assert shots[0].set == {"Sampler.cfg": 6.0, "Sampler.denoise": 0.9}
