"""What a file a client sent is, from its first bytes (never from its name or a Content-Type it claims)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaKind:
    kind: str          # "image" or "audio"
    media_type: str    # image/png, audio/wav, ...
    suffix: str        # the file suffix ComfyUI and PyAV expect


def sniff(data: bytes) -> MediaKind | None:
    """The media kind of `data`, or None when it is none the controller takes."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaKind("image", "image/png", ".png")
    if head.startswith(b"\xff\xd8\xff"):
        return MediaKind("image", "image/jpeg", ".jpg")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaKind("image", "image/webp", ".webp")
    if head.startswith(b"BM") and len(data) > 26:
        return MediaKind("image", "image/bmp", ".bmp")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return MediaKind("audio", "audio/wav", ".wav")
    if head.startswith(b"fLaC"):
        return MediaKind("audio", "audio/flac", ".flac")
    if head.startswith(b"OggS"):
        return MediaKind("audio", "audio/ogg", ".ogg")
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return MediaKind("audio", "audio/mpeg", ".mp3")
    if head[4:8] == b"ftyp" and head[8:11] in (b"M4A", b"mp4", b"iso", b"dash"):
        return MediaKind("audio", "audio/mp4", ".m4a")
    return None


SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp",
            "audio/wav": ".wav", "audio/flac": ".flac", "audio/ogg": ".ogg", "audio/mpeg": ".mp3",
            "audio/mp4": ".m4a"}
