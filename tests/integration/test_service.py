"""The HTTP service (`shotline serve`) against a real PostgreSQL: no ComfyUI needed, the dispatcher is not started."""
import asyncio
import hashlib
import hmac
import io
import json
import os
import stat
import time
import uuid

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg_pool import AsyncConnectionPool

from shotline_controller import service
from shotline_controller.api.app import create_app, load_or_create_token
from shotline_controller.settings import Settings
from shotline_controller.shot_list import parse_shot_list
from shotline_controller.store.shots import ShotQueue
from shotline_controller.store.attempts import apply_migrations

pytestmark = pytest.mark.integration

TOKEN = "test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
SHEET = "name: Aiko\nstyle: anime\ndesign_prompt: silver hair, amber eyes\n"


def run_service(database_url, tmp_path, work, **app_options):
    """Run `work(client, pool)` against the app on a fresh, migrated database."""
    settings = Settings(state_dir=tmp_path / "state", comfyui_dir=tmp_path / "comfyui", comfyui_python=None,
                        extra_model_paths=None, database_url=database_url)

    async def main():
        async with AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False) as pool:
            await apply_migrations(pool)
            app = create_app(pool, settings, TOKEN, **app_options)
            async with TestClient(TestServer(app)) as client:
                return await work(client, pool)

    return asyncio.run(main())


async def submit(client, shots=None, **extra):
    body = {"shots": shots or [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], **extra}
    response = await client.post("/api/v1/batches", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    return await response.json()


async def sql(pool, query, params=()):
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall() if cursor.description else None


def test_submit_records_the_batch_and_its_shots(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client, [{"id": "s1", "prompt": "rooftop", "seed": 7, "scene": "sc02", "duration": 3.5},
                                        {"id": "s2", "prompt": "rain"}],
                               defaults={"size": "768x512"}, max_attempts=5, priority=3,
                               webhook_url="http://example.invalid/hook")
        rows = await sql(pool, "SELECT s.id, s.shot_key, s.status, s.params, s.max_attempts, s.priority, "
                               "b.source, b.webhook_url FROM shots s JOIN batches b ON b.id = s.batch_id "
                               "WHERE b.id = %s ORDER BY s.position", (created["batch_id"],))
        yaml_body = "shots:\n  - id: y1\n    prompt: from a file\n"
        from_yaml = await client.post("/api/v1/batches", data=yaml_body,
                                      headers={**AUTH, "Content-Type": "application/yaml"})
        batch = await (await client.get(f"/api/v1/batches/{created['batch_id']}")).json()
        shots = await (await client.get(f"/api/v1/batches/{created['batch_id']}/shots")).json()
        return created, rows, from_yaml.status, await from_yaml.json(), batch, shots

    created, rows, yaml_status, from_yaml, batch, shots = run_service(database_url, tmp_path, work)
    assert [str(row[0]) for row in rows] == created["shot_ids"]
    assert [(r[1], r[2], r[4], r[5], r[6], r[7]) for r in rows] == [
        ("s1", "queued", 5, 3, "api", "http://example.invalid/hook"),
        ("s2", "queued", 5, 3, "api", "http://example.invalid/hook")]
    assert rows[0][3]["seed"] == 7 and (rows[0][3]["width"], rows[0][3]["height"]) == (768, 512)
    assert (rows[0][3]["scene"], rows[0][3]["duration"], rows[1][3]["scene"], rows[1][3]["duration"]) == (
        "sc02", 3.5, "main", 2.0)
    assert yaml_status == 201 and len(from_yaml["shot_ids"]) == 1
    assert (batch["total"], batch["done"], batch["counts"], batch["finished"]) == (2, 0, {"queued": 2}, False)
    assert [s["shot_key"] for s in shots["shots"]] == ["s1", "s2"] and shots["total"] == 2


@pytest.mark.parametrize("body, field", [
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "seed": "soon"}]}, "shots[1].seed"),
    ({"shots": [{"id": "a"}]}, "shots[0].prompt"),
    ({"shots": [{"id": "a", "prompt": "x"}], "max_attempts": 0}, "max_attempts"),
    ({"shots": [{"id": "a", "prompt": "x"}], "priority": "high"}, "priority"),
    ({"shots": [{"id": "a", "prompt": "x"}], "webhook_url": "file:///etc/passwd"}, "webhook_url"),
    ({"shots": [{"id": "a", "prompt": "x"}], "colour": "red"}, "colour"),
    ({"shots": [{"id": "a", "prompt": "x", "workflow": "no_such_preset"}]}, "shots[0].workflow"),
    ({"shots": [{"id": "a", "prompt": "x", "scene": "sc 1"}]}, "shots[0].scene"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": 0}]}, "shots[0].duration"),
    ({"shots": []}, "shots"),
    ([1, 2], "body"),
])
def test_malformed_batches_name_the_field(database_url, tmp_path, body, field):
    async def work(client, pool):
        response = await client.post("/api/v1/batches", json=body, headers=AUTH)
        return response.status, await response.json(), await sql(pool, "SELECT count(*) FROM shots")

    status, answer, [(shots,)] = run_service(database_url, tmp_path, work)
    assert (status, answer["field"]) == (400, field), answer
    assert answer["error"] and "Traceback" not in answer["error"]
    assert shots == 0


