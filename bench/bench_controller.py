"""Controller overhead, backend idle gaps, multi-backend throughput and memory, printed as a markdown table.

    .venv/bin/python bench/bench_controller.py [--shots 40] [--throughput-shots 60] [--queued 10000] [--backends 4]

Starts its own real parts: an embedded PostgreSQL in a 0755 temp folder and N ComfyUI servers (the installed one,
with the Shotline pack linked in) with temp input/output folders. Every prompt runs the same cheap preset,
`bench_trivial`, written to a temp folder that SHOTLINE_PRESETS points at:

    EmptyImage 64x64 ("Size") -> ImageAddNoise ("Sampler": the shot's seed) -> ShotQualityScore, SaveImage ("Save")

plus "Checkpoint"/"Prompt"/"Negative Prompt" nodes (CheckpointLoaderSimple, CLIPTextEncode) that the title
convention requires but that feed no output node, so ComfyUI neither validates nor runs them.

Measured:
1. per-shot wall time: a bare client (POST /prompt + wait on one websocket for `executing` node=None, sequential)
   vs the Dispatcher on one backend (slots 1 and 2) running a batch of the same shots; target ratio <= 1.05.
2. idle gap between consecutive prompts on a backend (ComfyUI's execution_start/execution_success timestamps
   from /history) when the Dispatcher drives it with 2 slots; target median/p95 < 20 ms.
3. throughput with 1, 2 and 4 backends (Dispatcher, 2 slots each); target speedup >= 3.6 with 4.
4. in a child process: RSS of a controller (pool + Dispatcher) with 10,000 queued shots, ShotStore.submit_batch
   time (vs an executemany insert), and claim latency with that queue; target RSS < 300 MB.
5. the controller's own CPU per shot (this process's CPU time over the slots=2 run: the dispatcher, its
   PostgreSQL statements, HTTP and the websocket; ComfyUI runs in other processes); target <= 3 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from shotline_controller.comfy.client import ComfyBackend  # noqa: E402
from shotline_controller.comfy.presets import fill_preset, load_preset  # noqa: E402
from shotline_controller.comfy.server import LocalComfyServer  # noqa: E402
from shotline_controller.contract import Shot, shots_of  # noqa: E402
from shotline_controller.embedded_postgres import EmbeddedPostgres, public_temp_dir  # noqa: E402
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME, load_settings  # noqa: E402
from shotline_controller.store.migrations import apply_migrations  # noqa: E402
from shotline_controller.store.shots import ShotStore  # noqa: E402
from shotline_controller.workers.dispatcher import Dispatcher  # noqa: E402

PRESET_NAME = "bench_trivial"
PRESET = {
    "1": {"class_type": "EmptyImage", "_meta": {"title": "Size"},
          "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x808080}},
    "2": {"class_type": "ImageAddNoise", "_meta": {"title": "Sampler"},
          "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.5}},
    "3": {"class_type": "ShotQualityScore", "_meta": {"title": "Quality"},
          "inputs": {"image": ["2", 0], "min_sharpness": 100.0, "min_contrast": 0.08, "max_clipped": 0.15,
                     "min_side": 64}},
    "4": {"class_type": "SaveImage", "_meta": {"title": "Save"},
          "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    # required by the title convention; they feed no output node, so ComfyUI prunes them
    "10": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Checkpoint"},
           "inputs": {"ckpt_name": RANDOM_CHECKPOINT_NAME}},
    "11": {"class_type": "CLIPTextEncode", "_meta": {"title": "Prompt"}, "inputs": {"text": "", "clip": ["10", 1]}},
    "12": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative Prompt"},
           "inputs": {"text": "", "clip": ["10", 1]}},
}
POOL_ARGS = {"min_size": 1, "max_size": 4, "kwargs": {"autocommit": True}}  # as controller/cli.py's open_database


def make_shots(prefix: str, count: int) -> list[Shot]:
    return shots_of([{"id": f"{prefix}-{i:05d}", "workflow": PRESET_NAME, "prompt": "bench", "size": "64x64"}
                     for i in range(count)])


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def vm_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return float("nan")


# --- ComfyUI helpers -------------------------------------------------------------------------------------------


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1)


async def post_prompt(session, url: str, graph: dict, client_id: str) -> str:
    async with session.post(url + "/prompt", json={"prompt": graph, "client_id": client_id}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"{url} rejected the bench graph: {json.dumps(body)[:2000]}")
        return body["prompt_id"]


async def wait_done(websocket, prompt_id: str) -> None:
    while True:
        message = await websocket.receive(timeout=120)
        if message.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(message.data)
            data = event.get("data") or {}
            if event.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
            if event.get("type") == "execution_error" and data.get("prompt_id") == prompt_id:
                raise RuntimeError(f"bench graph failed: {data.get('exception_message')}")
        elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            raise RuntimeError("websocket closed")


def bare_graphs(prefix: str, count: int) -> list[dict]:
    preset = load_preset(PRESET_NAME)
    return [fill_preset(preset, shot, RANDOM_CHECKPOINT_NAME, filename_prefix=f"bare/{shot.id}")[0]
            for shot in make_shots(prefix, count)]


async def bare_loop(session, url: str, graphs: list[dict]) -> tuple[float, list[str]]:
    """(a): POST /prompt, wait for `executing` node=None on one websocket, next; returns (seconds, prompt ids)."""
    client_id = str(uuid.uuid4())
    async with session.ws_connect(f"{ws_url(url)}/ws?clientId={client_id}") as websocket:
        prompt_ids = []
        started = time.perf_counter()
        for graph in graphs:
            prompt_ids.append(await post_prompt(session, url, graph, client_id))
            await wait_done(websocket, prompt_ids[-1])
        return time.perf_counter() - started, prompt_ids


async def all_at_once(session, url: str, graphs: list[dict]) -> tuple[float, list[str]]:
    """ComfyUI's own floor: every prompt queued up front, so the server never waits for a client."""
    client_id = str(uuid.uuid4())
    async with session.ws_connect(f"{ws_url(url)}/ws?clientId={client_id}") as websocket:
        started = time.perf_counter()
        prompt_ids = [await post_prompt(session, url, graph, client_id) for graph in graphs]
        await wait_done(websocket, prompt_ids[-1])
        return time.perf_counter() - started, prompt_ids


