"""The HTTP service behind `shotline serve`: submit shot lists, follow and steer them, assemble the approved shots
into scenes and episodes, manage characters.

JSON everywhere under /api/v1, plus /openapi.json (controller/openapi.py) and /health. Reads are open; every
write needs `Authorization: Bearer <token>`. A bad request gets 400 `{"error", "field"}` naming the offending
value (`shots[1].seed`), never a traceback. Rendering itself is the dispatcher's work: this app only writes to
and reads from the PostgreSQL queue (controller/shot_queue.py), whose NOTIFYs drive the event streams.
Assembly requests are durable jobs (`assembly_jobs`): the route queues one and answers 202, and a worker loop in
this app claims and runs them under a lease (controller/assemblies.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import uuid
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg
import yaml
from aiohttp import web
from psycopg.rows import dict_row
from shotline.core.characters import (
    FOLDER_PATTERN,
    IMAGE_SUFFIXES,
    CharacterSheetError,
    parse_sheet,
    write_character,
)

from shotline_controller.media.assembly_jobs import (
    JOBS_CHANNEL,
    AssemblyConflict,
    AssemblyJobs,
    AssemblyStore,
    BatchNotFound,
    JobLost,
    check_assembly,
    parse_assembly_request,
    run_assembly_job,
)
from shotline_controller.media.assembly import AssemblyError
from shotline_controller.api.openapi import openapi_document
from shotline_controller.comfy.presets import PresetError, load_preset
from shotline_controller.shot_list import ShotListError, parse_shot_list
from shotline_controller.store.shots import ShotQueue
from shotline_controller.store.attempts import ShotStore

log = logging.getLogger("shotline.service")

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_SHOTS = 10_000
EVENTS_CHANNEL = "shotline_events"
EVENT_TICK_SECONDS = 2.0          # the stream re-reads the batch this often even without a NOTIFY
EVENT_COALESCE_SECONDS = 0.1
MAX_EVENT_STREAMS = 64            # each holds its own PostgreSQL connection for LISTEN
WEBHOOK_INTERVAL_SECONDS = 1.0
WEBHOOK_TRIES = 3
WEBHOOK_BACKOFF_SECONDS = 1.0     # doubled after each failed try
WEBHOOK_TIMEOUT_SECONDS = 10.0
BACKEND_STATS_TIMEOUT_SECONDS = 5.0
ASSEMBLY_POLL_SECONDS = 5.0       # the assembly worker looks for lapsed leases this often; a NOTIFY wakes it at once
TOKEN_FILE = "service_token"
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}
BATCH_FIELDS = {"shots", "defaults", "webhook_url", "max_attempts", "priority"}

POOL = web.AppKey("pool", object)
QUEUE = web.AppKey("queue", ShotQueue)
SETTINGS = web.AppKey("settings", object)
TOKEN = web.AppKey("token", str)
WEBHOOK_SECRET = web.AppKey("webhook_secret", bytes)
BACKENDS = web.AppKey("backends", list)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
WEBHOOK_TASK = web.AppKey("webhook_task", asyncio.Task)
ASSEMBLY_TASK = web.AppKey("assembly_task", asyncio.Task)
EVENT_STREAMS = web.AppKey("event_streams", set)


class ApiError(Exception):
    """An answer other than success: HTTP status, message, and the field it is about (if any)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def load_or_create_token(state_dir: Path) -> tuple[str, bool]:
    """The service's bearer token: SHOTLINE_TOKEN, else state_dir/service_token, else a new one written there
    (mode 0600). Returns (token, created) so the CLI prints a new token once."""
    token = os.environ.get("SHOTLINE_TOKEN", "").strip()
    if token:
        return token, False
    path = Path(state_dir) / TOKEN_FILE
    if path.exists() and path.read_text().strip():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:  # O_EXCL: two services starting together agree on the first token written
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


def character_library(settings) -> Path:
    library = os.environ.get("SHOTLINE_CHARACTER_LIBRARY")
    if library:
        return Path(library)
    if settings is None or not getattr(settings, "comfyui_dir", None):
        raise ApiError(503, "no character library: set SHOTLINE_CHARACTER_LIBRARY or run install.py")
    return Path(settings.comfyui_dir) / "models" / "shotline_characters"


