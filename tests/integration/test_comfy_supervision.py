"""The comfy room against real ComfyUI servers: a supervised server that is killed comes back on its port, the
service's ComfyUI writes into the state folder, a backend that is down is waited for, and interrupting stops
our prompt (running or queued) and nobody else's."""
import asyncio
import json
import logging
import random
import signal
import time
import urllib.request
import uuid

import aiohttp
import pytest
from shotline_controller.comfy.client import ComfyBackend, PromptCancelled
from shotline_controller.comfy.server import ComfySupervisor, LocalComfyServer, free_port
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME

from tests.conftest import ComfyTestClient

pytestmark = pytest.mark.integration


@pytest.fixture
def make_server(settings, model_cache, tmp_path):
    """LocalComfyServers of this test's own (stopped at the end), writing under tmp_path/state."""
    extra_paths = tmp_path / "extra_model_paths.yaml"
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n")
    made = []

    def make(port=None) -> LocalComfyServer:
        made.append(LocalComfyServer(settings.comfyui_dir, settings.comfyui_python, log_path=tmp_path / "comfyui.log",
                                     port=port, extra_model_paths=extra_paths, state_dir=tmp_path / "state"))
        return made[-1]
    yield make
    for server in made:
        server.stop()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/system_stats", timeout=2):
            return True
    except OSError:
        return False


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


def test_a_killed_comfyui_is_restarted_on_its_port(make_server, caplog):
    """...and a backend watching it says once that it went away and once that it is back."""
    caplog.set_level(logging.INFO, logger="shotline")
    server = make_server()

    async def main():
        async with ComfySupervisor(server, min_backoff=0.5) as supervisor, aiohttp.ClientSession() as session:
            backend = ComfyBackend(server.url, session)
            await backend.start()
            first = server.process
            first.send_signal(signal.SIGKILL)
            await until(lambda: supervisor.restarts == 1, 120, "ComfyUI was not restarted")
            assert supervisor.running and server.process is not first and supervisor.url == server.url
            assert await asyncio.to_thread(answers, server.url)
            assert await backend.wait_connected(timeout=30)
            await backend.close()
            return supervisor.status()

    status = asyncio.run(main())
    assert status == {"url": server.url, "running": True, "restarts": 1, "last_exit": -signal.SIGKILL,
                      "last_error": None}
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "shotline.comfy.server"]
    assert "exited with code -9" in warning.getMessage() and server.url in warning.getMessage()
    assert "shotline: restarting ComfyUI" in server.log_text()  # the crashed run's log is kept above
    backend_log = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records if r.name == "shotline.comfy"]
    assert backend_log == [(logging.INFO, f"ComfyUI at {server.url} connected"),
                           (logging.WARNING, f"ComfyUI at {server.url} became unreachable"),
                           (logging.INFO, f"ComfyUI at {server.url} is back")], backend_log


def test_stopping_the_supervisor_stops_comfyui_for_good(make_server):
    server = make_server()

    async def main():
        supervisor = ComfySupervisor(server, min_backoff=0.1)
        await supervisor.start()
        process = server.process
        await supervisor.stop()
        assert process.poll() is not None and not supervisor.running
        await asyncio.sleep(2)  # longer than the backoff: no restart comes
        return supervisor.status(), process

    status, process = asyncio.run(main())
    assert server.process is process and status["restarts"] == 0 and not status["running"]
    assert not answers(server.url)


def test_outputs_land_in_the_state_folder(make_server, settings, tmp_path):
    server = make_server()
    server.start()
    prefix = f"supervision-{random.randrange(10**9)}"
    entry = ComfyTestClient(server.url).run({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}})
    [saved] = entry["outputs"]["2"]["images"]
    state = tmp_path / "state" / "comfyui"
    assert (state / "output" / saved["subfolder"] / saved["filename"]).is_file()
    assert not list((settings.comfyui_dir / "output").glob(f"{prefix}*"))
    assert (state / "user").is_dir() and (state / "input").is_dir()
    assert f"--temp-directory {state}" in " ".join(server.command)


