"""Lay out an API-format preset as an editor-format workflow, for presets written in code or by hand.

    python workflows/make_editor_format.py workflows/api/NAME.json http://127.0.0.1:8188 > workflows/NAME.json

The usual direction is the other one (tune in the editor, export); this tool exists so a preset written as an
API graph gets its editor twin. Widget values follow the server's /object_info input order, nodes are placed in
columns by their depth in the graph, each below the one before with room for its title bar and its full size
(estimated from its title, slots and widgets, never less than the frontend draws it), spaced for the larger size
the editor's Nodes 2.0 renderer gives it. The tests check that converting the result back (comfy-cli's converter)
gives the API file exactly, that no two node boxes overlap in the file (tests/unit/test_editor_layout.py) and in
the real editor (tests/integration/test_editor_browser.py).
"""
from __future__ import annotations

import itertools
import json
import math
import sys
import urllib.request

NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 60, 40
# The editor's "Nodes 2.0" (Vue) renderer draws the same node larger than LiteGraph does: 1.2x as wide and, measured
# on the presets in frontend 1.32.9, up to 1.53x as tall (Quality: 214 -> 290 px). Nodes are spaced for that size,
# so a preset stays clear in either renderer; `size` stays the LiteGraph one, which the editor grows from.
VUE_WIDTH_FACTOR, VUE_HEIGHT_FACTOR = 1.2, 1.6
# LiteGraph's measures (frontend 1.32): the title bar is drawn above a node's pos; a slot row is 20 px, a widget
# 24 px, a multiline text box at least 62 px; an upload widget's image preview makes the node about this much taller
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, MULTILINE_HEIGHT, PREVIEW_HEIGHT, NODE_PADDING = 30, 20, 24, 64, 240, 14
# core types the frontend gives a player, viewer or text box of its own, which /object_info does not describe
FRONTEND_WIDGET_HEIGHT = {"LoadAudio": 80, "RecordAudio": 80, "SaveAudio": 60, "SaveAudioMP3": 60,
                          "SaveAudioOpus": 60, "PreviewAudio": 60, "LoadVideo": 30, "WebcamCapture": 80,
                          "Load3D": 130, "Preview3D": 60, "SaveGLB": 60, "PreviewAny": 60}
SEED_INPUTS = {"seed", "noise_seed"}  # the editor adds a control_after_generate value after these
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _ordered_inputs(schema: dict) -> list[tuple[str, list]]:
    order = schema.get("input_order") or {}
    inputs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
    names = [*order.get("required", []), *order.get("optional", [])] or list(inputs)
    return [(name, inputs[name]) for name in names if name in inputs]


def _is_widget(kind: str, spec: list) -> bool:
    return kind in WIDGET_TYPES and not (len(spec) > 1 and spec[1].get("forceInput"))


def node_height(schema: dict) -> int:
    """At least the height the frontend computes for a node of this type (LiteGraph's computeSize): slot rows
    (inputs beside outputs), then every widget the type has, linked or not, even those the graph leaves out."""
    slots, height = 0, NODE_PADDING + FRONTEND_WIDGET_HEIGHT.get(schema.get("name"), 0)
    for name, spec in _ordered_inputs(schema):
        kind = spec[0] if isinstance(spec[0], str) else "COMBO"
        options = spec[1] if len(spec) > 1 else {}
        if not _is_widget(kind, spec):
            slots += 1
            continue
        height += MULTILINE_HEIGHT if options.get("multiline") else WIDGET_HEIGHT
        if name in SEED_INPUTS or options.get("control_after_generate"):
            height += WIDGET_HEIGHT
        if options.get("image_upload"):
            height += WIDGET_HEIGHT + PREVIEW_HEIGHT  # the upload button, then the picture
    return height + SLOT_HEIGHT * max(slots, len(schema["output"]))


def node_width(title: str) -> int:
    """At least the frontend's width: a title longer than the widgets are wide sets it (about 9 px a character)."""
    return max(NODE_WIDTH, 9 * len(title) + 40)