def test_unreadable_bodies_and_paths(database_url, tmp_path):
    async def work(client, pool):
        answers = {}
        for name, kwargs in {
            "not json": {"data": b"{shots: oops", "headers": {**AUTH, "Content-Type": "application/json"}},
            "bad yaml": {"data": "shots: [unclosed", "headers": {**AUTH, "Content-Type": "application/yaml"}},
            "text": {"data": "hello", "headers": {**AUTH, "Content-Type": "text/plain"}},
            "huge": {"data": io.BytesIO(b"x" * (20 * 1024 * 1024 + 1)),
                     "headers": {**AUTH, "Content-Type": "application/json"}},
        }.items():
            response = await client.post("/api/v1/batches", **kwargs)
            answers[name] = (response.status, (await response.json()).get("field"))
        for path in ("/api/v1/batches/nope", "/api/v1/shots/12", f"/api/v1/batches/{uuid.uuid4()}",
                     f"/api/v1/shots/{uuid.uuid4()}", f"/api/v1/batches/{uuid.uuid4()}/shots", "/api/v1/nothing"):
            response = await client.get(path)
            answers[path] = (response.status, (await response.json()).get("field"))
        return answers

    answers = run_service(database_url, tmp_path, work)
    assert answers["not json"] == (400, "body")
    assert answers["bad yaml"] == (400, "body")
    assert answers["text"] == (415, "Content-Type")
    assert answers["huge"][0] == 413
    assert answers["/api/v1/batches/nope"] == (400, "batch_id")
    assert answers["/api/v1/shots/12"] == (400, "shot_id")
    assert [status for path, (status, _) in answers.items() if path.startswith("/api") and "nope" not in path
            and "/12" not in path] == [404, 404, 404, 404]


def test_writes_need_the_token(database_url, tmp_path):
    async def work(client, pool):
        statuses = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            for method, path in (("POST", "/api/v1/batches"), ("POST", f"/api/v1/shots/{uuid.uuid4()}/cancel"),
                                 ("POST", f"/api/v1/batches/{uuid.uuid4()}/cancel"),
                                 ("PUT", "/api/v1/characters/aiko")):
                response = await client.request(method, path, json={"shots": [{"id": "a", "prompt": "x"}]},
                                                headers=headers)
                statuses.append((response.status, "error" in await response.json()))
        reads = [(await client.get(path)).status for path in ("/health", "/openapi.json", "/api/v1/characters",
                                                                "/api/v1/analytics", "/api/v1/backends")]
        with_token = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x"}]},
                                       headers=AUTH)
        return statuses, reads, with_token.status, await sql(pool, "SELECT count(*) FROM shots")

    statuses, reads, with_token, [(shots,)] = run_service(database_url, tmp_path, work)
    assert set(statuses) == {(401, True)}
    assert reads == [200] * 5
    assert with_token == 201 and shots == 1


def test_openapi_describes_every_route(database_url, tmp_path):
    async def work(client, pool):
        document = await (await client.get("/openapi.json")).json()
        routes = {(route.method.lower(), route.resource.canonical) for route in client.app.router.routes()
                  if route.method != "HEAD"}
        return document, routes, (await (await client.get("/health")).json())

    document, routes, health = run_service(database_url, tmp_path, work)
    assert document["openapi"].startswith("3.1")
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert described == routes
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            if method in ("post", "put"):
                assert "401" in operation["responses"] and operation["security"], (method, path)
    refs = {value for value in json.dumps(document).split('"') if value.startswith("#/components/schemas/")}
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(document["components"]["schemas"])
    assert health == {"ok": True}


