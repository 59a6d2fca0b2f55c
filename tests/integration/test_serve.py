"""`shotline serve` as a real process: it listens before its ComfyUI is up, stops in seconds on SIGTERM (detached
too), restarts a ComfyUI it started when that dies, and interrupts the prompt of a shot cancelled while it runs;
and the CLI's refusals (a NUL in a prompt, a database that is not there) are one line, never a traceback."""
import concurrent.futures
import json
import re
import signal
import time

import psutil
import psycopg
import pytest
import yaml

from shotline_controller.comfy.server import free_port
from tests.integration.processes import (  # noqa: F401 (comfy_servers, controllers: fixtures)
    TOKEN,
    answers,
    assert_each_shot_ended_once,
    attempts,
    comfy_servers,
    controllers,
    history,
    http,
    http_text,
    shotline,
    shots,
    wait_until,
)

pytestmark = pytest.mark.integration


def nowhere() -> str:
    """The URL of a port where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def batch_counts(controller, batch_id: str) -> dict:
    return controller.get(f"/api/v1/batches/{batch_id}")["counts"]


def test_serve_answers_before_its_comfyui_is_up_and_renders_once_it_is(comfy_servers, controllers, database_url):
    url = nowhere()
    controller = controllers([url])
    print(f"\n/health answered {controller.ready_seconds:.1f} s after `shotline serve` started, its ComfyUI down")
    assert controller.ready_seconds < 20
    [backend] = controller.backends()
    assert (backend["base_url"], backend["connected"], backend["managed"]) == (url, False, False)
    assert "system_stats" in backend["error"]
    batch_id = controller.submit(shots(3, "w"))

    # while the ComfyUI starts, the batch waits, queued, with no attempt opened (each sample is taken while the
    # server is still not answering, so none of them can have seen a claim)
    samples = 0
    with concurrent.futures.ThreadPoolExecutor(1) as starting:
        started = starting.submit(comfy_servers, port_of(url))
        while not started.done():
            rows, counts = attempts(database_url, batch_id), batch_counts(controller, batch_id)
            [backend] = controller.backends()
            if answers(url):
                break
            assert counts == {"queued": 3} and all(row["status"] is None for row in rows), (counts, rows)
            assert backend["connected"] is False
            samples += 1
            time.sleep(0.3)
        server = started.result()
    answered = time.monotonic()
    assert samples >= 3  # the check above did run while the server was down
    wait_until(lambda: controller.backends()[0]["connected"], 60, "the backend connected")
    print(f"backend connected {time.monotonic() - answered:.1f} s after its ComfyUI first answered")
    wait_until(lambda: controller.finished(batch_id), 180, "batch finished")
    rows = attempts(database_url, batch_id)
    assert all(row["status"] == "succeeded" and row["backend"] == url for row in rows), rows  # nothing lost
    assert_each_shot_ended_once(rows, 3, {url: history(server.url)})

    seconds, code = controller.terminate()
    print(f"SIGTERM to exit: {seconds:.1f} s (exit code {code})")
    assert code == 0 and seconds < 10, controller.log_text()


def test_a_detached_serve_stops_in_seconds_on_sigterm_mid_batch(comfy, controllers, database_url):
    """Started as a daemon is (own session, stdin /dev/null, output to a file), stopped with shots in flight: it
    exits 0 in seconds, and the shots it held go back to the queue for another controller to end, once each."""
    detached = controllers([comfy.url], detached=True)
    batch_id = detached.submit(shots(6, "d"))
    wait_until(lambda: any(r["status"] == "succeeded" for r in attempts(database_url, batch_id)), 120,
               "a first shot done")
    seconds, code = detached.terminate()
    print(f"\ndetached serve, SIGTERM to exit mid-batch: {seconds:.1f} s (exit code {code})")
    assert code == 0 and seconds < 10, detached.log_text()
    with psycopg.connect(database_url) as conn:
        held = conn.execute("SELECT shot_key, status FROM shots WHERE batch_id = %s AND (status = 'running' OR "
                            "claimed_by IS NOT NULL)", (batch_id,)).fetchall()
    assert held == []  # none left running under the stopped controller's lease

    second = controllers([comfy.url])
    wait_until(lambda: second.finished(batch_id), 180, "batch finished by another controller")
    assert_each_shot_ended_once(attempts(database_url, batch_id), 6, {comfy.url: history(comfy.url)})


@pytest.fixture
def managed_comfy_env(settings, model_cache, tmp_path):
    """The environment for a service that starts its own ComfyUI: the installed one (as .shotline/install.json
    records it) with the test checkpoint cache; its state folder is tmp_path (SHOTLINE_HOME, set by Controller)."""
    extra_paths = tmp_path / "managed_model_paths.yaml"
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n")
    return {"SHOTLINE_COMFYUI": str(settings.comfyui_dir), "SHOTLINE_COMFYUI_PYTHON": str(settings.comfyui_python),
            "SHOTLINE_EXTRA_MODEL_PATHS": str(extra_paths)}


def gone(process: psutil.Process) -> bool:
    """Ended (a zombie no one has reaped yet counts as ended)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def comfyui_child(controller) -> psutil.Process:
    [child] = [p for p in psutil.Process(controller.process.pid).children() if "main.py" in p.cmdline()]
    return child