async def gaps_ms(session, url: str, prompt_ids: list[str]) -> list[float]:
    """start(n+1) - end(n) for consecutive prompts on one server, from /history's status timestamps (ms)."""
    async with session.get(url + "/history") as response:
        history = await response.json()
    spans = []
    for prompt_id in prompt_ids:
        entry = history.get(str(prompt_id))
        if not entry:
            continue
        times = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"] if isinstance(data, dict)}
        start, end = times.get("execution_start"), times.get("execution_success") or times.get("execution_error")
        if start is not None and end is not None:
            spans.append((start, end))
    spans.sort()
    return [float(spans[i + 1][0] - spans[i][1]) for i in range(len(spans) - 1)]


# --- the controller --------------------------------------------------------------------------------------------


async def dispatch(pool, session, urls: list[str], shots, slots: int) -> dict:
    """(b)/(3): submit a batch, run a Dispatcher on `urls` until every shot has an outcome."""
    submitted = time.perf_counter()
    batch_id, _ = await ShotStore(pool).submit_batch(shots, "bench", max_attempts=1)
    submit_s = time.perf_counter() - submitted
    backends = [ComfyBackend(url, session) for url in urls]
    for backend in backends:
        await backend.start()
    outcomes: dict[str, int] = {}
    ended: list[float] = []

    def on_outcome(shot, outcome):
        if outcome == "queued":
            return
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if sum(outcomes.values()) == len(shots):
            ended.append(time.perf_counter())
            stop.set()

    stop = asyncio.Event()
    dispatcher = Dispatcher(pool, backends, slots_per_backend=slots, on_outcome=on_outcome)
    steps: dict[str, list] = {}  # method -> [calls, seconds], wrapped on these instances only
    for owner, name in [(dispatcher.store, "claim"), (dispatcher.store, "finish_and_claim"),
                        (dispatcher.store, "start_attempt")] + [
            (backend, name) for backend in backends for name in ("submit", "history", "queued_prompt_ids")]:
        setattr(owner, name, timed(getattr(owner, name), steps.setdefault(name, [0, 0.0])))
    cpu = time.process_time()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(dispatcher.run(stop=stop), timeout=240)
    finally:
        for backend in backends:
            await backend.close()
    cpu = time.process_time() - cpu
    if not ended:
        raise RuntimeError(f"dispatcher stopped before the batch finished: {outcomes}")
    async with pool.connection() as conn:
        rows = await (await conn.execute(
            "SELECT a.backend, a.prompt_id FROM attempts a JOIN shots s ON s.id = a.shot_id WHERE s.batch_id = %s",
            (batch_id,))).fetchall()
    prompts: dict[str, list[str]] = {}
    for backend, prompt_id in rows:
        prompts.setdefault(backend, []).append(str(prompt_id))
    return {"seconds": ended[0] - started, "submit_s": submit_s, "outcomes": outcomes, "prompts": prompts,
            "cpu_ms": cpu / len(shots) * 1000,
            "steps": {name: (calls / len(shots), seconds / len(shots) * 1000) for name, (calls, seconds) in steps.items()}}


