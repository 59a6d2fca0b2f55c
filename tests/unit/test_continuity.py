"""Continuity's pure parts: which shot a shot continues, engine rules, character state along the story, what a
preset is filled with (state, colour anchor, voice), the last frame and the best faces of a shot."""
import io

import numpy as np
import pytest
from PIL import Image

from shotline_controller.comfy.presets import fill_preset, is_sound_only, load_preset
from shotline_controller.contract import InputError, Shot, parse_shot_list, state_changes
from shotline_controller.engines import applying_rules, choose_engine
from shotline_controller.store.continuity import merged_state
from shotline_controller.workers.continuity import best_faces, face_crop, last_frame_output


def shot_list(*shots, **defaults):
    return parse_shot_list({"defaults": defaults, "shots": list(shots)} if defaults else list(shots))


def test_a_continuity_shot_continues_the_shot_before_it_in_its_own_scene():
    from shotline_controller.contract import continued_shots
    listed = shot_list({"id": "a1", "prompt": "x", "scene": "a"}, {"id": "b1", "prompt": "x", "scene": "b"},
                       {"id": "a2", "prompt": "x", "scene": "a", "continuity": "previous"},
                       {"id": "b2", "prompt": "x", "scene": "b", "continuity": "previous"},
                       {"id": "a3", "prompt": "x", "scene": "a", "continuity": "none"},
                       {"id": "a4", "prompt": "x", "scene": "a", "continuity": "previous"})
    assert continued_shots(listed.shots) == [None, None, 0, 1, None, 4]


def test_the_first_shot_of_a_scene_has_nothing_to_continue():
    with pytest.raises(InputError) as error:
        shot_list({"id": "a1", "prompt": "x", "scene": "a"},
                  {"id": "b1", "prompt": "x", "scene": "b", "continuity": "previous"})
    assert error.value.field == "shots[1].continuity" and "scene 'b'" in error.value.message


@pytest.mark.parametrize("characters, source, loras, expected", [
    ([], False, set(), ["text_to_video"]),
    (["aiko"], True, set(), ["image_to_video"]),
    (["aiko", "ren"], True, set(), ["text_to_video"]),  # several characters: no single source to animate
    (["aiko"], False, {"aiko"}, ["lora", "text_to_video"]),
    (["aiko"], True, {"aiko"}, ["lora", "image_to_video"]),
])
def test_which_engine_rules_apply(characters, source, loras, expected):
    assert applying_rules(characters, source, lambda name: name in loras) == expected


def test_the_first_rule_that_names_a_preset_wins_and_no_rule_keeps_the_workflow():
    engines = {"image_to_video": "wan_i2v", "text_to_video": "shot_video"}
    assert choose_engine(engines, ["aiko"], True, lambda name: True) == (
        "wan_i2v", "image_to_video: at most one character and a source image")  # no lora preset given
    assert choose_engine({**engines, "lora": "lora_preset"}, ["aiko"], True, lambda name: True)[0] == "lora_preset"
    assert choose_engine({"image_to_video": "wan_i2v"}, [], False, lambda name: False) is None
    assert choose_engine(None, [], False, lambda name: False) is None


def test_a_shot_naming_its_workflow_is_not_chosen_for():
    listed = shot_list({"id": "a", "prompt": "x", "workflow": "shot_video"}, {"id": "b", "prompt": "x"},
                       engines={"text_to_video": "shot_txt2img"})
    assert listed.shots[0].engines is None and listed.shots[1].engines.text_to_video == "shot_txt2img"


def test_state_entries_apply_from_their_shot_on_and_an_empty_field_ends_one():
    listed = shot_list({"id": "a", "prompt": "x"},
                       {"id": "b", "prompt": "x", "state": {"aiko": {"outfit": "torn jacket", "props": "katana"}}},
                       {"id": "c", "prompt": "x", "state": {"aiko": {"outfit": ""}, "ren": {"emotion": "angry"}}})
    changes = state_changes(listed)
    assert changes == [(1, "aiko", {"outfit": "torn jacket", "props": "katana"}), (2, "aiko", {"outfit": ""}),
                       (2, "ren", {"emotion": "angry"})]
    assert merged_state([fields for position, name, fields in changes if name == "aiko" and position <= 1]) == {
        "outfit": "torn jacket", "props": "katana"}
    assert merged_state([fields for _, name, fields in changes if name == "aiko"]) == {"props": "katana"}


