"""`music: auto` in an assembly: a scene's music made from its mood by the `music_ace_step` preset (ComfyUI
core's ACE-Step nodes) on a ComfyUI backend, then ducked under the scene like uploaded music.

The mood is the first `mood` a shot of the scene names; the music lasts the scene's planned length (its shots'
durations, 10 s at least, 240 s at most) and loops under a longer cut. A backend without the model files refuses
the graph: the job fails (502) naming each missing file and the folder it goes in.
"""
from __future__ import annotations

import re
from typing import Awaitable, Callable

import aiohttp

from shotline_controller.comfy.client import (
    ComfyBackend,
    ComfyUnavailable,
    OutputGone,
    PromptRejected,
    fetch_output_bytes,
)
from shotline_controller.comfy.presets import PresetError, fill_preset, load_preset, nodes_titled
from shotline_controller.comfy.results import collect_results
from shotline_controller.contract import Shot, ShotInput
from shotline_controller.media.assembly_jobs import AUDIO_SUFFIXES, MusicUnavailable

MUSIC_PRESET = "music_ace_step"
MIN_SECONDS, MAX_SECONDS = 10.0, 240.0
# a loader's file input -> the models/ folder its file goes in
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "clip_name": "text_encoders",
                 "vae_name": "vae"}
_NOT_IN_LIST = re.compile(r"(\w+): '([^']+)' not in")

# (mood, seconds, seed) -> the music's bytes and its file suffix
MusicMaker = Callable[[str, float, int], Awaitable[tuple[bytes, str]]]


def missing_files(body: dict) -> list[str]:
    """'<file> (put it in ComfyUI's models/<folder>/)' for each model file a validation error says is missing."""
    found = []
    for info in (body.get("node_errors") or {}).values():
        for error in info.get("errors", []):
            match = _NOT_IN_LIST.search(str(error.get("details", "")))
            if error.get("type") == "value_not_in_list" and match and match[1] in MODEL_FOLDERS:
                found.append(f"{match[2]} (put it in ComfyUI's models/{MODEL_FOLDERS[match[1]]}/)")
    return found


def music_graph(object_info: dict, mood: str, seconds: float, seed: int) -> dict:
    """The music preset filled with the mood (its Prompt), the seed and the length (its Duration)."""
    preset = load_preset(MUSIC_PRESET, object_info)
    shot = Shot.from_input(ShotInput(id="scene-music", prompt=mood, seed=seed))
    graph, _ = fill_preset(preset, shot, None, "shotline/music")
    for node in nodes_titled(graph, "Duration"):
        node["inputs"]["seconds"] = round(min(MAX_SECONDS, max(MIN_SECONDS, seconds)), 1)
    return graph


def backend_music(backends: list[ComfyBackend], session: aiohttp.ClientSession) -> MusicMaker:
    """A MusicMaker on the first connected backend of `backends`."""
    async def make(mood: str, seconds: float, seed: int) -> tuple[bytes, str]:
        backend = next((b for b in backends if b.connected), None)
        if backend is None:
            raise MusicUnavailable("music: auto needs a connected ComfyUI backend, and none is connected")
        try:
            graph = music_graph(await backend.object_info(), mood, seconds, seed)
            result = await backend.run(graph)
        except PromptRejected as rejected:
            files = missing_files(rejected.body)
            raise MusicUnavailable(
                f"music: auto: {backend.base_url} cannot run {MUSIC_PRESET}: "
                + (f"missing model file {', '.join(files)}" if files else str(rejected))) from None
        except (ComfyUnavailable, PresetError) as error:
            raise MusicUnavailable(f"music: auto: {error}") from None
        if result.status == "error":
            raise MusicUnavailable(f"music: auto: {MUSIC_PRESET} failed on {backend.base_url}: "
                                   f"{(result.error or {}).get('exception_message', 'an execution error')}")
        files, _ = collect_results(result.outputs)
        audio = [f for f in files if f["filename"].lower().endswith(AUDIO_SUFFIXES)]
        if not audio:
            raise MusicUnavailable(f"music: auto: {MUSIC_PRESET} saved no audio file on {backend.base_url}")
        try:
            data = await fetch_output_bytes(session, backend.base_url, audio[-1])
        except (OutputGone, ComfyUnavailable) as error:
            raise MusicUnavailable(f"music: auto: {error}") from None
        return data, "." + audio[-1]["filename"].rsplit(".", 1)[-1].lower()
    return make