def test_a_comfyui_the_service_started_is_restarted_when_killed(settings, managed_comfy_env, controllers,
                                                               database_url, tmp_path):
    controller = controllers([], env=managed_comfy_env)  # no --comfy: it starts the installed ComfyUI itself
    print(f"\n/health answered {controller.ready_seconds:.1f} s after start (its ComfyUI still starting)")
    [backend] = controller.backends()
    assert backend["managed"] is True and backend["restarts"] == 0
    url = backend["base_url"]
    wait_until(lambda: controller.backends()[0]["connected"], 180, "the managed ComfyUI up and connected")
    first = comfyui_child(controller)
    batch_id = controller.submit(shots(8, "m"))
    wait_until(lambda: any(r["status"] == "succeeded" for r in attempts(database_url, batch_id)), 120,
               "a first shot done")
    first.send_signal(signal.SIGKILL)  # kill -9 mid-batch
    killed = time.monotonic()
    wait_until(lambda: controller.backends()[0]["restarts"] >= 1, 180, "the ComfyUI restarted")
    restarted = time.monotonic() - killed
    wait_until(lambda: controller.backends()[0]["connected"], 60, "the backend reconnected")
    print(f"ComfyUI killed -> restarted (answering) {restarted:.1f} s, backend reconnected "
          f"{time.monotonic() - killed:.1f} s")
    second = comfyui_child(controller)
    assert second.pid != first.pid and gone(first)
    wait_until(lambda: controller.finished(batch_id), 300, "batch finished")

    log = controller.log_text()
    assert re.search(rf"WARNING shotline\.comfy\.server: ComfyUI at {re.escape(url)} exited with code -9", log), log
    assert re.search(rf'^shotline_backend_restarts\{{backend="{re.escape(url)}"\}} 1\.0$',
                     http_text(controller.url + "/metrics"), re.MULTILINE)
    assert_each_shot_ended_once(attempts(database_url, batch_id), 8, {url: history(url)},
                                restarted=frozenset({url}))
    # what this ComfyUI wrote is in the service's state folder, not in the ComfyUI install
    with psycopg.connect(database_url) as conn:
        files = conn.execute("SELECT o.subfolder, o.filename FROM outputs o JOIN attempts a ON a.id = o.attempt_id "
                             "JOIN shots s ON s.id = a.shot_id WHERE s.batch_id = %s", (batch_id,)).fetchall()
    assert len(files) == 8
    for subfolder, filename in files:
        assert (tmp_path / "comfyui" / "output" / subfolder / filename).is_file()
        assert not (settings.comfyui_dir / "output" / subfolder / filename).exists()

    seconds, code = controller.terminate()
    print(f"SIGTERM to exit with a managed ComfyUI: {seconds:.1f} s (exit code {code})")
    assert code == 0 and seconds < 30
    assert gone(second)  # it took its ComfyUI down with it