def test_cancel_retry_and_review_transitions(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                                        {"id": "c", "prompt": "z"}])
        a, b, c = created["shot_ids"]
        seen = {}

        async def post(name, path, body=None, headers=AUTH):
            response = await client.post(path, json=body, headers=headers)
            seen[name] = (response.status, await response.json())

        await post("review queued", f"/api/v1/shots/{a}/review", {"decision": "approve"})
        await post("cancel", f"/api/v1/shots/{a}/cancel")
        await post("cancel again", f"/api/v1/shots/{a}/cancel")
        await post("retry", f"/api/v1/shots/{a}/retry")
        await post("retry queued", f"/api/v1/shots/{a}/retry")
        await sql(pool, "UPDATE shots SET status = 'needs_review' WHERE id = ANY(%s)", ([b, c],))
        await post("bad decision", f"/api/v1/shots/{b}/review", {"decision": "maybe"})
        await post("approve", f"/api/v1/shots/{b}/review", {"decision": "approve"})
        await post("approve again", f"/api/v1/shots/{b}/review", {"decision": "approve"})
        await post("reject", f"/api/v1/shots/{c}/review", {"decision": "reject"})
        await post("unknown shot", f"/api/v1/shots/{uuid.uuid4()}/cancel")
        await post("unknown review", f"/api/v1/shots/{uuid.uuid4()}/review", {"decision": "reject"})
        await post("malformed id", "/api/v1/shots/not-a-uuid/retry")
        await post("batch cancel", f"/api/v1/batches/{created['batch_id']}/cancel")
        await post("batch cancel again", f"/api/v1/batches/{created['batch_id']}/cancel")
        await post("unknown batch", f"/api/v1/batches/{uuid.uuid4()}/cancel")
        shot = await (await client.get(f"/api/v1/shots/{b}")).json()
        statuses = dict(await sql(pool, "SELECT shot_key, status FROM shots"))
        return seen, shot, statuses

    seen, shot, statuses = run_service(database_url, tmp_path, work)
    assert seen["review queued"][0] == 409 and "needs_review" in seen["review queued"][1]["error"]
    assert (seen["cancel"][0], seen["cancel"][1]["status"]) == (200, "cancelled")
    assert seen["cancel again"][0] == 409
    assert (seen["retry"][0], seen["retry"][1]["status"], seen["retry"][1]["max_attempts"]) == (200, "queued", 4)
    assert seen["retry queued"][0] == 409
    assert seen["bad decision"][0] == 400 and seen["bad decision"][1]["field"] == "decision"
    assert (seen["approve"][0], seen["approve"][1]["status"]) == (200, "approved")
    assert seen["approve again"][0] == 409
    assert (seen["reject"][0], seen["reject"][1]["status"]) == (200, "rejected")
    assert seen["unknown shot"][0] == seen["unknown review"][0] == 404
    assert seen["malformed id"] == (400, {"error": "not a UUID: 'not-a-uuid'", "field": "shot_id"})
    assert seen["batch cancel"][0] == 200 and seen["batch cancel"][1]["cancelled"] == 1
    assert seen["batch cancel"][1]["finished"] is True
    assert seen["batch cancel again"][0] == 409 and seen["unknown batch"][0] == 404
    assert shot["status"] == "approved" and shot["attempts"] == []
    assert statuses == {"a": "cancelled", "b": "approved", "c": "rejected"}


async def read_event(response) -> tuple[str, dict]:
    event, data = None, None
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            raise EOFError("stream closed")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and event:
            return event, data


