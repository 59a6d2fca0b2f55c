"""One ComfyUI server: queue prompts, follow them on one shared websocket, read results from /history.

The websocket only tells us *when* to look: every result is read from /history. When the socket drops or stays
silent, every pending prompt is reconciled against /history and /queue; a prompt the server no longer knows
(it restarted and lost its in-memory history) fails with PromptLost, so the caller can queue it again.
Our prompt_id (a UUID we choose) is the idempotency key: a prompt is never submitted twice under one id.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger("shotline.comfy")


class ComfyUnavailable(RuntimeError):
    """The server cannot be reached or answered with something other than ComfyUI's API."""


class PromptLost(RuntimeError):
    """The server no longer knows a prompt it accepted (it restarted): run it again under a new prompt_id."""


class PromptRejected(ValueError):
    """ComfyUI refused the graph (HTTP 400): `body` is ComfyUI's own validation report."""

    def __init__(self, body: dict):
        self.body = body
        error = body.get("error", {}) if isinstance(body.get("error"), dict) else {"message": str(body.get("error"))}
        details = "; ".join(
            f"node {node_id} ({info.get('class_type')}): "
            + ", ".join(f"{e.get('message')} {e.get('details', '')}".strip() for e in info.get("errors", []))
            for node_id, info in body.get("node_errors", {}).items())
        super().__init__(f"{error.get('message', 'prompt rejected')}"
                         + (f": {error.get('details')}" if error.get("details") else "")
                         + (f" [{details}]" if details else ""))


@dataclass
class PromptResult:
    prompt_id: str
    status: str                      # "success" or "error"
    outputs: dict = field(default_factory=dict)  # node id -> ui outputs, as in /history
    error: dict | None = None        # ComfyUI's execution_error message, when status is "error"
    seconds: float | None = None     # execution time ComfyUI reported


def history_result(prompt_id: str, entry: dict) -> PromptResult:
    status = entry.get("status", {})
    messages = status.get("messages", [])
    times = {kind: data.get("timestamp") for kind, data in messages if isinstance(data, dict)}
    started, finished = times.get("execution_start"), times.get("execution_success") or times.get("execution_error")
    seconds = (finished - started) / 1000.0 if started and finished else None
    if status.get("status_str") == "error":
        error = next((data for kind, data in messages if kind in ("execution_error", "execution_interrupted")),
                     {"exception_message": "execution failed"})
        return PromptResult(prompt_id, "error", entry.get("outputs", {}), error, seconds)
    return PromptResult(prompt_id, "success", entry.get("outputs", {}), None, seconds)


