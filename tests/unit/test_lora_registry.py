"""The LoRA registry's pure parts: version names, the decision rule, the sheet rewrite, the file check."""
import json
import struct

import pytest
from shotline.core.characters import parse_sheet

from shotline_controller.lora_registry import (LoraError, decide, lora_override, read_lora_file, sheet_with_active,
                                               version_file)


def test_version_files_live_under_the_registry_folder_of_the_character():
    assert version_file("aiko", 3) == "shotline/aiko/v3.safetensors"
    assert lora_override("shotline/aiko/v3.safetensors", 0.8) == "shotline/aiko/v3.safetensors:0.8"
    assert lora_override(None, 1.0) == ""


def test_the_candidate_is_activated_only_when_strictly_better_and_not_found_counts_zero():
    better = decide([1, 2], [0.8, None], [0.3, 0.2], "v1")
    assert better["candidate_mean"] == pytest.approx(0.4) and better["active_mean"] == pytest.approx(0.25)
    assert better["decision"] == "activated" and better["reason"].startswith("better: ")
    assert better["candidate_scores"] == [0.8, None]  # kept as measured; the mean counts None as 0
    tie = decide([1, 2], [None, None], [0.0, None], "no registry LoRA")
    assert tie["decision"] == "kept the active" and tie["reason"].startswith("not better: ")
    assert "counts 0" in tie["reason"]
    worse = decide([1], [0.1], [0.2], "v2")
    assert worse["decision"] == "kept the active"


def test_activating_replaces_the_registry_entry_and_keeps_the_users_loras():
    sheet = parse_sheet({"name": "Aiko", "style": "anime", "design_prompt": "Aiko",
                         "loras": [{"name": "style.safetensors", "strength": 0.5},
                                   {"name": "shotline/aiko/v1.safetensors", "strength": 1.0},
                                   {"name": "shotline/ren/v4.safetensors", "strength": 0.7}]})
    updated = sheet_with_active(sheet, "aiko", "shotline/aiko/v2.safetensors", 0.9)
    assert [(lora.name, lora.strength) for lora in updated.loras] == [
        ("style.safetensors", 0.5), ("shotline/ren/v4.safetensors", 0.7), ("shotline/aiko/v2.safetensors", 0.9)]


def test_a_file_that_is_not_safetensors_is_refused_naming_it(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_bytes(b"hello, not a LoRA")
    with pytest.raises(LoraError, match=f"{bad} is not a safetensors file"):
        read_lora_file(bad)
    empty = tmp_path / "empty.safetensors"
    header = json.dumps({"__metadata__": {}}).encode()
    empty.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(LoraError, match="holds no tensors"):
        read_lora_file(empty)
    with pytest.raises(LoraError, match="cannot read"):
        read_lora_file(tmp_path / "missing.safetensors")