def timed(method, into: list):
    async def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            into[0] += 1
            into[1] += time.perf_counter() - started
    return wrapper


def preset_build_ms(count: int = 200) -> float:
    """What the dispatcher does per shot before queueing: the stored record validated again, the preset filled."""
    shot = make_shots("p", 1)[0]
    preset = load_preset(shot.workflow)  # the dispatcher reads a preset again only when its file changes
    started = time.perf_counter()
    for _ in range(count):
        params = Shot.from_record({**shot.as_dict(), "id": shot.id, "workflow": shot.workflow})
        fill_preset(preset, params, RANDOM_CHECKPOINT_NAME, filename_prefix="x/y")
    return (time.perf_counter() - started) / count * 1000


# --- 4: memory, in a child process -----------------------------------------------------------------------------


async def memory_child(url: str, count: int) -> dict:
    import psutil
    process = psutil.Process()
    result = {"rss_start_mb": process.memory_info().rss / 2**20}
    pool = AsyncConnectionPool(url, open=False, **POOL_ARGS)
    await pool.open(wait=True, timeout=30)
    try:
        dispatcher, stop = Dispatcher(pool, []), asyncio.Event()
        shots = make_shots("mem", count)
        started = time.perf_counter()
        await dispatcher.store.submit_batch(shots, "bench-memory", max_attempts=1)
        result["submit_s"] = time.perf_counter() - started
        running = asyncio.create_task(dispatcher.run(stop=stop))
        await asyncio.sleep(1.0)
        claim_ms = []
        for _ in range(20):  # a backend slot's claim, with `count` shots queued
            started = time.perf_counter()
            claimed = await dispatcher.store.claim(dispatcher.worker, 30.0, "http://bench", RANDOM_CHECKPOINT_NAME)
            claim_ms.append((time.perf_counter() - started) * 1000)
            dispatcher.held[claimed.id] = (None, None)
        result["claim_ms_median"] = statistics.median(claim_ms)
        result["rss_mb"] = process.memory_info().rss / 2**20
        result["hwm_mb"] = vm_status("VmHWM")
        stop.set()
        await running  # releases the claimed shots
        # the same rows with one executemany (pipelined) instead of one round trip per row
        async with pool.connection() as conn, conn.transaction():
            batch_id = (await (await conn.execute(
                "INSERT INTO batches (source) VALUES ('bench-executemany') RETURNING id")).fetchone())[0]
            started = time.perf_counter()
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO shots (batch_id, shot_key, position, workflow, params, max_attempts, priority) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(batch_id, shot.id, position, shot.workflow, Jsonb(shot.as_dict()), 1, 0)
                     for position, shot in enumerate(shots)])
            result["executemany_s"] = time.perf_counter() - started
        async with pool.connection() as conn:
            await conn.execute("UPDATE shots SET status = 'cancelled' WHERE status = 'queued'")
    finally:
        await pool.close()
    return result


# --- the run ---------------------------------------------------------------------------------------------------


