"""Batches and shots: submit a shot list, follow it (reads and server-sent events), steer it."""
from __future__ import annotations

import asyncio

from aiohttp import web

from shotline_controller.api.keys import BACKENDS, METRICS, NOTIFICATIONS, POOL, SETTINGS, STREAMS, WEBHOOKS
from shotline_controller.api.requests import (
    DATABASE_TROUBLE,
    ApiError,
    Multipart,
    answer,
    json_object,
    parsed_body,
    path_uuid,
    read_multipart,
)
from shotline_controller.comfy.client import ComfyUnavailable
from shotline_controller.contract import (
    Batch,
    BatchCancelled,
    BatchCreated,
    BatchRequest,
    BatchShots,
    Continuity,
    ReviewRequest,
    StateRequest,
    ShotDetail,
    is_media_ref,
    parse_shot_list,
    state_changes,
    validated,
)
from shotline_controller.media.sniff import sniff
from shotline_controller.parsing import parse_off_loop
from shotline_controller.shot_list import check_characters, check_presets, choose_engines, queued_shots
from shotline_controller.store.continuity import ContinuityStore
from shotline_controller.store.notifications import StreamLimit
from shotline_controller.store.shots import ShotStore
from shotline_controller.store.uploads import UploadStore
from shotline_controller.webhook_policy import WebhookRefused

EVENT_TICK_SECONDS = 2.0          # a stream re-reads its batch this often even without a NOTIFY
EVENT_COALESCE_SECONDS = 0.1      # a burst of changes (a batch finishing) makes one read


def _store(request: web.Request) -> ShotStore:
    return ShotStore(request.app[POOL])


async def _shot_list_and_files(request: web.Request) -> tuple[object, Multipart | None]:
    """The submitted data and, for multipart, the file parts: a `shots` part (JSON or YAML) plus files."""
    if not request.content_type.startswith("multipart/"):
        return await parsed_body(request), None
    body = await read_multipart(request)
    lists = body.named("shots")
    if len(lists) != 1:
        raise ApiError("shots", "a multipart submission has one `shots` part (the shot list, JSON or YAML) and "
                                "file parts the shots name by file name")
    part = lists[0]
    as_yaml = "yaml" in part.content_type or (part.filename or "").lower().endswith((".yaml", ".yml"))
    return await parse_off_loop(part.data, as_yaml=as_yaml, field="shots"), body


def _media(request: web.Request, files: Multipart | None):
    """The API's resolver: `sha256:<hex>` of an existing image upload, or a file part of this request."""
    uploads = UploadStore(request.app[POOL])
    by_name = {part.filename: part for part in (files.parts if files else []) if part.filename}

    async def resolve(name: str, field: str) -> str:
        if is_media_ref(name):
            kind = (await uploads.kinds([name])).get(name)
            if kind is None or not kind.startswith("image/"):
                raise ApiError(field, f"no image upload {name}: upload it first (POST /api/v1/uploads)")
            return name
        part = by_name.get(name)
        if part is None:
            raise ApiError(field, "must be sha256:<hex> of an upload (POST /api/v1/uploads), or the file name "
                                  "of a part of this multipart submission")
        found = sniff(part.data)
        if found is None or found.kind != "image":
            raise ApiError(field, f"the part {name!r} is not a PNG, JPEG, WebP or BMP image")
        return (await uploads.put(part.data, found))["ref"]
    return resolve


async def _object_info(request: web.Request, batch: BatchRequest) -> dict | None:
    """A connected backend's /object_info, for a batch whose shots use `set` (its entries are checked by type,
    range and options before anything is queued); None when no shot does or no backend answers."""
    if not any(shot.set for shot in batch.shots):
        return None
    for backend in request.app[BACKENDS]:
        if getattr(backend, "connected", False):
            try:
                return await backend.object_info()
            except ComfyUnavailable:  # a backend that fails now: the next, else the structural check
                continue
    return None


async def submit_batch(request: web.Request) -> web.Response:
    data, files = await _shot_list_and_files(request)
    batch = await asyncio.to_thread(parse_shot_list, data, BatchRequest)
    library = request.app[SETTINGS].character_library_if_any
    batch, rules = await asyncio.to_thread(choose_engines, batch, library)
    await asyncio.to_thread(check_presets, batch, await _object_info(request, batch))
    await asyncio.to_thread(check_characters, batch, library)
    if batch.webhook_url is not None:
        try:
            await request.app[WEBHOOKS].check(batch.webhook_url)
        except WebhookRefused as refused:
            raise ApiError("webhook_url", str(refused)) from None
    shots = await queued_shots(batch, _media(request, files), rules)
    batch_id, shot_ids = await _store(request).submit_batch(
        shots, "api", webhook_url=batch.webhook_url, max_attempts=batch.max_attempts, priority=batch.priority,
        states=state_changes(batch))
    return await answer(BatchCreated, {"batch_id": batch_id, "shot_ids": shot_ids}, status=201)


async def found(request: web.Request, param: str, read) -> dict:
    """The row `read` gives for the path's UUID parameter `param` (batch_id, shot_id, job_id), or a 404."""
    key = path_uuid(request, param)
    row = await read(key)
    if row is None:
        raise ApiError(param, f"no {param.removesuffix('_id').replace('_', ' ')} {key}", 404)
    return row