@pytest.mark.parametrize("state, field", [
    ({"aiko": {}}, "shots[0].state.aiko"),
    ({"aiko": {"hat": "red"}}, "shots[0].state.aiko.hat"),
    ({"aiko": {"outfit": "a\x00b"}}, "shots[0].state.aiko.outfit"),
    ({"aiko": {"outfit": "x" * 301}}, "shots[0].state.aiko.outfit"),
    ({"../x": {"outfit": "red"}}, "shots[0].state"),
])
def test_bad_state_is_refused_naming_the_field(state, field):
    with pytest.raises(InputError) as error:
        shot_list({"id": "a", "prompt": "x", "state": state})
    assert error.value.field.startswith(field), error.value


def test_a_spoken_line_names_one_of_the_shots_characters():
    listed = shot_list({"id": "a", "prompt": "x", "characters": ["aiko"], "dialogue": {"aiko": "Where is she?"}})
    assert listed.shots[0].dialogue == {"aiko": "Where is she?"}
    with pytest.raises(InputError) as error:
        shot_list({"id": "a", "prompt": "x", "characters": ["aiko"], "dialogue": {"ren": "Hello"}})
    assert error.value.field == "shots[0].dialogue.ren"
    with pytest.raises(InputError) as error:
        shot_list({"id": "a", "prompt": "x", "characters": ["aiko", "ren"],
                   "dialogue": {"aiko": "Hi", "ren": "Hello"}})
    assert error.value.field == "shots[0].dialogue"


def queued(**fields) -> Shot:
    return Shot.from_input(shot_list({"id": "s1", "prompt": "a rooftop", **fields}).shots[0])


def test_state_is_filled_into_its_characters_state_node_and_recorded_as_the_prompt_fragment():
    preset = load_preset("shot_character")
    graph, filled = fill_preset(preset, queued(characters=["aiko", "ren"]), "m.safetensors", "p",
                                states={"ren": {"outfit": "torn jacket", "injuries": "cut cheek"}})
    by_title = {node["_meta"]["title"]: node["inputs"] for node in graph.values()}
    assert by_title["State 2"]["outfit"] == "torn jacket" and by_title["State 2"]["injuries"] == "cut cheek"
    assert by_title["State 1"]["outfit"] == "" and by_title["State 2"]["emotion"] == ""
    assert "torn jacket" in filled["State 2.fragment"] and "cut cheek" in filled["State 2.fragment"]
    assert not any(key.startswith("State 1.") for key in filled)


def test_the_anchor_image_is_filled_or_taken_out():
    preset = load_preset("shot_img2img")
    graph, filled = fill_preset(preset, queued(), "m.safetensors", "p", image_name="in.png",
                                anchor_image="shotline/anchor.png")
    by_title = {node["_meta"]["title"]: node for node in graph.values()}
    assert by_title["Anchor Image"]["inputs"]["image"] == "shotline/anchor.png"
    assert filled["Anchor Image.image"] == "shotline/anchor.png" and filled["Input Image.image"] == "in.png"
    graph, filled = fill_preset(preset, queued(), "m.safetensors", "p", image_name="in.png")
    by_title = {node["_meta"]["title"]: node for node in graph.values()}
    assert "Anchor Image" not in by_title and "reference" not in by_title["Colour Anchor"]["inputs"]


def test_a_speaker_speaks_in_the_voice_of_their_sheet():
    preset = load_preset("shot_video_dialogue")
    shot = queued(characters=["aiko"], dialogue={"aiko": "Where is she?"})
    with pytest.raises(Exception):  # shot_video_dialogue has no character slot: refused, not ignored
        fill_preset(preset, shot, "m.safetensors", "p")
    shot = queued(dialogue="Where is she?")
    graph, filled = fill_preset(preset, shot, "m.safetensors", "p", voice={"engine": "piper",
                                                                           "voice": "en_US-joe-medium"})
    dialogue = next(node for node in graph.values() if node["_meta"]["title"] == "Dialogue")["inputs"]
    assert (dialogue["text"], dialogue["engine"], dialogue["piper_voice"]) == ("Where is she?", "piper",
                                                                               "en_US-joe-medium")
    assert filled["Dialogue.engine"] == "piper"


def test_video_latents_take_the_frames_as_their_length_and_music_takes_no_size():
    graph, filled = fill_preset(load_preset("wan_i2v"), queued(frames=33), None, "p", image_name="in.png")
    size = next(node for node in graph.values() if node["_meta"]["title"] == "Size")["inputs"]
    assert size["length"] == 33 and filled["Size.length"] == 33 and size.get("batch_size", 1) == 1
    music = load_preset("music_ace_step")
    assert is_sound_only(music) and not is_sound_only(load_preset("shot_txt2img"))
    graph, filled = fill_preset(music, queued(prompt="calm piano, rain"), None, "p")
    assert "calm piano, rain" in filled.values()


