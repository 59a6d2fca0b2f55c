"""Real `shotline` processes for the integration tests: the CLI run to its end, `shotline serve` as a service,
and what the tests read back (attempt rows, ComfyUI's history) to check that each shot ended once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from shotline_controller.comfy.server import LocalComfyServer, free_port

SHOTLINE = Path(sys.executable).parent / "shotline"
TOKEN = "integration-test-token"


def shotline(*args, env=None, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI to its end (the test's environment plus `env`)."""
    return subprocess.run([str(SHOTLINE), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def shots(count: int, prefix: str, **defaults) -> dict:
    """A batch of `count` quick shots (128 px, 2 steps, one attempt each)."""
    return {"defaults": {"size": "128x128", "steps": 2, **defaults}, "max_attempts": 1,
            "shots": [{"id": f"{prefix}{i:02d}", "prompt": f"shot {i}", "seed": i} for i in range(count)]}


def http(url: str, body: dict | None = None, token: str = TOKEN):
    """GET (or POST `body` as JSON to) a service route; its JSON answer."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def wait_until(predicate, timeout: float, what: str):
    """The first true value of `predicate()`, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


class Controller:
    """A real `shotline serve` process, its output in a log file under `home`.

    `detached`: started as a daemon would be: its own session, stdin from /dev/null (stdout is always a file).
    `ready_seconds`: how long after the start /health first answered."""

    def __init__(self, database_url: str, comfy_urls: list[str], home: Path, lease: float = 3.0,
                 env: dict | None = None, detached: bool = False, health_timeout: float = 60.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"controller-{self.port}.log"
        self.log = open(self.log_path, "wb")
        command = [str(SHOTLINE), "serve", "--port", str(self.port), "--lease", str(lease)]
        for url in comfy_urls:
            command += ["--comfy", url]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=detached,
            stdin=subprocess.DEVNULL if detached else None,
            env={**os.environ, "DATABASE_URL": database_url, "SHOTLINE_TOKEN": TOKEN, "SHOTLINE_HOME": str(home),
                 **(env or {})})
        deadline = started + health_timeout
        while time.monotonic() < deadline:
            try:
                http(self.url + "/health")
                self.ready_seconds = time.monotonic() - started
                return
            except OSError:
                assert self.process.poll() is None, self.log_text()
                time.sleep(0.1)
        self.kill()
        self.log.close()
        raise TimeoutError(f"controller did not answer /health within {health_timeout:.0f} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def submit(self, data: dict) -> str:
        return http(self.url + "/api/v1/batches", data)["batch_id"]

    def get(self, path: str):
        return http(self.url + path)

    def backends(self) -> list[dict]:
        return self.get("/api/v1/backends")["backends"]

    def finished(self, batch_id: str) -> bool:
        return self.get(f"/api/v1/batches/{batch_id}")["finished"]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> tuple[float, int]:
        """SIGTERM; (seconds until the process exited, its exit code). Killed after `timeout` seconds."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`shotline serve` still ran {timeout:.0f} s after SIGTERM:\n{self.log_text()}")
        return time.monotonic() - started, code

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.terminate()
            except AssertionError:
                pass
        self.log.close()


def attempts(database_url: str, batch_id: str) -> list[dict]:
    """Every attempt of the batch's shots (a shot without one: a row of NULLs), in list and attempt order."""
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT s.id AS shot_id, s.shot_key, s.status AS shot_status, a.status, a.backend, "
            "a.prompt_id::text, a.error FROM shots s LEFT JOIN attempts a ON a.shot_id = s.id WHERE s.batch_id = %s "
            "ORDER BY s.position, a.attempt_no", (batch_id,))
        return [dict(zip([c.name for c in cursor.description], row)) for row in cursor.fetchall()]


def history(url: str) -> dict:
    """A ComfyUI's whole /history (prompt_id -> entry)."""
    with urllib.request.urlopen(url + "/history?max_items=10000", timeout=30) as response:
        return json.loads(response.read())


def assert_each_shot_ended_once(rows: list[dict], count: int, histories: dict[str, dict],
                                restarted: frozenset = frozenset()) -> None:
    """Each shot: one attempt recorded as run to its end, the others lost; its prompt executed at most once on
    any server, and exactly once (the recorded one) where the server was never restarted."""
    by_shot = {}
    for row in rows:
        by_shot.setdefault(row["shot_key"], []).append(row)
    assert len(by_shot) == count
    for key, shot_rows in by_shot.items():
        assert shot_rows[0]["shot_status"] in ("approved", "rejected"), (key, shot_rows)
        [ended] = [row for row in shot_rows if row["status"] == "succeeded"] or [None]
        assert ended is not None and sum(row["status"] == "succeeded" for row in shot_rows) == 1, (key, shot_rows)
        assert {row["status"] for row in shot_rows} <= {"succeeded", "lost"}, (key, shot_rows)
        executed = [row["prompt_id"] for row in shot_rows if any(row["prompt_id"] in h for h in histories.values())]
        assert len(executed) <= 1, (key, shot_rows)
        if ended["backend"] not in restarted:
            assert executed == [ended["prompt_id"]], (key, shot_rows)


def answers(url: str) -> bool:
    """Whether a ComfyUI (or anything HTTP) answers at `url`."""
    try:
        with urllib.request.urlopen(url + "/system_stats", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


# --- fixtures (a test module imports the ones it uses) -----------------------------------------------------------

@pytest.fixture
def controllers(database_url, tmp_path):
    """start(comfy_urls, **Controller options) -> a `shotline serve` on the test's database with its home in
    tmp_path; every one started is stopped at the end."""
    started = []

    def start(comfy_urls, **kwargs) -> Controller:
        started.append(Controller(database_url, comfy_urls, tmp_path, **kwargs))
        return started[-1]
    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def comfy_servers(settings, model_cache, tmp_path):
    """start(port=None) -> a ComfyUI of the test's own (to kill, or to start late) with the test checkpoint;
    every one started is stopped at the end."""
    extra_paths = tmp_path / "extra_model_paths.yaml"
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n")
    (tmp_path / "out").mkdir()
    servers = []

    def start(port=None) -> LocalComfyServer:
        servers.append(LocalComfyServer(settings.comfyui_dir, settings.comfyui_python,
                                        log_path=tmp_path / f"comfyui-{len(servers)}.log", port=port,
                                        extra_model_paths=extra_paths, output_dir=tmp_path / "out"))
        servers[-1].start()
        return servers[-1]
    yield start
    for server in servers:
        server.stop()
