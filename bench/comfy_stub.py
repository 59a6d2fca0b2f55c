"""A protocol stub of ComfyUI 0.3.75's HTTP + websocket API, for the scale benchmark only (never for tests).

    .venv/bin/python bench/comfy_stub.py --backends 64 --prompt-seconds 1.0 [--port 0]

Serves N independent "backends" from one process, one port each (`--port 0`: the OS picks the ports), and prints
one JSON line `{"urls": [...], "pid": ...}` on stdout once every port listens. Per backend, as ComfyUI does:
prompts execute one at a time in queue order; each takes `--prompt-seconds` (an asyncio.sleep, no work); events
go only to the websocket of the submitting client_id (the queue `status` goes to every socket); the history entry
is written before `executing` with `node: null` is sent. A prompt runs the ancestors of its output nodes in
order; SaveImage reports a file it never writes and ShotQualityScore a passing `shotline_verdict`, so a
controller records an approved shot.

Not simulated: real validation (only unknown node classes are refused, with ComfyUI's 400 shape), the cache,
`progress`, queue priorities and `POST /queue` edits, /view of the fake files, uploads beyond reading the body.

One process is enough for bench_scale.py's 64 backends at a prompt a second each: about 2.7 ms of CPU per prompt
(0.17 of a core) on the 2-core machines, measured; bench_scale.py --stub-processes spreads backends over more.

`GET /bench/stats` (a stub-only route, on any port) reports every backend of this process: prompts run, busy
seconds, the longest queue, connected websockets, and how long a backend sat idle with an empty queue between two
prompts (time the controller, not ComfyUI, lost).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import deque

from aiohttp import WSMsgType, web

HISTORY_CAP = 10_000  # ComfyUI's MAXIMUM_HISTORY_SIZE
CHECKPOINT = "bench-stub.safetensors"  # not the random test checkpoint, so the controller logs no warning per shot


def node_info(name: str, category: str, required: dict, outputs: list[str], output_node: bool = False) -> dict:
    return {"input": {"required": required}, "input_order": {"required": list(required)}, "output": outputs,
            "output_is_list": [False] * len(outputs), "output_name": outputs, "name": name, "display_name": name,
            "description": "", "python_module": "nodes", "category": category, "output_node": output_node}


INT, FLOAT, STRING = ["INT", {}], ["FLOAT", {}], ["STRING", {"multiline": True}]
OBJECT_INFO = {
    "CheckpointLoaderSimple": node_info("CheckpointLoaderSimple", "loaders", {"ckpt_name": [[CHECKPOINT], {}]},
                                        ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": node_info("CLIPTextEncode", "conditioning", {"text": STRING, "clip": ["CLIP", {}]},
                                ["CONDITIONING"]),
    "EmptyImage": node_info("EmptyImage", "image", {"width": INT, "height": INT, "batch_size": INT, "color": INT},
                            ["IMAGE"]),
    "ImageAddNoise": node_info("ImageAddNoise", "image", {"image": ["IMAGE", {}], "seed": INT, "strength": FLOAT},
                               ["IMAGE"]),
    "LoadImage": node_info("LoadImage", "image", {"image": [[], {"image_upload": True}]}, ["IMAGE", "MASK"]),
    "SaveImage": node_info("SaveImage", "image", {"images": ["IMAGE", {}], "filename_prefix": STRING}, [], True),
    "ShotQualityScore": node_info("ShotQualityScore", "Shotline/checks",
                                  {"image": ["IMAGE", {}], "min_sharpness": FLOAT, "min_contrast": FLOAT,
                                   "max_clipped": FLOAT, "min_side": INT},
                                  ["IMAGE", "FLOAT", "BOOLEAN", "STRING"], True),
}


def now_ms() -> int:
    return int(time.time() * 1000)


def execution_order(graph: dict) -> list[str]:
    """The nodes a prompt runs: every ancestor of an output node, each after its inputs (ComfyUI prunes the rest)."""
    order, seen = [], set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in graph[node_id].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in graph:
                visit(str(value[0]))
        order.append(node_id)

    for node_id, node in graph.items():
        if OBJECT_INFO[node["class_type"]]["output_node"]:
            visit(node_id)
    return order


def node_ui(node: dict, counter: int) -> dict | None:
    """What an output node puts in /history, in the shape the real node reports."""
    inputs = node.get("inputs", {})
    if node["class_type"] == "SaveImage":
        subfolder, _, name = str(inputs.get("filename_prefix", "ComfyUI")).rpartition("/")
        return {"images": [{"filename": f"{name}_{counter:05d}_.png", "subfolder": subfolder, "type": "output"}]}
    if node["class_type"] == "ShotQualityScore":  # custom_nodes/shotline/core/image_quality.py's assess_batch
        thresholds = {key: inputs.get(key) for key in ("min_sharpness", "min_contrast", "max_clipped", "min_side")}
        image = {"width": 64, "height": 64, "sharpness": 900.0, "contrast": 0.2, "clipped_shadows": 0.0,
                 "clipped_highlights": 0.0, "invalid_pixels": 0.0, "score": 0.9, "passed": True, "reasons": [],
                 "scores": {"sharpness": 1.0, "contrast": 1.0, "exposure": 1.0, "resolution": 0.6}}
        verdict = {"check": "quality", "score": 0.9, "passed": True, "reasons": [], "images": [image],
                   "thresholds": thresholds}
        return {"shotline_verdict": [verdict]}
    return None


class StubBackend:
    """One simulated ComfyUI server: a FIFO queue worked by one task, sockets by client_id, in-memory history."""

    def __init__(self, prompt_seconds: float):
        self.prompt_seconds = prompt_seconds
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.pending: deque[list] = deque()     # [number, prompt_id, prompt, extra_data, outputs], as /queue lists
        self.running: list | None = None
        self.history: dict[str, dict] = {}
        self.number = 0
        self.wakeup = asyncio.Event()
        self.interrupted: asyncio.Task | None = None
        self.worker: asyncio.Task | None = None
        self.stats = {"prompts": 0, "busy_s": 0.0, "idle_gaps_s": [], "max_queue": 0}
        self._idle_since: float | None = None  # a prompt ended and the queue was empty

    # --- sending -----------------------------------------------------------------------------------------

    async def send(self, kind: str, data: dict, client_id: str | None) -> None:
        """To one client (ComfyUI's `sid`), or to all when client_id is None."""
        message = json.dumps({"type": kind, "data": data})
        targets = [self.sockets.get(client_id)] if client_id else list(self.sockets.values())
        for socket in targets:
            if socket is not None and not socket.closed:
                try:
                    await socket.send_str(message)
                except ConnectionError:
                    pass

    def queue_status(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": len(self.pending) + (self.running is not None)}}}

    # --- routes ------------------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[client_id] = socket  # a reconnecting client replaces its old socket, as in ComfyUI
        try:
            await socket.send_str(json.dumps({"type": "status", "data": {**self.queue_status(), "sid": client_id}}))
            async for message in socket:  # ComfyUI ignores what clients send, apart from feature flags
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sockets.get(client_id) is socket:
                del self.sockets[client_id]
        return socket

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        graph = body.get("prompt")
        if not isinstance(graph, dict) or not graph:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}}, status=400)
        for node_id, node in graph.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type not in OBJECT_INFO:
                message = f"Cannot execute because node {class_type} does not exist."
                return web.json_response({"error": {"type": "invalid_prompt", "message": message,
                                                    "details": f"Node ID '#{node_id}'", "extra_info": {}},
                                          "node_errors": {}}, status=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        outputs = [n for n in graph if OBJECT_INFO[graph[n]["class_type"]]["output_node"]]
        number = self.number
        self.number += 1
        self.pending.append([number, prompt_id, graph, {"client_id": body.get("client_id")}, outputs])
        self.stats["max_queue"] = max(self.stats["max_queue"], len(self.pending))
        self.wakeup.set()
        await self.send("status", self.queue_status(), None)
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [self.running] if self.running else [],
                                  "queue_pending": list(self.pending)})

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id")
        if prompt_id is None:  # the newest `max_items` entries, oldest first, as ComfyUI answers
            items = list(self.history.items())
            count = int(request.query.get("max_items", len(items)))
            return web.json_response(dict(items[-count:] if count else []))
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def get_object_info(self, request: web.Request) -> web.Response:
        node_class = request.match_info.get("node_class")
        if node_class:
            return web.json_response({node_class: OBJECT_INFO[node_class]} if node_class in OBJECT_INFO else {})
        return web.json_response(OBJECT_INFO)

    async def upload_image(self, request: web.Request) -> web.Response:
        fields, name = {}, "image.png"
        async for part in await request.multipart():
            fields[part.name] = await part.read()  # the image is read and dropped
            if part.name == "image" and part.filename:
                name = part.filename
        subfolder = fields.get("subfolder", b"").decode()
        return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})

    async def interrupt(self, request: web.Request) -> web.Response:
        wanted = (await request.json()).get("prompt_id") if request.can_read_body else None
        if self.running and self.interrupted and wanted in (None, self.running[1]):
            self.interrupted.cancel()
        return web.Response()

    # --- execution ---------------------------------------------------------------------------------------

    async def work(self) -> None:
        while True:
            while not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self._idle_since is not None:
                self.stats["idle_gaps_s"].append(time.monotonic() - self._idle_since)
            self.running = self.pending.popleft()
            started = time.monotonic()
            await self.execute(*self.running)
            self.stats["prompts"] += 1
            self.stats["busy_s"] += time.monotonic() - started
            self.running = None
            self._idle_since = time.monotonic() if not self.pending else None
            await self.send("status", self.queue_status(), None)

    async def execute(self, number: int, prompt_id: str, graph: dict, extra: dict, outputs: list[str]) -> None:
        client_id = extra.get("client_id")
        messages = [["execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()}],
                    ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": now_ms()}]]
        for kind, data in messages:
            await self.send(kind, data, client_id)
        order = execution_order(graph)
        ui_outputs, status = {}, "success"
        self.interrupted = asyncio.current_task()
        try:
            for node_id in order:
                await self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                                client_id)
                if node_id == order[0]:
                    await asyncio.sleep(self.prompt_seconds)  # the whole prompt's time, spent once
                ui = node_ui(graph[node_id], number + 1)
                if ui is not None:
                    ui_outputs[node_id] = ui
                    await self.send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                                 "prompt_id": prompt_id}, client_id)
            messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()}])
        except asyncio.CancelledError:  # POST /interrupt
            status = "error"
            messages.append(["execution_interrupted", {"prompt_id": prompt_id, "node_id": order[0],
                                                       "node_type": graph[order[0]]["class_type"], "executed": [],
                                                       "timestamp": now_ms()}])
        finally:
            self.interrupted = None
        await self.send(messages[-1][0], messages[-1][1], client_id)  # sent before the history entry exists
        self.history[prompt_id] = {
            "prompt": [number, prompt_id, graph, extra, outputs], "outputs": ui_outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                               "real_node_id": node_id} for node_id in ui_outputs}}
        while len(self.history) > HISTORY_CAP:
            del self.history[next(iter(self.history))]
        await self.send("executing", {"node": None, "prompt_id": prompt_id}, client_id)

    def routes(self, app: web.Application) -> None:
        for prefix in ("", "/api"):  # ComfyUI serves every route under both
            app.router.add_get(prefix + "/ws", self.websocket)
            app.router.add_post(prefix + "/prompt", self.post_prompt)
            app.router.add_get(prefix + "/queue", self.get_queue)
            app.router.add_get(prefix + "/history", self.get_history)
            app.router.add_get(prefix + "/history/{prompt_id}", self.get_history)
            app.router.add_get(prefix + "/object_info", self.get_object_info)
            app.router.add_get(prefix + "/object_info/{node_class}", self.get_object_info)
            app.router.add_post(prefix + "/upload/image", self.upload_image)
            app.router.add_post(prefix + "/interrupt", self.interrupt)
            app.router.add_get(prefix + "/system_stats", system_stats)


