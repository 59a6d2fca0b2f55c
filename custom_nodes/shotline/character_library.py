"""Load Character (a character from the library, with its prompts), Character Prompt and Apply Character LoRAs."""
import logging
import os

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from . import model_folders
from .core.characters import (SHEET_FILE, CharacterSheetError, LoraRef, compose_prompts, find_characters,
                              load_character, reference_images)

Character = io.Custom("SHOTLINE_CHARACTER")
log = logging.getLogger("shotline.character_library")


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
        folder = library()[character]
        try:
            loaded = load_character(folder)
        except CharacterSheetError as error:  # the field alone does not say which sheet
            raise CharacterSheetError(error.field, f"{error.message} (in {folder / SHEET_FILE})") from None
        return io.NodeOutput(loaded, loaded.sheet.design_prompt, loaded.sheet.negative_prompt)


def character_inputs(tooltip: str) -> list:
    """`character` and the optional `character_2` ... `character_4`: a shot's characters, in its order."""
    return [Character.Input("character", tooltip=tooltip),
            *(Character.Input(f"character_{number}", optional=True) for number in range(2, 5))]


def refuse_repeats(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise ValueError(f"a character is connected twice: {', '.join(names)}")


def connected(character, character_2=None, character_3=None, character_4=None) -> list:
    characters = [c for c in (character, character_2, character_3, character_4) if c is not None]
    refuse_repeats([c.name for c in characters])
    return characters


class CharacterPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineCharacterPrompt",
            display_name="Character Prompt",
            category="Shotline/characters",
            description="The shot's prompt followed by each character's design prompt (and right after it the "
                        "state a Character State gave it), and the shot's negative followed by each character's "
                        "negative prompt, in the order connected; encoded with CLIP. "
                        "The composed texts are outputs too, to see or reuse them.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("text", multiline=True, default="", tooltip="The shot: action, place, framing."),
                io.String.Input("negative", multiline=True, default="blurry, lowres, watermark"),
                io.Float.Input("character_weight", default=1.0, min=0.5, max=2.0, step=0.05,
                               tooltip="Weight of the design prompts, (design:1.15); identity corrections raise it."),
                *character_inputs("The shot's first character."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.String.Output(display_name="positive_text"),
                io.String.Output(display_name="negative_text"),
            ],
        )

    @classmethod
    def execute(cls, clip, text, negative, character_weight, character, character_2=None, character_3=None,
                character_4=None) -> io.NodeOutput:
        characters = connected(character, character_2, character_3, character_4)
        positive, negative = compose_prompts(text, negative, characters, character_weight)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(clip.tokenize(positive)),
                             clip.encode_from_tokens_scheduled(clip.tokenize(negative)), positive, negative)


REGISTRY_FOLDER = "shotline"  # the LoRA registry's files: models/loras/shotline/<character folder>/vN.safetensors


def with_override(character, override: str, characters: list) -> tuple:
    """The character's LoRAs, its registry entry replaced by `override` ("FILE:STRENGTH") when the file is one of
    its registry versions; a file no connected character's registry holds is refused, naming the characters."""
    if not override.strip():
        return character.sheet.loras
    name, _, strength = override.strip().rpartition(":")
    owner = name.split("/")[1] if name.count("/") == 2 and name.startswith(REGISTRY_FOLDER + "/") else None
    if owner not in [c.folder.name for c in characters]:
        raise ValueError(f"lora_override {override!r}: not FILE:STRENGTH with FILE in "
                         f"{REGISTRY_FOLDER}/<character>/ for a connected character "
                         f"({', '.join(c.folder.name for c in characters)})")
    if character.folder.name != owner:
        return character.sheet.loras
    try:
        value = float(strength)
    except ValueError:
        raise ValueError(f"lora_override {override!r}: the strength after ':' must be a number") from None
    prefix = f"{REGISTRY_FOLDER}/{owner}/"
    kept = tuple(lora for lora in character.sheet.loras if not lora.name.startswith(prefix))
    return (*kept, LoraRef(name=name, strength=value))


class ApplyCharacterLoras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineApplyCharacterLoras",
            display_name="Apply Character LoRAs",
            category="Shotline/characters",
            description="Applies the LoRAs listed in the sheets of the connected characters, at the sheets' "
                        "strengths times strength_scale. Characters without LoRAs pass the model and CLIP through.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Float.Input("strength_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                               tooltip="Multiplies every strength in the sheets (0 turns the LoRAs off); "
                                       "identity corrections raise it."),
                *character_inputs("A character whose sheet lists LoRAs."),
                io.String.Input("lora_override", default="", optional=True,
                                tooltip="FILE:STRENGTH, a LoRA registry version (shotline/<character>/vN.safetensors) "
                                        "used instead of that character's registry LoRA for this render; empty: "
                                        "the sheets as they are. The LoRA registry's validation sets it."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Clip.Output(display_name="clip")],
        )

    @classmethod
    def execute(cls, model, clip, strength_scale, character, character_2=None, character_3=None,
                character_4=None, lora_override="") -> io.NodeOutput:
        characters = connected(character, character_2, character_3, character_4)
        loras = [lora for c in characters for lora in with_override(c, lora_override, characters)]
        for lora in loras:
            # names the file and the loras folder when it is missing
            path = folder_paths.get_full_path_or_raise("loras", lora.name)
            weights = comfy.utils.load_torch_file(path, safe_load=True)
            clip_strength = lora.strength if lora.clip_strength is None else lora.clip_strength
            model, clip = comfy.sd.load_lora_for_models(model, clip, weights, lora.strength * strength_scale,
                                                        clip_strength * strength_scale)
            log.info("Character LoRAs: applied %s at %g (clip %g)", lora.name, lora.strength * strength_scale,
                     clip_strength * strength_scale)
        return io.NodeOutput(model, clip)
