"""The list of Shotline nodes ComfyUI registers."""
from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .character_library import ApplyCharacterLoras, LoadCharacter
from .identity_check import CharacterGallery, IdentityCheck
from .quality_score import ShotQualityScore
from .shot_verdict import ShotVerdict
from .temporal_coherence import TemporalCoherence


class ShotlineExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ShotQualityScore, IdentityCheck, TemporalCoherence, ShotVerdict, LoadCharacter,
                ApplyCharacterLoras, CharacterGallery]