def test_a_backend_started_without_waiting_connects_when_its_server_appears(make_server, caplog):
    caplog.set_level(logging.INFO, logger="shotline")
    port = free_port()

    async def main():
        async with aiohttp.ClientSession() as session:
            backend = ComfyBackend(f"http://127.0.0.1:{port}", session)
            await backend.start(wait=False)  # nothing listens there: no exception
            assert not await backend.wait_connected(timeout=2)
            assert not backend.connected
            await asyncio.to_thread(make_server(port).start)
            assert await backend.wait_connected(timeout=30)
            await backend.close()

    asyncio.run(main())
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shotline.comfy"]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO], messages  # once per transition


def slow_graph(steps: int, seed: int | None = None) -> dict:
    """The random checkpoint sampling a 256 px latent: seconds per step on two CPU cores."""
    def encode(text):
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": RANDOM_CHECKPOINT_NAME}},
        "6": encode("a slow shot"), "7": encode("blurry"),
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": random.randrange(2**32) if seed is None else seed, "steps": steps, "cfg": 7.0,
            "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
            "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


async def queue(backend: ComfyBackend) -> tuple[list[str], list[str]]:
    """The prompt ids ComfyUI has running and pending."""
    body = await backend._get("/queue")
    return [item[1] for item in body["queue_running"]], [item[1] for item in body["queue_pending"]]


async def until_running(backend: ComfyBackend, prompt_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while prompt_id not in (await queue(backend))[0]:
        assert time.monotonic() < deadline, f"{prompt_id} never ran"
        await asyncio.sleep(0.1)


def test_interrupting_a_running_prompt_ends_its_wait(comfy_server):
    async def main():
        async with aiohttp.ClientSession() as session:
            backend = ComfyBackend(comfy_server.url, session)
            await backend.start()
            prompt_id = str(uuid.uuid4())
            await backend.submit(slow_graph(steps=2000), prompt_id)
            waiting = asyncio.create_task(backend.wait(prompt_id))
            await until_running(backend, prompt_id)
            started = time.monotonic()
            await backend.interrupt(prompt_id)
            with pytest.raises(PromptCancelled) as cancelled:
                await asyncio.wait_for(waiting, 60)
            seconds = time.monotonic() - started
            assert prompt_id not in await backend.queued_prompt_ids()
            await backend.close()
            return cancelled.value, seconds

    cancelled, seconds = asyncio.run(main())
    assert seconds < 30, seconds  # ComfyUI looks at the interrupt once per sampler step: seconds on a busy CPU
    assert cancelled.result.status == "error" and cancelled.result.error["node_id"] in slow_graph(1)
    assert "while running" in str(cancelled)


def test_interrupting_a_pending_prompt_removes_it_and_spares_the_running_one(comfy_server):
    """The running prompt is another client's: interrupting ours behind it must not stop it."""
    async def main():
        async with aiohttp.ClientSession() as session:
            ours, theirs = ComfyBackend(comfy_server.url, session), ComfyBackend(comfy_server.url, session)
            await ours.start()
            await theirs.start()
            their_id, our_id, unknown_id = (str(uuid.uuid4()) for _ in range(3))
            await theirs.submit(slow_graph(steps=2), their_id)  # seconds on CPU: ours queues behind it
            await ours.submit(slow_graph(steps=2), our_id)
            await until_running(theirs, their_id)
            assert our_id in (await queue(ours))[1]
            await ours.interrupt(our_id)
            assert our_id not in await ours.queued_prompt_ids()
            with pytest.raises(PromptCancelled) as cancelled:
                await asyncio.wait_for(ours.wait(our_id), 10)
            await ours.interrupt(unknown_id)  # an id that is nowhere: nothing happens to theirs
            result = await asyncio.wait_for(theirs.wait(their_id), 120)
            await ours.close()
            await theirs.close()
            return cancelled.value, result, history_entry(comfy_server.url, our_id)

    cancelled, result, our_history = asyncio.run(main())
    assert cancelled.result is None and "while queued" in str(cancelled)
    assert result.status == "success", result.error
    assert our_history is None  # never ran


def history_entry(url: str, prompt_id: str) -> dict | None:
    with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as response:
        return json.loads(response.read()).get(prompt_id)