def test_sigterm_while_its_comfyui_starts_stops_both_in_seconds(managed_comfy_env, controllers):
    controller = controllers([], env=managed_comfy_env)
    child = wait_until(lambda: next(iter(psutil.Process(controller.process.pid).children()), None), 30,
                       "ComfyUI launched")
    assert not controller.backends()[0]["connected"]  # still starting: the API answers meanwhile
    seconds, code = controller.terminate()
    print(f"\nSIGTERM to exit while its ComfyUI was starting: {seconds:.1f} s (exit code {code})")
    assert code == 0 and seconds < 10, controller.log_text()
    assert gone(child)


def test_cancelling_a_running_shot_interrupts_its_prompt(comfy, controllers, database_url):
    controller = controllers([comfy.url])
    slow = {"max_attempts": 1, "shots": [{"id": "slow", "prompt": "a long render", "seed": 7, "size": "512x512",
                                          "steps": 40}]}
    batch_id = controller.submit(slow)
    [shot_id] = {row["shot_id"] for row in attempts(database_url, batch_id)}

    def running_prompt():
        prompt_ids = {row["prompt_id"] for row in attempts(database_url, batch_id) if row["prompt_id"]}
        running = {item[1] for item in comfy.get("/queue")["queue_running"]}
        return next(iter(prompt_ids & running), None)
    prompt_id = wait_until(running_prompt, 180, "the slow shot running on ComfyUI")
    began = time.monotonic()
    answer = http(f"{controller.url}/api/v1/shots/{shot_id}/cancel", {})
    assert answer["status"] == "cancelled"

    def stopped():
        queue = comfy.get("/queue")
        return all(item[1] != prompt_id for item in queue["queue_running"] + queue["queue_pending"])
    wait_until(stopped, 30, "ComfyUI stopped the prompt")
    latency = time.monotonic() - began
    print(f"\ncancel -> prompt off ComfyUI's queue: {latency:.2f} s")
    assert latency < 10
    entry = comfy.get(f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]]

    def recorded():
        [row] = attempts(database_url, batch_id)
        return row if row["status"] != "running" else None
    row = wait_until(recorded, 30, "the attempt recorded")
    assert (row["shot_status"], row["status"], row["prompt_id"]) == ("cancelled", "cancelled", prompt_id)
    shot = controller.get(f"/api/v1/shots/{shot_id}")
    assert shot["status"] == "cancelled" and [a["status"] for a in shot["attempts"]] == ["cancelled"]


def test_render_to_a_server_refuses_a_nul_in_a_prompt_itself(controllers, database_url, tmp_path):
    """The CLI checks the same contract as the service before it sends anything: exit 2 naming the field."""
    service = controllers([nowhere()])
    bad = {"shots": [{"id": "s01", "prompt": "a girl\0 with silver hair"}]}
    (tmp_path / "nul.yaml").write_text(yaml.safe_dump(bad))
    assert '"a girl\\0 with silver hair"' in (tmp_path / "nul.yaml").read_text()  # YAML's own "\0" escape
    (tmp_path / "nul.json").write_text(json.dumps(bad))
    for name in ("nul.yaml", "nul.json"):
        result = shotline("render", tmp_path / name, "--server", service.url, "--token", TOKEN, timeout=60)
        assert result.returncode == 2, result.stdout + result.stderr
        [line] = result.stderr.splitlines()  # no traceback, no answer of the service's (a 500 or a 400)
        assert line.startswith("error: ") and f"{name}: shots[0].prompt: must not contain a NUL character" in line
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone() == (0,)  # nothing reached the service


def test_status_without_a_database_is_one_line(tmp_path):
    url = f"postgresql://shotline:s3cret@127.0.0.1:{free_port()}/nowhere"
    began = time.monotonic()
    result = shotline("status", env={"DATABASE_URL": url, "SHOTLINE_HOME": str(tmp_path)}, timeout=60)
    seconds = time.monotonic() - began
    print(f"\n`shotline status` with no database there: exit {result.returncode} in {seconds:.1f} s")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot connect to the database: ") and "Connection refused" in line, line
    assert "s3cret" not in line and "Traceback" not in line
    assert seconds < 20
