"""The review page at `/`: a person looks at the shots the checks could not decide and approves or rejects them.

The page is plain HTML, CSS and one script (api/static/), served with a Content-Security-Policy that lets it run
only its own script. It reads the API like any client; what the API lacked for it lives here: the recent batches
with their counts, and an attempt's output image, fetched from the backend that rendered it (the address comes from
the attempt's record and must be one of this service's backends, never from the client).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from pydantic import Field
from shotline_controller.api.keys import BACKENDS, POOL
from shotline_controller.api.requests import ApiError, answer, path_uuid
from shotline_controller.comfy.client import (
    ComfyUnavailable,
    OutputGone,
    fetch_output_bytes,
)
from shotline_controller.contract import Answer, Counts

STATIC = Path(__file__).parent / "static"
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
MAX_BATCHES = 200
MAX_IMAGE_BYTES = 25 * 1024 * 1024
FETCH_SECONDS = 20.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BatchListEntry(Answer):
    id: uuid.UUID
    source: str
    created_at: datetime
    finished_at: datetime | None
    counts: Counts
    total: int


class BatchList(Answer):
    batches: list[BatchListEntry] = Field(description="newest first")


def _page_headers(content_type: str) -> dict:
    return {"Content-Type": content_type, "Content-Security-Policy": PAGE_POLICY,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _asset(name: str, content_type: str):
    """A handler serving one of the page's files, read once (at the first request, off the event loop)."""
    body: list[bytes] = []

    async def serve(request: web.Request) -> web.Response:
        if not body:
            body.append(await asyncio.to_thread((STATIC / name).read_bytes))
        return web.Response(body=body[0], headers=_page_headers(f"{content_type}; charset=utf-8"))
    return serve


review_page = _asset("review.html", "text/html")
review_script = _asset("review.js", "text/javascript")
review_style = _asset("review.css", "text/css")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_BATCHES:
        raise ApiError("limit", f"must be a whole number from 1 to {MAX_BATCHES}, got {raw[:40]!r}")
    return int(raw)


async def list_batches(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        rows = await (await conn.execute(
            "SELECT b.id, b.source, b.created_at, b.finished_at, coalesce((SELECT json_object_agg(status, n) FROM "
            "  (SELECT status, count(*) AS n FROM shots WHERE batch_id = b.id GROUP BY status) c), '{}') "
            "FROM batches b ORDER BY b.created_at DESC, b.id LIMIT %s", (_limit(request),))).fetchall()
    return await answer(BatchList, {"batches": [
        {"id": id_, "source": source, "created_at": created, "finished_at": finished, "counts": counts,
         "total": sum(counts.values())} for id_, source, created, finished, counts in rows]})


def _as_png(data: bytes) -> bytes | None:
    """Another image format as PNG at its own size (face boxes are in its pixels); None when it is no image."""
    import cv2  # here, not at import: every `shotline` command imports the routes
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    ok, encoded = cv2.imencode(".png", image)
    return encoded.tobytes() if ok else None


def _index(request: web.Request) -> int:
    raw = request.match_info["index"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise ApiError("index", f"must be a whole number, got {raw[:40]!r}")
    return int(raw)


async def attempt_output(request: web.Request) -> web.Response:
    attempt_id, index = path_uuid(request, "attempt_id"), _index(request)
    async with request.app[POOL].connection() as conn:
        row = await (await conn.execute(
            "SELECT a.backend, o.filename, o.subfolder, o.folder_type FROM attempts a JOIN outputs o "
            "ON o.attempt_id = a.id WHERE a.id = %s ORDER BY o.id OFFSET %s LIMIT 1",
            (attempt_id, index))).fetchone()
    if row is None:
        raise ApiError("index", f"attempt {attempt_id} has no output {index}", status=404)
    backend_url, filename, subfolder, folder_type = row
    backend = next((b for b in request.app[BACKENDS] if b.base_url == backend_url.rstrip("/")), None)
    if backend is None:
        raise ApiError("attempt_id", "the backend that rendered this attempt is not one of this service's",
                       status=404)
    if not filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
        raise ApiError("index", f"output {index} is not an image", status=404)
    output = {"filename": filename, "subfolder": subfolder, "type": folder_type}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_SECONDS)) as session:
            data = await fetch_output_bytes(session, backend.base_url, output)
    except OutputGone:
        raise ApiError("index", f"the backend no longer has output {index}", status=404) from None
    except ComfyUnavailable:
        raise ApiError(None, "the backend that rendered this attempt cannot be reached", status=502) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ApiError("index", f"output {index} is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB", status=404)
    if not data.startswith(PNG_MAGIC):  # JPEG or WebP: one media type for the document, same size for the boxes
        data = await asyncio.to_thread(_as_png, data)
        if data is None:
            raise ApiError("index", f"output {index} is not an image", status=404)
    return web.Response(body=data, headers={"Content-Type": "image/png", "X-Content-Type-Options": "nosniff",
                                            "Cache-Control": "private, max-age=3600"})

