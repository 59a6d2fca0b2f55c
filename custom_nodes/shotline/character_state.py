"""Character State: what a character wears, carries and feels in this shot, composed after its design prompt."""
import dataclasses

from comfy_api.latest import io, ui

from .character_library import Character
from .core.characters import STATE_FIELDS, checked_state, state_fragment

TOOLTIPS = {
    "outfit": "What the character wears in this shot, e.g. \"torn jacket\" (prompted as \"wearing torn jacket\").",
    "injuries": "e.g. \"bandaged left arm\" (prompted as \"injured: bandaged left arm\").",
    "props": "What the character carries, e.g. \"a katana\" (prompted as \"holding a katana\").",
    "emotion": "e.g. \"angry\", \"quietly relieved\" (prompted as it is).",
    "notes": "Anything else about the character in this shot, prompted as it is.",
}


class CharacterState(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ShotlineCharacterState",
            display_name="Character State",
            category="Shotline/characters",
            description="Attaches the character's state in this shot (outfit, injuries, props, emotion, notes) to "
                        "the character. Character Prompt and Face Refine then prompt it right after the "
                        "character's design prompt: \"wearing torn jacket, injured: bandaged left arm, holding a "
                        "katana, angry\". Empty fields are left out; chained State nodes keep what an earlier one "
                        "set unless they set the same field.",
            inputs=[
                Character.Input("character", tooltip="A character from Load Character (or another Character State)."),
                *(io.String.Input(name, default="", multiline=False, tooltip=TOOLTIPS[name]) for name in STATE_FIELDS),
            ],
            outputs=[
                Character.Output(display_name="character", tooltip="The same character, carrying its state."),
                io.String.Output(display_name="fragment",
                                 tooltip="The state as a prompt fragment, e.g. to wire into a prompt of your own."),
            ],
        )

    @classmethod
    def execute(cls, character, outfit: str, injuries: str, props: str, emotion: str, notes: str) -> io.NodeOutput:
        given = checked_state({"outfit": outfit, "injuries": injuries, "props": props, "emotion": emotion,
                               "notes": notes})
        state = checked_state({**character.state, **given})
        fragment = state_fragment(state)
        shown = f"{character.name}: {fragment}" if fragment else f"{character.name}: no state"
        return io.NodeOutput(dataclasses.replace(character, state=state), fragment,
                             ui=ui.PreviewText(shown))