# --- JSON in and out -------------------------------------------------------------------------------------------

def _json_default(value):
    if isinstance(value, (uuid.UUID, Path)):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


dumps = partial(json.dumps, default=_json_default)


def respond(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def error_response(status: int, message: str, field: str | None = None, headers=None) -> web.Response:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    raw = request.match_info[name]
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(400, f"not a UUID: {raw!r}", name) from None


async def read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", "body")
    return await request.read()  # aiohttp refuses more than client_max_size with 413 itself


async def json_object(request: web.Request) -> dict:
    body = await read_body(request)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"body is not valid JSON: {error}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(data).__name__}", "body")
    return data


# --- middlewares -----------------------------------------------------------------------------------------------

@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every failure becomes a JSON answer: no HTML error pages, no tracebacks."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.message, error.field)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        if error.status == 413:
            return error_response(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", "body")
        return error_response(error.status, error.reason, headers={
            k: v for k, v in error.headers.items() if k.lower() == "allow"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error: see the service log")


def auth_middleware(token: str):
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return error_response(401, "missing or wrong bearer token" if header else
                                      "this route needs 'Authorization: Bearer <token>'",
                                      headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_token


# --- batches and shots -----------------------------------------------------------------------------------------

def _parse_batch_options(data: dict) -> dict:
    unknown = sorted(set(data) - BATCH_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field (known: {', '.join(sorted(BATCH_FIELDS))})", unknown[0])
    webhook_url = data.get("webhook_url")
    if webhook_url is not None:
        parts = urlsplit(webhook_url) if isinstance(webhook_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(webhook_url) > 2048:
            raise ApiError(400, f"must be an http(s) URL, got {webhook_url!r}", "webhook_url")
    options = {"webhook_url": webhook_url}
    for name, low, high, default in (("max_attempts", 1, 20, 3), ("priority", -1_000_000, 1_000_000, 0)):
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"must be a whole number, got {value!r}", name)
        if not low <= value <= high:
            raise ApiError(400, f"must be between {low} and {high}, got {value}", name)
        options[name] = value
    return options


async def submit_batch(request: web.Request) -> web.Response:
    content_type = request.content_type
    if content_type in YAML_TYPES:  # a shot list file posted as is
        body = await read_body(request)
        try:
            data = yaml.safe_load(body)
        except yaml.YAMLError as error:
            raise ApiError(400, f"body is not valid YAML: {error}", "body") from None
        if isinstance(data, list):
            data = {"shots": data}
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a shot list: a mapping with `shots`, or a list of shots", "body")
    elif content_type in ("application/json", "application/octet-stream", ""):
        data = await json_object(request)  # aiohttp reports a missing Content-Type as octet-stream
    else:
        raise ApiError(415, f"send application/json or application/yaml, not {content_type}", "Content-Type")
    options = _parse_batch_options(data)
    if isinstance(data.get("shots"), list) and len(data["shots"]) > MAX_SHOTS:
        raise ApiError(400, f"at most {MAX_SHOTS} shots per batch, got {len(data['shots'])}", "shots")
    try:
        shots = parse_shot_list({key: data[key] for key in ("shots", "defaults") if key in data})
    except ShotListError as error:
        raise ApiError(400, error.message, error.field) from None
    for index, shot in enumerate(shots):  # fail before queueing, as `shotline render` does
        try:
            load_preset(shot.workflow)
        except PresetError as error:
            raise ApiError(400, str(error), f"shots[{index}].workflow") from None
    batch_id, shot_ids = await request.app[QUEUE].submit_batch(shots, "api", **options)
    return respond({"batch_id": batch_id, "shot_ids": shot_ids}, status=201)


async def _found(request: web.Request, param: str, read) -> dict:
    """The row `read` gives for the path's UUID parameter `param` (batch_id, shot_id), or a 404 naming it."""
    key = path_uuid(request, param)
    row = await read(key)
    if row is None:
        raise ApiError(404, f"no {param.removesuffix('_id')} {key}", param)
    return row


async def _batch_or_404(request: web.Request) -> dict:
    return await _found(request, "batch_id", request.app[QUEUE].batch)


async def get_batch(request: web.Request) -> web.Response:
    return respond(await _batch_or_404(request))


async def get_batch_shots(request: web.Request) -> web.Response:
    batch = await _batch_or_404(request)
    shots = await request.app[QUEUE].batch_shots(batch["id"])
    return respond({"batch_id": batch["id"], "total": batch["total"], "done": batch["done"],
                    "counts": batch["counts"], "finished": batch["finished"], "shots": shots})


async def cancel_batch(request: web.Request) -> web.Response:
    batch = await _batch_or_404(request)
    cancelled = await request.app[QUEUE].cancel_batch(batch["id"])
    if not cancelled:
        raise ApiError(409, "nothing to cancel: every shot of the batch is already final")
    return respond({**await request.app[QUEUE].batch(batch["id"]), "cancelled": cancelled})


async def get_shot(request: web.Request) -> web.Response:
    return respond(await _found(request, "shot_id", request.app[QUEUE].shot))


async def _shot_transition(request: web.Request, change, allowed: str) -> web.Response:
    changed = await change(path_uuid(request, "shot_id"))
    shot = await _found(request, "shot_id", request.app[QUEUE].shot)
    if not changed:
        raise ApiError(409, f"the shot is {shot['status']}: {allowed}")
    return respond(shot)


async def cancel_shot(request: web.Request) -> web.Response:
    return await _shot_transition(request, request.app[QUEUE].cancel_shot,
                                  "only queued or running shots can be cancelled")


async def retry_shot(request: web.Request) -> web.Response:
    return await _shot_transition(request, request.app[QUEUE].retry_shot,
                                  "only failed, rejected, cancelled or needs_review shots can be retried")


async def review_shot(request: web.Request) -> web.Response:
    path_uuid(request, "shot_id")  # a malformed id is reported before the body
    data = await json_object(request)
    decision = data.get("decision")
    if decision not in ("approve", "reject"):
        raise ApiError(400, f"must be 'approve' or 'reject', got {decision!r}", "decision")
    unknown = sorted(set(data) - {"decision"})
    if unknown:
        raise ApiError(400, "unknown field (known: decision)", unknown[0])
    queue = request.app[QUEUE]
    return await _shot_transition(request, lambda shot_id: queue.review_shot(shot_id, decision == "approve"),
                                  "only shots in needs_review can be reviewed")


# --- assemblies ------------------------------------------------------------------------------------------------

async def create_assemblies(request: web.Request) -> web.Response:
    """Check the request and the batch (the cheap part: every requested scene has an approved shot with a file),
    then queue a durable job and answer 202 with where to follow it; the assembly worker does the media work."""
    batch = await _batch_or_404(request)
    try:
        options = parse_assembly_request(await json_object(request))
    except AssemblyError as error:
        raise ApiError(400, error.message, error.field) from None
    settings = request.app[SETTINGS]
    try:
        await check_assembly(request.app[POOL], batch["id"], options)
        job = await AssemblyJobs(request.app[POOL]).create(
            batch["id"], options, scenes_dir=settings.assemblies_dir / str(batch["id"]),
            library_dir=settings.library_dir)
    except BatchNotFound as error:  # deleted meanwhile
        raise ApiError(404, str(error), "batch_id") from None
    except AssemblyConflict as error:
        raise ApiError(409, str(error)) from None
    except AssemblyError as error:  # a scene the batch does not have
        raise ApiError(400, error.message, error.field) from None
    location = f"/api/v1/assembly-jobs/{job.id}"
    return web.json_response({"job_id": str(job.id), "status": "queued", "location": location}, status=202,
                             headers={"Location": location})


async def get_assembly_job(request: web.Request) -> web.Response:
    return respond(await _found(request, "job_id", AssemblyJobs(request.app[POOL]).job))


async def list_assemblies(request: web.Request) -> web.Response:
    batch = await _batch_or_404(request)
    return respond({"batch_id": batch["id"],
                    "assemblies": await AssemblyStore(request.app[POOL]).assemblies(batch["id"])})


# --- event stream ----------------------------------------------------------------------------------------------

async def _send_event(response: web.StreamResponse, event: str, data) -> None:
    await response.write(f"event: {event}\ndata: {dumps(data)}\n\n".encode())


async def batch_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `progress` with the batch on every queue NOTIFY (or every 2 s), then `done`."""
    batch = await _batch_or_404(request)
    streams = request.app[EVENT_STREAMS]
    if len(streams) >= MAX_EVENT_STREAMS:
        raise ApiError(503, f"too many open event streams ({MAX_EVENT_STREAMS}): poll the batch instead")
    pool = request.app[POOL]
    # a connection of its own: LISTEN holds it for the stream's whole life, which a pooled one must not
    listener = await psycopg.AsyncConnection.connect(pool.conninfo, **{**(pool.kwargs or {}), "autocommit": True})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    streams.add(asyncio.current_task())
    try:
        await listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        batch = await request.app[QUEUE].batch(batch["id"]) or batch  # read again: a change may precede LISTEN
        await response.prepare(request)
        while True:
            await _send_event(response, "progress", batch)
            if batch["finished"]:
                await _send_event(response, "done", batch)
                break
            woke = False
            async for _ in listener.notifies(timeout=EVENT_TICK_SECONDS, stop_after=1):
                woke = True
            if woke:  # every change anywhere NOTIFYs: a burst of them (a batch finishing) makes one read
                async for _ in listener.notifies(timeout=EVENT_COALESCE_SECONDS):
                    pass
            batch = await request.app[QUEUE].batch(batch["id"])
            if batch is None:  # deleted meanwhile
                break
    except ConnectionResetError:
        pass  # the client went away
    finally:
        streams.discard(asyncio.current_task())
        await listener.close()
    return response


# --- characters ------------------------------------------------------------------------------------------------

async def list_characters(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT c.id, c.folder, c.name, c.style, c.sheet, c.created_at, c.updated_at, "
            "  count(r.id) AS reference_count "
            "FROM characters c LEFT JOIN character_references r ON r.character_id = c.id "
            "GROUP BY c.id ORDER BY c.folder")
        return respond({"characters": await cursor.fetchall()})


def _reference_name_error(file_name) -> str | None:
    if not isinstance(file_name, str) or not FOLDER_PATTERN.match(file_name) \
            or Path(file_name).suffix.lower() not in IMAGE_SUFFIXES:
        return f"must be a plain image file name ({', '.join(sorted(IMAGE_SUFFIXES))}), got {file_name!r}"
    return None


async def _read_character_parts(request: web.Request) -> tuple[bytes | None, dict[str, bytes]]:
    sheet_text, references, received = None, {}, 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise ApiError(400, "nested multipart is not supported", "body")
            # count bytes ourselves: the multipart reader does not apply client_max_size
            content = bytearray()
            while chunk := await part.read_chunk():
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    raise ApiError(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", "body")
                content.extend(chunk)
            if part.name == "sheet":
                if sheet_text is not None:
                    raise ApiError(400, "send one sheet part", "sheet")
                sheet_text = bytes(content)
            elif part.name == "reference":
                if message := _reference_name_error(part.filename):
                    raise ApiError(400, message, f"references.{part.filename}")
                references[part.filename] = bytes(content)
            else:
                raise ApiError(400, "unknown part (known: sheet, reference)", str(part.name))
    except (ValueError, AssertionError, aiohttp.ClientError) as error:  # a malformed multipart body
        raise ApiError(400, f"not a readable multipart body: {error}", "body") from None
    return sheet_text, references


async def put_character(request: web.Request) -> web.Response:
    """multipart: one `sheet` part (YAML or JSON) and any number of `reference` file parts."""
    folder = request.match_info["folder"]
    if not FOLDER_PATTERN.match(folder):
        raise ApiError(400, f"letters, digits, '.', '_' or '-', at most 64; got {folder!r}", "folder")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body over {MAX_BODY_BYTES // (1024 * 1024)} MB", "body")
    sheet_text, references = None, {}
    if request.content_type == "application/x-www-form-urlencoded":  # a sheet alone, as clients send it
        form = await request.post()
        unknown = sorted(set(form) - {"sheet"})
        if unknown:
            raise ApiError(400, "unknown field (known: sheet; send references as multipart files)", unknown[0])
        sheet_text = form.get("sheet")
    elif not request.content_type.startswith("multipart/"):
        raise ApiError(415, "send multipart/form-data with a `sheet` part and `reference` file parts",
                       "Content-Type")
    else:
        sheet_text, references = await _read_character_parts(request)
    if sheet_text is None:
        raise ApiError(400, "required: the character sheet (YAML or JSON) as a `sheet` part", "sheet")
    try:
        data = yaml.safe_load(sheet_text)  # JSON is YAML too
    except yaml.YAMLError as error:
        raise ApiError(400, f"not valid YAML or JSON: {error}", "sheet") from None
    try:
        sheet = parse_sheet(data)
        character = await asyncio.to_thread(write_character, character_library(request.app[SETTINGS]), folder,
                                            sheet, references)
    except CharacterSheetError as error:
        field = error.field if error.field in ("sheet", "folder") or error.field.startswith("references") \
            else f"sheet.{error.field}"
        raise ApiError(400, error.message, field) from None
    character_id = await ShotStore(request.app[POOL]).put_character(character)
    return respond({"id": character_id, "folder": folder, "name": character.name, "style": character.sheet.style,
                    "references": [path.name for path in character.references]})


# --- backends and analytics ------------------------------------------------------------------------------------

async def _backend_status(backend) -> dict:
    status = {"base_url": backend.base_url, "connected": bool(backend.connected),
              "queue_remaining": backend.queue_remaining, "loaded_checkpoint": backend.loaded_checkpoint}
    try:
        status["system_stats"] = await asyncio.wait_for(backend.system_stats(), BACKEND_STATS_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        status["error"] = f"system_stats: no answer in {BACKEND_STATS_TIMEOUT_SECONDS:g} s"
    except Exception as error:  # noqa: BLE001 - a backend down is a status to report, not a failure here
        status["error"] = f"system_stats: {type(error).__name__}: {error}"
    return status


async def list_backends(request: web.Request) -> web.Response:
    backends = request.app[BACKENDS]
    return respond({"backends": list(await asyncio.gather(*(_backend_status(b) for b in backends)))})


# Per character: attempts that scored it (lost ones excluded), how many passed (every identity check of the
# attempt passed it) and its mean score where it was on screen (a NULL score means it was not).
CHARACTER_ANALYTICS_SQL = """
WITH per_attempt AS (
    SELECT cs.character_name, cs.attempt_id, bool_and(cs.passed) AS passed, avg(cs.score) AS score
    FROM character_scores cs JOIN attempts a ON a.id = cs.attempt_id
    WHERE a.status <> 'lost'
    GROUP BY cs.character_name, cs.attempt_id)
SELECT character_name AS character, count(*) AS attempts, count(*) FILTER (WHERE passed) AS passed,
       avg(passed::int)::float8 AS pass_rate, avg(score)::float8 AS mean_score,
       count(*) FILTER (WHERE score IS NULL) AS not_on_screen
FROM per_attempt GROUP BY character_name ORDER BY character_name
"""

# Per correction reason: attempts made with a correction, and how many of them led to an approved shot, i.e.
# were the shot's last attempt (lost ones aside) and the shot ended approved.
CORRECTION_ANALYTICS_SQL = """
SELECT coalesce(a.correction->>'reason', '(no reason)') AS reason, count(*) AS corrected_attempts,
       count(*) FILTER (WHERE s.status = 'approved' AND NOT EXISTS (
           SELECT 1 FROM attempts later WHERE later.shot_id = a.shot_id AND later.attempt_no > a.attempt_no
             AND later.status <> 'lost')) AS led_to_approval
FROM attempts a JOIN shots s ON s.id = a.shot_id
WHERE a.correction IS NOT NULL AND a.status <> 'lost'
GROUP BY 1 ORDER BY 2 DESC, 1
"""


async def analytics(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(CHARACTER_ANALYTICS_SQL)
        characters = await cursor.fetchall()
        await cursor.execute(CORRECTION_ANALYTICS_SQL)
        corrections = await cursor.fetchall()
    for row in corrections:
        row["approval_rate"] = row["led_to_approval"] / row["corrected_attempts"]
    return respond({"characters": characters, "corrections": corrections})


# --- webhooks --------------------------------------------------------------------------------------------------

def sign(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def _deliver(app: web.Application, url: str, body: bytes) -> bool:
    headers = {"Content-Type": "application/json", "X-Shotline-Signature": sign(body, app[WEBHOOK_SECRET])}
    delay = WEBHOOK_BACKOFF_SECONDS
    for attempt in range(1, WEBHOOK_TRIES + 1):
        try:
            async with app[HTTP_SESSION].post(url, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)) as answer:
                if 200 <= answer.status < 300:
                    return True
                problem = f"HTTP {answer.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            problem = f"{type(error).__name__}: {error}"
        log.warning("webhook %s, try %d of %d: %s", url, attempt, WEBHOOK_TRIES, problem)
        if attempt < WEBHOOK_TRIES:
            await asyncio.sleep(delay)
            delay *= 2
    return False


async def notify_finished_batches(app: web.Application) -> int:
    """One round: mark newly finished batches, then send the webhook of every finished batch not yet notified.

    The pending batches are read and locked (SKIP LOCKED) in one transaction that is committed only after
    delivery, so two services never send the same webhook and a service that dies mid-delivery leaves the batch
    to the next round: delivery is at least once, and a receiver dedupes by batch_id.
    """
    await app[QUEUE].mark_finished_batches()
    async with app[POOL].connection() as conn, conn.transaction():
        rows = await (await conn.execute(
            "SELECT id, webhook_url FROM batches WHERE finished_at IS NOT NULL AND notified_at IS NULL "
            "AND webhook_url IS NOT NULL ORDER BY finished_at LIMIT 20 FOR UPDATE SKIP LOCKED")).fetchall()
        if not rows:
            return 0

        bodies = []
        for batch_id, _ in rows:  # on this connection: the pool may have none to spare while it is held
            counts = dict(await (await conn.execute(
                "SELECT status, count(*) FROM shots WHERE batch_id = %s GROUP BY status", (batch_id,))).fetchall())
            bodies.append(dumps({"batch_id": batch_id, "counts": counts, "total": sum(counts.values())}).encode())

        async def deliver(url, body):
            if not await _deliver(app, url, body):
                log.error("webhook to %s failed %d times: giving up on %s", url, WEBHOOK_TRIES, body.decode())

        await asyncio.gather(*(deliver(url, body) for (_, url), body in zip(rows, bodies)))
        # after the last try either way: a receiver that is down does not get the batch forever
        await conn.execute("UPDATE batches SET notified_at = now() WHERE id = ANY(%s)",
                           ([batch_id for batch_id, _ in rows],))
    return len(rows)


async def _webhook_loop(app: web.Application) -> None:
    while True:
        try:
            await notify_finished_batches(app)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database restarting must not end the loop
            log.exception("webhook round failed")
        await asyncio.sleep(WEBHOOK_INTERVAL_SECONDS)


async def run_assembly_jobs(app: web.Application, worker: str) -> int:
    """One round: lapsed leases are reclaimed, then queued jobs are claimed and run one at a time until none is
    left. A job's failure is recorded by run_assembly_job; here it is only logged."""
    jobs = AssemblyJobs(app[POOL])
    await jobs.reclaim_lapsed()
    ran = 0
    while (job := await jobs.claim(worker)) is not None:
        ran += 1
        try:
            records = await run_assembly_job(app[POOL], app[HTTP_SESSION], job, worker)
        except asyncio.CancelledError:  # the service stopping: the job goes back to the queue for the next one
            await asyncio.shield(jobs.release(job.id, worker))
            raise
        except JobLost as error:
            log.warning("%s", error)
        except Exception as error:  # noqa: BLE001 - recorded on the job; a worker outlives any one job
            log.warning("assembly job %s (batch %s, attempt %d) failed: %s: %s", job.id, job.batch_id,
                        job.attempts, type(error).__name__, error)
        else:
            log.info("assembly job %s done: %d file(s)", job.id, len(records))
    return ran


async def _assembly_loop(app: web.Application) -> None:
    """Claims and runs assembly jobs: woken by the NOTIFY of each new job (LISTEN on a connection of its own),
    and every ASSEMBLY_POLL_SECONDS regardless, which is when a lapsed lease is noticed."""
    worker = f"{socket.gethostname()}:{os.getpid()}:assembly:{uuid.uuid4().hex[:6]}"
    pool = app[POOL]
    listener = None
    while True:
        try:
            if listener is None or listener.closed:
                listener = await psycopg.AsyncConnection.connect(pool.conninfo,
                                                                 **{**(pool.kwargs or {}), "autocommit": True})
                await listener.execute(f"LISTEN {JOBS_CHANNEL}")
            await run_assembly_jobs(app, worker)
            async for _ in listener.notifies(timeout=ASSEMBLY_POLL_SECONDS, stop_after=1):
                pass
        except asyncio.CancelledError:
            if listener is not None:
                await listener.close()
            raise
        except Exception:  # the database restarting must not end the loop
            log.exception("assembly round failed")
            if listener is not None:
                await listener.close()
                listener = None
            await asyncio.sleep(ASSEMBLY_POLL_SECONDS)


async def _start_background(app: web.Application) -> None:
    app[HTTP_SESSION] = aiohttp.ClientSession()
    app[WEBHOOK_TASK] = asyncio.create_task(_webhook_loop(app), name="shotline-webhooks")
    app[ASSEMBLY_TASK] = asyncio.create_task(_assembly_loop(app), name="shotline-assembly-jobs")


async def _stop_streams(app: web.Application) -> None:
    for task in list(app[EVENT_STREAMS]):
        task.cancel()


async def _stop_background(app: web.Application) -> None:
    for task in (app[WEBHOOK_TASK], app[ASSEMBLY_TASK]):
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    await app[HTTP_SESSION].close()


# --- the app ---------------------------------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return respond({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return respond(openapi_document())


def create_app(pool, settings, token: str, backends: list = (), webhook_secret: str | None = None) -> web.Application:
    if not token:
        raise ValueError("the service needs a token")
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[error_middleware, auth_middleware(token)])
    app[POOL] = pool
    app[QUEUE] = ShotQueue(pool)
    app[SETTINGS] = settings
    app[TOKEN] = token
    app[WEBHOOK_SECRET] = (webhook_secret or token).encode()
    app[BACKENDS] = list(backends)
    app[EVENT_STREAMS] = set()
    app.router.add_get("/health", health)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/api/v1/batches", submit_batch)
    app.router.add_get("/api/v1/batches/{batch_id}", get_batch)
    app.router.add_get("/api/v1/batches/{batch_id}/shots", get_batch_shots)
    app.router.add_post("/api/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_get("/api/v1/batches/{batch_id}/events", batch_events)
    app.router.add_post("/api/v1/batches/{batch_id}/assemblies", create_assemblies)
    app.router.add_get("/api/v1/batches/{batch_id}/assemblies", list_assemblies)
    app.router.add_get("/api/v1/assembly-jobs/{job_id}", get_assembly_job)
    app.router.add_get("/api/v1/shots/{shot_id}", get_shot)
    app.router.add_post("/api/v1/shots/{shot_id}/cancel", cancel_shot)
    app.router.add_post("/api/v1/shots/{shot_id}/retry", retry_shot)
    app.router.add_post("/api/v1/shots/{shot_id}/review", review_shot)
    app.router.add_get("/api/v1/characters", list_characters)
    app.router.add_put("/api/v1/characters/{folder}", put_character)
    app.router.add_get("/api/v1/backends", list_backends)
    app.router.add_get("/api/v1/analytics", analytics)
    app.on_startup.append(_start_background)
    app.on_shutdown.append(_stop_streams)
    app.on_cleanup.append(_stop_background)
    return app
