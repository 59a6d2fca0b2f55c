"""The controller as a service over real ComfyUI servers and PostgreSQL, with processes killed mid-batch.

Every test checks the same promise: each shot ends exactly once. Exactly one attempt per shot is recorded as
run to its end (lost attempts are the ones a server forgot), and ComfyUI executed each shot's prompt once.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from shotline_controller.comfy.server import LocalComfyServer, free_port

pytestmark = pytest.mark.integration
SHOTLINE = Path(sys.executable).parent / "shotline"
TOKEN = "durability-test-token"


def shots(count: int, prefix: str) -> dict:
    return {"defaults": {"size": "128x128", "steps": 2}, "max_attempts": 1,
            "shots": [{"id": f"{prefix}{i:02d}", "prompt": f"shot {i}", "seed": i} for i in range(count)]}


def http(url: str, body: dict | None = None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


class Controller:
    """A real `shotline serve` process."""

    def __init__(self, database_url: str, comfy_urls: list[str], home: Path, lease: float = 3.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / f"controller-{self.port}.log", "wb")
        command = [str(SHOTLINE), "serve", "--port", str(self.port), "--lease", str(lease)]
        for url in comfy_urls:
            command += ["--comfy", url]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env={
            **os.environ, "DATABASE_URL": database_url, "SHOTLINE_TOKEN": TOKEN, "SHOTLINE_HOME": str(home)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                http(self.url + "/health")
                return
            except OSError:
                assert self.process.poll() is None, Path(self.log.name).read_text()
                time.sleep(0.2)
        raise TimeoutError("controller did not start")

    def submit(self, data: dict) -> str:
        return http(self.url + "/api/v1/batches", data)["batch_id"]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def home(tmp_path):
    return tmp_path


@pytest.fixture
def controllers(database_url, home):
    started = []

    def start(comfy_urls, **kwargs) -> Controller:
        started.append(Controller(database_url, comfy_urls, home, **kwargs))
        return started[-1]
    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def spare_comfy(settings, model_cache, tmp_path):
    """A ComfyUI server of this test's own, to kill."""
    extra_paths = tmp_path / "extra_model_paths.yaml"
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n")
    (tmp_path / "out").mkdir()

    def start(port=None) -> LocalComfyServer:
        server = LocalComfyServer(settings.comfyui_dir, settings.comfyui_python, log_path=tmp_path / "spare.log",
                                  port=port, extra_model_paths=extra_paths, output_dir=tmp_path / "out")
        server.start()
        return server
    servers = [start()]
    yield servers, start
    for server in servers:
        server.stop()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


def attempts(database_url: str, batch_id: str) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT s.shot_key, s.status AS shot_status, a.status, a.backend, a.prompt_id::text "
            "FROM shots s LEFT JOIN attempts a ON a.shot_id = s.id WHERE s.batch_id = %s "
            "ORDER BY s.position, a.attempt_no", (batch_id,))
        return [dict(zip([c.name for c in cursor.description], row)) for row in cursor.fetchall()]


def finished(controller: Controller, batch_id: str) -> bool:
    return http(f"{controller.url}/api/v1/batches/{batch_id}")["finished"]


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


def history(url: str) -> dict:
    with urllib.request.urlopen(url + "/history?max_items=10000", timeout=30) as response:
        return json.loads(response.read())


def test_a_batch_across_two_backends_survives_a_killed_comfyui(comfy, spare_comfy, controllers, database_url):
    servers, start = spare_comfy
    spare = servers[0]
    controller = controllers([comfy.url, spare.url])
    batch_id = controller.submit(shots(10, "k"))
    wait_until(lambda: any(r["status"] == "succeeded" and r["backend"] == spare.url
                           for r in attempts(database_url, batch_id)), 120, "a shot done on the spare server")
    spare.process.send_signal(signal.SIGKILL)  # kill -9 mid-batch: its queue and in-memory history are gone
    spare.process.wait()
    servers.append(start(port=spare.port))  # back on the same address
    wait_until(lambda: finished(controller, batch_id), 300, "batch finished")

    rows = attempts(database_url, batch_id)
    assert {row["backend"] for row in rows} == {comfy.url, spare.url}  # both backends worked
    assert any(row["status"] == "lost" for row in rows)  # the killed server's queued prompts were re-run
    assert_each_shot_ended_once(rows, 10, {comfy.url: history(comfy.url), spare.url: history(spare.url)},
                                restarted=frozenset({spare.url}))


def test_a_killed_controller_is_replaced_and_the_batch_completes(comfy, controllers, database_url):
    first = controllers([comfy.url])
    batch_id = first.submit(shots(6, "c"))
    wait_until(lambda: any(r["status"] == "succeeded" for r in attempts(database_url, batch_id)), 120,
               "a first shot done")
    first.kill()  # its leases lapse after 3 s; the prompts it queued keep running on ComfyUI
    second = controllers([comfy.url])
    wait_until(lambda: finished(second, batch_id), 240, "batch finished by the second controller")
    assert_each_shot_ended_once(attempts(database_url, batch_id), 6, {comfy.url: history(comfy.url)})


def test_two_controllers_on_one_database_never_run_a_shot_twice(comfy, controllers, database_url):
    one, two = controllers([comfy.url]), controllers([comfy.url])
    batch_id = one.submit(shots(8, "t"))
    wait_until(lambda: finished(two, batch_id), 240, "batch finished")
    rows = attempts(database_url, batch_id)
    assert all(row["status"] == "succeeded" for row in rows)  # nothing was lost, nothing ran twice
    assert_each_shot_ended_once(rows, 8, {comfy.url: history(comfy.url)})


def test_render_submits_to_a_running_service_and_prints_the_table(comfy, controllers, tmp_path):
    service = controllers([comfy.url])
    (tmp_path / "two.json").write_text(json.dumps(shots(2, "r")))
    result = subprocess.run([str(SHOTLINE), "render", str(tmp_path / "two.json"), "--server", service.url,
                             "--token", TOKEN], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 shots queued on " + service.url in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("r0")]
    assert [(row[0], row[1], row[2]) for row in table] == [("r00", "rejected", "1"), ("r01", "rejected", "1")]

    refused = subprocess.run([str(SHOTLINE), "render", str(tmp_path / "two.json"), "--server", service.url,
                              "--token", "wrong"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
