"""Character State inside the real ComfyUI server: Load Character -> Character State -> Character Prompt."""
import pytest

from shotline.core.characters import parse_sheet, state_fragment, write_character
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME

pytestmark = pytest.mark.integration

STATE = {"outfit": "torn jacket", "injuries": "bandaged left arm", "props": "a katana", "emotion": "angry",
         "notes": ""}
FRAGMENT = "wearing torn jacket, injured: bandaged left arm, holding a katana, angry"


@pytest.fixture(scope="module")
def characters(comfy_server):
    for folder, name, design in (("state_aiko", "Aiko", "Aiko, silver bob, red scarf"),
                                 ("state_ren", "Ren", "Ren, short black hair")):
        write_character(comfy_server.characters_dir, folder, parse_sheet({"name": name, "design_prompt": design}), {})


def state_graph(state: dict, second_state: dict | None = None) -> dict:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": RANDOM_CHECKPOINT_NAME}},
        "2": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": "state_aiko"}},
        "3": {"class_type": "ShotlineCharacterState", "inputs": {"character": ["2", 0], **state}},
        "4": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": "state_ren"}},
        "5": {"class_type": "ShotlineCharacterPrompt", "inputs": {
            "clip": ["1", 1], "text": "rooftop at dusk", "negative": "blurry", "character_weight": 1.15,
            "character": ["3", 0], "character_2": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    if second_state is not None:  # a second State after the first: it keeps what it does not set
        graph["8"] = {"class_type": "ShotlineCharacterState", "inputs": {"character": ["3", 0], **second_state}}
        graph["5"]["inputs"]["character"] = ["8", 0]
    return graph


def test_the_state_composes_right_after_its_characters_design_prompt(comfy, characters):
    entry = comfy.run(state_graph(STATE))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert state_fragment(STATE) == FRAGMENT
    positive = entry["outputs"]["6"]["text"][0]
    assert FRAGMENT in positive
    assert positive == f"rooftop at dusk, (Aiko, silver bob, red scarf:1.15), {FRAGMENT}, (Ren, short black hair:1.15)"
    assert entry["outputs"]["7"]["text"] == [FRAGMENT]              # the fragment output
    assert entry["outputs"]["3"]["text"] == [f"Aiko: {FRAGMENT}"]   # shown on the node


def test_a_later_state_keeps_what_it_does_not_set_and_empty_fields_stay_out(comfy, characters):
    empty = {name: "" for name in STATE}
    entry = comfy.run(state_graph({**empty, "outfit": "torn jacket"}, {**empty, "emotion": "calm"}))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert "(Aiko, silver bob, red scarf:1.15), wearing torn jacket, calm, (Ren" in entry["outputs"]["6"]["text"][0]
    entry = comfy.run(state_graph(empty))
    assert entry["outputs"]["6"]["text"][0] == ("rooftop at dusk, (Aiko, silver bob, red scarf:1.15), "
                                                "(Ren, short black hair:1.15)")
    assert entry["outputs"]["3"]["text"] == ["Aiko: no state"]


def test_a_state_text_that_is_not_one_line_names_the_field(comfy, characters):
    entry = comfy.run(state_graph({**STATE, "notes": "two\nlines"}))
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert error["exception_message"].startswith("state.notes: must not contain the control character U+000A")


def test_a_bad_voice_on_disk_names_the_sheet_and_the_field(comfy, comfy_server, characters):
    folder = comfy_server.characters_dir / "state_mute"
    write_character(comfy_server.characters_dir, "state_mute", parse_sheet({"name": "Mute", "design_prompt": "x"}), {})
    (folder / "character.yaml").write_text("name: Mute\ndesign_prompt: x\nvoice:\n  engine: azure\n")
    entry = comfy.run({"1": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": "state_mute"}},
                       "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert entry["status"]["status_str"] == "error"
    error = next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")
    assert error["exception_message"].startswith("voice.engine: must be one of 'edge-tts', 'piper' or 'espeak-ng'")
    assert str(folder / "character.yaml") in error["exception_message"]
