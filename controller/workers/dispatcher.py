"""Run queued shots on ComfyUI backends until told to stop. Any number of dispatchers (processes) share a batch.

Each backend gets `slots` concurrent workers: while one prompt executes, the next is already queued on the same
server, so the GPU does not idle between shots. A worker claims a shot (preferring the checkpoint its backend
last loaded; the claim also opens the attempt), reconciles the shot's last attempt if a previous controller left
one running, otherwise fills the preset and queues the prompt under the attempt's prompt_id, and records the
result. A rejected shot is queued again with a correction chosen from its verdict, up to its `max_attempts`.

One keeper task renews this process's leases, requeues shots whose controller died, and interrupts the prompts
of shots cancelled while they run (woken at once by the `cancelled` NOTIFY, else every lease/3 seconds).
Shot status changes themselves are all in store/shots.py.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Awaitable, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shotline_controller.comfy.client import (
    ComfyBackend,
    ComfyUnavailable,
    PromptCancelled,
    PromptLost,
    PromptRejected,
    PromptResult,
)
from shotline.core.characters import CharacterSheetError, find_characters, load_character
from shotline.core.gallery_cache import CACHE_FOLDER, most_typical_reference

from shotline_controller.comfy.corrections import CorrectionContext, blamed_knobs, choose_correction
from shotline_controller.comfy.presets import (
    ANCHOR_IMAGE_TITLE,
    PresetError,
    accepted_fields,
    continuity_slot,
    fill_preset,
    find_preset,
    ids_titled,
    load_preset,
    shot_targets,
)
from shotline_controller.comfy.results import (
    RenderError,
    choose_checkpoint,
    collect_results,
    combo_options,
    shot_status,
)
from shotline_controller.contract import DEFAULT_SCENE, InputError, Shot
from shotline_controller.metrics import ControllerMetrics
from shotline_controller.settings import is_random_checkpoint
from shotline_controller.store.notifications import Notifications
from shotline_controller.store.shots import ClaimedShot, NextClaim, ShotStore
from shotline_controller.store.status import OPEN_ATTEMPT_STATUSES, AttemptStatus, ShotStatus
from shotline_controller.media.sniff import sniff
from shotline_controller.store.uploads import UploadStore
from shotline_controller.workers.continuity import LAST_FRAME_TITLE, Continuity, FrameUnavailable
from shotline_controller.workers.learning import ShotLearning

log = logging.getLogger("shotline.dispatcher")
DATABASE_TROUBLE = (psycopg.OperationalError, PoolTimeout)


class BackToQueue(Exception):
    """The backend lost the attempt, and its record already put the shot back in the queue: the slot lets go of
    it without releasing it again (another slot of this process may have claimed it since, under the same worker
    name)."""


class Holding:
    """What a slot holds: its shot's backend and the prompt queued there. Two slots of one process can briefly
    hold the same shot (a lease lapsed and the shot was claimed again); each lets go of its own holding only."""

    def __init__(self, backend: ComfyBackend, prompt_id: str | None = None):
        self.backend, self.prompt_id = backend, prompt_id


class Dispatcher:
    def __init__(self, pool: AsyncConnectionPool, backends: list[ComfyBackend], *, slots_per_backend: int = 2,
                 lease_seconds: float = 30.0, notifications: Notifications | None = None,
                 metrics: ControllerMetrics | None = None, idle_seconds: tuple[float, float] = (0.05, 2.0),
                 on_outcome: Callable[[ClaimedShot, str], None] | None = None,
                 character_library: Path | None = None):
        self.store = ShotStore(pool)
        self.uploads = UploadStore(pool)
        self.backends = backends
        self.slots = slots_per_backend
        self.lease_seconds = lease_seconds
        self.notifications = notifications
        self.metrics = metrics or ControllerMetrics()
        self.idle_seconds = idle_seconds
        self.on_outcome = on_outcome
        self.character_library = character_library   # where identity corrections read sheets and references
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.held: dict[uuid.UUID, Holding] = {}                            # shot -> its backend and prompt
        self.cancelled: set[uuid.UUID] = set()                              # held shots whose prompt we stopped
        self.continuity = Continuity(pool, lambda: self.backends[0].session, self._last_frame_nodes)
        self.learning = ShotLearning(pool)
        self._object_info: dict[str, dict] = {}
        self._presets: dict[tuple[str, str], tuple[int, dict]] = {}
        self._uploaded: dict[tuple[str, str], str] = {}

    async def run(self, until: Callable[[], Awaitable[bool]] | None = None, stop: asyncio.Event | None = None,
                  check_seconds: float = 0.5) -> None:
        """Work until `until()` returns True or `stop` is set; shots held at the end go back to the queue."""
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._slot(backend), name=f"slot {backend.base_url} {index}")
                 for backend in self.backends for index in range(self.slots)]
        tasks.append(asyncio.create_task(self._keep_leases(), name="leases"))
        try:
            while not stop.is_set():
                if until is not None and await until():
                    break
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception():
                        raise task.exception()
                try:
                    await asyncio.wait_for(stop.wait(), check_seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            held = list(self.held)  # before the slots stop: each lets go of its shot as it ends
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self.store.release(self.worker, held)
            except DATABASE_TROUBLE as error:  # their leases lapse instead
                log.warning("could not give %d shot(s) back to the queue: %s", len(held), error)

    # --- leases and cancellations ---------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        with ExitStack() as stack:
            cancelled = (stack.enter_context(self.notifications.subscribe("cancelled")) if self.notifications
                         else asyncio.Event())
            while True:
                try:
                    await asyncio.wait_for(cancelled.wait(), self.lease_seconds / 3)
                except asyncio.TimeoutError:
                    pass
                cancelled.clear()
                try:
                    await self._lease_round()
                except DATABASE_TROUBLE as error:
                    log.warning("lease round failed (the database?): %s", error)

    async def _lease_round(self) -> None:
        held = set(self.held)
        kept = await self.store.renew(self.worker, held, self.lease_seconds)
        lost = (held - kept) & set(self.held)  # a shot that ended during the renewal was not lost
        if lost:
            for shot_id in await self.store.cancelled_among(lost):
                await self._interrupt(shot_id)
            others = lost - self.cancelled
            if others:
                log.warning("lost the lease on %d shot(s); their results are recorded once, by whoever ends them",
                            len(others))
        if await self.store.reclaim_lapsed():
            log.warning("re-queued shots whose controller stopped renewing its lease")

    async def _interrupt(self, shot_id: uuid.UUID) -> None:
        holding = self.held.get(shot_id)
        if holding is None or shot_id in self.cancelled:
            return
        backend, prompt_id = holding.backend, holding.prompt_id
        self.cancelled.add(shot_id)
        if prompt_id is not None:
            log.info("shot %s was cancelled: interrupting prompt %s on %s", shot_id, prompt_id, backend.base_url)
            try:
                await backend.interrupt(prompt_id)
            except ComfyUnavailable as error:
                log.warning("could not interrupt prompt %s on %s: %s", prompt_id, backend.base_url, error)

    # --- a slot ---------------------------------------------------------------------------------------------

    async def _wait_for_work(self, seconds: float) -> None:
        if self.notifications is None:
            await asyncio.sleep(seconds)
            return
        with self.notifications.subscribe("queued") as queued:
            try:
                await asyncio.wait_for(queued.wait(), seconds)
            except asyncio.TimeoutError:
                pass

    async def _slot(self, backend: ComfyBackend) -> None:
        shortest, longest = self.idle_seconds
        idle, shot = shortest, None
        while True:
            if shot is None:
                if not backend.connected:
                    await asyncio.sleep(longest)
                    continue
                try:
                    started = time.perf_counter()
                    shot = await self.store.claim(self.worker, self.lease_seconds, backend.base_url,
                                                  backend.loaded_checkpoint)
                except DATABASE_TROUBLE as error:
                    log.warning("cannot claim shots (the database?): %s", error)
                    await asyncio.sleep(longest)
                    continue
                if shot is None:
                    await self._wait_for_work(idle)
                    idle = min(longest, idle * 2)
                    continue
                self.metrics.claim_seconds.observe(time.perf_counter() - started)
            idle = shortest
            holding = self.held[shot.id] = Holding(backend)
            following = None  # the shot this slot claimed as it recorded this one (one round trip for both)
            try:
                outcome, following = await self._run_shot(backend, shot, holding)
            except BackToQueue as error:
                log.warning("%s on %s: %s; back to the queue", shot.shot_key, backend.base_url, error)
                outcome = "queued"
                await asyncio.sleep(1.0)  # let the backend come back before this slot claims again
            except (ComfyUnavailable, PromptLost) as error:
                log.warning("%s on %s: %s; back to the queue", shot.shot_key, backend.base_url, error)
                outcome = "queued"
                await self._release(shot)
                await asyncio.sleep(1.0)  # let the backend come back before this slot claims again
            except DATABASE_TROUBLE as error:
                log.warning("%s: the database is unavailable (%s); its lease will lapse and it runs again",
                            shot.shot_key, error)
                outcome = "queued"
                await asyncio.sleep(longest)
            finally:
                if self.held.get(shot.id) is holding:
                    del self.held[shot.id]
                    self.cancelled.discard(shot.id)
            self.metrics.outcomes.labels(outcome).inc()
            if self.on_outcome:
                self.on_outcome(shot, outcome)
            shot = following

    async def _release(self, shot: ClaimedShot) -> None:
        try:
            await self.store.release(self.worker, [shot.id])
        except DATABASE_TROUBLE as error:
            log.warning("could not give %s back to the queue (%s): its lease lapses instead", shot.shot_key, error)

    def _backend(self, url: str) -> ComfyBackend | None:
        return next((backend for backend in self.backends if backend.base_url == url), None)

    # --- one shot -------------------------------------------------------------------------------------------

    async def _run_shot(self, backend: ComfyBackend, shot: ClaimedShot,
                        holding: Holding) -> tuple[str, ClaimedShot | None]:
        """Run one claimed shot to its recorded outcome; also the next shot claimed with the record, if any."""
        attempt_id, prompt_id, attempt_no = shot.attempt_id, shot.prompt_id, shot.attempts + 1
        last = shot.last_attempt
        if attempt_id is None and last and last["status"] in OPEN_ATTEMPT_STATUSES:
            # A controller died (or was paused past its lease) while this attempt ran: follow its prompt_id on the
            # backend it went to; run anything new only if that backend lost it.
            last_id, attempt_no = uuid.UUID(str(last["id"])), shot.attempts
            owner = self._backend(last["backend"])
            if owner is not None:
                holding.backend, holding.prompt_id = owner, str(last["prompt_id"])
                owner.follow(str(last["prompt_id"]))
                try:
                    result = await self._wait(owner, shot, str(last["prompt_id"]))
                except PromptLost:
                    result = None
                if result is not None:
                    return await self._record(owner, shot, last_id, result, attempt_no, inputs=None)
            if not await self.store.finish_attempt(
                    last_id, ShotStatus.RUNNING, attempt_status=AttemptStatus.LOST, error={
                        "exception_message": "prompt lost: its backend no longer knows it or is not served by this "
                                             "controller"}):
                return await self._settle_recorded(shot)  # whoever followed it too recorded it first
            attempt_no = shot.attempts  # the lost one no longer counts; this is the next
            if attempt_no > shot.max_attempts:
                await self.store.end_shot(shot.id, ShotStatus.FAILED)
                return ShotStatus.FAILED.value, None
            holding.backend, holding.prompt_id = backend, None
            attempt_id, prompt_id = await self.store.start_attempt(shot.id, backend.base_url, shot.correction)
        elif attempt_id is None:  # every attempt used
            return await self._settle_recorded(shot)
        prompt_id = str(prompt_id)

        try:
            params = Shot.from_record({**shot.params, "id": shot.shot_key, "workflow": shot.workflow})
            object_info = await self._backend_object_info(backend)
            preset = await self._preset(shot.workflow, backend, object_info)
            checkpoint = choose_checkpoint(params, combo_options(object_info, "CheckpointLoaderSimple", "ckpt_name"))
            carried, carried_inputs = await self._carried_over(shot, params, preset, backend)
            params, learning, learned_inputs = await self._learned(shot, attempt_no, params, preset, object_info)
            if carried.get("image"):
                params = params.model_copy(update={"image": carried["image"]})
            image_name = await self._input_image(backend, params.image) if params.image else None
            graph, inputs = fill_preset(preset, params, checkpoint, image_name=image_name, object_info=object_info,
                                        filename_prefix=f"shotline/{str(shot.batch_id)[:8]}/{shot.shot_key}",
                                        anchor_image=carried.get("anchor_image"), states=carried.get("states"),
                                        voice=carried.get("voice"), continuity_faces=carried.get("continuity_faces"))
            inputs.update(carried_inputs)
            inputs.update(learned_inputs)
        except FrameUnavailable as error:  # the frame it starts from is on a backend that is down, or gone
            if error.permanent:
                await self.store.finish_attempt(attempt_id, ShotStatus.FAILED, error={"exception_message": str(error)})
                return ShotStatus.FAILED.value, None
            await self.store.finish_attempt(attempt_id, ShotStatus.QUEUED, attempt_status=AttemptStatus.LOST,
                                            error={"exception_message": str(error)})
            raise BackToQueue(str(error)) from error
        except (PresetError, RenderError, InputError, ValueError, OSError) as error:
            # a shot this controller cannot build: record why, never loop on it
            await self.store.finish_attempt(attempt_id, ShotStatus.FAILED, error={"exception_message": str(error)})
            return ShotStatus.FAILED.value, None
        if is_random_checkpoint(checkpoint):
            log.warning("%s: rendering with the random test checkpoint: images are noise", shot.shot_key)

        holding.prompt_id = prompt_id
        try:
            await backend.submit(graph, prompt_id)
        except PromptRejected as rejected:
            await self.store.finish_attempt(attempt_id, ShotStatus.FAILED, error=rejected.body, inputs=inputs)
            return ShotStatus.FAILED.value, None
        except ComfyUnavailable as error:
            await self.store.finish_attempt(attempt_id, ShotStatus.QUEUED, attempt_status=AttemptStatus.LOST,
                                            inputs=inputs, error={"exception_message": f"{backend.base_url} "
                                                                                       "unavailable"})
            raise BackToQueue(str(error)) from error
        backend.loaded_checkpoint = checkpoint
        if shot.id in self.cancelled:  # cancelled while it was being queued (the keeper saw it, had no prompt)
            self.cancelled.discard(shot.id)
            await self._interrupt(shot.id)
        started = time.monotonic()
        try:
            result = await self._wait(backend, shot, prompt_id)
        except PromptLost as error:
            await self.store.finish_attempt(attempt_id, ShotStatus.QUEUED, attempt_status=AttemptStatus.LOST,
                                            inputs=inputs, error={"exception_message": f"{backend.base_url} lost "
                                                                                       "the prompt"})
            raise BackToQueue(str(error)) from error
        outcome, following = await self._record(backend, shot, attempt_id, result, attempt_no, inputs, learning)
        self.metrics.attempt_seconds.labels(outcome).observe(time.monotonic() - started)
        return outcome, following

    # --- what carries over from the shots before ----------------------------------------------------------

    async def _carried_over(self, shot: ClaimedShot, params: Shot, preset: dict,
                            backend: ComfyBackend) -> tuple[dict, dict]:
        """What this shot takes from the story so far, for fill_preset (image: the continued shot's last frame;
        anchor_image; states; voice), and what the attempt records about where each came from."""
        carried, record = {}, {}
        if shot.after_shot is not None:
            frame = await self.continuity.last_frame(shot.after_shot)
            if frame is None:
                raise InputError("continuity", "the shot it continues saved no image to start from")
            carried["image"] = frame["ref"]
            record["continuity.start_frame"] = {"shot": frame["shot"], "sha256": frame["sha256"],
                                                "file": frame["file"]}
        anchoring = params.colour_anchor if params.colour_anchor is not None else params.continuity == "previous"
        if anchoring and ids_titled(preset, ANCHOR_IMAGE_TITLE):
            anchor_id = await self.continuity.store.scene_anchor(shot.batch_id, params.scene, shot.position)
            frame = anchor_id and await self.continuity.last_frame(anchor_id)
            if frame:
                carried["anchor_image"] = await self._input_image(backend, frame["ref"])
                record["continuity.colour_anchor"] = {"shot": frame["shot"], "sha256": frame["sha256"]}
            else:
                record["continuity.colour_anchor"] = "none: the scene has no approved shot before this one"
        if params.characters:
            carried["states"] = await self.continuity.store.states_at(shot.batch_id, params.characters,
                                                                      shot.position)
            faces = {}
            for number, name in enumerate(params.characters, start=1):
                kept = await self.continuity.store.freshest_frame(shot.batch_id, params.scene, name)
                if kept and kept["face_ref"] and ids_titled(preset, continuity_slot(number)):
                    faces[name] = await self._input_image(backend, kept["face_ref"])
                record[f"continuity.reference.{name}"] = (
                    {"scene": kept["scene"], "shot": kept["shot_key"], "score": kept["score"],
                     "face": kept["face_ref"], "frame": kept["frame_ref"],
                     "in_gallery": name in faces} if kept else "library")
            carried["continuity_faces"] = faces
        if isinstance(params.dialogue, dict):
            [speaker] = params.dialogue
            found = await asyncio.to_thread(self._characters, [speaker])
            voice = found[0].sheet.voice if found else None
            if voice:
                carried["voice"] = {"engine": voice.engine, "voice": voice.voice}
            record["Dialogue.speaker"] = speaker if voice else f"{speaker} (no voice on the sheet: the preset's)"
        return carried, record

    async def _last_frame_nodes(self, workflow: str) -> set[str]:
        try:
            graph = await asyncio.to_thread(load_preset, workflow, None)
        except PresetError:
            return set()
        return set(ids_titled(graph, LAST_FRAME_TITLE))

    async def _keep_character_frames(self, shot: ClaimedShot, attempt_id: uuid.UUID, backend: ComfyBackend,
                                     files: list[dict], verdicts: list[dict]) -> None:
        """An approved character shot's best faces kept for the shots after it (a failure costs only that)."""
        scene = shot.params.get("scene", DEFAULT_SCENE)
        try:
            kept = await self.continuity.keep_character_frames(shot, scene, attempt_id, backend.base_url, files,
                                                               verdicts)
        except (FrameUnavailable, OSError) as error:
            log.warning("%s: its continuity frames were not kept: %s", shot.shot_key, error)
            return
        if kept:
            log.info("%s: kept as the continuity frame of %s in scene %s", shot.shot_key, ", ".join(kept), scene)

    async def _settle_recorded(self, shot: ClaimedShot) -> tuple[str, None]:
        """A shot claimed with no attempt left to run: its status is what its last recorded attempt decided
        (failed when none ran to its end). Reached when every attempt was used, or when a shot was queued again
        while its last attempt still ran and that attempt was recorded meanwhile."""
        last = await self.store.last_recorded_attempt(shot.id)
        if last is None or last["status"] != AttemptStatus.SUCCEEDED:
            status = ShotStatus.CANCELLED if last and last["status"] == AttemptStatus.CANCELLED else ShotStatus.FAILED
        else:
            status = ShotStatus(shot_status(last["verdicts"]))
        await self.store.end_shot(shot.id, status)
        return status.value, None

    async def _wait(self, backend: ComfyBackend, shot: ClaimedShot, prompt_id: str) -> PromptResult:
        """The prompt's result; an interrupted one (its shot was cancelled) as an error result."""
        try:
            return await backend.wait(prompt_id)
        except PromptCancelled as cancelled:
            self.cancelled.add(shot.id)
            return cancelled.result or PromptResult(prompt_id, "error", error={
                "exception_message": "cancelled before it started: taken off the backend's queue"})

    async def _record(self, backend: ComfyBackend, shot: ClaimedShot, attempt_id: uuid.UUID, result: PromptResult,
                      attempt_no: int, inputs: dict | None,
                      learning: dict | None = None) -> tuple[str, ClaimedShot | None]:
        """Record the attempt and choose the shot's next status (a correction when it was rejected, starting from
        the values the learner chose for it); the slot's next shot is claimed in the same round trip while the
        backend is up."""
        learning = learning or {}
        files, verdicts = collect_results(result.outputs)
        claim = NextClaim(self.worker, self.lease_seconds, backend.base_url, backend.loaded_checkpoint) \
            if backend.connected else None
        if shot.id in self.cancelled:
            status, retry, attempt_status = ShotStatus.CANCELLED, None, AttemptStatus.CANCELLED
            error = result.error or {"exception_message": "cancelled"}
        else:
            attempt_status = None
            error = result.error if result.status == "error" else None
            if result.status == "error":
                status = ShotStatus.FAILED
                retry_verdicts = [{"reasons": [f"execution error: {result.error.get('exception_message', '')}"]}]
            else:
                status, retry_verdicts = ShotStatus(shot_status(verdicts)), verdicts
            retry = None
            if status in (ShotStatus.REJECTED, ShotStatus.FAILED):  # what its failure says about its knobs
                learning = {**learning, "blamed": blamed_knobs(shot.params, retry_verdicts)}
            if status in (ShotStatus.REJECTED, ShotStatus.FAILED) and attempt_no < shot.max_attempts:
                ran = {**shot.params, **learning.get("chosen", {})}
                fixes, why = await self._fixes(shot, attempt_no, ran, retry_verdicts)
                correction = choose_correction(ran, retry_verdicts, attempt_no, shot.correction,
                                               await self._correction_context(shot, backend), fixes=fixes)
                if why:
                    correction["learned"] = why
                changes = await self._with_reference_image(correction, shot)
                retry = {"params": {**ran, **changes}, "correction": correction}
        started = time.perf_counter()
        recorded, following = await self.store.finish_and_claim(
            attempt_id, status, claim, outputs=files, verdicts=verdicts, error=error, inputs=inputs,
            attempt_status=attempt_status, retry=retry, learning=learning)
        if following is not None:
            self.metrics.claim_seconds.observe(time.perf_counter() - started)
        if not recorded:
            return "recorded elsewhere", following
        if status is ShotStatus.APPROVED and not retry and shot.params.get("characters"):
            await self._keep_character_frames(shot, attempt_id, backend, files, verdicts)
        return (ShotStatus.QUEUED.value if retry else status.value), following

    # --- what the learner chooses ---------------------------------------------------------------------------

    async def _learned(self, shot: ClaimedShot, attempt_no: int, params: Shot, preset: dict,
                       object_info: dict) -> tuple[Shot, dict, dict]:
        """The shot's params with the learner's choices and its characters' learned negatives (workers/learning.py),
        what the attempt records for the learner, and what its inputs show. The database being away is the
        caller's trouble (the shot goes back to the queue); nothing else here fails a shot."""
        has_loras = False  # read from the sheets only where the learner could choose a LoRA scale
        if params.characters and params.lora_scale is None and "lora_scale" in accepted_fields(preset):
            try:
                found = await asyncio.to_thread(self._characters, params.characters)
                has_loras = any(c.sheet.loras for c in found)
            except (OSError, ValueError) as error:
                log.warning("%s: cannot read its characters (%s)", shot.shot_key, error)
        return await self.learning.first_attempt(shot.id, attempt_no, params, preset, object_info, shot.correction,
                                                 has_loras)

    async def _fixes(self, shot: ClaimedShot, attempt_no: int, params: dict, verdicts: list[dict]) -> tuple[dict,
                                                                                                      dict]:
        return await self.learning.fixes(shot.id, attempt_no, params, verdicts, shot.correction)

    # --- what identity corrections need -------------------------------------------------------------------

    def _characters(self, names) -> list:
        """The shot's characters from the library (those found)."""
        if not names or self.character_library is None:
            return []
        folders = find_characters([self.character_library])
        characters = []
        for name in names:
            try:
                characters.append(load_character(folders[name]))
            except (KeyError, CharacterSheetError, OSError, ValueError) as error:
                log.warning("character %s: %s", name, error)
        return characters

    async def _correction_context(self, shot: ClaimedShot, backend: ComfyBackend) -> CorrectionContext:
        cached = self._presets.get((shot.workflow, backend.base_url))
        try:
            characters = await asyncio.to_thread(self._characters, shot.params.get("characters"))
        except (OSError, ValueError) as error:  # an unreadable library: the ladder goes on without LoRA steps
            log.warning("%s: cannot read its characters (%s)", shot.shot_key, error)
            characters = []
        return CorrectionContext(has_loras=any(c.sheet.loras for c in characters),
                                 has_input_image=bool(cached and "Input Image" in shot_targets(cached[1])[0]),
                                 fields=accepted_fields(cached[1]) if cached else None)

    async def _with_reference_image(self, correction: dict, shot: ClaimedShot) -> dict:
        """The correction's changes, with `reference_image_of` (identity rung 3) turned into the upload of that
        character's freshest continuity frame (its best approved shot so far: this scene's, else an earlier
        one's), else its most typical library reference; without either, the rung's other changes stand."""
        changes = dict(correction["changes"])
        name = changes.pop("reference_image_of", None)
        if name is None:
            return changes
        scene = shot.params.get("scene", DEFAULT_SCENE)
        kept = await self.continuity.store.freshest_frame(shot.batch_id, scene, name)
        if kept:
            changes["image"] = kept["frame_ref"]
            correction["reference"] = f"continuity frame of {name} from shot {kept['shot_key']} ({kept['scene']})"
            return changes
        try:
            found = await asyncio.to_thread(self._characters, [name])
            path = found and await asyncio.to_thread(most_typical_reference, found[0].folder / CACHE_FOLDER,
                                                     found[0].references)
            data = path and await asyncio.to_thread(path.read_bytes)
        except (OSError, ValueError) as error:
            log.warning("reference image of %s unreadable: %s", name, error)
            data = None
        kind = data and sniff(data)
        if not kind or kind.kind != "image":
            correction["step"] += f" (no usable reference image of {name}: the seed changes only)"
            return changes
        changes["image"] = (await self.uploads.put(data, kind))["ref"]
        correction["reference"] = path.name
        return changes

    # --- what a backend needs -------------------------------------------------------------------------------

    async def _backend_object_info(self, backend: ComfyBackend) -> dict:
        """The backend's /object_info, read once: the checkpoints it has and how to convert editor presets."""
        if backend.base_url not in self._object_info:
            self._object_info[backend.base_url] = await backend.object_info()
        return self._object_info[backend.base_url]

    async def _preset(self, name: str, backend: ComfyBackend, object_info: dict) -> dict:
        """The preset as an API graph for this backend, read again only when its file changes."""
        path = find_preset(name)
        mtime = path.stat().st_mtime_ns
        cached = self._presets.get((name, backend.base_url))
        if cached is None or cached[0] != mtime:
            cached = (mtime, await asyncio.to_thread(load_preset, name, object_info))
            self._presets[(name, backend.base_url)] = cached
        return cached[1]

    async def _input_image(self, backend: ComfyBackend, ref: str) -> str:
        """The shot's uploaded image put on this backend once; the name LoadImage takes."""
        key = (backend.base_url, ref)
        if key not in self._uploaded:
            found = await self.uploads.content(ref)
            if found is None:
                raise InputError("image", f"no upload {ref}")
            data, suffix = found
            self._uploaded[key] = await backend.upload_image(f"{ref.removeprefix('sha256:')[:16]}{suffix}", data)
        return self._uploaded[key]
