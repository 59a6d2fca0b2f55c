"""Lay out an API-format preset as an editor-format workflow, for presets written in code or by hand.

    python workflows/make_editor_format.py workflows/api/NAME.json http://127.0.0.1:8188 > workflows/NAME.json

The usual direction is the other one (tune in the editor, export); this tool exists so a preset written as an
API graph gets its editor twin. Widget values follow the server's /object_info input order, nodes are placed in
columns by their depth in the graph. The tests check that converting the result back (comfy-cli's converter)
gives the API file exactly.
"""
from __future__ import annotations

import json
import sys
import urllib.request

NODE_WIDTH, COLUMN_GAP, ROW_HEIGHT = 320, 60, 60
SEED_INPUTS = {"seed", "noise_seed"}  # the editor adds a control_after_generate value after these
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _ordered_inputs(schema: dict) -> list[tuple[str, list]]:
    order = schema.get("input_order") or {}
    inputs = {**schema["input"].get("required", {}), **schema["input"].get("optional", {})}
    names = [*order.get("required", []), *order.get("optional", [])] or list(inputs)
    return [(name, inputs[name]) for name in names if name in inputs]


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
    rows: dict[int, int] = {}
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
                if kind in WIDGET_TYPES:
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
        row = rows.get(column, 0)
        rows[column] = row + 2 + len(inputs) + len(widgets)
        nodes.append({
            "id": int(node_id), "type": node["class_type"], "title": node.get("_meta", {}).get("title"),
            "pos": [40 + column * (NODE_WIDTH + COLUMN_GAP), 60 + row * ROW_HEIGHT // 2],
            "size": [NODE_WIDTH, 60 + 24 * (len(inputs) + len(widgets))], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": node_outputs,
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    return {"last_node_id": max(int(n) for n in graph), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


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
