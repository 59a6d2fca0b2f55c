"""Scale: N simulated ComfyUI backends x C controller processes x S shots on one PostgreSQL, as a markdown table.

    .venv/bin/python bench/bench_scale.py [--backends 64] [--controllers 3] [--shots 5000] [--prompt-seconds 1.0]
                                          [--slots 2] [--db-connections 8] [--assign all|split] [--stub-processes 1]

A benchmark, never a test: run it on demand. It starts an embedded PostgreSQL in a 0755 temp folder,
`bench/comfy_stub.py` (a ComfyUI protocol stub that sleeps `--prompt-seconds` per prompt, one port per backend)
and C real `shotline serve` processes, each given every backend (`--assign all`, the default) or a share of them
(`--assign split`). One batch of S `bench_trivial` shots (max_attempts 1) goes in through the first controller's
API; the run ends when every shot has a final status.

Measured:
- throughput = shots / (last shot final - submit), as a share of the ideal, backends / prompt_seconds; target >= 0.9
- claim latency p50/p99 from the controllers' `shotline_claim_duration_seconds` histogram (GET /metrics), "n/a"
  without it (also after the first 10% of shots, without the first wave of every slot claiming at once); always
  also, from the database, each attempt's start minus the latest earlier finish on the same backend
- ramp-up: how long after the submit each backend got its first prompt
- backend idle time the stub saw: a backend with an empty queue between two prompts waited on the controller
- connections: the peak of pg_stat_activity for the database (sampled every 0.5 s, the harness's own connection
  included) against max_connections, and "too many clients" refusals in PostgreSQL's log
- CPU: controllers (per shot, and while idle with an empty queue), the stub, PostgreSQL, the machine's busy share
  and load average, so a reader can tell whether the machine itself was the limit

A controller that dies, a run that stops making progress for --stall-seconds, or one past --timeout ends the
benchmark with the reason and the tail of every controller's log. Everything it started is stopped on exit,
Ctrl-C included.
"""
from __future__ import annotations

import argparse
import bisect
import ctypes
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import psycopg
from comfy_stub import CHECKPOINT  # bench/, the script's own folder
from shotline_controller.embedded_postgres import EmbeddedPostgres, public_temp_dir

ROOT = Path(__file__).resolve().parents[1]
SHOTLINE = ROOT / ".venv" / "bin" / "shotline"
STUB = ROOT / "bench" / "comfy_stub.py"
TOKEN = "bench-scale-token"
CLAIM_HISTOGRAM = "shotline_claim_duration_seconds"
SAMPLE_SECONDS = 0.5
OPEN_STATUSES = ("queued", "running")  # every other shot status is final (db/migrations: shots.status)

# bench_controller.py's `bench_trivial` graph, copied rather than imported: that script imports controller internals
# (the dispatcher, the queue), and this one drives the controller only through its CLI, its API and the schema.
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
    # required by the title convention; they feed no output node, so ComfyUI (and the stub) prune them
    "10": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Checkpoint"},
           "inputs": {"ckpt_name": CHECKPOINT}},
    "11": {"class_type": "CLIPTextEncode", "_meta": {"title": "Prompt"}, "inputs": {"text": "", "clip": ["10", 1]}},
    "12": {"class_type": "CLIPTextEncode", "_meta": {"title": "Negative Prompt"},
           "inputs": {"text": "", "clip": ["10", 1]}},
}
TARGET_SHARE = 0.9
IDLE_SETTLE_SECONDS = 5.0  # after connecting, before the idle CPU sample
EARLY_SHARE = 0.1  # claims before this share of the shots ended include the first wave (every slot at once)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class BenchFailure(RuntimeError):
    """The run could not finish; the message says why, the controller logs say more."""


# --- processes ---------------------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """In a child: get SIGTERM when the benchmark dies, so no stub or controller outlives a killed run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        return times.user + times.system
    except psutil.Error:
        return float("nan")


