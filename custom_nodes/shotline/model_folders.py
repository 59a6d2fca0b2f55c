"""Model folders Shotline adds to ComfyUI's models/ tree.

Registered once, when the pack loads, through folder_paths: entries of the same name in a user's
extra_model_paths.yaml are kept and searched after the default folder.
"""
import os

import folder_paths

CHARACTERS = "shotline_characters"        # models/shotline_characters/<character>/character.yaml + references/
INSIGHTFACE = "insightface"               # models/insightface/models/<pack>/*.onnx (buffalo_l, antelopev2)
ANIME_FACE_DETECTORS = "anime_face_detectors"  # models/anime_face_detectors/*.onnx
CHARACTER_EMBEDDERS = "character_embedders"    # models/character_embedders/*.onnx (CCIP-style)
PIPER_VOICES = "piper_voices"                  # models/piper_voices/<voice>.onnx + <voice>.onnx.json
RIFE = "rife"                                  # models/rife/<model>/flownet.param + flownet.bin (ncnn)

_EXTENSIONS = {CHARACTERS: set(), INSIGHTFACE: {".onnx"}, ANIME_FACE_DETECTORS: {".onnx"},
               CHARACTER_EMBEDDERS: {".onnx"}, PIPER_VOICES: {".onnx"}, RIFE: set()}

for _name, _extensions in _EXTENSIONS.items():
    folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name), is_default=True)
    folder_paths.folder_names_and_paths[_name][1].update(_extensions)


def folders(name: str) -> list[str]:
    return folder_paths.get_folder_paths(name)
