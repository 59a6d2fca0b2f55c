"""Continuity for the dispatcher: a continuing shot's start frame, its scene's colour anchor, its characters'
state, and each character's best approved frame kept for the shots after it.

Frames travel as uploads (content-addressed, in PostgreSQL): the approved shot's last frame is fetched once from
the ComfyUI that rendered it (its public /view), stored by sha256, and uploaded to whichever backend runs the
next shot. So the next shot may run on another machine, and a restarted controller finds the same frame.

The last frame of a shot is the image a node titled "Last Frame" saved (the video presets), else its last saved
image (the image presets, whose one picture is their last frame).
"""
from __future__ import annotations

import asyncio
import io
import logging
import uuid

import aiohttp

from shotline_controller.comfy.client import ComfyUnavailable, OutputGone, fetch_output_bytes
from shotline_controller.media.assembly import is_video_file
from shotline_controller.media.sniff import sniff
from shotline_controller.store.continuity import ContinuityStore
from shotline_controller.store.uploads import UploadStore

log = logging.getLogger("shotline.continuity")
LAST_FRAME_TITLE = "Last Frame"
FACE_MARGIN = 0.4  # a kept face crop extends its box by this much on each side, as the galleries crop
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_CACHED_FRAMES = 1024  # approved attempts whose last-frame upload a dispatcher remembers (a few hundred bytes each)


class FrameUnavailable(RuntimeError):
    """The frame a shot starts from could not be fetched: its ComfyUI is down (for now), or it no longer has the
    file (`permanent`: the shot it continues must be rendered again, or the file restored)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def saved_images(outputs: list[dict]) -> list[dict]:
    return [o for o in outputs if o.get("type") == "output" and not is_video_file(o["filename"])
            and o["filename"].lower().endswith(IMAGE_SUFFIXES)]


def last_frame_output(outputs: list[dict], last_frame_nodes: set[str]) -> dict | None:
    """The output that is a shot's last frame: a "Last Frame" node's image, else its last saved image."""
    images = saved_images(outputs)
    return ([o for o in images if o["node_id"] in last_frame_nodes] or images or [None])[-1]


def best_faces(verdicts: list[dict]) -> dict[str, dict]:
    """character -> {score, frame, box} of its best-scoring face over the identity verdicts' frames."""
    best: dict[str, dict] = {}
    for verdict in verdicts:
        if verdict.get("check") != "identity":
            continue
        for index, frame in enumerate(verdict.get("frames") or []):
            faces = frame.get("faces") or []
            for name, match in (frame.get("characters") or {}).items():
                face, score = match.get("face"), match.get("idr")
                if face is None or not isinstance(score, (int, float)) or not match.get("passed"):
                    continue
                if name not in best or score > best[name]["score"]:
                    box = faces[face]["box"] if face < len(faces) else None
                    best[name] = {"score": float(score), "frame": index, "box": box}
    return best


def face_crop(data: bytes, box) -> bytes | None:
    """A PNG of the face's box widened by FACE_MARGIN, or None when the box is unusable."""
    from PIL import Image
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        x0, y0, x1, y1 = (float(v) for v in box)
    except (OSError, ValueError, TypeError):
        return None
    width, height = x1 - x0, y1 - y0
    if width <= 1 or height <= 1:
        return None
    left, top = max(0, int(x0 - width * FACE_MARGIN)), max(0, int(y0 - height * FACE_MARGIN))
    right, bottom = min(image.width, int(x1 + width * FACE_MARGIN)), min(image.height, int(y1 + height * FACE_MARGIN))
    if right - left < 8 or bottom - top < 8:
        return None
    buffer = io.BytesIO()
    image.crop((left, top, right, bottom)).save(buffer, format="PNG")
    return buffer.getvalue()


async def fetch_image(session: aiohttp.ClientSession, backend: str, output: dict) -> tuple[bytes, object]:
    """An output image's bytes and sniffed kind; FrameUnavailable (permanent when the file is gone or is no
    image) otherwise."""
    try:
        data = await fetch_output_bytes(session, backend, output)
    except OutputGone as error:
        raise FrameUnavailable(f"{error}: retry the shot it continues, or restore the file in ComfyUI's output "
                               "folder", permanent=True) from None
    except ComfyUnavailable as error:
        raise FrameUnavailable(str(error)) from None
    kind = sniff(data)
    if kind is None or kind.kind != "image":
        raise FrameUnavailable(f"{output['filename']} on {backend} is not an image", permanent=True)
    return data, kind


class Continuity:
    """What the dispatcher asks about continuity; `last_frame_nodes(workflow)` gives a preset's "Last Frame"
    node ids."""

    def __init__(self, pool, session_of, last_frame_nodes):
        self.store = ContinuityStore(pool)
        self.uploads = UploadStore(pool)
        self.session_of = session_of            # () -> an aiohttp session to fetch from a ComfyUI with
        self.last_frame_nodes = last_frame_nodes
        self._frames: dict[uuid.UUID, dict] = {}  # approved attempt -> its last frame's upload (ref, sha256, ...)

    async def last_frame(self, shot_id: uuid.UUID) -> dict | None:
        """The approved shot's last frame as an upload: {ref, sha256, shot, attempt}; None if it has no image."""
        attempt = await self.store.approved_attempt(shot_id)
        if attempt is None:
            return None
        if attempt["attempt_id"] in self._frames:
            return self._frames[attempt["attempt_id"]]
        nodes = await self.last_frame_nodes(attempt["workflow"])
        output = last_frame_output(attempt["outputs"], nodes)
        if output is None:
            return None
        data, kind = await fetch_image(self.session_of(), attempt["backend"], output)
        stored = await self.uploads.put(data, kind)
        frame = {"ref": stored["ref"], "sha256": stored["sha256"], "shot": attempt["shot_key"],
                 "file": f"{output['subfolder']}/{output['filename']}".lstrip("/")}
        if len(self._frames) >= MAX_CACHED_FRAMES:  # the oldest first: a chain reads its frames in order
            del self._frames[next(iter(self._frames))]
        self._frames[attempt["attempt_id"]] = frame
        return frame

    async def keep_character_frames(self, shot, scene: str, attempt_id: uuid.UUID, backend: str, outputs: list[dict],
                                    verdicts: list[dict]) -> list[str]:
        """On approval: each character's best face of this shot kept for its scene when it beats the one kept.
        Returns the characters whose frame was kept."""
        faces = best_faces(verdicts)
        if not faces:
            return []
        images = saved_images(outputs)
        if not images:
            return []
        kept, frames = [], {}  # frames: output file -> its upload ref and bytes (two characters, one picture)
        for name, face in faces.items():
            output = images[face["frame"]] if face["frame"] < len(images) else images[-1]
            if output["filename"] not in frames:
                data, kind = await fetch_image(self.session_of(), backend, output)
                frames[output["filename"]] = (await self.uploads.put(data, kind))["ref"], data
            frame_ref, data = frames[output["filename"]]
            crop = await asyncio.to_thread(face_crop, data, face["box"]) if face["box"] else None
            face_ref = (await self.uploads.put(crop, sniff(crop)))["ref"] if crop else None
            if await self.store.keep_frame(shot.batch_id, scene, name, shot.id, attempt_id, face["score"],
                                           frame_ref, face_ref, face["box"]):
                kept.append(name)
        return kept
