"""One ComfyUI server: queue prompts, follow them on one shared websocket, read results from /history.

ComfyUI sends a prompt's per-node events (executing, progress, progress_state, executed: about 20 messages for
a 4-node graph) only to the websocket of the client_id it was submitted under, and every queue change (`status`,
with `queue_remaining`) to every websocket. Prompts are submitted under a client_id no socket holds, so the
watcher hears three small messages per prompt instead of twenty: each message costs the controller a wake-up,
and on this kind of machine that was most of its CPU per shot. When `queue_remaining` drops, the prompts that
finished are in the newest entries of `/history` (ComfyUI writes the entry, then announces the queue): one
`GET /history?max_items=N` settles them. Anything else is reconciled one by one against /history and /queue: on
(re)connect, when the socket is silent, and at least every `silence_seconds` while prompts are pending; a prompt
the server no longer knows (it restarted and lost its in-memory history) fails with PromptLost, so the caller can
queue it again.
Our prompt_id (a UUID we choose) is the idempotency key: a prompt is never submitted twice under one id.
A backend that is down is retried for ever with backoff: `connected` is False meanwhile and callers wait on
`wait_connected()`.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger("shotline.comfy")

_STATUS_PREFIX = '{"type": "status"'  # ComfyUI sends `json.dumps({"type": ..., "data": ...})`
_SLACK = 2  # extra newest /history entries read when settling, against a completion announced twice


class ComfyUnavailable(RuntimeError):
    """The server cannot be reached or answered with something other than ComfyUI's API."""


class PromptLost(RuntimeError):
    """The server no longer knows a prompt it accepted (it restarted): run it again under a new prompt_id."""


class OutputGone(LookupError):
    """A ComfyUI no longer serves an output file (deleted, or another server now answers at its address)."""


async def fetch_output_bytes(session: aiohttp.ClientSession, base_url: str, output: dict) -> bytes:
    """An output file ({filename, subfolder, type}) through ComfyUI's public /view. OutputGone when the server
    answers without it, ComfyUnavailable when it cannot be reached."""
    params = {"filename": output["filename"], "subfolder": output["subfolder"], "type": output["type"]}
    try:
        async with session.get(f"{base_url.rstrip('/')}/view", params=params) as response:
            if response.status != 200:
                raise OutputGone(f"{base_url} has no {output['subfolder']}/{output['filename']} any more "
                                 f"(HTTP {response.status})")
            return await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
        raise ComfyUnavailable(f"cannot fetch {output['filename']} from {base_url}: {error}") from None


