from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from shotline.core.characters import (Character, CharacterSheetError, checked_state, compose_prompts,
                                      find_characters, load_character, parse_sheet, state_fragment,
                                      write_character)

AIKO = {"name": "Aiko", "style": "anime", "design_prompt": "Aiko, silver bob, amber eyes, red scarf",
        "negative_prompt": "blue eyes", "loras": [{"name": "aiko_v3.safetensors", "strength": 0.8}],
        "thresholds": {"identity": 0.8}}


def test_full_sheet():
    sheet = parse_sheet(AIKO)
    assert (sheet.name, sheet.style, sheet.thresholds) == ("Aiko", "anime", {"identity": 0.8})
    assert sheet.loras[0].name == "aiko_v3.safetensors" and sheet.loras[0].strength == 0.8
    assert sheet.loras[0].clip_strength is None


@pytest.mark.parametrize("change, field", [
    ({"name": ""}, "name"),
    ({"name": "../evil"}, "name"),
    ({"style": "cartoon"}, "style"),
    ({"design_prompt": None}, "design_prompt"),
    ({"loras": [{"strength": 1}]}, "loras[0].name"),
    ({"loras": [{"name": "a.safetensors", "strength": "strong"}]}, "loras[0].strength"),
    ({"thresholds": {"identity": 1.5}}, "thresholds.identity"),
    ({"thresholds": {"idenity": 0.5}}, "thresholds.idenity"),
    ({"hair": "silver"}, "hair"),
])
def test_bad_sheets_name_the_field(change, field):
    with pytest.raises(CharacterSheetError) as caught:
        parse_sheet({**AIKO, **change})
    assert caught.value.field == field


def test_write_load_and_find(tmp_path):
    character = write_character(tmp_path, "aiko", parse_sheet(AIKO), {"front.png": b"\x89PNG", "side.jpg": b"jpg"})
    assert [p.name for p in character.references] == ["front.png", "side.jpg"]
    assert load_character(tmp_path / "aiko").sheet == parse_sheet(AIKO)
    assert yaml.safe_load((tmp_path / "aiko" / "character.yaml").read_text())["name"] == "Aiko"
    # adding a reference keeps the others
    write_character(tmp_path, "aiko", parse_sheet(AIKO), {"smile.webp": b"webp"})
    assert len(load_character(tmp_path / "aiko").references) == 3
    (tmp_path / "not-a-character").mkdir()
    other_root = tmp_path / "second"
    write_character(other_root, "aiko", parse_sheet({**AIKO, "name": "Other"}), {})
    found = find_characters([tmp_path, other_root, tmp_path / "missing"])
    assert found == {"aiko": tmp_path / "aiko"}  # the first root wins


@pytest.mark.parametrize("folder, files, field", [
    ("../up", {}, "folder"),
    ("aiko", {"../../x.png": b""}, "references.../../x.png"),
    ("aiko", {"notes.txt": b""}, "references.notes.txt"),
])
def test_write_refuses_traversal_and_non_images(tmp_path, folder, files, field):
    with pytest.raises(CharacterSheetError) as caught:
        write_character(tmp_path, folder, parse_sheet(AIKO), files)
    assert caught.value.field == field
    assert not (tmp_path.parent / "x.png").exists()


def test_missing_sheet_is_named(tmp_path):
    with pytest.raises(CharacterSheetError, match="character.yaml does not exist"):
        load_character(tmp_path)


# --- a character's state in a shot, composed after its design prompt -------------------------------------------

STATE = {"outfit": "torn jacket", "injuries": "bandaged left arm", "props": "a katana", "emotion": "angry",
         "notes": "soaked by the rain"}


def test_state_fragment_reads_each_field_in_its_words_and_leaves_empty_ones_out():
    assert state_fragment(STATE) == ("wearing torn jacket, injured: bandaged left arm, holding a katana, angry, "
                                     "soaked by the rain")
    assert state_fragment({"emotion": "calm", "outfit": "  ", "props": ""}) == "calm"
    assert state_fragment({}) == ""
    # a text already in the phrase's words is not given them twice; stray commas and spaces go
    assert state_fragment({"outfit": "wearing a grey coat, ", "props": " holding an umbrella"}) == \
        "wearing a grey coat, holding an umbrella"
    assert state_fragment({"outfit": "wearingless"}) == "wearing wearingless"  # a word, not a prefix


@pytest.mark.parametrize("state, problem", [
    ({"hat": "red"}, "state.hat: unknown field (known: outfit, injuries, props, emotion, notes)"),
    ({"outfit": 3}, "state.outfit: must be a string"),
    ({"notes": "line one\nline two"}, "state.notes: must not contain the control character U+000A"),
    ({"emotion": "sad\x00"}, "state.emotion: must not contain a NUL character"),
    ({"props": "x" * 10_001}, "state.props: must have at most 10000 characters"),
    (["outfit"], "state: must be a mapping"),
])
def test_a_bad_state_is_refused_naming_the_field(state, problem):
    with pytest.raises(ValueError) as caught:
        state_fragment(state)
    assert str(caught.value).startswith(problem)