async def system_stats(request: web.Request) -> web.Response:
    return web.json_response({
        "system": {"os": "posix", "ram_total": 0, "ram_free": 0, "comfyui_version": "0.3.75 (bench stub)",
                   "python_version": sys.version, "pytorch_version": "none", "embedded_python": False,
                   "argv": sys.argv},
        "devices": [{"name": "bench stub", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0,
                     "torch_vram_total": 0, "torch_vram_free": 0}]})


async def serve(args) -> None:
    backends: dict[int, StubBackend] = {}

    async def bench_stats(request: web.Request) -> web.Response:
        return web.json_response({str(port): {**backend.stats, "clients": len(backend.sockets),
                                                 "queued": len(backend.pending) + (backend.running is not None)}
                                  for port, backend in backends.items()})

    runners = []
    for index in range(args.backends):
        backend = StubBackend(args.prompt_seconds)
        app = web.Application(client_max_size=64 * 2**20)
        backend.routes(app)
        app.router.add_get("/bench/stats", bench_stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port + index if args.port else 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the port the OS chose
        backend.worker = asyncio.create_task(backend.work(), name=f"backend {port}")
        backends[port] = backend
        runners.append(runner)
    print(json.dumps({"urls": [f"http://{args.host}:{port}" for port in backends], "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    for signum in (2, 15):  # SIGINT, SIGTERM
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=64)
    parser.add_argument("--prompt-seconds", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="first port (the rest follow); 0: any free ports")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