def postgres_cpu(postmaster_pid: int) -> dict[tuple[int, float], float]:
    """CPU seconds of the postmaster and every server process under it, keyed by (pid, start time)."""
    try:
        root = psutil.Process(postmaster_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    out = {}
    for process in processes:
        try:
            out[(process.pid, process.create_time())] = cpu_seconds(process)
        except psutil.Error:
            pass
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies since boot over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 64 * 1024))
            return "\n".join(file.read().decode(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def log_problems(path: Path, top: int = 5) -> list[tuple[int, str]]:
    """The most frequent WARNING/ERROR lines of a log, numbers and ids blanked so repeats count as one."""
    counts: Counter = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if re.match(r"(WARNING|ERROR|CRITICAL|Traceback)", line):
            counts[re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", line)[:160]] += 1
    return [(n, line) for line, n in counts.most_common(top)]


class Stub:
    """One comfy_stub.py process serving some of the backends."""

    def __init__(self, backends: int, prompt_seconds: float, log_path: Path):
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, str(STUB), "--backends", str(backends), "--prompt-seconds", str(prompt_seconds)],
            stdout=subprocess.PIPE, stderr=log_path.open("wb"), text=True, preexec_fn=die_with_parent,
            start_new_session=True)  # Ctrl-C reaches the benchmark only, which stops its children in order
        self.urls: list[str] = []

    def wait_ready(self, timeout: float = 60.0) -> list[str]:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise BenchFailure(f"the ComfyUI stub did not start within {timeout:.0f} s:\n{log_tail(self.log_path)}")
        self.urls = json.loads(line)["urls"]
        return self.urls

    def stats(self) -> dict:
        with urllib.request.urlopen(self.urls[0] + "/bench/stats", timeout=10) as response:
            return json.load(response)


class Controller:
    """One `shotline serve` process, its log in its own file."""

    def __init__(self, index: int, urls: list[str], args, env: dict, work: Path, db_flag: str | None):
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / f"controller{index}.log"
        command = [str(SHOTLINE), "serve", "--port", str(self.port), "--slots", str(args.slots),
                   *[part for url in urls for part in ("--comfy", url)]]
        if db_flag:
            command += [db_flag, str(args.db_connections)]
        home = work / f"home{index}"
        home.mkdir()
        self.process = subprocess.Popen(command, env={**env, "SHOTLINE_HOME": str(home)}, cwd=work,
                                        stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent, start_new_session=True)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchFailure(f"controller {self.index} exited with {self.process.returncode}")

    def healthy(self) -> bool:
        try:
            return self.get("/health", timeout=2)[0] == 200
        except OSError:  # not listening yet
            return False

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the dispatcher hands back what it holds
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def stop_process(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def database_flag() -> tuple[str | None, str]:
    """The `shotline serve` flag for its database pool size, if this version has one, and what --help showed."""
    help_text = subprocess.run([str(SHOTLINE), "serve", "--help"], capture_output=True, text=True).stdout
    if re.search(r"--db-connections\b", help_text):
        return "--db-connections", "--db-connections"
    others = sorted(set(re.findall(r"--(?:db|database|pool)[\w-]*", help_text)))
    return None, ("none" if not others else f"none passed (found {', '.join(others)}: meaning unknown)")


# --- metrics -----------------------------------------------------------------------------------------------------


def histogram_buckets(texts: list[str], name: str) -> list[tuple[float, float]]:
    """`name`'s cumulative buckets (upper bound, count), summed over every label set and every controller."""
    totals: dict[float, float] = {}
    pattern = re.compile(rf'^{re.escape(name)}_bucket\{{(?P<labels>[^}}]*)\}}\s+(?P<value>\S+)', re.M)
    for text in texts:
        for match in pattern.finditer(text):
            le = re.search(r'le="([^"]+)"', match["labels"])
            if le:
                bound = math.inf if le[1] in ("+Inf", "Inf") else float(le[1])
                totals[bound] = totals.get(bound, 0.0) + float(match["value"])
    return sorted(totals.items())


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile: linear inside the bucket the rank falls in."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def scrape(controllers: list[Controller]) -> tuple[list[str], list]:
    """Every controller's /metrics text (those that answered 200), and the status each gave."""
    texts, statuses = [], []
    for controller in controllers:
        try:
            status, body = controller.get("/metrics")
        except (OSError, urllib.error.URLError) as error:
            status, body = str(error), b""
        statuses.append(status)
        if status == 200:
            texts.append(body.decode(errors="replace"))
    return texts, statuses


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", text, re.MULTILINE))


def claim_summary(texts: list[str], earlier: list[str] = ()) -> dict:
    """Claim latency quantiles from the histograms in `texts`, minus those scraped `earlier` (if given)."""
    buckets = histogram_buckets(texts, CLAIM_HISTOGRAM)
    if not buckets:
        return {}
    before = dict(histogram_buckets(list(earlier), CLAIM_HISTOGRAM))
    buckets = [(bound, count - before.get(bound, 0.0)) for bound, count in buckets]
    total = sum(metric_sum(t, CLAIM_HISTOGRAM + "_sum") for t in texts) - sum(
        metric_sum(t, CLAIM_HISTOGRAM + "_sum") for t in earlier)
    count = buckets[-1][1]
    return {"count": count, "p50": histogram_quantile(buckets, 0.5), "p99": histogram_quantile(buckets, 0.99),
            "mean": total / count if count else float("nan"),
            "p99_over_top": len(buckets) > 1 and 0.99 * count > buckets[-2][1]}  # in the +Inf bucket


def start_gaps(rows: list[tuple]) -> list[float]:
    """Per backend: each attempt's started_at minus the latest finished_at on that backend before it, in seconds."""
    by_backend: dict[str, list[tuple]] = {}
    for backend, started, finished in rows:
        by_backend.setdefault(backend, []).append((started, finished))
    gaps = []
    for attempts in by_backend.values():
        finishes = sorted(f.timestamp() for _, f in attempts if f is not None)
        for started, _ in attempts:
            if started is None:
                continue
            index = bisect.bisect_right(finishes, started.timestamp())
            if index:
                gaps.append(started.timestamp() - finishes[index - 1])
    return gaps


# --- the run -----------------------------------------------------------------------------------------------------


def wait_connected(stubs: list[Stub], controllers: list[Controller], per_backend: dict[str, int],
                   timeout: float) -> float:
    """Wait until every controller answers /health and every backend has its controllers' websockets."""
    started = time.monotonic()
    while True:
        for controller in controllers:
            controller.check_alive()
        clients = {url: 0 for url in per_backend}
        for stub in stubs:
            stats = stub.stats()
            for url in stub.urls:
                clients[url] = stats[url.rsplit(":", 1)[1]]["clients"]
        missing = sum(max(0, per_backend[url] - clients[url]) for url in per_backend)
        healthy = all(controller.healthy() for controller in controllers)
        if healthy and not missing:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchFailure(f"controllers not ready after {timeout:.0f} s: healthy={healthy}, "
                               f"{missing} backend websocket(s) missing")
        time.sleep(0.5)


def submit(controller: Controller, shots: int) -> str:
    body = json.dumps({"max_attempts": 1, "shots": [
        {"id": f"s{i:05d}", "workflow": PRESET_NAME, "prompt": "bench", "size": "64x64"} for i in range(shots)]})
    request = urllib.request.Request(controller.url + "/api/v1/batches", data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.load(response)["batch_id"]
    except urllib.error.HTTPError as error:
        raise BenchFailure(f"POST /api/v1/batches: {error.code} {error.read()[:500]!r}") from None


def run(args, work: Path, results: dict, cleanup: list) -> None:
    postgres = EmbeddedPostgres(work / "pg" / "data")
    cleanup.append(postgres.stop)
    started = time.monotonic()
    postgres.start()
    results["pg_log"] = postgres.data_dir / "server.log"
    # opened before the controllers, so the sampler keeps a connection when they exhaust max_connections
    monitor = psycopg.connect(postgres.url, autocommit=True)
    cleanup.append(monitor.close)
    results["max_connections"] = int(monitor.execute("SHOW max_connections").fetchone()[0])
    results["reserved"] = int(monitor.execute("SHOW superuser_reserved_connections").fetchone()[0])
    results["load_before"] = os.getloadavg()
    print(f"PostgreSQL ready in {time.monotonic() - started:.1f} s", file=sys.stderr)

    counts = [args.backends // args.stub_processes + (i < args.backends % args.stub_processes)
              for i in range(args.stub_processes)]
    stubs = [Stub(n, args.prompt_seconds, work / f"stub{i}.log") for i, n in enumerate(counts) if n]
    for stub in stubs:
        cleanup.append(lambda stub=stub: stop_process(stub.process))
    results["stubs"] = stubs
    urls = [url for stub in stubs for url in stub.wait_ready()]

    db_flag, results["db_flag"] = database_flag()
    presets = work / "presets"
    (presets / "api").mkdir(parents=True)
    (presets / "api" / f"{PRESET_NAME}.json").write_text(json.dumps(PRESET, indent=2))
    env = {**os.environ, "DATABASE_URL": postgres.url, "SHOTLINE_TOKEN": TOKEN, "SHOTLINE_PRESETS": str(presets)}
    shares = [urls if args.assign == "all" else urls[i::args.controllers] for i in range(args.controllers)]
    controllers: list[Controller] = []
    results["controllers"] = controllers
    for index, share in enumerate(shares):
        controllers.append(Controller(index, share, args, env, work, db_flag))
        cleanup.append(controllers[-1].stop)
    per_backend = Counter(url for share in shares for url in share)
    started = time.monotonic()
    seconds = wait_connected(stubs, controllers, per_backend, timeout=120)
    print(f"{len(stubs)} stub process(es) with {len(urls)} backends and {len(controllers)} controllers connected "
          f"in {seconds:.1f} s", file=sys.stderr)

    processes = {"controllers": [psutil.Process(c.process.pid) for c in controllers],
                 "stub": [psutil.Process(s.process.pid) for s in stubs]}
    postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])

    def cpu_snapshot() -> dict:
        return {"controllers": sum(cpu_seconds(p) for p in processes["controllers"]),
                "stub": sum(cpu_seconds(p) for p in processes["stub"]), "postgres": postgres_cpu(postmaster),
                "machine": machine_cpu(), "harness": time.process_time(), "at": time.monotonic()}

    # idle controllers: every slot polling an empty queue, once their start-up is over
    time.sleep(IDLE_SETTLE_SECONDS)
    idle_start = cpu_snapshot()
    time.sleep(args.idle_seconds)
    idle_end = cpu_snapshot()
    idle_span = idle_end["at"] - idle_start["at"]
    results["idle_cpu_cores"] = (idle_end["controllers"] - idle_start["controllers"]) / idle_span
    results["idle_pg_cores"] = sum(cpu - idle_start["postgres"].get(key, 0.0)
                                   for key, cpu in idle_end["postgres"].items()) / idle_span

    before = cpu_snapshot()
    submitted_wall, submitted = time.time(), time.monotonic()
    batch_id = submit(controllers[0], args.shots)
    results["submit_s"] = time.monotonic() - submitted
    print(f"batch {batch_id}: {args.shots} shots submitted in {results['submit_s']:.1f} s", file=sys.stderr)

    ideal_s = args.shots * args.prompt_seconds / args.backends
    deadline = submitted + (args.timeout or 3 * ideal_s + 120)
    peak = {"connections": 0, "active": 0, "load": 0.0}
    results["peak"] = peak
    done, last_progress, last_report = -1, time.monotonic(), 0.0
    while True:
        for controller in controllers:
            controller.check_alive()
        total, active = monitor.execute(
            "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
            "WHERE datname = current_database()").fetchone()
        peak["connections"], peak["active"] = max(peak["connections"], total), max(peak["active"], active)
        peak["load"] = max(peak["load"], os.getloadavg()[0])
        now_done = monitor.execute("SELECT count(*) FROM shots WHERE batch_id = %s AND status <> ALL(%s)",
                                   (batch_id, list(OPEN_STATUSES))).fetchone()[0]
        now = time.monotonic()
        if now_done != done:
            done, last_progress = now_done, now
        if "early_metrics" not in results and done >= args.shots * EARLY_SHARE:
            results["early_metrics"] = scrape(controllers)[0]  # what follows is the steady state
        if now - last_report >= 10:
            print(f"  {done}/{args.shots} final after {now - submitted:.0f} s, {total} connections", file=sys.stderr)
            last_report = now
        if done >= args.shots:
            break
        if now - last_progress > args.stall_seconds:
            raise BenchFailure(f"no shot finished for {args.stall_seconds:.0f} s ({done}/{args.shots} final)")
        if now > deadline:
            raise BenchFailure(f"past the {deadline - submitted:.0f} s timeout with {done}/{args.shots} final")
        time.sleep(SAMPLE_SECONDS)
    after = cpu_snapshot()

    results["statuses"] = dict(monitor.execute(
        "SELECT status, count(*) FROM shots WHERE batch_id = %s GROUP BY status", (batch_id,)).fetchall())
    last_final = monitor.execute("SELECT max(updated_at) FROM shots WHERE batch_id = %s", (batch_id,)).fetchone()[0]
    attempts = monitor.execute(
        "SELECT a.backend, a.started_at, a.finished_at FROM attempts a JOIN shots s ON s.id = a.shot_id "
        "WHERE s.batch_id = %s", (batch_id,)).fetchall()
    first_start = min(row[1] for row in attempts if row[1] is not None)
    results["wall_s"] = last_final.timestamp() - submitted_wall
    results["run_s"] = last_final.timestamp() - first_start.timestamp()
    results["ideal_s"] = ideal_s
    results["attempts"] = len(attempts)
    results["db_gaps"] = start_gaps(attempts)
    firsts: dict[str, float] = {}
    for backend, started, _ in attempts:
        if started is not None:
            firsts[backend] = min(firsts.get(backend, math.inf), started.timestamp())
    results["first_prompt_s"] = sorted(first - submitted_wall for first in firsts.values())
    texts, statuses = scrape(controllers)
    results["claim"] = {"source": (f"{CLAIM_HISTOGRAM}, {len(texts)} controller(s)" if claim_summary(texts) else
                                   f"no {CLAIM_HISTOGRAM} (GET /metrics: {', '.join(map(str, statuses))})"),
                        "all": claim_summary(texts), "steady": claim_summary(texts, results.get("early_metrics", [])),
                        "attempts_per_controller": [metric_sum(t, "shotline_attempts_total") for t in texts]}
    stats = {}
    for stub in stubs:
        stats.update(stub.stats())
    results["stub_stats"] = stats

    span = after["at"] - before["at"]
    pg_before, pg_after = before["postgres"], after["postgres"]
    busy = (after["machine"][0] - before["machine"][0]) / max(1, after["machine"][1] - before["machine"][1])
    results["cpu"] = {
        "span_s": span, "controllers_s": after["controllers"] - before["controllers"],
        "stub_s": after["stub"] - before["stub"], "harness_s": after["harness"] - before["harness"],
        "postgres_s": sum(cpu - pg_before.get(key, 0.0) for key, cpu in pg_after.items()),
        "machine_busy": busy, "load_end": os.getloadavg()}
    results["per_controller_s"] = [cpu_seconds(p) for p in processes["controllers"]]


def print_table(args, r: dict) -> None:
    def ms(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 1000:.1f} ms"

    cores = os.cpu_count()
    rows = []
    ideal_rate = args.backends / args.prompt_seconds
    if "wall_s" in r:
        rate = args.shots / r["wall_s"]
        rows += [
            ("throughput, submit to last shot final", f"{rate:.1f} shots/s in {r['wall_s']:.1f} s "
             f"(ideal {ideal_rate:.1f}/s, {r['ideal_s']:.1f} s)", "-"),
            ("share of ideal", f"{rate / ideal_rate:.3f}", f">= {TARGET_SHARE}"),
            ("best share a perfect controller could reach (whole prompts: the busiest backend runs "
             f"{math.ceil(args.shots / args.backends)})",
             f"{r['ideal_s'] / (math.ceil(args.shots / args.backends) * args.prompt_seconds):.3f}", "-"),
            ("share of ideal, first prompt start to last final", f"{r['ideal_s'] / r['run_s']:.3f}", "-"),
            ("submit (POST /api/v1/batches)", f"{r['submit_s']:.2f} s", "-"),
            ("first prompt on a backend, after the submit began: fastest / median / slowest backend",
             " / ".join(f"{r['first_prompt_s'][i]:.2f} s" for i in (0, len(r["first_prompt_s"]) // 2, -1)), "-"),
            ("shot statuses", ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
             + f" ({r['attempts']} attempts)", f"approved {args.shots}"),
        ]
    claim = r.get("claim") or {}
    for key, label in (("all", "all claims"), ("steady", f"after the first {EARLY_SHARE:.0%} of shots")):
        part = claim.get(key)
        if part:
            rows.append((f"claim latency p50 / p99 (mean), {label}",
                         f"{ms(part['p50'])} / {'> ' if part['p99_over_top'] else ''}{ms(part['p99'])} "
                         f"({ms(part['mean'])}; {part['count']:.0f} claims)", "-"))
    if claim.get("all"):
        rows.append(("claim latency source", f"{claim['source']}; quantiles interpolated in its buckets", "-"))
        rows.append(("attempts ended per controller (shotline_attempts_total)",
                     ", ".join(f"{n:.0f}" for n in claim["attempts_per_controller"]), "-"))
    elif claim:
        rows.append(("claim latency p50 / p99 (histogram)", f"n/a: {claim['source']}", "-"))
    gaps = r.get("db_gaps")
    if gaps:
        rows.append(("an attempt's finish -> the next attempt's start on that backend (DB), p50 / p99 / max",
                     f"{ms(statistics.median(gaps))} / {ms(percentile(gaps, 99))} / {ms(max(gaps))}", "-"))
    stats = r.get("stub_stats")
    if stats:
        idle = [g for s in stats.values() for g in s["idle_gaps_s"]]
        prompts = [s["prompts"] for s in stats.values()]
        busy = sum(s["busy_s"] for s in stats.values())
        rows += [
            ("backend idle with an empty queue, stub: total / p99 / count",
             f"{sum(idle):.1f} s / {ms(percentile(idle, 99) if idle else None)} / {len(idle)}", "-"),
            ("backend busy share (stub busy s / backends x wall)",
             f"{busy / (len(stats) * r['wall_s']):.3f}" if "wall_s" in r else "n/a", "-"),
            ("prompts per backend min / max; longest queue",
             f"{min(prompts)} / {max(prompts)}; {max(s['max_queue'] for s in stats.values())}", "-"),
        ]
    if "max_connections" in r:
        peak = r.get("peak", {})
        rows.append(("PostgreSQL connections, peak (active) / max_connections (the harness's own and autovacuum "
                     "included)",
                     f"{peak.get('connections', 'n/a')} ({peak.get('active', 'n/a')}) / {r['max_connections']} "
                     f"(pool-size flag: {r.get('db_flag', '?')}, {args.db_connections} asked)", "-"))
        rows.append(("'too many clients' refusals in PostgreSQL's log", str(r.get("refusals", "n/a")), "0"))
    cpu = r.get("cpu")
    if cpu:
        span = cpu["span_s"]
        ours = cpu["controllers_s"] + cpu["stub_s"] + cpu["postgres_s"] + cpu["harness_s"]
        rows += [
            ("controller CPU per shot (all controllers)", f"{cpu['controllers_s'] / args.shots * 1000:.2f} ms "
             f"({cpu['controllers_s']:.1f} s, {cpu['controllers_s'] / span:.2f} cores; per controller "
             + ", ".join(f"{s:.1f}" for s in r["per_controller_s"]) + " s since start)", "-"),
            ("idle, queue empty (all slots polling): controllers / PostgreSQL",
             f"{r['idle_cpu_cores']:.2f} / {r['idle_pg_cores']:.2f} cores", "-"),
            ("stub CPU", f"{cpu['stub_s']:.1f} s ({cpu['stub_s'] / span:.2f} cores, "
             f"{cpu['stub_s'] / args.shots * 1000:.2f} ms/prompt; {args.stub_processes} process(es))", "-"),
            ("PostgreSQL CPU", f"{cpu['postgres_s']:.1f} s ({cpu['postgres_s'] / span:.2f} cores, "
             f"{cpu['postgres_s'] / args.shots * 1000:.2f} ms/shot)", "-"),
            ("harness CPU; everything else on the machine (other users' jobs)",
             f"{cpu['harness_s']:.1f} s; {cpu['machine_busy'] * cores - ours / span:.2f} cores", "-"),
            (f"machine busy ({cores} cores); load avg 1 min before start / peak / at end",
             f"{cpu['machine_busy']:.0%}; {r['load_before'][0]:.2f} / {r['peak']['load']:.2f} / "
             f"{cpu['load_end'][0]:.2f}", "-"),
        ]
    elif "idle_cpu_cores" in r:
        rows.append(("idle, queue empty (all slots polling): controllers / PostgreSQL",
                     f"{r['idle_cpu_cores']:.2f} / {r['idle_pg_cores']:.2f} cores", "-"))
    print(f"\n{args.backends} backends x {args.controllers} controllers ({args.assign} backends each) x "
          f"{args.shots} shots, prompt {args.prompt_seconds:g} s, slots {args.slots}\n")
    print("| metric | measured | target |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {' | '.join(row)} |")


def count_refusals(r: dict) -> int:
    """Connections PostgreSQL refused for max_connections (read before the temp folder goes)."""
    try:
        return r["pg_log"].read_text(errors="replace").count("too many clients")
    except (KeyError, OSError):
        return 0


def verdict(args, r: dict) -> str:
    if "wall_s" not in r:
        return "verdict: no result (the run failed)"
    share = args.shots / r["wall_s"] / (args.backends / args.prompt_seconds)
    approved = r["statuses"].get("approved", 0)
    peak = r["peak"]["connections"]
    claim = r.get("claim", {}).get("all")
    p99 = f"{claim['p99'] * 1000:.1f} ms" if claim else "n/a"
    return (f"verdict: throughput {share:.3f} of ideal ({'meets' if share >= TARGET_SHARE else 'MISSES'} the "
            f">= {TARGET_SHARE} target); p99 claim {p99}; peak {peak} of {r['max_connections']} connections"
            f"{' (LIMIT REACHED)' if peak >= r['max_connections'] - r['reserved'] else ''}; "
            f"{approved}/{args.shots} approved")


def report_failure(r: dict, error: Exception) -> None:
    print(f"\nFAILED: {error}\n", file=sys.stderr)
    for controller in r.get("controllers", []):
        code = controller.process.poll()
        print(f"--- controller {controller.index} ({'running' if code is None else f'exit {code}'}), "
              f"{controller.log_path.name}: most frequent problems", file=sys.stderr)
        for count, line in log_problems(controller.log_path):
            print(f"  {count:6d} x {line}", file=sys.stderr)
        print(f"--- last lines:\n{log_tail(controller.log_path)}\n", file=sys.stderr)
    stubs = r.get("stubs", [])
    try:
        stats = {port: backend for stub in stubs for port, backend in stub.stats().items()}
    except (OSError, ValueError) as failure:
        stats = {}
        print(f"--- the stub did not answer: {failure}", file=sys.stderr)
    if stats:
        print(f"--- stub: {sum(b['prompts'] for b in stats.values())} prompts run, "
              f"{sum(b['queued'] for b in stats.values())} queued or running now, websockets per backend "
              f"{sorted({b['clients'] for b in stats.values()})}\n", file=sys.stderr)
    if r.get("pg_log"):
        print(f"--- PostgreSQL log ({count_refusals(r)} 'too many clients'), last lines:\n{log_tail(r['pg_log'], 10)}\n",
              file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=64)
    parser.add_argument("--controllers", type=int, default=3)
    parser.add_argument("--shots", type=int, default=5000)
    parser.add_argument("--prompt-seconds", type=float, default=1.0)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--db-connections", type=int, default=8,
                        help="pool size per controller, passed when `shotline serve` has --db-connections")
    parser.add_argument("--assign", choices=("all", "split"), default="all",
                        help="every controller drives every backend (all) or a 1/C share of them (split)")
    parser.add_argument("--stub-processes", type=int, default=1, help="processes the backends are spread over")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU sample before the submit")
    parser.add_argument("--stall-seconds", type=float, default=60.0, help="fail when no shot ends for this long")
    parser.add_argument("--timeout", type=float, help="fail after this long (default 3 x ideal + 120 s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, database) and say where")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))  # clean up as on Ctrl-C
    work = public_temp_dir("shotline-scale-")
    results: dict = {}
    cleanup: list = []
    status = 0
    try:
        run(args, work, results, cleanup)
    except (KeyboardInterrupt, SystemExit):
        report_failure(results, BenchFailure("interrupted"))
        status = 1
    except Exception as error:  # noqa: BLE001 - reported with the logs, then everything is cleaned up
        if not isinstance(error, BenchFailure):
            traceback.print_exc()
        report_failure(results, error)
        status = 1
    finally:
        for step in reversed(cleanup):  # controllers first, then the stubs, the monitor and PostgreSQL
            try:
                step()
            except Exception as error:  # noqa: BLE001 - keep cleaning up
                print(f"cleanup: {error}", file=sys.stderr)
        results["refusals"] = count_refusals(results)  # shutdown included, read before the temp folder goes
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(args, results)
    print("\n" + verdict(args, results))
    return status


if __name__ == "__main__":
    sys.exit(main())
