"""Uploads: the media shots and assemblies name, by content hash (`sha256:<hex>`)."""
from __future__ import annotations

from aiohttp import web

from shotline_controller.api.keys import POOL
from shotline_controller.api.requests import ApiError, answer, read_body, read_multipart
from shotline_controller.contract import Upload
from shotline_controller.media.sniff import sniff
from shotline_controller.store.uploads import UploadStore


async def create_upload(request: web.Request) -> web.Response:
    """The body is the file itself (any Content-Type), or a multipart body with one `file` part. What it is comes
    from its bytes: PNG, JPEG, WebP or BMP images; WAV, FLAC, Ogg, MP3 or M4A audio."""
    if request.content_type.startswith("multipart/"):
        files = (await read_multipart(request)).named("file")
        if len(files) != 1:
            raise ApiError("file", "send one `file` part")
        data = files[0].data
    else:
        data = await read_body(request)
    if not data:
        raise ApiError("body", "empty: send the file's bytes")
    kind = sniff(data)
    if kind is None:
        raise ApiError("body", "not an image (PNG, JPEG, WebP, BMP) or audio file (WAV, FLAC, Ogg, MP3, M4A)", 415)
    return await answer(Upload, await UploadStore(request.app[POOL]).put(data, kind), status=201)
