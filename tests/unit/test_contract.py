"""The typed contract (controller/contract.py): shot lists, batches, assemblies; text rules; error paths."""
import json
import zlib
from pathlib import Path

import pytest

from shotline_controller.comfy.presets import fill_preset, load_preset
from shotline_controller.contract import (
    AssemblyRequest,
    BatchRequest,
    InputError,
    ReviewRequest,
    Shot,
    parse_shot_list,
    validated,
)
from shotline_controller.shot_list import read_media_file, read_shot_list

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def shots(data, model=None) -> list[Shot]:
    return [Shot.from_input(shot) for shot in parse_shot_list(data, *([model] if model else [])).shots]


def error_of(data, model=None) -> InputError:
    with pytest.raises(InputError) as caught:
        parse_shot_list(data, *([model] if model else []))
    return caught.value


def test_full_list_with_defaults():
    [one, two] = shots({
        "defaults": {"size": "128x128", "steps": 2},
        "shots": [
            {"id": "s01", "prompt": "a girl on a rooftop", "seed": 7},
            {"id": "s02", "prompt": "the same girl, close-up", "size": [256, 192], "negative": "blurry"},
        ],
    })
    assert [(s.id, s.width, s.height, s.steps, s.seed) for s in (one, two)] == [
        ("s01", 128, 128, 2, 7), ("s02", 256, 192, 2, zlib.crc32(b"s02"))]
    assert two.negative == "blurry" and one.negative == ""
    assert one.workflow == "shot_txt2img" and (one.scene, one.duration) == ("main", 2.0)


def test_bare_list_number_ids_and_size_mapping():
    [shot] = shots([{"id": 3, "prompt": "x", "size": {"width": 64, "height": 72}}])
    assert (shot.id, shot.width, shot.height) == ("3", 64, 72)


@pytest.mark.parametrize("data, field", [
    ({"shots": [{"id": "a", "prompt": "x", "seed": "abc"}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": -1}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": True}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": 2**64}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": ""}]}, "shots[1].prompt"),
    ({"shots": [{"id": "a", "prompt": "  "}]}, "shots[0].prompt"),
    ({"shots": [{"id": "a", "prompt": "x", "size": "big"}]}, "shots[0].size"),
    ({"shots": [{"id": "a", "prompt": "x", "size": "130x128"}]}, "shots[0].size"),
    ({"shots": [{"id": "a", "prompt": "x", "size": [128, 16]}]}, "shots[0].size"),
    ({"shots": [{"id": "../../etc", "prompt": "x"}]}, "shots[0].id"),
    ({"shots": [{"prompt": "x"}]}, "shots[0].id"),
    ({"shots": [{"id": "a", "prompt": "x", "workflow": "../secret"}]}, "shots[0].workflow"),
    ({"shots": [{"id": "a", "prompt": "x", "sede": 1}]}, "shots[0].sede"),
    ({"shots": [{"id": "a", "prompt": "x", "steps": 0}]}, "shots[0].steps"),
    ({"shots": [{"id": "a", "prompt": "x", "cfg": "high"}]}, "shots[0].cfg"),
    ({"shots": [{"id": "a", "prompt": "x", "checkpoint": "../../etc/passwd"}]}, "shots[0].checkpoint"),
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}, "shots[1].id"),
    ({"shots": []}, "shots"),
    ({"shots": ["not a shot"]}, "shots[0]"),
    ({"defaults": {"id": "x"}, "shots": [{"prompt": "x"}]}, "defaults.id"),
    ({"defaults": {"seed": "x"}, "shots": [{"id": "a", "prompt": "x"}]}, "defaults.seed"),
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
    ({"shots": [{"id": "a", "prompt": "x", "fps": float("inf")}]}, "shots[0].fps"),
    ({"shots": [{"id": "a", "prompt": "x", "dialogue": "  "}]}, "shots[0].dialogue"),
    ({"shots": [{"id": "a", "prompt": "x", "dialogue": "x" * 2001}]}, "shots[0].dialogue"),
])
def test_malformed_lists_name_the_field(data, field):
    assert error_of(data).field == field