def start_servers(settings, count: int, work: Path) -> list[LocalComfyServer]:
    servers = []
    for index in range(count):
        folder = work / f"comfy{index}"
        for name in ("input", "output"):
            (folder / name).mkdir(parents=True)
        servers.append(LocalComfyServer(settings.comfyui_dir, settings.comfyui_python, folder / "comfyui.log",
                                        extra_model_paths=settings.extra_model_paths, input_dir=folder / "input",
                                        output_dir=folder / "output"))
    errors = []

    def start(server):
        try:
            server.start(timeout=240)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for server in servers:
            server.stop()
        raise errors[0]
    for server in servers:
        if server.import_failures():
            print(f"warning: {server.url}: {server.import_failures()}", file=sys.stderr)
    return servers


async def bench(args, urls: list[str], database_url: str) -> dict:
    results: dict = {}
    pool = AsyncConnectionPool(database_url, open=False, **POOL_ARGS)
    await pool.open(wait=True, timeout=30)
    await apply_migrations(pool)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # validate the preset on every server (a POST) and warm them up
            await asyncio.gather(*(bare_loop(session, url, bare_graphs(f"warm{i}", 3)) for i, url in enumerate(urls)))
            url = urls[0]
            m = args.shots
            # 1 (a) bare client, (reference) all prompts queued at once, (b) the Dispatcher with 1 and 2 slots
            seconds, ids = await bare_loop(session, url, bare_graphs("bare", m))
            results["bare"] = {"per_shot_ms": seconds / m * 1000, "gaps": await gaps_ms(session, url, ids)}
            seconds, ids = await all_at_once(session, url, bare_graphs("floor", m))
            results["floor"] = {"per_shot_ms": seconds / m * 1000, "gaps": await gaps_ms(session, url, ids)}
            for slots in (1, 2):
                run = await dispatch(pool, session, [url], make_shots(f"d{slots}", m), slots)
                results[f"slots{slots}"] = {"per_shot_ms": run["seconds"] / m * 1000, "submit_s": run["submit_s"],
                                            "outcomes": run["outcomes"], "cpu_ms": run["cpu_ms"],
                                            "steps": run["steps"],
                                            "gaps": await gaps_ms(session, url, run["prompts"][url])}
            # 3 throughput with 1, 2, 4 backends
            results["throughput"] = {}
            for n in sorted({1, min(2, len(urls)), len(urls)}):
                run = await dispatch(pool, session, urls[:n], make_shots(f"t{n}", args.throughput_shots), 2)
                gaps = [g for backend, ids in run["prompts"].items() for g in await gaps_ms(session, backend, ids)]
                results["throughput"][n] = {"shots_per_s": args.throughput_shots / run["seconds"],
                                            "per_backend": {b: len(i) for b, i in run["prompts"].items()},
                                            "gap_median": statistics.median(gaps) if gaps else float("nan")}
    finally:
        await pool.close()
    results["preset_build_ms"] = preset_build_ms()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=40, help="M: shots for the overhead and gap runs")
    parser.add_argument("--throughput-shots", type=int, default=60)
    parser.add_argument("--queued", type=int, default=10000, help="shots queued for the memory run")
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--memory-child", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("shotline.dispatcher").addFilter(lambda record: "random test checkpoint" not in record.getMessage())

    if args.memory_child:
        print(json.dumps(asyncio.run(memory_child(args.memory_child, args.queued))))
        return 0

    settings = load_settings()
    if not settings.comfyui_dir or not (settings.comfyui_dir / "main.py").exists():
        sys.exit("no ComfyUI set up: run `python3 install.py` first")
    work = public_temp_dir("shotline-bench-")
    (work / "presets" / "api").mkdir(parents=True)
    (work / "presets" / "api" / f"{PRESET_NAME}.json").write_text(json.dumps(PRESET, indent=2))
    os.environ["SHOTLINE_PRESETS"] = os.pathsep.join(
        [str(work / "presets"), *filter(None, os.environ.get("SHOTLINE_PRESETS", "").split(os.pathsep))])
    postgres = EmbeddedPostgres(work / "pg" / "data")
    servers: list[LocalComfyServer] = []
    started = time.monotonic()
    try:
        postgres.start()
        print(f"PostgreSQL ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        started = time.monotonic()
        servers = start_servers(settings, args.backends, work)
        print(f"{len(servers)} ComfyUI servers ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        started = time.monotonic()
        results = asyncio.run(bench(args, [server.url for server in servers], postgres.url))
        print(f"controller runs done in {time.monotonic() - started:.1f} s", file=sys.stderr)
        for server in servers:  # free the CPU for the memory run
            server.stop()
        child = subprocess.run([sys.executable, __file__, "--memory-child", postgres.url, "--queued",
                                str(args.queued)], capture_output=True, text=True, timeout=300)
        if child.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{child.stderr}")
        results["memory"] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        for server in servers:
            server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_table(args, results)
    return 0


def print_table(args, r: dict) -> None:
    def gap_cell(gaps):
        return f"median {statistics.median(gaps):.0f} / p95 {percentile(gaps, 95):.0f}" if gaps else "-"

    bare, floor, s1, s2 = r["bare"]["per_shot_ms"], r["floor"]["per_shot_ms"], r["slots1"], r["slots2"]
    thr, mem = r["throughput"], r["memory"]
    base = thr[1]["shots_per_s"]
    rows = [
        ("per-shot wall, bare client (sequential POST + ws wait)", f"{bare:.1f} ms", "-"),
        ("per-shot wall, ComfyUI floor (all prompts queued up front)", f"{floor:.1f} ms", "-"),
        ("per-shot wall, Dispatcher 1 backend, slots=1", f"{s1['per_shot_ms']:.1f} ms "
         f"(x{s1['per_shot_ms'] / bare:.2f} of bare)", "-"),
        ("per-shot wall, Dispatcher 1 backend, slots=2", f"{s2['per_shot_ms']:.1f} ms", "-"),
        ("ratio Dispatcher(slots=2) / bare", f"{s2['per_shot_ms'] / bare:.2f}", "<= 1.05"),
        ("idle gap between prompts, Dispatcher slots=2 (ms)", gap_cell(s2["gaps"]), "< 20 ms"),
        ("idle gap, Dispatcher slots=1 (ms)", gap_cell(s1["gaps"]), "-"),
        ("idle gap, bare client (ms)", gap_cell(r["bare"]["gaps"]), "-"),
        ("idle gap, ComfyUI floor (ms)", gap_cell(r["floor"]["gaps"]), "-"),
    ]
    for n, t in thr.items():
        rows.append((f"throughput, {n} backend(s), slots=2, {args.throughput_shots} shots",
                     f"{t['shots_per_s']:.1f} shots/s (x{t['shots_per_s'] / base:.2f}; "
                     f"split {sorted(t['per_backend'].values())}; gap median {t['gap_median']:.0f} ms)",
                     ">= 3.6x with 4" if n == 4 else "-"))
    rows += [
        (f"submit_batch of {args.queued:,} shots (one INSERT from a JSON array)", f"{mem['submit_s']:.2f} s", "-"),
        ("same rows with one executemany", f"{mem['executemany_s']:.2f} s", "-"),
        (f"claim() latency with {args.queued:,} queued", f"{mem['claim_ms_median']:.1f} ms (median of 20)", "-"),
        (f"controller RSS, {args.queued:,} queued, Dispatcher connected",
         f"{mem['rss_mb']:.0f} MB (peak {mem['hwm_mb']:.0f}, at start {mem['rss_start_mb']:.0f})", "< 300 MB"),
    ]
    for slots in (1, 2):
        run = r[f"slots{slots}"]
        rows.append((f"controller per shot, slots={slots}: awaited ms (calls) per step",
                     ", ".join(f"{name} {ms:.1f} ({calls:.1f})" for name, (calls, ms) in run["steps"].items())
                     + f"; controller CPU {run['cpu_ms']:.1f} ms", "-"))
    rows.append(("controller CPU per shot, slots=2 (this process: dispatcher, PostgreSQL client, HTTP, websocket)",
                 f"{s2['cpu_ms']:.2f} ms", "<= 3 ms"))
    rows.append(("Shot.from_record + fill_preset per shot", f"{r['preset_build_ms']:.2f} ms", "-"))
    print(f"\noutcomes (slots=2 run): {s2['outcomes']}; submit of {args.shots} shots: {s2['submit_s'] * 1000:.0f} ms\n")
    print("| metric | measured | target |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    sys.exit(main())
