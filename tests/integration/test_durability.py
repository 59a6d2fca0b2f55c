"""The controller as a service over real ComfyUI servers and PostgreSQL, with processes killed mid-batch.

Every test checks the same promise: each shot ends exactly once. Exactly one attempt per shot is recorded as
run to its end (lost attempts are the ones a server forgot), and ComfyUI executed each shot's prompt once.
"""
import json
import signal

import pytest

from tests.integration.processes import (  # noqa: F401 (comfy_servers, controllers: fixtures)
    TOKEN,
    assert_each_shot_ended_once,
    attempts,
    comfy_servers,
    controllers,
    history,
    shotline,
    shots,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_a_batch_across_two_backends_survives_a_killed_comfyui(comfy, comfy_servers, controllers, database_url):
    spare = comfy_servers()
    controller = controllers([comfy.url, spare.url])
    batch_id = controller.submit(shots(10, "k"))
    wait_until(lambda: any(r["status"] == "succeeded" and r["backend"] == spare.url
                           for r in attempts(database_url, batch_id)), 120, "a shot done on the spare server")
    spare.process.send_signal(signal.SIGKILL)  # kill -9 mid-batch: its queue and in-memory history are gone
    spare.process.wait()
    comfy_servers(port=spare.port)  # back on the same address
    wait_until(lambda: controller.finished(batch_id), 300, "batch finished")

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
    wait_until(lambda: second.finished(batch_id), 240, "batch finished by the second controller")
    assert_each_shot_ended_once(attempts(database_url, batch_id), 6, {comfy.url: history(comfy.url)})


def test_two_controllers_on_one_database_never_run_a_shot_twice(comfy, controllers, database_url):
    one, two = controllers([comfy.url]), controllers([comfy.url])
    batch_id = one.submit(shots(8, "t"))
    wait_until(lambda: two.finished(batch_id), 240, "batch finished")
    rows = attempts(database_url, batch_id)
    assert all(row["status"] == "succeeded" for row in rows)  # nothing was lost, nothing ran twice
    assert_each_shot_ended_once(rows, 8, {comfy.url: history(comfy.url)})


def test_render_submits_to_a_running_service_and_prints_the_table(comfy, controllers, tmp_path):
    service = controllers([comfy.url])
    shot_list = {key: value for key, value in shots(2, "r").items() if key != "max_attempts"}  # a file's fields
    (tmp_path / "two.json").write_text(json.dumps(shot_list))
    result = shotline("render", tmp_path / "two.json", "--server", service.url, "--token", TOKEN,
                      "--max-attempts", "1", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 shots queued on " + service.url in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("r0")]
    assert [(row[0], row[1], row[2]) for row in table] == [("r00", "rejected", "1"), ("r01", "rejected", "1")]

    refused = shotline("render", tmp_path / "two.json", "--server", service.url, "--token", "wrong", timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