# Finding 1 and 7 of the hardening issue: a NUL, a lone surrogate or a control character in any text field, and a
# trailing newline on a name, are refused naming the field (they were a 500 or a folder named "aiko\n").
@pytest.mark.parametrize("field, value", [
    ("prompt", "a girl\x00"), ("prompt", "half \ud800 a pair"), ("prompt", "bell \x07"),
    ("negative", "\x00"), ("checkpoint", "model\x00.safetensors"), ("dialogue", "Hello\x1b[31m"),
    ("id", "s01\n"), ("scene", "main\n"), ("workflow", "shot_txt2img\n"), ("checkpoint", "m.safetensors\n"),
    ("image", "pose.png\n"), ("id", "s01\r"), ("scene", "sc\u200b01"),
])
def test_nul_surrogates_control_characters_and_trailing_newlines_are_refused(field, value):
    error = error_of({"shots": [{"id": "a", "prompt": "x", field: value}]})
    assert error.field == f"shots[0].{field}", error
    assert "Traceback" not in error.message


def test_free_text_keeps_newlines_and_tabs():
    [shot] = shots([{"id": "a", "prompt": "line one\n\tline two", "dialogue": "Wait.\nWho's there?"}])
    assert shot.prompt == "line one\n\tline two" and shot.dialogue == "Wait.\nWho's there?"


def test_messages_name_the_value_and_unknown_fields_list_the_known_ones():
    assert str(error_of([{"id": "a", "prompt": "x", "seed": "abc"}])) == \
        "shots[0].seed: must be a whole number, got 'abc'"
    message = error_of([{"id": "a", "prompt": "x", "sede": 1}]).message
    assert message.startswith("unknown field (known: ") and "seed" in message and "image" in message


def test_batch_options():
    batch = parse_shot_list({"shots": [{"id": "a", "prompt": "x"}], "priority": 5, "max_attempts": 2,
                             "webhook_url": None}, BatchRequest)
    assert (batch.priority, batch.max_attempts, batch.webhook_url) == (5, 2, None)
    for data, field in (({"priority": 10**7}, "priority"), ({"priority": "high"}, "priority"),
                        ({"max_attempts": 0}, "max_attempts"), ({"webhook_url": 5}, "webhook_url"),
                        ({"webhook_url": "http://x/\x00"}, "webhook_url"), ({"colour": "red"}, "colour")):
        assert error_of({"shots": [{"id": "a", "prompt": "x"}], **data}, BatchRequest).field == field
    assert error_of({"shots": [{"id": "a", "prompt": "x"}], "priority": 3}).field == "priority"  # files: no options


def test_a_stored_shot_reads_back_the_same_and_is_validated_again():
    [shot] = shots([{"id": "a", "prompt": "x", "size": "128x96", "steps": 2, "seed": 9, "frames": 8, "fps": 12,
                     "dialogue": "Where is she?"}])
    assert Shot.from_record(shot.as_dict()) == shot
    assert "image" not in shot.as_dict() and "cfg" not in shot.as_dict()
    with pytest.raises(InputError, match=r"^shot\.width"):
        Shot.from_record({**shot.as_dict(), "width": 130})
    with pytest.raises(InputError, match=r"^shot\.image"):
        Shot.from_record({**shot.as_dict(), "image": "/etc/passwd"})  # stored media is always a reference
    old = {key: value for key, value in shot.as_dict().items() if key not in ("scene", "duration")}
    assert (Shot.from_record(old).scene, Shot.from_record(old).duration) == ("main", 2.0)