def test_event_stream_follows_a_batch_until_done(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client)
        a, b = created["shot_ids"]
        async with client.get(f"/api/v1/batches/{created['batch_id']}/events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(read_event(response), 5)
            # a change through the queue NOTIFYs: the event comes before the 2 s tick would
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert (await client.post(f"/api/v1/shots/{a}/cancel", headers=AUTH)).status == 200
            second = await asyncio.wait_for(read_event(response), 5)
            woke_after = time.monotonic() - started
            # the dispatcher's way: statuses written in SQL, with a NOTIFY
            await sql(pool, "UPDATE shots SET status = 'approved' WHERE id = %s", (b,))
            await sql(pool, "SELECT pg_notify('shotline_events', 'test')")
            events = [await asyncio.wait_for(read_event(response), 5) for _ in range(2)]
            closed = await asyncio.wait_for(response.content.read(), 5)
        missing = await client.get(f"/api/v1/batches/{uuid.uuid4()}/events")
        return first, second, woke_after, events, closed, missing.status

    first, second, woke_after, events, closed, missing = run_service(database_url, tmp_path, work)
    assert first[0] == "progress" and first[1]["counts"] == {"queued": 2}
    assert second[0] == "progress" and second[1]["counts"] == {"queued": 1, "cancelled": 1}
    assert woke_after < 1.5
    assert [event for event, _ in events] == ["progress", "done"]
    assert events[1][1]["finished"] is True and events[1][1]["counts"] == {"approved": 1, "cancelled": 1}
    assert closed == b""
    assert missing == 404


def test_event_stream_ticks_without_notify(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}])
        async with client.get(f"/api/v1/batches/{created['batch_id']}/events") as response:
            await read_event(response)
            await sql(pool, "UPDATE shots SET status = 'failed'")  # no NOTIFY: the 2 s tick finds it
            return [await asyncio.wait_for(read_event(response), 6) for _ in range(2)]

    events = run_service(database_url, tmp_path, work)
    assert [event for event, _ in events] == ["progress", "done"]


def test_event_stream_lets_go_of_its_connection_when_the_client_leaves(database_url, tmp_path):
    async def listeners(pool):
        [(count,)] = await sql(pool, "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN shotline_events' "
                                     "AND datname = current_database()")
        return count

    async def work(client, pool):
        created = await submit(client)
        async with client.get(f"/api/v1/batches/{created['batch_id']}/events") as response:
            await read_event(response)
            during = await listeners(pool)
        await sql(pool, "SELECT pg_notify('shotline_events', 'wake')")  # the next write finds the socket gone
        deadline = time.monotonic() + 6
        while await listeners(pool) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return during, await listeners(pool)

    assert run_service(database_url, tmp_path, work) == (1, 0)