class PromptCancelled(RuntimeError):
    """We interrupted the prompt (`ComfyBackend.interrupt`) before it finished.

    `result` is its /history entry when it was stopped while running (status "error", the
    `execution_interrupted` message as `error`, the outputs made so far); None when it was taken off the queue
    before it started (ComfyUI keeps no history for those).
    """

    def __init__(self, prompt_id: str, result: PromptResult | None = None):
        self.prompt_id, self.result = prompt_id, result
        where = f"while running node {result.error.get('node_id')}" if result and result.error else "while queued"
        super().__init__(f"prompt {prompt_id} was interrupted {where}")


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
        self.client_id = str(uuid.uuid4())          # the watcher's websocket: it hears the queue's status
        self.prompt_client_id = str(uuid.uuid4())   # prompts go in under this one: no socket, so no node events
        self.silence_seconds = silence_seconds
        self.connected = False
        self.last_event = 0.0
        self.queue_remaining: int | None = None
        self.loaded_checkpoint: str | None = None  # the last checkpoint a prompt of ours used here
        self._pending: dict[str, asyncio.Future] = {}
        self._interrupted: set[str] = set()  # prompts of ours interrupt() stopped, still pending
        self._finished_unread = 0  # prompts the queue said finished, whose /history entries are still to read
        self._reader: asyncio.Task | None = None
        self._last_reconcile = time.monotonic()
        self._tasks: set[asyncio.Task] = set()  # reconciliations in flight, held so they are not collected
        self._watcher: asyncio.Task | None = None
        self._connected_event = asyncio.Event()
        self._connected_once = asyncio.Event()
        self._reachable: bool | None = None  # what we last logged: None before the first try

    # --- plain HTTP ---------------------------------------------------------------------------------------

    async def _get(self, path: str):
        try:
            async with self.session.get(self.base_url + path) as response:
                response.raise_for_status()
                return await response.json()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
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

    async def _post(self, path: str, body: dict) -> None:
        try:
            async with self.session.post(self.base_url + path, json=body) as response:
                response.raise_for_status()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
            raise ComfyUnavailable(f"POST {self.base_url}{path} failed: {error}") from error

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
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
            raise ComfyUnavailable(f"upload to {self.base_url} failed: {error}") from error
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    # --- prompts ------------------------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0, wait: bool = True) -> None:
        """Start the websocket watcher.

        With `wait` (what `shotline render` wants) a server that is not there raises ComfyUnavailable at once, and
        one whose websocket does not open within `timeout` seconds raises it then. With `wait=False` (the service)
        this returns at once: the watcher keeps trying with backoff, `connected` stays False until it gets
        through, and `wait_connected()` lets a caller wait for that.
        """
        if self._watcher is None:
            if wait:
                await self.system_stats()  # a server that is not there fails now, not after the timeout
            self._watcher = asyncio.create_task(self._watch(), name=f"watch {self.base_url}")
            self._watcher.add_done_callback(self._log_failure)
        if not wait:
            return
        try:
            await asyncio.wait_for(self._connected_once.wait(), timeout)
        except TimeoutError:
            raise ComfyUnavailable(f"no websocket to {self.base_url} within {timeout:.0f} s") from None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the websocket is open (at most `timeout` seconds); True when it is."""
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError:
            pass
        return self.connected

    async def close(self) -> None:
        tasks = [task for task in (self._watcher, *self._tasks) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None
        self._set_connected(False)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ComfyUnavailable(f"connection to {self.base_url} closed"))

    async def submit(self, graph: dict, prompt_id: str) -> None:
        """Queue `graph` under our `prompt_id`; raises PromptRejected on ComfyUI's validation error."""
        self._pending.setdefault(prompt_id, asyncio.get_running_loop().create_future())
        body = {"prompt": graph, "client_id": self.prompt_client_id, "prompt_id": prompt_id}
        try:
            async with self.session.post(self.base_url + "/prompt", json=body) as response:
                if response.status == 400:
                    self._pending.pop(prompt_id, None)
                    raise PromptRejected(await response.json())
                response.raise_for_status()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
            self._pending.pop(prompt_id, None)
            raise ComfyUnavailable(f"POST {self.base_url}/prompt failed: {error}") from error

    def follow(self, prompt_id: str) -> None:
        """Wait for a prompt queued earlier (by us or a controller that died): it is reconciled at once."""
        if prompt_id not in self._pending:
            self._pending[prompt_id] = asyncio.get_running_loop().create_future()
            self._spawn(self._reconcile(prompt_id), f"reconcile {prompt_id}")

    async def wait(self, prompt_id: str) -> PromptResult:
        """The prompt's result once it has finished (success or error, as ComfyUI reported it).

        Raises PromptLost when the server no longer knows the prompt, and PromptCancelled when interrupt()
        stopped it first. A prompt that finished before the interrupt reached the server returns its result.
        """
        future = self._pending[prompt_id]
        try:
            return await future
        finally:
            self._pending.pop(prompt_id, None)
            self._interrupted.discard(prompt_id)

    async def interrupt(self, prompt_id: str) -> None:
        """Stop our prompt `prompt_id` wherever it is on this server; nobody else's prompt is touched.

        A pending prompt is deleted from the queue, a running one gets ComfyUI's targeted interrupt (ComfyUI
        checks that this prompt is the one running; the one remaining race is ComfyUI's own: if the prompt ends
        in the instant between that check and the interrupt flag being set, the flag can stop the next prompt).
        Both requests are sent, delete first, so a prompt that starts in between is still caught. Its wait()
        then raises PromptCancelled. Raises ComfyUnavailable when the server cannot be reached.
        """
        if not prompt_id:
            raise ValueError("interrupt needs a prompt_id: ComfyUI would interrupt whatever runs")
        if prompt_id in self._pending:
            self._interrupted.add(prompt_id)
        await self._post("/queue", {"delete": [prompt_id]})
        await self._post("/interrupt", {"prompt_id": prompt_id})
        # a deleted prompt sends no more events: settle it now (a running one settles on its last event)
        self._spawn(self._reconcile(prompt_id), f"reconcile {prompt_id}")

    async def run(self, graph: dict, prompt_id: str | None = None) -> PromptResult:
        prompt_id = prompt_id or str(uuid.uuid4())
        await self.start()
        await self.submit(graph, prompt_id)
        return await self.wait(prompt_id)

    # --- the watcher --------------------------------------------------------------------------------------

    def _spawn(self, coroutine, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s on %s failed", task.get_name(), self.base_url, exc_info=task.exception())

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            self._connected_event.set()
            self._connected_once.set()
        else:
            self._connected_event.clear()

    def _report(self, reachable: bool, error: BaseException | None = None) -> None:
        """Log the transitions only: not every retry."""
        if reachable == self._reachable:
            return
        if reachable:
            log.info("ComfyUI at %s %s", self.base_url, "is back" if self._connected_once.is_set() else "connected")
        elif self._reachable:
            log.warning("ComfyUI at %s became unreachable (%s); retrying", self.base_url, error)
        else:
            log.warning("ComfyUI at %s is not reachable (%s); retrying", self.base_url, error)
        self._reachable = reachable

    async def _watch(self) -> None:
        delay = 0.2
        while True:
            error: BaseException | None = None
            try:
                async with self.session.ws_connect(f"{self.base_url}/ws?clientId={self.client_id}",
                                                   heartbeat=20) as websocket:
                    self._report(True)
                    self.queue_remaining = None  # the first status of this connection is a baseline
                    self._set_connected(True)
                    delay = 0.2
                    await self._reconcile_all()  # whatever finished while we were away
                    await self._read(websocket)
                error = ConnectionError("websocket closed")
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ComfyUnavailable) as failure:
                error = failure
                log.debug("websocket to %s: %s", self.base_url, failure)
            except Exception as failure:  # a bug must not end the watcher: every prompt here would hang
                error = failure
                log.exception("watching %s failed", self.base_url)
            self._set_connected(False)
            self._report(False, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            try:
                message = await websocket.receive(timeout=self.silence_seconds)
            except TimeoutError:
                await self._reconcile_all()
                continue
            if message.type == aiohttp.WSMsgType.TEXT:
                self.last_event = time.monotonic()
                if message.data.startswith(_STATUS_PREFIX):  # anything else is somebody else's prompt's event
                    self._on_status(message.json().get("data") or {})
                if self._pending and time.monotonic() - self._last_reconcile > self.silence_seconds:
                    self._spawn(self._reconcile_all(), "reconcile pending prompts")  # a busy server is never silent
            elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return
            # binary frames are previews: ignored

    def _on_status(self, data: dict) -> None:
        remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
        previous, self.queue_remaining = self.queue_remaining, remaining
        if not isinstance(remaining, int) or not isinstance(previous, int) or remaining >= previous:
            return
        if self._pending:
            self._finished_unread += previous - remaining
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read_finished(), name=f"read finished {self.base_url}")
                self._tasks.add(self._reader)
                self._reader.add_done_callback(self._tasks.discard)
                self._reader.add_done_callback(self._log_failure)

    async def _read_finished(self) -> None:
        """Settle our pending prompts among the newest /history entries, as many as the queue said finished."""
        while self._finished_unread > 0:
            count, self._finished_unread = self._finished_unread, 0
            try:
                history = await self._get(f"/history?max_items={count + _SLACK}")
            except ComfyUnavailable:
                return  # the watcher reconciles everything when the server is back
            for prompt_id, entry in history.items():
                if prompt_id in self._pending and entry.get("status", {}).get("completed") is not None:
                    self._settle(prompt_id, entry)

    def _settle(self, prompt_id: str, entry: dict) -> None:
        future = self._pending.get(prompt_id)
        if future is None or future.done():
            return
        result = history_result(prompt_id, entry)
        if prompt_id in self._interrupted and _was_interrupted(entry):
            future.set_exception(PromptCancelled(prompt_id, result))
        else:
            future.set_result(result)

    async def _reconcile_all(self) -> None:
        self._last_reconcile = time.monotonic()
        for prompt_id in [p for p, f in self._pending.items() if not f.done()]:
            await self._reconcile(prompt_id)

    async def _reconcile(self, prompt_id: str) -> None:
        """Settle a pending prompt from /history; fail it as lost (or cancelled, when we deleted it from the
        queue) if the server knows it nowhere."""
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
                        future.set_exception(PromptCancelled(prompt_id) if prompt_id in self._interrupted else
                                             PromptLost(f"{self.base_url} no longer knows prompt {prompt_id} "
                                                        "(restarted?)"))
                    return
        except ComfyUnavailable:
            return  # the watcher retries when the server is back
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            self._settle(prompt_id, entry)


def _was_interrupted(entry: dict) -> bool:
    return any(kind == "execution_interrupted" for kind, _ in entry.get("status", {}).get("messages", []))
