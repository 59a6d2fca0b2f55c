"""ComfyBackend's bookkeeping against a stand-in for ComfyUI's /history (a unit test: the real server is in the
integration tests): background tasks are held until they end; a drop in the broadcast `queue_remaining` settles
the prompts that finished from the newest /history entries, in one request."""
import asyncio
import gc
import logging

import aiohttp
from aiohttp import web

from shotline_controller.comfy.client import ComfyBackend, PromptCancelled

OK, STOPPED, STILL_RUNNING = (f"33333333-0000-0000-0000-00000000000{n}" for n in (1, 2, 3))


def entry(prompt_id: str, ending: str) -> dict:
    return {"prompt": [0, prompt_id, {}, {}, []], "outputs": {"9": {"images": [{"filename": "a.png"}]}},
            "status": {"status_str": "success" if ending == "execution_success" else "error", "completed": True,
                       "messages": [["execution_start", {"prompt_id": prompt_id, "timestamp": 1000}],
                                    [ending, {"prompt_id": prompt_id, "timestamp": 1250}]]}}


def run(work):
    """`work(backend, requests)` against a stand-in whose /history holds OK and STOPPED (newest last)."""
    requests: list[str] = []

    async def history(request: web.Request) -> web.Response:
        requests.append(request.path_qs)
        items = {OK: entry(OK, "execution_success"), STOPPED: entry(STOPPED, "execution_interrupted")}
        count = int(request.query.get("max_items", len(items)))
        return web.json_response(dict(list(items.items())[-count:]))

    async def main():
        app = web.Application()
        app.router.add_get("/history", history)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                return await work(ComfyBackend(f"http://127.0.0.1:{port}", session), requests)
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def status(remaining: int) -> dict:
    return {"status": {"exec_info": {"queue_remaining": remaining}}}


def test_background_tasks_are_held_until_they_end_and_their_failures_logged(caplog):
    async def work(backend, requests):
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


def test_a_queue_that_shrinks_settles_the_finished_prompts_from_the_newest_history():
    async def work(backend, requests):
        loop = asyncio.get_running_loop()
        for prompt_id in (OK, STOPPED, STILL_RUNNING):
            backend._pending[prompt_id] = loop.create_future()
        backend._interrupted.add(STOPPED)
        backend._on_status(status(3))  # the baseline: nothing is read
        backend._on_status(status(4))  # a prompt queued: nothing is read
        await asyncio.sleep(0.05)
        before = list(requests)
        backend._on_status(status(2))  # two finished
        ok = await asyncio.wait_for(backend.wait(OK), 2)
        try:
            await asyncio.wait_for(backend.wait(STOPPED), 2)
        except PromptCancelled as cancelled:
            stopped = cancelled.result.status
        return before, list(requests), ok, stopped, backend._pending[STILL_RUNNING].done()
    before, requests, ok, stopped, still_settled = run(work)
    assert before == [] and requests == ["/history?max_items=4"]  # one request for both: 2 finished + slack
    assert (ok.status, ok.seconds, ok.outputs) == ("success", 0.25, {"9": {"images": [{"filename": "a.png"}]}})
    assert stopped == "error" and not still_settled  # ours interrupted: a cancel; the running one waits on


def test_prompts_go_in_under_a_client_id_no_socket_listens_on():
    async def work(backend, requests):
        return backend.client_id != backend.prompt_client_id
    assert run(work)
