"""Schemathesis against the served /openapi.json of a real running service (a `web.TCPSite` on 127.0.0.1, a fresh
migrated PostgreSQL, no ComfyUI, no workers).

Every operation gets generated requests, valid (positive) and invalid (negative), with the bearer token on each.
Path parameters are real ids (a batch, its shots, an assembly job, a character) half of the time, so requests
reach the handlers rather than stopping at a 404. Checks: no 5xx, answers that conform to their documented
schema, only documented status codes and content types. Bounded (a fixed seed, 20 examples per operation and
phase, no deadline) so it runs in about a minute on two cores; it prints how many requests it made.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from aiohttp import web
from psycopg_pool import AsyncConnectionPool
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for

from shotline_controller.api.app import create_app
from shotline_controller.settings import Settings
from shotline_controller.store.migrations import apply_migrations
from tests.integration.test_service import AUTH, PNG, SHEET, TOKEN, WAV, add_output, sql

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
CHECKS = ("not_a_server_error", "response_schema_conformance", "status_code_conformance",
          "content_type_conformance")


@dataclass
class RunningService:
    url: str
    ids: dict[str, list[str]]
    requests: Counter = field(default_factory=Counter)   # "METHOD /route/{template}" -> requests served
    errors: list[str] = field(default_factory=list)      # tracebacks the service logged


class _Errors(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


async def _seed(client_url: str, pool) -> dict[str, list[str]]:
    """Real ids for the path parameters: a batch with shots in several states (one approved with a file), a
    finished batch, an assembly job, a character, and uploads of an image and an audio file."""
    import aiohttp
    async with aiohttp.ClientSession(client_url, headers=AUTH) as client:
        async def post(path, **kwargs):
            async with client.post(path, **kwargs) as response:
                assert response.status in (201, 202), await response.text()
                return await response.json()

        open_batch = await post("/api/v1/batches", json={"shots": [
            {"id": key, "prompt": f"shot {key}", "scene": "sc01"} for key in ("a", "b", "c", "d")]})
        done_batch = await post("/api/v1/batches", json={"shots": [{"id": "z", "prompt": "done"}]})
        a, b, c, d = open_batch["shot_ids"]
        await sql(pool, "UPDATE shots SET status = 'needs_review' WHERE id = %s", (b,))
        await sql(pool, "UPDATE shots SET status = 'failed' WHERE id = %s", (c,))
        await add_output(pool, d, "d.png")
        await sql(pool, "UPDATE shots SET status = 'approved' WHERE id = ANY(%s)", ([d, *done_batch["shot_ids"]],))
        job = await post(f"/api/v1/batches/{open_batch['batch_id']}/assemblies", json={})
        image = await post("/api/v1/uploads", data=PNG)
        audio = await post("/api/v1/uploads", data=WAV)
        form = aiohttp.FormData()
        form.add_field("sheet", SHEET, content_type="application/yaml")
        async with client.put("/api/v1/characters/aiko", data=form) as response:
            assert response.status == 200, await response.text()
    return {"batches": [open_batch["batch_id"], done_batch["batch_id"]],
            "shots": [a, b, c, d, *done_batch["shot_ids"]], "jobs": [job["job_id"]], "folders": ["aiko"],
            "uploads": [image["ref"], audio["ref"]]}


@pytest.fixture
def service(database_url, tmp_path):
    """The app on a real socket, served from its own event loop in a background thread."""
    settings = Settings(state_dir=tmp_path / "state", comfyui_dir=tmp_path / "comfyui", comfyui_python=None,
                        extra_model_paths=None, database_url=database_url)
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()
    state: dict = {}
    errors: list[str] = []
    handler = _Errors(errors)
    logging.getLogger("shotline").addHandler(handler)

    async def serve():
        async with AsyncConnectionPool(database_url, min_size=1, max_size=8, open=False) as pool:
            await apply_migrations(pool)
            app = create_app(pool, settings, TOKEN)
            served: Counter = Counter()

            async def count(request, response):
                resource = request.match_info.route.resource
                served[f"{request.method} {resource.canonical}" if resource else "no such route (404, 405)"] += 1
            app.on_response_prepare.append(count)
            runner = web.AppRunner(app, shutdown_timeout=1)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}"
            try:
                state["service"] = RunningService(url, await _seed(url, pool), served, errors)
            except BaseException as error:  # noqa: BLE001 - reported in the test's thread
                state["error"] = error
            ready.set()
            await stop.wait()
            await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(60), "the service did not start"
    try:
        if "error" in state:
            raise state["error"]
        yield state["service"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
        logging.getLogger("shotline").removeHandler(handler)


def fuzz_config(ids: dict[str, list[str]]) -> schemathesis.Config:
    def bound(dictionary: str) -> dict:
        return {"dictionary": dictionary, "probability": 0.5}

    return schemathesis.Config.from_dict({
        "seed": 20261201,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "workers": 1,
        "request-timeout": 10,
        "max-stream-events": 1,          # an open batch's event stream never ends by itself
        "suppress-health-check": ["all"],
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "no-shrink": True,
                       "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {"examples": {"enabled": False}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": False}},
        "dictionaries": {name: {"values": values} for name, values in ids.items()},
        "parameters": {"path.batch_id": bound("batches"), "path.shot_id": bound("shots"),
                       "path.job_id": bound("jobs"), "path.folder": bound("folders"),
                       "body.music": bound("uploads"), "body.shots[*].image": bound("uploads")},
    })


@dataclass
class FuzzResult:
    cases: int = 0
    modes: dict[str, set[str]] = field(default_factory=dict)     # operation -> generation modes it got
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)            # errors of the run itself


def run_schemathesis(url: str, config: schemathesis.Config) -> FuzzResult:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    result = FuzzResult()
    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, node in event.recorder.cases.items():
                result.cases += 1
                mode = node.value.meta.generation.mode if node.value.meta else None
                result.modes.setdefault(event.recorder.label, set()).add(str(getattr(mode, "value", mode)))
                for check in event.recorder.checks.get(case_id, []):
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        result.failures.append(f"{event.recorder.label} [{check.name}] {failure.title}: "
                                               f"{failure.message}\n    {check.failure_info.code_sample}")
            if event.status == Status.ERROR:
                result.problems.append(f"{event.recorder.label}: scenario errored")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            result.problems.append(str(getattr(event, "info", None) or getattr(event, "exception", event)))
    return result


def test_generated_requests_get_documented_answers_and_never_a_server_error(service):
    started = time.monotonic()
    result = run_schemathesis(service.url, fuzz_config(service.ids))
    elapsed = time.monotonic() - started
    served = sum(service.requests.values())
    print(f"\nschemathesis: {served} requests served ({result.cases} test cases) over "
          f"{len(result.modes)} operations in {elapsed:.1f} s")
    for operation, count in sorted(service.requests.items()):
        print(f"  {count:5d}  {operation}")
    unique = sorted(set(result.failures))
    assert not result.problems, "\n".join(result.problems)
    assert not unique, f"{len(unique)} distinct failures:\n" + "\n".join(unique[:40]) + "\n\nservice log:\n" + \
        "\n".join(service.errors[:10])
    assert not service.errors, "\n".join(service.errors[:10])
    document = schemathesis.openapi.from_url(f"{service.url}/openapi.json").raw_schema
    # schemathesis leaves out the operation that serves the document itself
    document_operations = {f"{method.upper()} {path}" for path, item in document["paths"].items()
                           for method in item} - {"GET /openapi.json"}
    assert set(result.modes) == document_operations
    with_inputs = {operation for operation in document_operations if "{" in operation
                   or operation.split()[0] in ("POST", "PUT")}
    for operation in with_inputs:
        assert {"positive", "negative"} <= result.modes[operation], (operation, result.modes[operation])