class ComfyBackend:
    """A ComfyUI server with one websocket watcher shared by all the prompts we run on it."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, silence_seconds: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.client_id = str(uuid.uuid4())
        self.silence_seconds = silence_seconds
        self.connected = False
        self.last_event = 0.0
        self.queue_remaining: int | None = None
        self.loaded_checkpoint: str | None = None  # the last checkpoint a prompt of ours used here
        self._pending: dict[str, asyncio.Future] = {}
        self._watcher: asyncio.Task | None = None
        self._connected_once = asyncio.Event()

    # --- plain HTTP ---------------------------------------------------------------------------------------

    async def _get(self, path: str):
        try:
            async with self.session.get(self.base_url + path) as response:
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise ComfyUnavailable(f"GET {self.base_url}{path} failed: {error}") from error

    async def system_stats(self) -> dict:
        return await self._get("/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict:
        return await self._get("/object_info" + (f"/{node_class}" if node_class else ""))

    async def history(self, prompt_id: str) -> dict | None:
        return (await self._get(f"/history/{prompt_id}")).get(prompt_id)

    async def queued_prompt_ids(self) -> set[str]:
        queue = await self._get("/queue")
        return {item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])}

    async def upload_image(self, name: str, data: bytes, subfolder: str = "shotline") -> str:
        """Put an input image on this server; returns the name LoadImage takes (subfolder/name)."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true")
        try:
            async with self.session.post(self.base_url + "/upload/image", data=form) as response:
                response.raise_for_status()
                body = await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise ComfyUnavailable(f"upload to {self.base_url} failed: {error}") from error
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    # --- prompts ------------------------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        if self._watcher is None:
            await self.system_stats()  # a server that is not there fails now, not after the timeout
            self._watcher = asyncio.create_task(self._watch(), name=f"watch {self.base_url}")
        try:
            await asyncio.wait_for(self._connected_once.wait(), timeout)
        except asyncio.TimeoutError:
            raise ComfyUnavailable(f"no websocket to {self.base_url} within {timeout:.0f} s") from None

    async def close(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ComfyUnavailable(f"connection to {self.base_url} closed"))

    async def submit(self, graph: dict, prompt_id: str) -> None:
        """Queue `graph` under our `prompt_id`; raises PromptRejected on ComfyUI's validation error."""
        self._pending.setdefault(prompt_id, asyncio.get_running_loop().create_future())
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            async with self.session.post(self.base_url + "/prompt", json=body) as response:
                if response.status == 400:
                    self._pending.pop(prompt_id, None)
                    raise PromptRejected(await response.json())
                response.raise_for_status()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            self._pending.pop(prompt_id, None)
            raise ComfyUnavailable(f"POST {self.base_url}/prompt failed: {error}") from error

    def follow(self, prompt_id: str) -> None:
        """Wait for a prompt queued earlier (by us or a controller that died): it is reconciled at once."""
        if prompt_id not in self._pending:
            self._pending[prompt_id] = asyncio.get_running_loop().create_future()
            asyncio.create_task(self._reconcile(prompt_id))

    async def wait(self, prompt_id: str) -> PromptResult:
        future = self._pending[prompt_id]
        try:
            return await future
        finally:
            self._pending.pop(prompt_id, None)

    async def run(self, graph: dict, prompt_id: str | None = None) -> PromptResult:
        prompt_id = prompt_id or str(uuid.uuid4())
        await self.start()
        await self.submit(graph, prompt_id)
        return await self.wait(prompt_id)

    # --- the watcher --------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        delay = 0.2
        while True:
            try:
                async with self.session.ws_connect(f"{self.base_url}/ws?clientId={self.client_id}",
                                                   heartbeat=20) as websocket:
                    self.connected, delay = True, 0.2
                    self._connected_once.set()
                    await self._reconcile_all()  # whatever finished while we were away
                    while True:
                        try:
                            message = await websocket.receive(timeout=self.silence_seconds)
                        except asyncio.TimeoutError:
                            await self._reconcile_all()
                            continue
                        if message.type != aiohttp.WSMsgType.TEXT:
                            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                                aiohttp.WSMsgType.ERROR):
                                break
                            continue
                        self._on_event(message.json())
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ComfyUnavailable) as error:
                log.debug("websocket to %s: %s", self.base_url, error)
            self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _on_event(self, event: dict) -> None:
        self.last_event = time.monotonic()
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "status":
            self.queue_remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
            return
        prompt_id = data.get("prompt_id")
        if prompt_id not in self._pending:
            return
        # ComfyUI writes the history entry and then sends `executing` with no node, for success and error alike;
        # `execution_success` comes earlier, before the entry exists, so reading /history then would be wasted.
        if kind == "executing" and data.get("node") is None:
            asyncio.create_task(self._reconcile(prompt_id))

    async def _reconcile_all(self) -> None:
        for prompt_id in [p for p, f in self._pending.items() if not f.done()]:
            await self._reconcile(prompt_id)

    async def _reconcile(self, prompt_id: str) -> None:
        """Settle a pending prompt from /history; fail it as lost if the server knows it nowhere."""
        future = self._pending.get(prompt_id)
        if future is None or future.done():
            return
        try:
            entry = await self.history(prompt_id)
            if entry is None and prompt_id not in await self.queued_prompt_ids():
                # the history is written before the prompt leaves the queue; a last look settles the race
                entry = await self.history(prompt_id)
                if entry is None:
                    if not future.done():
                        future.set_exception(PromptLost(f"{self.base_url} no longer knows prompt {prompt_id} "
                                                        "(restarted?)"))
                    return
        except ComfyUnavailable:
            return  # the watcher retries when the server is back
        if entry is not None and entry.get("status", {}).get("completed") is not None and not future.done():
            future.set_result(history_result(prompt_id, entry))
