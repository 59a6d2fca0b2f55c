"""The list of Shotline nodes ComfyUI registers."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .audio_mix import DuckAndMix
from .character_library import ApplyCharacterLoras, CharacterPrompt, LoadCharacter
from .character_state import CharacterState
from .color_grade import ColorGrade
from .dialogue_speech import DialogueSpeech
from .face_refine import FaceRefine
from .frame_interpolation import InterpolateFrames
from .identity_check import CharacterGallery, IdentityCheck
from .last_frame import LastFrame
from .quality_score import ShotQualityScore
from .save_mp4 import SaveMP4
from .shot_verdict import ShotVerdict
from .temporal_coherence import TemporalCoherence
from .upscale import Upscale


class ShotlineExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ShotQualityScore, IdentityCheck, TemporalCoherence, ShotVerdict, LoadCharacter, CharacterState,
                ApplyCharacterLoras, CharacterPrompt, CharacterGallery, FaceRefine, SaveMP4, LastFrame, ColorGrade,
                DialogueSpeech, DuckAndMix, Upscale, InterpolateFrames]