def _title(node: dict, schema: dict) -> str:
    return node.get("_meta", {}).get("title") or schema.get("display_name") or node["class_type"]


def _depths(graph: dict) -> dict[str, int]:
    depths: dict[str, int] = {}

    def depth(node_id: str) -> int:
        if node_id not in depths:
            sources = [v[0] for v in graph[node_id]["inputs"].values() if _is_link(v)]
            depths[node_id] = 1 + max((depth(s) for s in sources), default=-1)
        return depths[node_id]

    for node_id in graph:
        depth(node_id)
    return depths


def editor_from_api(graph: dict, object_info: dict) -> dict:
    depths = _depths(graph)
    widths = {node_id: node_width(_title(node, object_info[node["class_type"]])) for node_id, node in graph.items()}
    lefts, left = {}, 40  # each column as wide as its widest node
    for column in range(max(depths.values()) + 1):
        lefts[column] = left
        widest = max(width for node_id, width in widths.items() if depths[node_id] == column)
        left += math.ceil(widest * VUE_WIDTH_FACTOR) + COLUMN_GAP
    next_top: dict[int, int] = {}  # column -> where the next node's title bar may start
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    link_into: dict[tuple[str, str], list] = {}  # (node id, input name) -> its link
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if _is_link(value):
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), None, None])
                link_into[(node_id, name)] = links[-1]
                outputs.setdefault((value[0], value[1]), []).append(len(links))
    for order, (node_id, node) in enumerate(graph.items()):
        schema = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _ordered_inputs(schema):
            value = node["inputs"].get(name)
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            if _is_link(value):
                link = link_into[(node_id, name)]
                link[4] = len(inputs)
                link[5] = kind
                entry = {"name": name, "type": kind, "link": link[0]}
                if _is_widget(kind, spec):
                    entry["widget"] = {"name": name}
                    widgets.append(None)
                inputs.append(entry)
            elif kind in WIDGET_TYPES:
                if name not in node["inputs"]:
                    continue
                widgets.append(value)
                if name in SEED_INPUTS or (len(spec) > 1 and spec[1].get("control_after_generate")):
                    widgets.append("fixed")
        node_outputs = [{"name": name, "type": kind, "links": outputs.get((node_id, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(zip(schema["output_name"], schema["output"]))]
        column = depths[node_id]
        top, height = next_top.get(column, 30), node_height(schema)
        next_top[column] = top + TITLE_HEIGHT + math.ceil(height * VUE_HEIGHT_FACTOR) + ROW_GAP
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "title": node.get("_meta", {}).get("title"),
            "pos": [lefts[column], top + TITLE_HEIGHT],
            "size": [widths[node_id], height], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": node_outputs,
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    return {"last_node_id": max(int(n) for n in graph), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def node_box(node: dict, title_height: float = TITLE_HEIGHT) -> tuple[float, float, float, float]:
    """left, top, right, bottom of a node as drawn: its title bar sits above pos, its body is `size` below it."""
    (left, top), (width, height) = node["pos"], node["size"]
    return left, top - title_height, left + width, top + height


def overlaps(nodes: list[dict], title_height: float = TITLE_HEIGHT) -> list[str]:
    """Pairs of nodes (editor-format entries, or the editor's own) whose boxes share area; touching edges is fine."""
    boxes = {f"{n['id']} {n['type']}": node_box(n, title_height) for n in nodes}
    return [f"{a} {boxes[a]} and {b} {boxes[b]}" for a, b in itertools.combinations(boxes, 2)
            if min(boxes[a][2], boxes[b][2]) > max(boxes[a][0], boxes[b][0])
            and min(boxes[a][3], boxes[b][3]) > max(boxes[a][1], boxes[b][1])]


def main() -> int:
    api_path, server = sys.argv[1], sys.argv[2].rstrip("/")
    with urllib.request.urlopen(server + "/object_info", timeout=60) as response:
        object_info = json.loads(response.read())
    with open(api_path) as file:
        graph = json.load(file)
    json.dump(editor_from_api(graph, object_info), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
