"""Shotline: ComfyUI nodes that keep a character the same character in every shot.

ComfyUI calls comfy_entrypoint when it loads the pack. The node modules are imported there, not at module
level, so `shotline.core` (the pure logic) stays importable without ComfyUI, by unit tests and the controller.
"""


async def comfy_entrypoint():
    from .extension import ShotlineExtension
    return ShotlineExtension()
