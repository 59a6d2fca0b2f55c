"""A small client for one ComfyUI server: queue a prompt, follow it on the websocket, read its history.

The websocket only speeds things up: the result is always read from /history, and when the socket drops or
stays silent the client falls back to polling /history and /queue, so no prompt is lost to a dropped connection.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import aiohttp


class ComfyUnavailable(RuntimeError):
    """The server cannot be reached or answered with something other than ComfyUI's API."""


class PromptRejected(ValueError):
    """ComfyUI refused the graph (HTTP 400): `error` and `node_errors` are ComfyUI's own validation report."""

    def __init__(self, body: dict):
        self.body = body
        error = body.get("error", {})
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
    started: float | None = None     # loop time when ComfyUI reported it started executing
    finished: float | None = None


class ComfyClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, silence_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.client_id = str(uuid.uuid4())
        self.silence_timeout = silence_timeout

    async def _get(self, path: str):
        try:
            async with self.session.get(self.base_url + path) as response:
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ComfyUnavailable(f"GET {self.base_url}{path} failed: {error}") from error

    async def system_stats(self) -> dict:
        return await self._get("/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict:
        return await self._get("/object_info" + (f"/{node_class}" if node_class else ""))

    async def history(self, prompt_id: str) -> dict | None:
        return (await self._get(f"/history/{prompt_id}")).get(prompt_id)

    async def queue(self) -> dict:
        return await self._get("/queue")

    async def submit(self, graph: dict, prompt_id: str) -> None:
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        try:
            async with self.session.post(self.base_url + "/prompt", json=body) as response:
                if response.status == 400:
                    raise PromptRejected(await response.json())
                response.raise_for_status()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ComfyUnavailable(f"POST {self.base_url}/prompt failed: {error}") from error

    async def run(self, graph: dict, prompt_id: str | None = None) -> PromptResult:
        """Queue `graph` and wait until ComfyUI has finished it; raises PromptRejected on a validation error."""
        prompt_id = prompt_id or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        try:
            websocket = await self.session.ws_connect(f"{self.base_url}/ws?clientId={self.client_id}", heartbeat=20)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ComfyUnavailable(f"websocket to {self.base_url} failed: {error}") from error
        started = None
        async with websocket:
            await self.submit(graph, prompt_id)
            while True:
                try:
                    message = await websocket.receive(timeout=self.silence_timeout)
                except asyncio.TimeoutError:
                    if await self._finished(prompt_id):  # silence: ask the server instead
                        break
                    continue
                if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break  # fall through to polling
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                event = message.json()
                data = event.get("data", {})
                if data.get("prompt_id") != prompt_id:
                    continue
                kind = event.get("type")
                if kind == "execution_start":
                    started = loop.time()
                elif kind == "execution_error":
                    return PromptResult(prompt_id, "error", error=data, started=started, finished=loop.time())
                elif kind == "execution_interrupted":
                    return PromptResult(prompt_id, "error", error={"exception_message": "interrupted", **data},
                                        started=started, finished=loop.time())
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                    break
        return await self._result_from_history(prompt_id, started)

    async def _finished(self, prompt_id: str) -> bool:
        return await self.history(prompt_id) is not None

    async def _result_from_history(self, prompt_id: str, started: float | None) -> PromptResult:
        loop = asyncio.get_running_loop()
        while (entry := await self.history(prompt_id)) is None:
            queue = await self.queue()
            queued = {item[1] for item in queue.get("queue_running", []) + queue.get("queue_pending", [])}
            if prompt_id not in queued and await self.history(prompt_id) is None:
                raise ComfyUnavailable(f"prompt {prompt_id} is neither queued nor in the history of "
                                       f"{self.base_url}: the server lost it (restarted?)")
            await asyncio.sleep(0.5)
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            error = next((data for kind, data in status.get("messages", []) if kind == "execution_error"), {})
            return PromptResult(prompt_id, "error", outputs=entry.get("outputs", {}), error=error,
                                started=started, finished=loop.time())
        return PromptResult(prompt_id, "success", outputs=entry.get("outputs", {}), started=started,
                            finished=loop.time())
