"""One LISTEN connection per controller process, shared by everything that waits for a change.

Transitions NOTIFY `<kind> <id>` on EVENTS_CHANNEL (store/shots.py, store/assemblies.py). The hub reads them on
its single connection and wakes the waiters of that key: an event stream waits for `batch <id>`, a dispatcher for
`queued` (new work) and `cancelled` (prompts to interrupt), the assembly worker for `job`. Before, each event
stream held a PostgreSQL connection of its own, and two services with 64 open streams each ran the server out of
connections. Waiters always also wake on a timeout, so a hub that lost its connection (it reconnects with
backoff) only makes them slower, never stuck.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager

import psycopg

from shotline_controller.store.status import EVENTS_CHANNEL

log = logging.getLogger("shotline.notifications")


class StreamLimit(RuntimeError):
    """Too many open event streams: the caller answers 503."""


class Notifications:
    def __init__(self, conninfo: str, connect_kwargs: dict | None = None, max_streams: int = 256):
        self.conninfo = conninfo
        self.connect_kwargs = {**(connect_kwargs or {}), "autocommit": True}
        self.max_streams = max_streams
        self.streams = 0
        self.connected = False
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None

    @classmethod
    def for_pool(cls, pool, **kwargs) -> "Notifications":
        return cls(pool.conninfo, pool.kwargs, **kwargs)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="shotline-notifications")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @contextmanager
    def subscribe(self, key: str):
        """An asyncio.Event set whenever `key` is notified (`queued`, `cancelled`, `job`, `batch <id>`)."""
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[key]

    @contextmanager
    def stream(self, batch_id):
        """A subscription for an event stream of one batch, counted against `max_streams`."""
        if self.streams >= self.max_streams:
            raise StreamLimit(f"too many open event streams ({self.max_streams}): poll the batch instead")
        self.streams += 1
        try:
            with self.subscribe(f"batch {batch_id}") as event:
                yield event
        finally:
            self.streams -= 1

    def _wake(self, key: str) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def _deliver(self, payload: str) -> None:
        kind, _, subject = payload.partition(" ")
        self._wake(kind)
        if kind in ("queued", "changed", "cancelled"):
            self._wake(f"batch {subject}")

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, **self.connect_kwargs) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    if not self.connected:
                        log.info("listening for changes on %s", EVENTS_CHANNEL)
                    self.connected, delay = True, 0.5
                    for key in list(self._waiters):  # whatever changed while we were away
                        self._wake(key)
                    async for notice in conn.notifies():
                        self._deliver(notice.payload)
            except asyncio.CancelledError:
                raise
            except psycopg.Error as error:
                if self.connected:
                    log.warning("notification connection lost (%s); reconnecting", error)
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