def test_files_yaml_json_and_unparseable(tmp_path):
    (tmp_path / "list.yaml").write_text("shots:\n  - id: a\n    prompt: hello\n    size: 64x64\n")
    (tmp_path / "list.json").write_text(json.dumps([{"id": "b", "prompt": "hi"}]))
    (tmp_path / "bad.yaml").write_text("shots: [\n")
    (tmp_path / "nul.yaml").write_text('shots:\n  - id: a\n    prompt: "\\0"\n')
    assert read_shot_list(tmp_path / "list.yaml").shots[0].size == (64, 64)
    assert read_shot_list(tmp_path / "list.json").shots[0].id == "b"
    with pytest.raises(InputError, match="not valid YAML") as caught:
        read_shot_list(tmp_path / "bad.yaml")
    assert caught.value.field == "file"
    with pytest.raises(InputError, match="cannot read"):
        read_shot_list(tmp_path / "missing.yaml")
    assert error_field_of_file(tmp_path / "nul.yaml") == "shots[0].prompt"
    (tmp_path / "deep.json").write_text("[" * 100_000)
    assert error_field_of_file(tmp_path / "deep.json") == "file"


def error_field_of_file(path) -> str:
    with pytest.raises(InputError) as caught:
        read_shot_list(path)
    return caught.value.field


# Finding 4: a shot's image is read from the shot list's own folder only (the service read any server path).
def test_media_files_come_from_the_shot_lists_folder_only(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "pose.png").write_bytes(PNG)
    (tmp_path / "notes.png").write_text("not an image")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(PNG)
    (tmp_path / "link.png").symlink_to(outside)
    assert read_media_file(tmp_path, "refs/pose.png", "shots[0].image") == PNG
    for name in ("/etc/hostname", "../" + outside.name, "link.png", "notes.png", "missing.png",
                 "sha256:" + "0" * 64):
        with pytest.raises(InputError) as caught:
            read_media_file(tmp_path, name, "shots[0].image")
        assert caught.value.field == "shots[0].image", name


def test_review_and_assembly_requests():
    assert validated(ReviewRequest, {"decision": "approve"}).decision == "approve"
    request = validated(AssemblyRequest, {"scenes": ["sc01", "sc02"], "crossfade_s": 0.25, "fps": 30,
                                          "size": "640x360", "episode": {"season": 1, "number": 2, "title": "A"}})
    assert (request.scenes, request.size, request.episode.number) == (["sc01", "sc02"], (640, 360), 2)
    assert validated(AssemblyRequest, request.model_dump(mode="json")) == request  # a queued job reads back
    for data, field in (({"decision": "maybe"}, "decision"),):
        with pytest.raises(InputError) as caught:
            validated(ReviewRequest, data)
        assert caught.value.field == field
    for data, field in (({"scenes": []}, "scenes"), ({"scenes": ["a", "a"]}, "scenes"),
                        ({"scenes": ["sc 1"]}, "scenes[0]"), ({"crossfade_s": 11}, "crossfade_s"),
                        ({"size": "641x360"}, "size"), ({"fps": 0.5}, "fps"), ({"music": "/etc/passwd"}, "music"),
                        ({"episode": {"season": 1, "number": 100, "title": "x"}}, "episode.number"),
                        ({"episode": {"season": 1, "number": 1}}, "episode.title"),
                        ({"episode": {"season": 1, "number": 1, "title": "a\nb"}}, "episode.title"),
                        ({"colour": 1}, "colour")):
        with pytest.raises(InputError) as caught:
            validated(AssemblyRequest, data)
        assert caught.value.field == field, data


@pytest.mark.parametrize("name", ["example_shots.yaml", "example_scene.yaml"])
def test_example_shot_lists_parse_and_fit_their_presets(name):
    for shot in read_shot_list(Path(__file__).resolve().parents[2] / "workflows" / name).shots:
        fill_preset(load_preset(shot.workflow or "shot_txt2img"), Shot.from_input(shot), checkpoint="m.safetensors",
                    filename_prefix="p")
