import pytest
import yaml

from shotline.core.characters import (CharacterSheetError, find_characters, load_character, parse_sheet,
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
