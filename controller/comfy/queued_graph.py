"""`shotline workflow to-api`: the API graph the controller would queue for a workflow file, and what fills it.

The same steps a render takes (presets.preset_graph converts and checks, presets.fill_preset fills), on a file
that need not be a preset, so a user or a CI job sees exactly what runs.
"""
from __future__ import annotations

from shotline_controller.comfy.presets import (
    PresetError,
    check_graph,
    convert,
    fill_preset,
    is_editor_format,
    shot_targets,
)
from shotline_controller.comfy.results import choose_checkpoint, combo_options
from shotline_controller.contract import Shot


def api_graph(data, name: str, object_info: dict | None, shot: Shot | None = None,
              image_name: str | None = None) -> tuple[dict, dict, list[str]]:
    """(graph, values filled, notes): `data` in API format, filled with `shot` when one is given. Without a shot
    the graph is only converted, and a graph no shot could run on is a note, not an error (what a template
    lacks is reported; it still converts)."""
    if is_editor_format(data):
        if object_info is None:
            raise PresetError(f"{name}: an editor-format workflow is converted against a server's /object_info: "
                              "pass --comfy URL (or configure the local ComfyUI with install.py)")
        data = convert(data, object_info, name)
    if not isinstance(data, dict) or not data or not all(isinstance(node, dict) and "class_type" in node
                                                         for node in data.values()):
        raise PresetError(f"{name}: neither an editor-format nor an API-format ComfyUI workflow")
    notes = []
    if object_info is not None:
        unknown = sorted({node["class_type"] for node in data.values() if node["class_type"] not in object_info})
        if unknown:
            notes.append(f"node types this server lacks: {', '.join(unknown)}")
    if shot is None:
        try:
            check_graph(name, data)
        except PresetError as error:
            notes.append(f"a shot cannot run on it: {error}")
        return data, {}, notes + role_notes(data)
    check_graph(name, data)
    shot = shot.model_copy(update={"workflow": name})  # messages name this file, not the shot's preset
    checkpoint = shot.checkpoint
    if object_info is not None:
        available = combo_options(object_info, "CheckpointLoaderSimple", "ckpt_name")
        if shot.checkpoint or available:
            checkpoint = choose_checkpoint(shot, available)
    graph, filled = fill_preset(data, shot, checkpoint, filename_prefix=f"shotline/to-api/{shot.id}",
                                image_name=image_name, object_info=object_info)
    return graph, filled, notes + role_notes(data)


def role_notes(graph: dict) -> list[str]:
    """One line per role: which nodes and inputs a shot fills (titled or inferred), then what is ambiguous."""
    targets, roles = shot_targets(graph)
    lines = [f"{title}: " + "; ".join(f"node {node_id} ({graph[node_id]['class_type']}) "
                                      + ", ".join(f"{name} <- {field or 'the controller'}" for name, field in
                                                  inputs.items())
                                      for node_id, inputs in found)
             for title, found in targets.items()]
    return lines + [f"{title}: not inferred: {why}" for title, why in roles.ambiguous.items()]
