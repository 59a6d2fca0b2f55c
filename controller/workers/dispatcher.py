"""Run queued shots on ComfyUI backends until told to stop. Any number of dispatchers (processes) can share a batch.

Each backend gets `slots` concurrent workers: while one prompt executes, the next is already queued on the same
server, so the GPU does not idle between shots. A worker claims a shot (preferring the checkpoint its backend
last loaded), reconciles the shot's last attempt if a previous controller left one running, otherwise queues a
new attempt, and records the result. A rejected shot is queued again with a correction chosen from its verdict,
up to the shot's `max_attempts`.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from shotline_controller.comfy.client import ComfyBackend, ComfyUnavailable, PromptLost, PromptRejected, PromptResult
from shotline_controller.comfy.corrections import choose_correction
from shotline_controller.comfy.presets import PresetError, fill_preset, load_preset
from shotline_controller.comfy.results import RenderError, choose_checkpoint, collect_results, combo_options, shot_status
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from shotline_controller.shot_list import shot_from_record
from shotline_controller.store.shots import ClaimedShot, ShotQueue
from shotline_controller.store.attempts import ShotStore

log = logging.getLogger("shotline.dispatcher")


class Dispatcher:
    def __init__(self, pool: AsyncConnectionPool, backends: list[ComfyBackend], slots_per_backend: int = 2,
                 lease_seconds: float = 30.0, poll_seconds: float = 0.25,
                 on_outcome: Callable[[ClaimedShot, str], None] | None = None):
        self.queue = ShotQueue(pool)
        self.store = ShotStore(pool)
        self.backends = backends
        self.slots = slots_per_backend
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.on_outcome = on_outcome
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.held: set[uuid.UUID] = set()
        self._object_info: dict[str, dict] = {}
        self._stopping = asyncio.Event()

    async def run(self, until: Callable[[], Awaitable[bool]] | None = None, check_seconds: float = 0.5) -> None:
        """Work until `until()` returns True (or forever); shots held at the end go back to the queue."""
        for backend in self.backends:
            await backend.start()
        tasks = [asyncio.create_task(self._slot(backend), name=f"slot {backend.base_url} {index}")
                 for backend in self.backends for index in range(self.slots)]
        tasks.append(asyncio.create_task(self._keep_leases(), name="leases"))
        try:
            while not self._stopping.is_set():
                if until is not None and await until():
                    break
                for task in tasks:
                    if task.done() and task.exception():
                        raise task.exception()
                await asyncio.sleep(check_seconds)
        finally:
            self._stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.queue.release(self.worker, list(self.held))

    def stop(self) -> None:
        self._stopping.set()

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            lost = set(self.held) - await self.queue.renew(self.worker, list(self.held), self.lease_seconds)
            if lost:
                log.warning("lost the lease on %d shot(s); their results are recorded once, by whoever ends them",
                            len(lost))
            if await self.queue.requeue_expired():
                log.warning("re-queued shots whose controller stopped renewing its lease")

    async def _slot(self, backend: ComfyBackend) -> None:
        while True:
            if not backend.connected:
                await asyncio.sleep(self.poll_seconds)
                continue
            claimed = await self.queue.claim(self.worker, self.lease_seconds, 1, backend.loaded_checkpoint)
            if not claimed:
                await asyncio.sleep(self.poll_seconds)
                continue
            shot = claimed[0]
            self.held.add(shot.id)
            try:
                outcome = await self._run_shot(backend, shot)
            except (ComfyUnavailable, PromptLost) as error:
                log.warning("%s on %s: %s; back to the queue", shot.shot_key, backend.base_url, error)
                await self.queue.release(self.worker, [shot.id])
                outcome = "queued"
                await asyncio.sleep(1.0)  # let the backend come back before this slot claims again
            finally:
                self.held.discard(shot.id)
            if self.on_outcome:
                self.on_outcome(shot, outcome)

    async def _backend_object_info(self, backend: ComfyBackend) -> dict:
        """The backend's /object_info, read once: the checkpoints it has and how to convert editor presets."""
        if backend.base_url not in self._object_info:
            self._object_info[backend.base_url] = await backend.object_info()
        return self._object_info[backend.base_url]

    async def _input_image(self, backend: ComfyBackend, shot: ClaimedShot, path: str) -> str:
        data = Path(path).read_bytes()
        name = f"{shot.shot_key}-{hashlib.sha256(data).hexdigest()[:12]}{Path(path).suffix.lower()}"
        return await backend.upload_image(name, data)

    def _backend(self, url: str) -> ComfyBackend | None:
        return next((backend for backend in self.backends if backend.base_url == url), None)

    async def _run_shot(self, backend: ComfyBackend, shot: ClaimedShot) -> str:
        last = shot.last_attempt
        if last and last["status"] in ("queued", "running"):
            # A controller died (or was paused past its lease) while this attempt ran: follow its prompt_id
            # on the backend it went to; run anything new only if that backend lost it.
            owner = self._backend(last["backend"])
            if owner is not None:
                owner.follow(str(last["prompt_id"]))
                try:
                    result = await owner.wait(str(last["prompt_id"]))
                except PromptLost:
                    result = None
                if result is not None:
                    return await self._record(shot, uuid.UUID(str(last["id"])), result, shot.attempts)
            await self.store.finish_attempt(uuid.UUID(str(last["id"])), shot.id, "running", [], [],
                                            error={"exception_message": "prompt lost: its backend no longer knows "
                                                                        "it or is not served by this controller"},
                                            attempt_status="lost")

        if shot.attempts >= shot.max_attempts:
            await self.store.end_shot(shot.id, "failed")
            return "failed"
        try:
            params = shot_from_record({**shot.params, "id": shot.shot_key, "workflow": shot.workflow})
            object_info = await self._backend_object_info(backend)
            preset = load_preset(shot.workflow, object_info)
            checkpoint = choose_checkpoint(params, combo_options(object_info, "CheckpointLoaderSimple", "ckpt_name"))
            image_name = await self._input_image(backend, shot, params.image) if params.image else None
            graph, inputs = fill_preset(preset, params, checkpoint, image_name=image_name,
                                        filename_prefix=f"shotline/{str(shot.batch_id)[:8]}/{shot.shot_key}")
        except (PresetError, RenderError, ValueError, OSError) as error:
            # a shot this controller cannot build: record why, never loop on it
            prompt_id = str(uuid.uuid4())
            attempt_id = await self.store.start_attempt(shot.id, prompt_id, backend.base_url, {}, shot.correction)
            await self.store.finish_attempt(attempt_id, shot.id, "failed", [], [],
                                            error={"exception_message": str(error)})
            return "failed"
        if checkpoint == RANDOM_CHECKPOINT_NAME:
            log.warning("%s: rendering with the random test checkpoint: images are noise", shot.shot_key)

        prompt_id = str(uuid.uuid4())
        attempt_id = await self.store.start_attempt(shot.id, prompt_id, backend.base_url, inputs, shot.correction)
        try:
            await backend.submit(graph, prompt_id)
        except PromptRejected as rejected:
            await self.store.finish_attempt(attempt_id, shot.id, "failed", [], [], error=rejected.body)
            return "failed"
        except ComfyUnavailable:
            await self.store.finish_attempt(attempt_id, shot.id, "queued", [], [],
                                            error={"exception_message": f"{backend.base_url} unavailable"},
                                            attempt_status="lost")
            raise
        backend.loaded_checkpoint = checkpoint
        try:
            result = await backend.wait(prompt_id)
        except PromptLost:
            await self.store.finish_attempt(attempt_id, shot.id, "queued", [], [],
                                            error={"exception_message": f"{backend.base_url} lost the prompt"},
                                            attempt_status="lost")
            raise
        return await self._record(shot, attempt_id, result, shot.attempts + 1)

    async def _record(self, shot: ClaimedShot, attempt_id: uuid.UUID, result: PromptResult, attempt_no: int) -> str:
        files, verdicts = collect_results(result.outputs)
        if result.status == "error":
            status, retry_verdicts = "failed", [{"reasons": [f"execution error: "
                                                              f"{result.error.get('exception_message', '')}"]}]
        else:
            status, retry_verdicts = shot_status(verdicts), verdicts
        retry = None
        if status in ("rejected", "failed") and attempt_no < shot.max_attempts:
            correction = choose_correction(shot.params, retry_verdicts, attempt_no)
            retry = {"params": {**shot.params, **correction["changes"]}, "correction": correction}
        recorded = await self.store.finish_attempt(attempt_id, shot.id, status, files, verdicts,
                                                   error=result.error if result.status == "error" else None,
                                                   retry=retry)
        if not recorded:
            return "recorded elsewhere"
        return "queued" if retry else status
