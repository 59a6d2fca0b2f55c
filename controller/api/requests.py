"""Reading a request safely, and answering with a contract model.

Bodies are capped at MAX_BODY_BYTES (413), parsed with parsing.py off the event loop, multipart parts are counted
against the same cap, and every malformed thing a client can send (bad JSON, a control character in a part
header, a path parameter that is not a canonical UUID or a key) becomes ApiError, which the error middleware
answers as `{"error", "field"}` with a 4xx status.
"""
from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field

import aiohttp
import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel
from shotline.core.validation import check_key, check_text

from shotline_controller.parsing import parse_off_loop

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_PARTS = 1000
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
JSON_TYPES = {"application/json", ""}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
LONG_LIST = 500   # answers with more items than this are built in a worker thread
DATABASE_TROUBLE = psycopg.OperationalError  # the server away, or the pool out of connections (PoolTimeout)


class ApiError(Exception):
    """An answer other than success: the field it is about (None: the request as a whole), the message, and the
    HTTP status. Same argument order as contract.InputError."""

    def __init__(self, field: str | None, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status
        self.headers = headers or {}


def too_large() -> ApiError:
    return ApiError("body", f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", 413)


# --- path parameters -------------------------------------------------------------------------------------------

def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    raw = request.match_info[name]
    if not _UUID.fullmatch(raw):
        raise ApiError(name, f"must be a UUID like 123e4567-e89b-12d3-a456-426614174000, got {raw[:80]!r}")
    return uuid.UUID(raw)


def path_key(request: web.Request, name: str) -> str:
    raw = request.match_info[name]
    try:
        return check_key(raw)
    except ValueError as error:
        raise ApiError(name, f"{error}, got {raw[:80]!r}") from None


# --- bodies ----------------------------------------------------------------------------------------------------

async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large()
    try:
        return await request.read()  # aiohttp refuses more than client_max_size with 413 itself
    except web.RequestPayloadError:
        raise unreadable() from None


def unreadable() -> ApiError:
    # the rest of such a body cannot be read past either, so the connection ends with this answer
    return ApiError("body", "cannot be read: a Content-Encoding that does not decode, or a broken chunk",
                    headers={"Connection": "close"})


def body_format(request: web.Request, allowed=("json", "yaml")) -> str:
    """'json' or 'yaml' from Content-Type (aiohttp reports a missing one as application/octet-stream)."""
    content_type = request.content_type
    if "yaml" in allowed and content_type in YAML_TYPES:
        return "yaml"
    if content_type in JSON_TYPES or content_type == "application/octet-stream":
        return "json"
    kinds = " or ".join(f"application/{kind}" for kind in allowed)
    raise ApiError("Content-Type", f"send {kinds}, not {content_type[:80]}", 415)


async def parsed_body(request: web.Request, allowed=("json", "yaml")):
    kind = body_format(request, allowed)
    return await parse_off_loop(await read_body(request), as_yaml=kind == "yaml")


async def json_object(request: web.Request) -> dict:
    data = await parsed_body(request, ("json",))
    if not isinstance(data, dict):
        raise ApiError("body", f"must be a JSON object, got {type(data).__name__}")
    return data


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Multipart:
    parts: list[Part] = field(default_factory=list)

    def named(self, name: str) -> list[Part]:
        return [part for part in self.parts if part.name == name]


def _part_name(value, what: str) -> str | None:
    if value is None:
        return None
    try:
        return check_text(value, multiline=False)
    except ValueError as error:
        raise ApiError("body", f"a part's {what} {error}") from None


async def read_multipart(request: web.Request) -> Multipart:
    """Every part of a multipart body, size-capped as a whole (the multipart reader does not apply
    client_max_size); malformed bodies and part headers are a 400."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large()
    body, received = Multipart(), 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise ApiError("body", "nested multipart is not supported")
            if len(body.parts) >= MAX_PARTS:
                raise ApiError("body", f"more than {MAX_PARTS} parts")
            content = bytearray()
            while chunk := await part.read_chunk():
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    raise too_large()
                content.extend(chunk)
            body.parts.append(Part(_part_name(part.name, "name") or "", _part_name(part.filename, "file name"),
                                   part.headers.get("Content-Type", ""), bytes(content)))
    except web.RequestPayloadError:
        raise unreadable() from None
    except (HttpProcessingError, ValueError, AssertionError, LookupError, aiohttp.ClientError) as error:
        raise ApiError("body", f"not a readable multipart body: {type(error).__name__}") from None
    return body


# --- answers ---------------------------------------------------------------------------------------------------

def _dump(model: type[BaseModel], data) -> str:
    return model.model_validate(data).model_dump_json()


async def answer(model: type[BaseModel], data, status: int = 200, headers: dict | None = None) -> web.Response:
    """`data` validated as `model` (so an answer cannot drift from the document) and sent as JSON."""
    items = next((value for value in (data.values() if isinstance(data, dict) else ())
                  if isinstance(value, list) and len(value) > LONG_LIST), None)
    text = await asyncio.to_thread(_dump, model, data) if items is not None else _dump(model, data)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, field: str | None = None, headers=None) -> web.Response:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)