def test_webhook_is_signed_and_retried(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(service, "WEBHOOK_BACKOFF_SECONDS", 0.05)
    received = []

    async def hook(request):
        received.append((await request.read(), request.headers.get("X-Shotline-Signature")))
        return web.Response(status=500 if len(received) == 1 else 204)  # the first try fails

    async def work(client, pool):
        receiver = web.Application()
        receiver.router.add_post("/hook", hook)
        async with TestServer(receiver) as hook_server:
            created = await submit(client, webhook_url=str(hook_server.make_url("/hook")))
            other = await submit(client)  # no webhook_url: never posted
            await sql(pool, "UPDATE shots SET status = 'approved' WHERE batch_id = %s", (created["batch_id"],))
            await sql(pool, "UPDATE shots SET status = 'rejected' WHERE id = %s", (created["shot_ids"][1],))
            await sql(pool, "UPDATE shots SET status = 'failed' WHERE batch_id = %s", (other["batch_id"],))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rows = await sql(pool, "SELECT notified_at FROM batches WHERE id = %s", (created["batch_id"],))
                if rows[0][0] is not None:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # another round: must not post again
            return created, await sql(pool, "SELECT id, finished_at IS NOT NULL, notified_at IS NOT NULL "
                                            "FROM batches")

    created, batches = run_service(database_url, tmp_path, work)
    assert len(received) == 2
    body, signature = received[-1]
    assert signature == "sha256=" + hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
    assert json.loads(body) == {"batch_id": created["batch_id"], "counts": {"approved": 1, "rejected": 1},
                                "total": 2}
    flags = {str(batch_id): (finished, notified) for batch_id, finished, notified in batches}
    assert flags[created["batch_id"]] == (True, True)
    assert sorted(flags.values()) == [(True, False), (True, True)]


def test_webhook_secret_signs_when_given(database_url, tmp_path):
    async def work(client, pool):
        bodies = []

        async def hook(request):
            bodies.append((await request.read(), request.headers["X-Shotline-Signature"]))
            return web.Response()

        receiver = web.Application()
        receiver.router.add_post("/hook", hook)
        async with TestServer(receiver) as hook_server:
            created = await submit(client, [{"id": "a", "prompt": "x"}], webhook_url=str(hook_server.make_url("/hook")))
            await sql(pool, "UPDATE shots SET status = 'approved' WHERE batch_id = %s", (created["batch_id"],))
            deadline = time.monotonic() + 10
            while not bodies and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        return bodies

    bodies = run_service(database_url, tmp_path, work, webhook_secret="s3cret")
    [(body, signature)] = bodies
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


def test_characters_put_and_list(database_url, tmp_path):
    library = tmp_path / "comfyui" / "models" / "shotline_characters"

    def raw_form(file_name):
        """A multipart body written by hand: clients percent-encode such names, curl and attackers do not."""
        body = (f'--b0undary\r\nContent-Disposition: form-data; name="sheet"\r\n\r\n{SHEET}\r\n'
                f'--b0undary\r\nContent-Disposition: form-data; name="reference"; filename="{file_name}"\r\n'
                f'Content-Type: image/png\r\n\r\n').encode() + PNG + b"\r\n--b0undary--\r\n"
        return body, {**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"}

    def form(sheet=SHEET, references=(("front.png", PNG),)):
        data = aiohttp.FormData()
        if sheet is not None:
            data.add_field("sheet", sheet, content_type="application/yaml")
        for name, content in references:
            data.add_field("reference", content, filename=name, content_type="image/png")
        return data

    async def work(client, pool):
        answers = {}

        async def put(name, folder, data, headers=AUTH):
            response = await client.put(f"/api/v1/characters/{folder}", data=data, headers=headers)
            answers[name] = (response.status, await response.json())

        await put("create", "aiko", form())
        await put("update", "aiko", form(sheet=json.dumps({"name": "Aiko", "style": "photo",
                                                            "design_prompt": "silver hair"}),
                                         references=[("smile.jpg", PNG)]))
        await put("dot folder", ".hidden", form())
        await put("encoded traversal", "..%2F..%2Fescaped", form())
        await put("traversal reference", "ren", *raw_form("../../escaped.png"))
        await put("absolute reference", "ren", *raw_form("/tmp/escaped.png"))
        await put("encoded reference", "ren", form(references=[("../../escaped.png", PNG)]))
        await put("not an image", "ren", form(references=[("notes.txt", b"hi")]))
        await put("bad style", "ren", form(sheet=SHEET.replace("anime", "cartoon")))
        await put("no sheet", "ren", form(sheet=None))
        await put("not multipart", "ren", json.dumps({"sheet": SHEET}))
        listed = await (await client.get("/api/v1/characters")).json()
        return answers, listed

    answers, listed = run_service(database_url, tmp_path, work)
    assert answers["create"][0] == 200 and answers["create"][1]["references"] == ["front.png"]
    assert answers["update"][0] == 200 and answers["update"][1]["references"] == ["front.png", "smile.jpg"]
    assert (library / "aiko" / "references" / "front.png").read_bytes() == PNG
    for name in ("dot folder", "encoded traversal"):
        assert (answers[name][0], answers[name][1]["field"]) == (400, "folder"), name
    assert answers["traversal reference"][1] == {
        "error": "must be a plain image file name (.bmp, .jpeg, .jpg, .png, .webp), got '../../escaped.png'",
        "field": "references.../../escaped.png"}
    for name in ("absolute reference", "encoded reference", "not an image"):
        assert (answers[name][0], answers[name][1]["field"][:11]) == (400, "references."), name
    assert (answers["bad style"][0], answers["bad style"][1]["field"]) == (400, "sheet.style")
    assert (answers["no sheet"][0], answers["no sheet"][1]["field"]) == (400, "sheet")
    assert answers["not multipart"][0] == 415
    assert not list(tmp_path.rglob("escaped*")) and not (library / "ren").exists()
    [character] = listed["characters"]
    assert (character["folder"], character["name"], character["style"], character["reference_count"]) == \
        ("aiko", "Aiko", "photo", 2)


def test_character_library_from_environment(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOTLINE_CHARACTER_LIBRARY", str(tmp_path / "elsewhere"))

    async def work(client, pool):
        data = aiohttp.FormData()
        data.add_field("sheet", SHEET)
        response = await client.put("/api/v1/characters/aiko", data=data, headers=AUTH)
        return response.status

    assert run_service(database_url, tmp_path, work) == 200
    assert (tmp_path / "elsewhere" / "aiko" / "character.yaml").is_file()


class StandInBackend:
    """The attributes the dispatcher's backends expose; pure data, no ComfyUI behind it."""

    def __init__(self, base_url, stats=None, error=None):
        self.base_url, self.connected = base_url, error is None
        self.queue_remaining = 2 if error is None else None
        self.loaded_checkpoint = "model.safetensors" if error is None else None
        self.stats, self.error = stats, error

    async def system_stats(self):
        if self.error:
            raise self.error
        return self.stats


def test_backends_report_state_and_errors(database_url, tmp_path):
    backends = [StandInBackend("http://gpu1:8188", stats={"system": {"os": "posix"}, "devices": []}),
                StandInBackend("http://gpu2:8188", error=aiohttp.ClientConnectionError("connection refused"))]

    async def work(client, pool):
        response = await client.get("/api/v1/backends")
        return response.status, await response.json()

    status, answer = run_service(database_url, tmp_path, work, backends=backends)
    assert status == 200
    up, down = answer["backends"]
    assert up == {"base_url": "http://gpu1:8188", "connected": True, "queue_remaining": 2,
                  "loaded_checkpoint": "model.safetensors", "system_stats": {"system": {"os": "posix"},
                                                                             "devices": []}}
    assert down["connected"] is False and "system_stats" not in down
    assert down["error"] == "system_stats: ClientConnectionError: connection refused"


def test_analytics_per_character_and_correction_reason(database_url, tmp_path):
    async def work(client, pool):
        _, (a, b, c) = await ShotQueue(pool).submit_batch(parse_shot_list(
            [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "c", "prompt": "z"}]), "test")

        async def attempt(shot, scores=None, correction=None, status="succeeded"):
            """An attempt as the dispatcher records it, written in SQL; scores: {character: score or None}."""
            [(attempt_id,)] = await sql(
                pool, "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, inputs, correction) "
                      "VALUES (%s, (SELECT coalesce(max(attempt_no), 0) + 1 FROM attempts WHERE shot_id = %s), "
                      "%s, 'http://gpu1', %s, '{}', %s) RETURNING id",
                (shot, shot, uuid.uuid4(), status, json.dumps(correction) if correction else None))
            if scores is not None:
                [(verdict_id,)] = await sql(
                    pool, "INSERT INTO verdicts (attempt_id, node_id, check_name, score, passed, details) "
                          "VALUES (%s, '9', 'identity', 0.5, false, '{}') RETURNING id", (attempt_id,))
                for name, score in scores.items():
                    await sql(pool, "INSERT INTO character_scores (verdict_id, attempt_id, character_name, score, "
                                    "threshold, passed, details) VALUES (%s, %s, %s, %s, 0.75, %s, '{}')",
                              (verdict_id, attempt_id, name, score, score is not None and score >= 0.75))

        low_identity = {"reason": "low identity", "changes": {"cfg": 8}}
        await attempt(a, {"Aiko": 0.6})
        await attempt(a, {"Aiko": 0.9, "Ren": None}, low_identity)
        await attempt(b, {"Aiko": 0.8}, low_identity)
        await attempt(c, correction={"reason": "blurry", "changes": {"steps": 30}})
        await attempt(c, correction=low_identity)
        await attempt(c, {"Aiko": 0.1}, low_identity, status="lost")  # lost: counted nowhere
        await sql(pool, "UPDATE shots SET status = CASE WHEN id = %s THEN 'rejected' ELSE 'approved' END", (b,))
        response = await client.get("/api/v1/analytics")
        return response.status, await response.json()

    status, answer = run_service(database_url, tmp_path, work)
    assert status == 200
    aiko, ren = answer["characters"]
    assert (aiko["character"], aiko["attempts"], aiko["passed"]) == ("Aiko", 3, 2)
    assert aiko["pass_rate"] == pytest.approx(2 / 3) and aiko["mean_score"] == pytest.approx((0.6 + 0.9 + 0.8) / 3)
    assert (ren["character"], ren["attempts"], ren["passed"], ren["mean_score"], ren["not_on_screen"]) == \
        ("Ren", 1, 0, None, 1)
    assert answer["corrections"] == [
        {"reason": "low identity", "corrected_attempts": 3, "led_to_approval": 2, "approval_rate": 2 / 3},
        {"reason": "blurry", "corrected_attempts": 1, "led_to_approval": 0, "approval_rate": 0.0}]


def test_token_is_created_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOTLINE_TOKEN", raising=False)
    token, created = load_or_create_token(tmp_path / "state")
    assert created and len(token) >= 40
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "service_token").st_mode) == 0o600
    assert load_or_create_token(tmp_path / "state") == (token, False)
    monkeypatch.setenv("SHOTLINE_TOKEN", "from-env")
    assert load_or_create_token(tmp_path / "state") == ("from-env", False)