def test_the_last_frame_is_the_last_frame_nodes_image_else_the_last_saved_image():
    outputs = [{"node_id": "9", "kind": "images", "filename": "a_00001_.png", "subfolder": "s", "type": "output"},
               {"node_id": "20", "kind": "images", "filename": "last_00001_.png", "subfolder": "s", "type": "output"},
               {"node_id": "21", "kind": "images", "filename": "clip.mp4", "subfolder": "s", "type": "output"},
               {"node_id": "9", "kind": "images", "filename": "b_00001_.png", "subfolder": "s", "type": "temp"}]
    assert last_frame_output(outputs, {"20"})["filename"] == "last_00001_.png"
    assert last_frame_output(outputs, set())["filename"] == "last_00001_.png"  # the last saved image
    assert last_frame_output(outputs[:1], {"20"})["filename"] == "a_00001_.png"
    assert last_frame_output(outputs[2:], set()) is None


def test_best_faces_take_each_characters_highest_passing_face_over_the_frames():
    verdicts = [{"check": "quality"}, {"check": "identity", "frames": [
        {"characters": {"aiko": {"face": 0, "idr": 0.81, "passed": True}, "ren": {"face": None, "idr": 0.0,
                                                                                  "passed": False}},
         "faces": [{"box": [10, 10, 40, 40]}]},
        {"characters": {"aiko": {"face": 1, "idr": 0.9, "passed": True}, "ren": {"face": 0, "idr": 0.5,
                                                                                 "passed": False}},
         "faces": [{"box": [0, 0, 5, 5]}, {"box": [20, 20, 60, 60]}]}]}]
    assert best_faces(verdicts) == {"aiko": {"score": 0.9, "frame": 1, "box": [20, 20, 60, 60]}}


def test_a_face_crop_widens_the_box_and_stays_in_the_picture():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(buffer, format="PNG")
    crop = Image.open(io.BytesIO(face_crop(buffer.getvalue(), [90, 10, 120, 40])))
    assert crop.size == (42, 52)  # 12 px more on each side, cut at the picture's top and right edges
    assert face_crop(buffer.getvalue(), [5, 5, 6, 6]) is None


def test_scene_music_fills_the_mood_the_seed_and_a_bounded_length():
    from shotline_controller.media.scene_music import music_graph
    graph = music_graph({}, "calm piano, rain", 4.0, 7)
    by_title = {node["_meta"]["title"]: node["inputs"] for node in graph.values()}
    assert by_title["Prompt"]["value"] == "calm piano, rain" and by_title["Sampler"]["seed"] == 7
    assert by_title["Duration"]["seconds"] == 10.0  # a 4 s scene still gets 10 s of music, looped under it
    assert {n["_meta"]["title"]: n["inputs"] for n in music_graph(
        {}, "x", 1000, 7).values()}["Duration"]["seconds"] == 240.0


def test_missing_model_files_are_named_with_their_folder():
    from shotline_controller.media.scene_music import missing_files
    body = {"node_errors": {"4": {"class_type": "CheckpointLoaderSimple", "errors": [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "ckpt_name: 'ace_step_v1_3.5b.safetensors' not in ['random.safetensors']"}]},
        "9": {"class_type": "KSampler", "errors": [{"type": "value_smaller_than_min", "details": "steps: 0"}]}}}
    assert missing_files(body) == ["ace_step_v1_3.5b.safetensors (put it in ComfyUI's models/checkpoints/)"]


def test_a_continuity_face_feeds_its_characters_gallery_and_an_absent_one_is_taken_out():
    preset = load_preset("shot_character")
    graph, filled = fill_preset(preset, queued(characters=["aiko", "ren"]), "m.safetensors", "p",
                                continuity_faces={"ren": "shotline/ren_face.png"})
    ids = {node["_meta"]["title"]: node_id for node_id, node in graph.items()}
    assert "Continuity 1" not in ids and graph[ids["Continuity 2"]]["inputs"]["image"] == "shotline/ren_face.png"
    assert graph[ids["Gallery 2"]]["inputs"]["continuity_face"] == [ids["Continuity 2"], 0]
    assert "continuity_face" not in graph[ids["Gallery 1"]]["inputs"]
    assert filled["Continuity 2.image"] == "shotline/ren_face.png"
    # one character: the second slot goes whole, its gallery with it, though its loader fed that gallery too
    graph, _ = fill_preset(preset, queued(characters=["aiko"]), "m.safetensors", "p")
    titles = {node["_meta"]["title"] for node in graph.values()}
    assert titles.isdisjoint({"Character 2", "State 2", "Gallery 2", "Continuity 1", "Continuity 2"})
