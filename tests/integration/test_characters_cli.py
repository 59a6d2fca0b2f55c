"""`shotline character put`: the library folder and the rows in PostgreSQL."""
import hashlib

import psycopg
import pytest
import yaml

from tests.integration.processes import shotline

pytestmark = pytest.mark.integration
SHEET = {"name": "Aiko", "style": "anime", "design_prompt": "Aiko, silver bob, amber eyes, red scarf",
         "loras": [{"name": "aiko_v3.safetensors", "strength": 0.8}], "thresholds": {"identity": 0.8}}


def test_put_character_writes_the_library_and_records_it(database_url, tmp_path):
    (tmp_path / "sheet.yaml").write_text(yaml.safe_dump(SHEET))
    (tmp_path / "front.png").write_bytes(b"front image bytes")
    (tmp_path / "side.png").write_bytes(b"side image bytes")
    library = tmp_path / "library"
    args = ["character", "put", "aiko", "--sheet", tmp_path / "sheet.yaml", "--library", library]
    result = shotline(*args, "--reference", tmp_path / "front.png", "--reference", tmp_path / "side.png",
                      env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (library / "aiko" / "references").iterdir()) == ["front.png", "side.png"]
    assert yaml.safe_load((library / "aiko" / "character.yaml").read_text())["thresholds"] == {"identity": 0.8}

    # an update with a changed sheet and no new references keeps the references
    (tmp_path / "sheet.yaml").write_text(yaml.safe_dump({**SHEET, "style": "photo"}))
    assert shotline(*args, env={"DATABASE_URL": database_url}).returncode == 0
    with psycopg.connect(database_url) as conn:
        [(name, style, sheet)] = conn.execute("SELECT name, style, sheet FROM characters").fetchall()
        references = conn.execute("SELECT file_name, sha256, size_bytes FROM character_references "
                                  "ORDER BY file_name").fetchall()
    assert (name, style, sheet["loras"][0]["strength"]) == ("Aiko", "photo", 0.8)
    assert references == [("front.png", hashlib.sha256(b"front image bytes").hexdigest(), 17),
                          ("side.png", hashlib.sha256(b"side image bytes").hexdigest(), 16)]


def test_bad_sheet_names_the_field(database_url, tmp_path):
    (tmp_path / "sheet.yaml").write_text(yaml.safe_dump({**SHEET, "style": "cartoon"}))
    result = shotline("character", "put", "aiko", "--sheet", tmp_path / "sheet.yaml", "--library", tmp_path,
                      env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "style: must be one of 'anime' or 'photo', got 'cartoon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_put_character_uses_the_library_from_the_environment(database_url, tmp_path):
    """Without --library the character goes to SHOTLINE_CHARACTER_LIBRARY, not into the ComfyUI's models folder."""
    (tmp_path / "sheet.yaml").write_text(yaml.safe_dump(SHEET))
    (tmp_path / "front.png").write_bytes(b"front image bytes")
    comfyui = tmp_path / "ComfyUI"  # where the character would go by default: it must stay empty
    library = tmp_path / "from-env"
    result = shotline("character", "put", "aiko", "--sheet", tmp_path / "sheet.yaml", "--reference",
                      tmp_path / "front.png", env={"DATABASE_URL": database_url, "SHOTLINE_HOME": str(tmp_path),
                                                   "SHOTLINE_COMFYUI": str(comfyui),
                                                   "SHOTLINE_CHARACTER_LIBRARY": str(library)})
    assert result.returncode == 0, result.stderr
    assert str(library / "aiko") in result.stdout
    assert yaml.safe_load((library / "aiko" / "character.yaml").read_text())["name"] == "Aiko"
    assert (library / "aiko" / "references" / "front.png").read_bytes() == b"front image bytes"
    assert not comfyui.exists()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT name FROM characters").fetchall() == [("Aiko",)]
