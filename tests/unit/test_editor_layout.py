"""The editor presets' layout, read from the files alone: no node's box (title bar above pos, then its size) lies on
another's. tests/integration/test_editor_browser.py checks the same in the real editor, after the frontend has
grown each node to the size it computes."""
import json
from pathlib import Path

import pytest

from workflows.make_editor_format import TITLE_HEIGHT, node_box, overlaps

EDITOR_PRESETS = sorted((Path(__file__).parents[2] / "workflows").glob("*.json"))


def test_there_are_editor_presets():
    assert len(EDITOR_PRESETS) >= 6


@pytest.mark.parametrize("preset", EDITOR_PRESETS, ids=lambda path: path.stem)
def test_no_two_nodes_of_a_preset_overlap(preset):
    nodes = json.loads(preset.read_text())["nodes"]
    assert overlaps(nodes) == []
    assert all(node_box(n)[1] >= 0 and node_box(n)[0] >= 0 for n in nodes)  # nothing above or left of the view


def test_the_check_sees_a_title_bar_on_a_body():
    upper = {"id": 1, "type": "A", "pos": [0, 30], "size": [100, 50]}  # body 30..80
    touching = {"id": 2, "type": "B", "pos": [0, 80 + TITLE_HEIGHT], "size": [100, 50]}
    assert overlaps([upper, touching]) == []
    covering = {"id": 3, "type": "C", "pos": [50, 80 + TITLE_HEIGHT - 1], "size": [100, 50]}  # its title on A
    assert overlaps([upper, covering]) == ["1 A (0, 0, 100, 80) and 3 C (50, 79, 150, 159)"]
