"""Every background worker of a controller process, started and stopped in one place.

`shotline serve` runs all of them beside the HTTP API; `shotline render` runs the dispatcher alone (with the
notifications it waits on) until its batch is finished.

    notifications   the one LISTEN connection (store/notifications.py)
    supervisors     a ComfyUI this controller started, restarted when it dies (comfy/server.py)
    backends        one websocket watcher per ComfyUI, reconnecting until stopped (comfy/client.py)
    dispatcher      slots that claim and run shots, and the lease keeper (workers/dispatcher.py)
    assembly        the assembly-job worker (workers/assembly_worker.py)
    webhooks        batch-finished webhooks (workers/webhooks.py)
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from shotline_controller.comfy.client import ComfyBackend
from shotline_controller.metrics import ControllerMetrics
from shotline_controller.store.notifications import Notifications
from shotline_controller.store.shots import ShotStore
from shotline_controller.webhook_policy import WebhookPolicy
from shotline_controller.workers.assembly_worker import AssemblyWorker
from shotline_controller.workers.dispatcher import Dispatcher
from shotline_controller.workers.webhooks import WebhookSender

log = logging.getLogger("shotline.workers")


class Workers:
    def __init__(self, pool: AsyncConnectionPool, backends: list[ComfyBackend], *, supervisors: dict | None = None,
                 slots_per_backend: int = 2, lease_seconds: float = 30.0, metrics: ControllerMetrics | None = None,
                 webhook_secret: bytes | None = None, webhook_policy: WebhookPolicy | None = None,
                 max_streams: int = 256, service: bool = True, character_library: Path | None = None):
        self.pool = pool
        self.backends = backends
        self.supervisors = supervisors or {}     # backend URL -> the supervisor of a ComfyUI started here
        self.metrics = metrics or ControllerMetrics()
        self.notifications = Notifications.for_pool(pool, max_streams=max_streams)
        self.dispatcher = Dispatcher(pool, backends, slots_per_backend=slots_per_backend,
                                     lease_seconds=lease_seconds, notifications=self.notifications,
                                     metrics=self.metrics, character_library=character_library)
        self.service = service
        self.assembly = AssemblyWorker(pool, self.notifications, backends)
        self.webhooks = WebhookSender(ShotStore(pool), webhook_secret or b"", webhook_policy or WebhookPolicy(),
                                      self.metrics)

    async def run(self, stop: asyncio.Event, until: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Run until `stop` is set (or `until()` is true); everything is stopped again on the way out, and the
        shots this process holds go back to the queue."""
        background: list[asyncio.Task] = []
        try:
            await self.notifications.start()
            for supervisor in self.supervisors.values():
                # a ComfyUI takes seconds to a minute to start: a signal meanwhile stops it, not waits for it
                if not await _unless_stopped(supervisor.start(), stop):
                    return
            for backend in self.backends:
                await backend.start(wait=False)  # a backend that is down is retried, shown disconnected
            if self.service:
                background += [asyncio.create_task(self.assembly.run(), name="shotline-assembly"),
                               asyncio.create_task(self.webhooks.run(), name="shotline-webhooks")]
            await self.dispatcher.run(until=until, stop=stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for backend in self.backends:
                await backend.close()
            for supervisor in self.supervisors.values():
                await supervisor.stop()
            await self.notifications.stop()


async def _unless_stopped(awaitable: Awaitable, stop: asyncio.Event) -> bool:
    """Await `awaitable` unless `stop` is set first, which cancels it; True when it finished (its error raised)."""
    task = asyncio.ensure_future(awaitable)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True