def test_checked_state_keeps_only_what_is_set_in_the_fragments_order():
    assert list(checked_state({"notes": "n", "outfit": " coat ", "emotion": ""})) == ["outfit", "notes"]
    assert checked_state({"notes": "n", "outfit": " coat ", "emotion": ""})["outfit"] == "coat"


def character(sheet: dict, state: dict | None = None, folder="aiko") -> Character:
    return Character(folder=Path(folder), sheet=parse_sheet(sheet), references=(), state=state or {})


def test_compose_puts_each_characters_state_right_after_its_design_prompt():
    kairo = {"name": "Kairo", "design_prompt": "Kairo, tall, black coat", "negative_prompt": "beard"}
    aiko = character(AIKO, {"outfit": "torn jacket", "emotion": "angry"})
    positive, negative = compose_prompts("rooftop at dusk", "blurry", [aiko, character(kairo)], 1.15)
    assert positive == ("rooftop at dusk, (Aiko, silver bob, amber eyes, red scarf:1.15), wearing torn jacket, "
                        "angry, (Kairo, tall, black coat:1.15)")
    assert negative == "blurry, blue eyes, beard"  # the state adds nothing to the negative
    positive, _ = compose_prompts("rooftop", "", [character(kairo, {"props": "a lantern"}), aiko])
    assert positive == ("rooftop, Kairo, tall, black coat, holding a lantern, Aiko, silver bob, amber eyes, red "
                        "scarf, wearing torn jacket, angry")


def test_a_character_without_state_composes_as_its_sheet_does():
    sheet = parse_sheet(AIKO)
    bare = character(AIKO)
    assert compose_prompts("shot", "neg", [bare], 1.3) == compose_prompts("shot", "neg", [sheet], 1.3) == \
        ("shot, (Aiko, silver bob, amber eyes, red scarf:1.30)", "neg, blue eyes")
    assert bare.design_with_state() == sheet.design_prompt
    assert replace(bare, state={"emotion": "tired"}).design_with_state() == f"{sheet.design_prompt}, tired"


# --- the sheet's voice ------------------------------------------------------------------------------------------

def test_a_sheet_may_name_its_voice():
    assert parse_sheet(AIKO).voice is None
    sheet = parse_sheet({**AIKO, "voice": {"engine": "piper", "voice": "en_US-joe-medium"}})
    assert (sheet.voice.engine, sheet.voice.voice) == ("piper", "en_US-joe-medium")
    assert sheet.as_dict()["voice"] == {"engine": "piper", "voice": "en_US-joe-medium"}
    # left out, the voice is the engine's default one
    assert parse_sheet({**AIKO, "voice": {"engine": "espeak-ng"}}).voice.voice == "en-us"
    assert parse_sheet({**AIKO, "voice": {"engine": "edge-tts", "voice": "en-GB-RyanNeural"}}).voice.voice == \
        "en-GB-RyanNeural"
    assert parse_sheet({**AIKO, "voice": {"engine": "espeak-ng", "voice": "en-us+f3"}}).voice.voice == "en-us+f3"


@pytest.mark.parametrize("voice, field, message", [
    ({"engine": "azure", "voice": "x"}, "voice.engine", "must be one of 'edge-tts', 'piper' or 'espeak-ng'"),
    ({"engine": "azure"}, "voice.engine", "must be one of"),
    ({"voice": "en-us"}, "voice.engine", "required"),
    ({"engine": "piper", "voice": "../../etc/passwd"}, "voice.voice", "must match"),
    ({"engine": "piper", "voice": "voices/joe"}, "voice.voice", "must match"),
    ({"engine": "piper", "voice": "a..b"}, "voice.voice", "not a path"),
    ({"engine": "piper", "voice": ""}, "voice.voice", "must match"),
    ({"engine": "piper", "voice": "joe", "speed": 2}, "voice.speed", "unknown field (known: engine, voice)"),
    ("piper", "voice", "must be a mapping"),
])
def test_a_bad_voice_names_the_field(voice, field, message):
    with pytest.raises(CharacterSheetError) as caught:
        parse_sheet({**AIKO, "voice": voice})
    assert caught.value.field == field and message in caught.value.message


def test_the_voice_is_written_and_read_back_and_a_bad_one_on_disk_names_the_field(tmp_path):
    sheet = parse_sheet({**AIKO, "voice": {"engine": "edge-tts", "voice": "en-US-AriaNeural"}})
    assert load_character(write_character(tmp_path, "aiko", sheet, {}).folder).sheet.voice == sheet.voice
    assert "voice" not in yaml.safe_load(write_character(tmp_path, "ren", parse_sheet(AIKO), {}).folder.joinpath(
        "character.yaml").read_text())
    (tmp_path / "aiko" / "character.yaml").write_text(
        "name: Aiko\ndesign_prompt: silver bob\nvoice:\n  engine: azure\n  voice: en-US-AriaNeural\n")
    with pytest.raises(CharacterSheetError) as caught:
        load_character(tmp_path / "aiko")
    assert caught.value.field == "voice.engine" and "'azure'" in caught.value.message
