"""The service's assembly worker: claims queued assembly jobs and runs them, one at a time.

Woken by the `job` NOTIFY of each new job, and every ASSEMBLY_POLL_SECONDS regardless, which is when a lapsed
lease (a controller that died mid-job) is noticed and the job queued again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from contextlib import ExitStack

import aiohttp
from psycopg_pool import AsyncConnectionPool

from shotline_controller.media.assembly_jobs import JobLost, run_assembly_job
from shotline_controller.media.scene_music import backend_music
from shotline_controller.store.assemblies import AssemblyStore
from shotline_controller.store.notifications import Notifications

log = logging.getLogger("shotline.assembly")
ASSEMBLY_POLL_SECONDS = 5.0


class AssemblyWorker:
    def __init__(self, pool: AsyncConnectionPool, notifications: Notifications | None = None,
                 backends: list | None = None):
        self.pool = pool
        self.backends = backends or []  # where `music: auto` makes a scene's music
        self.store = AssemblyStore(pool)
        self.notifications = notifications
        self.worker = f"{socket.gethostname()}:{os.getpid()}:assembly:{uuid.uuid4().hex[:6]}"

    async def round(self, session: aiohttp.ClientSession) -> int:
        """Lapsed leases are reclaimed, then queued jobs are claimed and run until none is left. A job's failure
        is recorded by run_assembly_job; here it is only logged."""
        await self.store.reclaim_lapsed_jobs()
        ran = 0
        while (job := await self.store.claim_job(self.worker)) is not None:
            ran += 1
            try:
                records = await run_assembly_job(self.pool, session, job, self.worker,
                                                 make_music=backend_music(self.backends, session))
            except asyncio.CancelledError:  # the service stopping: the job goes back to the queue for the next one
                await asyncio.shield(self.store.release_job(job.id, self.worker))
                raise
            except JobLost as error:
                log.warning("%s", error)
            except Exception as error:  # noqa: BLE001 - recorded on the job; a worker outlives any one job
                log.warning("assembly job %s (batch %s, attempt %d) failed: %s: %s", job.id, job.batch_id,
                            job.attempts, type(error).__name__, error)
            else:
                log.info("assembly job %s done: %d file(s)", job.id, len(records))
        return ran

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with ExitStack() as stack:
                woken = (stack.enter_context(self.notifications.subscribe("job")) if self.notifications
                         else asyncio.Event())
                while True:
                    try:
                        await self.round(session)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # noqa: BLE001 - the database restarting must not end the loop
                        log.exception("assembly round failed")
                    try:
                        await asyncio.wait_for(woken.wait(), ASSEMBLY_POLL_SECONDS)
                    except asyncio.TimeoutError:
                        pass
                    woken.clear()
