"""ComfyBackend's bookkeeping without a server: background tasks are held until they end, and a run the websocket
saw whole is settled from its messages alone (no /history read; the server here does not even exist)."""
import asyncio
import gc
import logging

import aiohttp

from shotline_controller.comfy.client import ComfyBackend, PromptCancelled

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers


def run(work):
    async def main():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            return await work(ComfyBackend(NOWHERE, session))
    return asyncio.run(main())


def events(prompt_id: str, ending: str = "execution_success") -> list[dict]:
    return [{"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": 1000}},
            {"type": "executing", "data": {"prompt_id": prompt_id, "node": "3"}},
            {"type": "executed", "data": {"prompt_id": prompt_id, "node": "9", "output": {
                "images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]}}},
            {"type": "executed", "data": {"prompt_id": prompt_id, "node": "4", "output": None}},
            {"type": ending, "data": {"prompt_id": prompt_id, "timestamp": 1250, "exception_message": "boom"}},
            {"type": "executing", "data": {"prompt_id": prompt_id, "node": None}}]


def test_background_tasks_are_held_until_they_end_and_their_failures_logged(caplog):
    async def work(backend):
        async def fails():
            await asyncio.sleep(0.01)
            raise RuntimeError("reconcile broke")
        backend._spawn(fails(), "a failing task")
        gc.collect()  # a task only the event loop knew of could be collected here
        held = len(backend._tasks)
        await asyncio.sleep(0.05)
        return held, len(backend._tasks)
    with caplog.at_level(logging.ERROR, logger="shotline.comfy"):
        assert run(work) == (1, 0)
    assert "a failing task" in caplog.text and "reconcile broke" in caplog.text


def test_a_run_the_websocket_saw_whole_is_settled_from_its_messages():
    async def work(backend):
        ok, failed = "11111111-0000-0000-0000-000000000001", "11111111-0000-0000-0000-000000000002"
        for prompt_id in (ok, failed):
            backend._pending[prompt_id] = asyncio.get_running_loop().create_future()
        for event in events(ok) + events(failed, "execution_error"):
            backend._on_event(event)
        return await asyncio.wait_for(backend.wait(ok), 1), await asyncio.wait_for(backend.wait(failed), 1)
    success, error = run(work)
    assert (success.status, success.seconds, success.error) == ("success", 0.25, None)
    assert success.outputs == {"9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]}}
    assert error.status == "error" and error.error["exception_message"] == "boom"


def test_an_interrupted_run_of_ours_is_a_cancel_and_a_partly_seen_run_is_read_from_history():
    async def work(backend):
        stopped, partial = "22222222-0000-0000-0000-000000000001", "22222222-0000-0000-0000-000000000002"
        for prompt_id in (stopped, partial):
            backend._pending[prompt_id] = asyncio.get_running_loop().create_future()
        backend._interrupted.add(stopped)
        for event in events(stopped, "execution_interrupted"):
            backend._on_event(event)
        try:
            await asyncio.wait_for(backend.wait(stopped), 1)
        except PromptCancelled as cancelled:
            outcome = cancelled.result.status
        backend._on_event(events(partial)[-1])  # its end, without its start: this connection saw only part
        await asyncio.sleep(0.2)  # the reconcile asks /history, which does not answer: still pending
        return outcome, backend._pending[partial].done(), len(backend._tasks)
    assert run(work) == ("error", False, 0)