async def batch_or_404(request: web.Request) -> dict:
    return await found(request, "batch_id", _store(request).batch)


async def get_batch(request: web.Request) -> web.Response:
    return await answer(Batch, await batch_or_404(request))


async def get_batch_shots(request: web.Request) -> web.Response:
    batch = await batch_or_404(request)
    shots = await _store(request).batch_shots(batch["id"])
    return await answer(BatchShots, {"batch_id": batch["id"], "total": batch["total"], "done": batch["done"],
                                     "counts": batch["counts"], "finished": batch["finished"],
                                     "settled": batch["settled"], "shots": shots})


async def cancel_batch(request: web.Request) -> web.Response:
    batch = await batch_or_404(request)
    cancelled = await _store(request).cancel_batch(batch["id"])
    if not cancelled:
        raise ApiError(None, "nothing to cancel: every shot of the batch is already final", 409)
    return await answer(BatchCancelled, {**await _store(request).batch(batch["id"]), "cancelled": cancelled})


async def get_shot(request: web.Request) -> web.Response:
    return await answer(ShotDetail, await found(request, "shot_id", _store(request).shot))


async def _transition(request: web.Request, change, allowed: str) -> web.Response:
    changed = await change(path_uuid(request, "shot_id"))
    shot = await found(request, "shot_id", _store(request).shot)
    if not changed:
        raise ApiError(None, f"the shot is {shot['status']}: {allowed}", 409)
    return await answer(ShotDetail, shot)


async def cancel_shot(request: web.Request) -> web.Response:
    return await _transition(request, _store(request).cancel_shot, "only queued or running shots can be cancelled")


async def retry_shot(request: web.Request) -> web.Response:
    return await _transition(request, _store(request).retry_shot,
                             "only failed, rejected, cancelled or needs_review shots can be retried")


async def review_shot(request: web.Request) -> web.Response:
    path_uuid(request, "shot_id")  # a malformed id is reported before the body
    review = validated(ReviewRequest, await json_object(request))
    store = _store(request)
    return await _transition(request, lambda shot_id: store.review_shot(shot_id, review.decision == "approve",
                                                                        review.reason, review.note),
                             "only shots in needs_review can be reviewed (and rejected ones approved)")


async def _continuity(store: ContinuityStore, batch_id, status: int = 200) -> web.Response:
    return await answer(Continuity, {"batch_id": batch_id, "states": await store.timeline(batch_id),
                                     "frames": await store.frames(batch_id)}, status=status)


async def get_continuity(request: web.Request) -> web.Response:
    batch = await batch_or_404(request)
    return await _continuity(ContinuityStore(request.app[POOL]), batch["id"])


async def add_state(request: web.Request) -> web.Response:
    batch = await batch_or_404(request)
    change = validated(StateRequest, await json_object(request))
    store = ContinuityStore(request.app[POOL])
    position = await store.shot_position(batch["id"], change.from_shot)
    if position is None:
        raise ApiError("from_shot", f"no shot {change.from_shot!r} in batch {batch['id']}")
    await store.add_state(batch["id"], change.character, position, change.state.model_dump(exclude_none=True), "api")
    return await _continuity(store, batch["id"], status=201)


# --- the event stream ------------------------------------------------------------------------------------------

async def _send_event(response: web.StreamResponse, event: str, batch: dict) -> None:
    await response.write(f"event: {event}\ndata: {Batch.model_validate(batch).model_dump_json()}\n\n".encode())


async def batch_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `progress` with the batch on every change (or every 2 s), then `done`. All streams of
    a service share its one LISTEN connection; past the cap a client gets 503 and polls instead."""
    batch = await batch_or_404(request)
    try:
        with request.app[NOTIFICATIONS].stream(batch["id"]) as changed:
            return await _stream(request, batch, changed)
    except StreamLimit as error:
        raise ApiError(None, str(error), 503, headers={"Retry-After": "5"}) from None


async def _stream(request: web.Request, batch: dict, changed: asyncio.Event) -> web.StreamResponse:
    store, gauge, tasks = _store(request), request.app[METRICS].event_streams, request.app[STREAMS]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    gauge.inc()
    tasks.add(asyncio.current_task())
    try:
        batch = await store.batch(batch["id"]) or batch  # read again: a change may precede the subscription
        await response.prepare(request)
        while True:
            await _send_event(response, "progress", batch)
            if batch["finished"]:
                await _send_event(response, "done", batch)
                break
            try:
                await asyncio.wait_for(changed.wait(), EVENT_TICK_SECONDS)
                await asyncio.sleep(EVENT_COALESCE_SECONDS)
            except asyncio.TimeoutError:
                pass
            changed.clear()
            try:
                batch = await store.batch(batch["id"])
            except DATABASE_TROUBLE:  # the answer has begun: end it; the client reconnects (503 until it is back)
                break
            if batch is None:  # deleted meanwhile
                break
    except ConnectionResetError:
        pass  # the client went away
    finally:
        gauge.dec()
        tasks.discard(asyncio.current_task())
    return response
