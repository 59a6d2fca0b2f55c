import json
import zlib
from pathlib import Path

import pytest

from shotline_controller.shot_list import ShotListError, load_shot_list, parse_shot_list


def error_field(data) -> str:
    with pytest.raises(ShotListError) as caught:
        parse_shot_list(data)
    return caught.value.field


def test_full_list_with_defaults():
    shots = parse_shot_list({
        "defaults": {"size": "128x128", "steps": 2},
        "shots": [
            {"id": "s01", "prompt": "a girl on a rooftop", "seed": 7},
            {"id": "s02", "prompt": "the same girl, close-up", "size": [256, 192], "negative": "blurry"},
        ],
    })
    assert [(s.id, s.width, s.height, s.steps, s.seed) for s in shots] == [
        ("s01", 128, 128, 2, 7), ("s02", 256, 192, 2, zlib.crc32(b"s02"))]
    assert shots[1].negative == "blurry" and shots[0].negative == ""
    assert shots[0].workflow == "shot_txt2img"


def test_bare_list_and_size_mapping():
    [shot] = parse_shot_list([{"id": 3, "prompt": "x", "size": {"width": 64, "height": 72}}])
    assert (shot.id, shot.width, shot.height) == ("3", 64, 72)


@pytest.mark.parametrize("data, field", [
    ({"shots": [{"id": "a", "prompt": "x", "seed": "abc"}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": -1}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": ""}]}, "shots[1].prompt"),
    ({"shots": [{"id": "a", "prompt": "x", "size": "big"}]}, "shots[0].size"),
    ({"shots": [{"id": "a", "prompt": "x", "size": "130x128"}]}, "shots[0].size.width"),
    ({"shots": [{"id": "a", "prompt": "x", "size": [128, 16]}]}, "shots[0].size.height"),
    ({"shots": [{"id": "../../etc", "prompt": "x"}]}, "shots[0].id"),
    ({"shots": [{"prompt": "x"}]}, "shots[0].id"),
    ({"shots": [{"id": "a", "prompt": "x", "workflow": "../secret"}]}, "shots[0].workflow"),
    ({"shots": [{"id": "a", "prompt": "x", "sede": 1}]}, "shots[0].sede"),
    ({"shots": [{"id": "a", "prompt": "x", "steps": 0}]}, "shots[0].steps"),
    ({"shots": [{"id": "a", "prompt": "x", "cfg": "high"}]}, "shots[0].cfg"),
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}, "shots[1].id"),
    ({"shots": []}, "shots"),
    ({"shots": ["not a shot"]}, "shots[0]"),
    ({"defaults": {"id": "x"}, "shots": [{"prompt": "x"}]}, "defaults.id"),
    ({"scenes": []}, "shots"),
    ({"shots": [{"id": "a", "prompt": "x", "scene": "../sc01"}]}, "shots[0].scene"),
    ({"shots": [{"id": "a", "prompt": "x", "scene": ""}]}, "shots[0].scene"),
    ({"shots": [{"id": "a", "prompt": "x", "scene": ["sc01"]}]}, "shots[0].scene"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": 0.1}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": 601}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": "2s"}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": True}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": float("nan")}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "frames": 0}]}, "shots[0].frames"),
    ({"shots": [{"id": "a", "prompt": "x", "frames": 2.5}]}, "shots[0].frames"),
    ({"shots": [{"id": "a", "prompt": "x", "fps": 0}]}, "shots[0].fps"),
    ({"shots": [{"id": "a", "prompt": "x", "fps": float("nan")}]}, "shots[0].fps"),
    ({"shots": [{"id": "a", "prompt": "x", "dialogue": "  "}]}, "shots[0].dialogue"),
    ({"shots": [{"id": "a", "prompt": "x", "dialogue": "x" * 2001}]}, "shots[0].dialogue"),
])
def test_malformed_lists_name_the_field(data, field):
    assert error_field(data) == field


def test_error_message_names_field_and_value():
    with pytest.raises(ShotListError, match=r"^shots\[0\]\.seed: must be a whole number, got 'abc'$"):
        parse_shot_list([{"id": "a", "prompt": "x", "seed": "abc"}])


def test_files_yaml_json_and_unparseable(tmp_path):
    (tmp_path / "list.yaml").write_text("shots:\n  - id: a\n    prompt: hello\n    size: 64x64\n")
    (tmp_path / "list.json").write_text(json.dumps([{"id": "b", "prompt": "hi"}]))
    (tmp_path / "bad.yaml").write_text("shots: [\n")
    assert load_shot_list(tmp_path / "list.yaml")[0].width == 64
    assert load_shot_list(tmp_path / "list.json")[0].id == "b"
    with pytest.raises(ShotListError, match="not valid YAML") as caught:
        load_shot_list(tmp_path / "bad.yaml")
    assert caught.value.field == "file"
    with pytest.raises(ShotListError, match="cannot read"):
        load_shot_list(tmp_path / "missing.yaml")


def test_a_stored_shot_reads_back_the_same_and_is_validated_again():
    from shotline_controller.shot_list import shot_from_record
    [shot] = parse_shot_list([{"id": "a", "prompt": "x", "size": "128x96", "steps": 2, "seed": 9}])
    assert shot_from_record(shot.as_dict()) == shot
    with pytest.raises(ShotListError, match=r"shot\.size\.width"):
        shot_from_record({**shot.as_dict(), "width": 130})


def test_scene_and_duration_default_and_are_stored():
    shots = parse_shot_list({"defaults": {"scene": "sc01"}, "shots": [
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "y", "duration": 3.5},
        {"id": "c", "prompt": "z", "scene": "sc02", "duration": 1}]})
    assert [(s.scene, s.duration) for s in shots] == [("sc01", 2.0), ("sc01", 3.5), ("sc02", 1.0)]
    [plain] = parse_shot_list([{"id": "a", "prompt": "x"}])
    assert (plain.scene, plain.duration) == ("main", 2.0)
    assert shots[2].as_dict()["scene"] == "sc02" and shots[2].as_dict()["duration"] == 1.0
    from shotline_controller.shot_list import shot_from_record
    assert shot_from_record(shots[1].as_dict()) == shots[1]
    # a shot stored before scenes existed reads back with the defaults
    old = {key: value for key, value in shots[1].as_dict().items() if key not in ("scene", "duration")}
    assert (shot_from_record(old).scene, shot_from_record(old).duration) == ("main", 2.0)


def test_video_fields_are_optional_and_stored():
    from shotline_controller.shot_list import shot_from_record
    [plain, video] = parse_shot_list([{"id": "a", "prompt": "x"},
                                      {"id": "b", "prompt": "y", "frames": 8, "fps": 12, "dialogue": "Where is she?"}])
    assert (plain.frames, plain.fps, plain.dialogue) == (None, None, None)
    assert "frames" not in plain.as_dict()
    assert (video.frames, video.fps, video.dialogue) == (8, 12.0, "Where is she?")
    assert shot_from_record(video.as_dict()) == video


@pytest.mark.parametrize("name", ["example_shots.yaml", "example_scene.yaml"])
def test_example_shot_lists_parse_and_fit_their_presets(name):
    from shotline_controller.comfy.presets import fill_preset, load_preset
    shots = load_shot_list(Path(__file__).resolve().parents[2] / "workflows" / name)
    for shot in shots:
        fill_preset(load_preset(shot.workflow), shot, checkpoint="m.safetensors", filename_prefix="p")
