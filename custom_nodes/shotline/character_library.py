"""Load Character (a character from the library, with its prompts) and Apply Character LoRAs."""
import os

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from . import model_folders
from .core.characters import SHEET_FILE, find_characters, load_character, reference_images

Character = io.Custom("SHOTLINE_CHARACTER")


def library() -> dict:
    return find_characters(model_folders.folders(model_folders.CHARACTERS))


class LoadCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineLoadCharacter",
            display_name="Load Character",
            category="Shotline/characters",
            description="A character folder from models/shotline_characters: its sheet (design prompt, negative "
                        "prompt, style, LoRAs, thresholds) and reference images.",
            inputs=[
                io.Combo.Input("character", options=sorted(library()),
                               tooltip="Folders in models/shotline_characters with a character.yaml."),
            ],
            outputs=[
                Character.Output(display_name="character"),
                io.String.Output(display_name="design_prompt"),
                io.String.Output(display_name="negative_prompt"),
            ],
        )

    @classmethod
    def validate_inputs(cls, character):
        # ComfyUI 0.3.75 does not check V3 combo values against their options, so the node does.
        if character not in library():
            folders = model_folders.folders(model_folders.CHARACTERS)
            return f"character {character!r} not found: no {character}/character.yaml in {', '.join(folders)}"
        return True

    @classmethod
    def fingerprint_inputs(cls, character):
        """Changes when the sheet or any reference changes, so edits on disk take effect without a restart."""
        folder = library().get(character)
        if folder is None:
            return character
        return [(str(path), os.stat(path).st_mtime_ns, os.stat(path).st_size)
                for path in (folder / SHEET_FILE, *reference_images(folder))]

    @classmethod
    def execute(cls, character) -> io.NodeOutput:
        loaded = load_character(library()[character])
        return io.NodeOutput(loaded, loaded.sheet.design_prompt, loaded.sheet.negative_prompt)


class ApplyCharacterLoras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineApplyCharacterLoras",
            display_name="Apply Character LoRAs",
            category="Shotline/characters",
            description="Applies the LoRAs listed in the character's sheet, at the sheet's strengths times "
                        "strength_scale. A character with no LoRAs passes the model and CLIP through.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                Character.Input("character"),
                io.Float.Input("strength_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Multiplies every strength in the sheet (0 turns the LoRAs off)."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip")],
        )

    @classmethod
    def execute(cls, model, clip, character, strength_scale) -> io.NodeOutput:
        for lora in character.sheet.loras:
            # names the file and the loras folder when it is missing
            path = folder_paths.get_full_path_or_raise("loras", lora.name)
            weights = comfy.utils.load_torch_file(path, safe_load=True)
            clip_strength = lora.strength if lora.clip_strength is None else lora.clip_strength
            model, clip = comfy.sd.load_lora_for_models(model, clip, weights, lora.strength * strength_scale,
                                                        clip_strength * strength_scale)
        return io.NodeOutput(model, clip)
