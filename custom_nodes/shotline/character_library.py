"""LoadCharacter: a character from the library, with its design and negative prompts."""
import os

from comfy_api.latest import io

from . import model_folders
from .core.characters import find_characters, load_character

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
        loaded = load_character(folder)
        return [(str(path), os.stat(path).st_mtime_ns, os.stat(path).st_size)
                for path in (folder / "character.yaml", *loaded.references)]

    @classmethod
    def execute(cls, character) -> io.NodeOutput:
        loaded = load_character(library()[character])
        return io.NodeOutput(loaded, loaded.sheet.design_prompt, loaded.sheet.negative_prompt)
