"""The HTTP service (`shotline serve`) against a real PostgreSQL: no ComfyUI, no workers (a test runs one webhook
round itself where it needs one).

Every answer a test receives is checked against the served /openapi.json (`CheckedClient`): a documented status,
a documented content type, and a body valid against the documented schema. What is tested:
- submitting (JSON, YAML, multipart with images), refusals that name the field, the token, the transitions;
- what no client may do: NUL or lone surrogates in text, broken multipart headers, deep nesting, huge bodies,
  webhooks to the farm's own network, server files named as images or music, trailing newlines in names;
- the event streams (one shared LISTEN connection, a cap, 503 when the database is away), YAML parsed off the
  event loop, webhooks signed and delivered once, characters, assemblies, backends, analytics, the document.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import io
import json
import os
import re
import stat
import threading
import time
import urllib.request
import uuid
import wave

import aiohttp
import jsonschema_rs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg_pool import AsyncConnectionPool

from shotline_controller.api import system
from shotline_controller.api.app import create_app, load_or_create_token
from shotline_controller.comfy.client import ComfyUnavailable
from shotline_controller.contract import shots_of
from shotline_controller.metrics import ControllerMetrics
from shotline_controller.parsing import MAX_YAML_BYTES, parse_yaml
from shotline_controller.settings import PROJECT_ROOT, Settings, load_settings
from shotline_controller.store.migrations import apply_migrations
from shotline_controller.store.shots import ShotStore
from shotline_controller.store.status import EVENTS_CHANNEL
from shotline_controller.webhook_policy import CheckedResolver, WebhookPolicy, parse_allow_list
from shotline_controller.workers import webhooks
from shotline_controller.workers.webhooks import WebhookSender

pytestmark = pytest.mark.integration

TOKEN = "test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
SHEET = "name: Aiko\nstyle: anime\ndesign_prompt: silver hair, amber eyes\n"
PUBLIC_HOOK = "http://93.184.215.14/hook"   # a public address: passes the webhook policy with no DNS


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(8000)
        file.writeframes(b"\0\0" * 800)
    return buffer.getvalue()


WAV = _wav()


# --- the answers must be what the document says ----------------------------------------------------------------

def _operation(document: dict, method: str, path: str) -> dict | None:
    for template, item in document["paths"].items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            return item[method.lower()]
    return None


def answer_problems(document: dict, method: str, path: str, status: int, media_type: str, body: bytes | None) -> list:
    """Why an answer does not match the document (empty: it does): its status, content type and body."""
    operation = _operation(document, method, path)
    if operation is None:
        return []  # not a route of the service (an unknown path): nothing documented to hold it to
    response = operation["responses"].get(str(status))
    if response is None:
        return [f"{method} {path}: status {status} is not documented ({sorted(operation['responses'])})"]
    content = response.get("content", {})
    if media_type not in content:
        return [f"{method} {path} {status}: content type {media_type!r} is not documented ({sorted(content)})"]
    schema = content[media_type]["schema"]
    if not schema or body is None or media_type != "application/json":
        return []
    validator = jsonschema_rs.validator_for({"components": document["components"], **schema}, validate_formats=True)
    return [f"{method} {path} {status}: {error.message} at {list(error.instance_path)}"
            for error in validator.iter_errors(json.loads(body))]


class CheckedClient(TestClient):
    """A TestClient that keeps every answer it receives, to check them all against the served document."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: list[tuple[str, str, int, str, bytes | None]] = []

    async def _request(self, method, path, **kwargs):
        response = await super()._request(method, path, **kwargs)
        streaming = response.content_type == "text/event-stream"
        body = None if streaming else await response.read()
        self.answers.append((method, response.url.raw_path, response.status, response.content_type, body))
        return response

    async def problems(self) -> list[str]:
        async with self.session.get(self.make_url("/openapi.json")) as response:
            document = await response.json()
        return [problem for answer in self.answers for problem in answer_problems(document, *answer)]


def settings_for(database_url: str, tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", comfyui_dir=tmp_path / "comfyui", comfyui_python=None,
                    extra_model_paths=None, database_url=database_url)


def run_service(database_url, tmp_path, work, *, settings=None, pool_options=None, **app_options):
    """Run `work(client, pool)` against the app on a fresh, migrated database; then every answer the client got
    must match the document."""
    settings = settings or settings_for(database_url, tmp_path)

    async def main():
        async with AsyncConnectionPool(database_url, open=False,
                                       **{"min_size": 1, "max_size": 4, **(pool_options or {})}) as pool:
            await apply_migrations(pool)
            app = create_app(pool, settings, TOKEN, **app_options)
            async with CheckedClient(TestServer(app, host="127.0.0.1")) as client:
                result = await work(client, pool)
                problems = await client.problems()
        assert not problems, "answers that do not match the document:\n" + "\n".join(problems)
        return result

    return asyncio.run(main())


async def submit(client, shots=None, **extra) -> dict:
    body = {"shots": shots or [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}], **extra}
    response = await client.post("/api/v1/batches", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    return await response.json()


async def sql(pool, query, params=()):
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall() if cursor.description else None


async def shot_count(pool) -> int:
    return (await sql(pool, "SELECT count(*) FROM shots"))[0][0]


async def add_output(pool, shot_id, filename: str) -> None:
    """A succeeded attempt of the shot with one output file, as the dispatcher records it."""
    [(attempt_id,)] = await sql(
        pool, "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, finished_at) "
              "VALUES (%s, 1, %s, 'http://gpu1:8188', 'succeeded', now()) RETURNING id", (shot_id, uuid.uuid4()))
    await sql(pool, "INSERT INTO outputs (attempt_id, node_id, kind, filename, subfolder) "
                    "VALUES (%s, '9', 'images', %s, 'shotline')", (attempt_id, filename))


def multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"b0undary") -> tuple[bytes, dict]:
    """A multipart body written by hand: (part headers, content) each. Clients escape what they send in part
    headers; curl and attackers do not."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
                    for headers, content in parts) + b"--" + boundary + b"--\r\n"
    return body, {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def field_part(name: str, content: bytes, extra: str = "") -> tuple[bytes, bytes]:
    return f'Content-Disposition: form-data; name="{name}"{extra}'.encode(), content


def assert_names_no_server_path(message: str, tmp_path, given: str = "") -> None:
    """No folder of the server in `message` (the client's own value, `given`, may be quoted back)."""
    message = message.replace(given, "<given>") if given else message
    for path in (str(tmp_path), str(PROJECT_ROOT), "/etc/", "/root", "/tmp", "/home", "site-packages"):
        assert path not in message, (path, message)


# --- submitting ------------------------------------------------------------------------------------------------

def test_submit_records_the_batch_and_its_shots_from_json_and_yaml(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client, [{"id": "s1", "prompt": "rooftop", "seed": 7, "scene": "sc02", "duration": 3.5},
                                        {"id": "s2", "prompt": "rain"}],
                               defaults={"size": "768x512"}, max_attempts=5, priority=3, webhook_url=PUBLIC_HOOK)
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
        ("s1", "queued", 5, 3, "api", PUBLIC_HOOK), ("s2", "queued", 5, 3, "api", PUBLIC_HOOK)]
    assert rows[0][3]["seed"] == 7 and (rows[0][3]["width"], rows[0][3]["height"]) == (768, 512)
    assert (rows[0][3]["scene"], rows[0][3]["duration"], rows[1][3]["scene"], rows[1][3]["duration"]) == (
        "sc02", 3.5, "main", 2.0)
    assert yaml_status == 201 and len(from_yaml["shot_ids"]) == 1
    assert (batch["total"], batch["done"], batch["counts"], batch["finished"]) == (2, 0, {"queued": 2}, False)
    assert batch["webhook_url"] == PUBLIC_HOOK
    assert [s["shot_key"] for s in shots["shots"]] == ["s1", "s2"] and shots["total"] == 2


@pytest.mark.parametrize("body, field", [
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "seed": "soon"}]}, "shots[1].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": True}]}, "shots[0].seed"),
    ({"shots": [{"id": "a", "prompt": "x", "seed": -1}]}, "shots[0].seed"),
    ({"shots": [{"id": "a"}]}, "shots[0].prompt"),
    ({"shots": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]}, "shots[1].id"),
    ({"shots": [{"id": "a", "prompt": "x"}], "max_attempts": 0}, "max_attempts"),
    ({"shots": [{"id": "a", "prompt": "x"}], "priority": "high"}, "priority"),
    ({"shots": [{"id": "a", "prompt": "x"}], "priority": 10**7}, "priority"),
    ({"shots": [{"id": "a", "prompt": "x"}], "colour": "red"}, "colour"),
    ({"shots": [{"id": "a", "prompt": "x", "workflow": "no_such_preset"}]}, "shots[0].workflow"),
    ({"shots": [{"id": "a", "prompt": "x", "scene": "sc 1"}]}, "shots[0].scene"),
    ({"shots": [{"id": "a", "prompt": "x", "workflow": "shot_character", "characters": ["nobody"]}]},
     "shots[0].characters[0]"),
    ({"shots": [{"id": "a", "prompt": "x", "characters": ["aiko"]}]}, "shots[0].workflow"),  # no character slot
    ({"shots": [{"id": "a", "prompt": "x", "characters": ["aiko", "aiko"]}]}, "shots[0].characters"),
    ({"shots": [{"id": "a", "prompt": "x", "characters": ["a", "b", "c", "d", "e"]}]}, "shots[0].characters"),
    ({"shots": [{"id": "a", "prompt": "x", "characters": ["aiko\n"]}]}, "shots[0].characters[0]"),
    ({"shots": [{"id": "a", "prompt": "x", "identity_threshold": 1.5}]}, "shots[0].identity_threshold"),
    ({"shots": [{"id": "a", "prompt": "x", "refine_cycles": 0}]}, "shots[0].refine_cycles"),
    ({"shots": [{"id": "a", "prompt": "x", "duration": 0}]}, "shots[0].duration"),
    ({"shots": [{"id": "a", "prompt": "x", "size": "500x500"}]}, "shots[0].size"),
    ({"shots": []}, "shots"),
    ({"defaults": {"id": "x"}, "shots": [{"id": "a", "prompt": "x"}]}, "defaults.id"),
    ("just text", "body"),
])
def test_malformed_batches_name_the_field_and_queue_nothing(database_url, tmp_path, body, field):
    async def work(client, pool):
        response = await client.post("/api/v1/batches", json=body, headers=AUTH)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"]) == (400, field), answer
    assert answer["error"] and "Traceback" not in answer["error"]
    assert shots == 0


def test_a_character_shot_is_queued_with_its_characters(database_url, tmp_path):
    from shotline.core.characters import parse_sheet, write_character
    library = tmp_path / "library"
    import cv2
    import numpy as np
    front = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    write_character(library, "aiko", parse_sheet({"name": "Aiko", "design_prompt": "silver bob"}),
                    {"front.png": front})
    write_character(library, "bare", parse_sheet({"name": "Bare", "design_prompt": "no references yet"}), {})
    settings = Settings(state_dir=tmp_path / "state", comfyui_dir=None, comfyui_python=None, extra_model_paths=None,
                        database_url=database_url, character_library_root=library)

    async def work(client, pool):
        batch = await submit(client, [{"id": "c1", "prompt": "x", "workflow": "shot_character",
                                       "characters": ["aiko"], "identity_threshold": 0.6}])
        refused = await client.post("/api/v1/batches", json={"shots": [
            {"id": "c1", "prompt": "x", "workflow": "shot_character", "characters": ["aiko", "ren"]}]}, headers=AUTH)
        bare = await client.post("/api/v1/batches", json={"shots": [
            {"id": "c2", "prompt": "x", "workflow": "shot_character", "characters": ["bare"]}]}, headers=AUTH)
        return (batch, await sql(pool, "SELECT params FROM shots"), refused.status, await refused.json(),
                bare.status, await bare.json())

    batch, rows, status, refusal, bare_status, bare = run_service(database_url, tmp_path, work, settings=settings)
    assert (bare_status, bare["field"]) == (400, "shots[0].characters[0]") and "no reference images" in bare["error"]
    assert len(batch["shot_ids"]) == 1
    assert rows[0][0]["characters"] == ["aiko"] and rows[0][0]["identity_threshold"] == 0.6
    assert (status, refusal["field"]) == (400, "shots[0].characters[1]")
    assert "no character 'ren' in the library (it has: aiko, bare)" in refusal["error"]


def test_unreadable_bodies_and_paths(database_url, tmp_path):
    async def work(client, pool):
        answers = {}
        for name, kwargs in {
            "not json": {"data": b"{shots: oops", "headers": {**AUTH, "Content-Type": "application/json"}},
            "bad yaml": {"data": "shots: [unclosed", "headers": {**AUTH, "Content-Type": "application/yaml"}},
            "text": {"data": "hello", "headers": {**AUTH, "Content-Type": "text/plain"}},
            "NaN": {"data": b'{"shots": [{"id": "a", "prompt": "x", "cfg": NaN}]}',
                    "headers": {**AUTH, "Content-Type": "application/json"}},
        }.items():
            response = await client.post("/api/v1/batches", **kwargs)
            answers[name] = (response.status, (await response.json()).get("field"))
        for path in ("/api/v1/batches/nope", "/api/v1/shots/12", f"/api/v1/batches/{uuid.uuid4()}",
                     f"/api/v1/shots/{uuid.uuid4()}", f"/api/v1/batches/{uuid.uuid4()}/shots",
                     f"/api/v1/assembly-jobs/{uuid.uuid4()}", "/api/v1/nothing"):
            response = await client.get(path)
            answers[path] = (response.status, (await response.json()).get("field"))
        return answers, await shot_count(pool)

    answers, shots = run_service(database_url, tmp_path, work)
    assert answers["not json"] == answers["bad yaml"] == answers["NaN"] == (400, "body")
    assert answers["text"] == (415, "Content-Type")
    assert answers["/api/v1/batches/nope"] == (400, "batch_id")
    assert answers["/api/v1/shots/12"] == (400, "shot_id")
    assert [status for path, (status, _) in answers.items() if path.startswith("/api") and "nope" not in path
            and "/12" not in path] == [404] * 5
    assert shots == 0


def test_writes_and_event_streams_need_the_token(database_url, tmp_path):
    batch_id, shot_id = uuid.uuid4(), uuid.uuid4()
    guarded = [("POST", "/api/v1/batches"), ("POST", f"/api/v1/shots/{shot_id}/cancel"),
               ("POST", f"/api/v1/shots/{shot_id}/retry"), ("POST", f"/api/v1/shots/{shot_id}/review"),
               ("POST", f"/api/v1/batches/{batch_id}/cancel"), ("POST", f"/api/v1/batches/{batch_id}/assemblies"),
               ("GET", f"/api/v1/batches/{batch_id}/events"), ("PUT", "/api/v1/characters/aiko"),
               ("POST", "/api/v1/uploads"), ("DELETE", "/api/v1/characters/aiko/negatives/crowd"),
               ("GET", "/api/v1/characters/aiko/dataset")]

    async def work(client, pool):
        statuses = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path in guarded:
                response = await client.request(method, path, json={"shots": [{"id": "a", "prompt": "x"}]},
                                                headers=headers)
                statuses.append((response.status, response.headers.get("WWW-Authenticate"),
                                 "error" in await response.json()))
        reads = [(await client.get(path)).status for path in ("/health", "/openapi.json", "/metrics",
                                                                "/api/v1/characters", "/api/v1/analytics",
                                                                "/api/v1/backends", "/api/v1/batches", "/",
                                                                "/api/v1/characters/aiko/learning")]
        with_token = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x"}]},
                                       headers=AUTH)
        return statuses, reads, with_token.status, await shot_count(pool)

    statuses, reads, with_token, shots = run_service(database_url, tmp_path, work)
    assert set(statuses) == {(401, "Bearer", True)} and len(statuses) == 5 * len(guarded)
    assert reads == [200] * 9
    assert with_token == 201 and shots == 1


def test_token_is_created_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOTLINE_TOKEN", raising=False)
    token, created = load_or_create_token(tmp_path / "state")
    assert created and len(token) >= 40
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "service_token").st_mode) == 0o600
    assert load_or_create_token(tmp_path / "state") == (token, False)
    monkeypatch.setenv("SHOTLINE_TOKEN", "from-env")
    assert load_or_create_token(tmp_path / "state") == ("from-env", False)


# --- text no client may send -----------------------------------------------------------------------------------

def _json(shot: dict, **batch) -> bytes:
    """A batch body as JSON text; Python's json writes a NUL as \\u0000 and a lone surrogate as \\ud800."""
    return json.dumps({"shots": [{"id": "a", "prompt": "x", **shot}], **batch}).encode()


@pytest.mark.parametrize("content_type, body, field", [
    ("application/json", _json({"prompt": "a girl\x00 on a roof"}), "shots[0].prompt"),
    ("application/json", _json({"prompt": "a girl \ud800 on a roof"}), "shots[0].prompt"),
    ("application/json", _json({"negative": "blurry\x00"}), "shots[0].negative"),
    ("application/json", _json({"negative": "\udfff"}), "shots[0].negative"),
    ("application/json", _json({"checkpoint": "sd15/model\x00.safetensors"}), "shots[0].checkpoint"),
    ("application/json", _json({"checkpoint": "model\ud800.safetensors"}), "shots[0].checkpoint"),
    ("application/json", _json({"dialogue": "Where is she?\x00"}), "shots[0].dialogue"),
    ("application/json", _json({"dialogue": "Where \ud83d is she?"}), "shots[0].dialogue"),
    ("application/json", _json({"id": "s\x0001"}), "shots[0].id"),
    ("application/json", _json({"image": "pose\ud800.png"}), "shots[0].image"),
    ("application/json", _json({}, defaults={"prompt": "x\x00"}), "defaults.prompt"),
    ("application/json", _json({}, webhook_url="http://93.184.215.14/\ud800"), "webhook_url"),
    ("application/json", b'{"shots": [{"id": "a", "prompt": "raw \x00 byte"}]}', "body"),
    ("application/yaml", b'shots:\n  - id: a\n    prompt: "bad\\0 prompt"\n', "shots[0].prompt"),
    ("application/yaml", b'shots:\n  - id: a\n    prompt: x\n    negative: "\\0"\n', "shots[0].negative"),
    ("application/yaml", b"shots:\n  - id: a\n    prompt: raw \x00 byte\n", "body"),
])
def test_nul_and_lone_surrogates_in_any_text_are_refused_by_field(database_url, tmp_path, content_type, body, field):
    async def work(client, pool):
        response = await client.post("/api/v1/batches", data=body, headers={**AUTH, "Content-Type": content_type})
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer.get("field")) == (400, field), answer
    assert shots == 0


def test_nul_in_a_multipart_shot_list_is_refused_by_field(database_url, tmp_path):
    async def work(client, pool):
        body, headers = multipart(field_part("shots", _json({"prompt": "x\x00"})))
        response = await client.post("/api/v1/batches", data=body, headers=headers)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"], shots) == (400, "shots[0].prompt", 0), answer


@pytest.mark.parametrize("headers", [
    b'Content-Disposition: form-data; name="sh\x01ots"',
    b'Content-Disposition: form-data; name="shots\x7f"',
    b'Content-Disposition: form-data; name="shots"; filename="list\x07.json"',
    b'Content-Disposition: form-data; name="shots"\r\nContent-Type: application/\x00json',
    b'Content-Disposition: form-data; name="shots"\r\nX-Note\x1b: 1',
])
def test_a_control_character_in_a_part_header_is_a_400(database_url, tmp_path, headers):
    async def work(client, pool):
        body, request_headers = multipart((headers, _json({})))
        batches = await client.post("/api/v1/batches", data=body, headers=request_headers)
        uploads = await client.post("/api/v1/uploads", data=multipart((headers.replace(b"shots", b"file"), PNG))[0],
                                    headers=request_headers)
        characters = await client.put("/api/v1/characters/aiko", headers=request_headers,
                                      data=multipart((headers.replace(b"shots", b"sheet"), SHEET.encode()))[0])
        return [(r.status, (await r.json())["field"]) for r in (batches, uploads, characters)], await shot_count(pool)

    answers, shots = run_service(database_url, tmp_path, work)
    assert answers == [(400, "body")] * 3
    assert shots == 0
    assert not (tmp_path / "comfyui" / "models" / "shotline_characters" / "aiko").exists()


def test_deep_nesting_is_a_400_and_a_21_mb_body_is_a_413(database_url, tmp_path):
    deep_json = b"[" * 100_000 + b"]" * 100_000
    deep_yaml = b"shots: " + b"[" * 100_000 + b"]" * 100_000
    huge = b"x" * (21 * 1024 * 1024)

    async def work(client, pool):
        answers = {}

        async def post(name, path, data, content_type):
            response = await client.post(path, data=data, headers={**AUTH, "Content-Type": content_type})
            answers[name] = (response.status, (await response.json()).get("field"))

        await post("deep json", "/api/v1/batches", deep_json, "application/json")
        await post("deep yaml", "/api/v1/batches", deep_yaml, "application/yaml")
        await post("deep review", f"/api/v1/shots/{uuid.uuid4()}/review", deep_json, "application/json")
        await post("deep assembly", f"/api/v1/batches/{(await submit(client))['batch_id']}/assemblies", deep_json,
                   "application/json")
        body, headers = multipart(field_part("shots", deep_json))
        await post("deep part", "/api/v1/batches", body, headers["Content-Type"])
        await post("huge json", "/api/v1/batches", io.BytesIO(huge), "application/json")
        body, headers = multipart(field_part("file", huge, '; filename="big.png"'))
        await post("huge multipart", "/api/v1/uploads", io.BytesIO(body), headers["Content-Type"])
        await post("huge upload", "/api/v1/uploads", io.BytesIO(b"\x89PNG\r\n\x1a\n" + huge), "image/png")
        return answers, await shot_count(pool)

    answers, shots = run_service(database_url, tmp_path, work)
    assert answers["deep json"] == answers["deep yaml"] == (400, "body")
    assert answers["deep review"] == answers["deep assembly"] == (400, "body")
    assert answers["deep part"] == (400, "shots")
    assert answers["huge json"] == answers["huge multipart"] == answers["huge upload"] == (413, "body")
    assert shots == 2  # the batch the assembly request was sent to, nothing else


def test_a_body_whose_content_encoding_does_not_decode_is_a_400(database_url, tmp_path):
    """Found by the fuzz run's neighbour probes: aiohttp raised RequestPayloadError out of the body readers (500)."""
    garbage = {"Content-Encoding": "gzip"}

    async def work(client, pool):
        answers = []
        for method, path, content_type in (
                ("POST", "/api/v1/batches", "application/json"),
                ("POST", "/api/v1/uploads", "multipart/form-data; boundary=b0undary"),
                ("PUT", "/api/v1/characters/aiko", "application/x-www-form-urlencoded"),
                ("POST", f"/api/v1/shots/{uuid.uuid4()}/review", "application/json")):
            response = await client.request(method, path, data=b"this is not gzip",
                                            headers={**AUTH, **garbage, "Content-Type": content_type})
            answers.append((response.status, (await response.json()).get("field")))
        compressed = await client.post("/api/v1/batches", data=gzip.compress(_json({})),
                                       headers={**AUTH, **garbage, "Content-Type": "application/json"})
        return answers, compressed.status, await shot_count(pool)

    answers, compressed, shots = run_service(database_url, tmp_path, work)
    assert answers == [(400, "body")] * 4
    assert (compressed, shots) == (201, 1)  # a body that does decode is read as usual


@pytest.mark.parametrize("path, content_type, body, field", [
    ("/api/v1/batches", "application/yaml", b"shots:\n  - id: " + b"9" * 5000 + b"\n    prompt: x\n", "body"),
    ("/api/v1/batches", "application/yaml", b"shots:\n  - id: a\n    prompt: x\n    seed: 2024-13-45\n", "body"),
    ("/api/v1/characters/aiko", "application/x-www-form-urlencoded",
     b"sheet=name%3A+Aiko%0Adesign_prompt%3A+x%0Aborn%3A+2024-02-30", "sheet"),
    ("/api/v1/characters/aiko", "application/x-www-form-urlencoded",
     b"sheet=name%3A+Aiko%0Adesign_prompt%3A+x%0A1%3A+2", "sheet[1]"),
])
def test_yaml_values_python_cannot_build_are_a_400(database_url, tmp_path, path, content_type, body, field):
    """A 5000-digit integer or the 13th month made PyYAML's constructors raise ValueError: a 500 before."""
    async def work(client, pool):
        method = client.put if "characters" in path else client.post
        response = await method(path, data=body, headers={**AUTH, "Content-Type": content_type})
        return response.status, await response.json()

    status, answer = run_service(database_url, tmp_path, work)
    assert (status, answer["field"]) == (400, field), answer


def yaml_alias_bomb(levels: int, at: str) -> bytes:
    """Nine lists of nine aliases, `levels` deep: 9**levels values in a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n" + at.format(bomb=f"*a{levels - 1}") + "\n").encode()


def test_a_yaml_alias_bomb_is_refused_at_once(database_url, tmp_path):
    """387 million values in 460 bytes: quoting the wrong value back (repr) took minutes and gigabytes before."""
    batch = yaml_alias_bomb(9, "shots: [{{id: a, prompt: {bomb}}}]")
    sheet = yaml_alias_bomb(9, "name: Aiko\ndesign_prompt: {bomb}")
    anchors = b"shots:\n  - &base {id: a, prompt: x, steps: 20}\n  - {<<: *base, id: b}\n"

    async def work(client, pool):
        started = time.monotonic()
        refused = await asyncio.wait_for(client.post(
            "/api/v1/batches", data=batch, headers={**AUTH, "Content-Type": "application/yaml"}), 10)
        form = aiohttp.FormData()
        form.add_field("sheet", sheet.decode(), content_type="application/yaml")
        sheet_refused = await asyncio.wait_for(client.put("/api/v1/characters/aiko", data=form, headers=AUTH), 10)
        seconds = time.monotonic() - started
        merged = await client.post("/api/v1/batches", data=anchors,
                                   headers={**AUTH, "Content-Type": "application/yaml"})
        return [(r.status, (await r.json())["field"]) for r in (refused, sheet_refused)], seconds, merged.status, \
            await sql(pool, "SELECT shot_key, params->>'steps' FROM shots ORDER BY position")

    refusals, seconds, merged, shots = run_service(database_url, tmp_path, work)
    assert refusals == [(400, "body"), (400, "sheet")] and seconds < 5
    assert merged == 201 and shots == [("a", "20"), ("b", "20")]  # anchors a person writes still work


@pytest.mark.parametrize("request_path, body, field", [
    ("/api/v1/characters/aiko%0A", None, "folder"),
    ("/api/v1/batches", {"shots": [{"id": "s01\n", "prompt": "x"}]}, "shots[0].id"),
    ("/api/v1/batches", {"shots": [{"id": "s01", "prompt": "x", "scene": "main\n"}]}, "shots[0].scene"),
    ("/api/v1/batches", {"shots": [{"id": "s01", "prompt": "x", "workflow": "shot_txt2img\n"}]}, "shots[0].workflow"),
])
def test_a_trailing_newline_is_not_part_of_a_name(database_url, tmp_path, request_path, body, field):
    library = tmp_path / "comfyui" / "models" / "shotline_characters"

    async def work(client, pool):
        if body is None:
            form = aiohttp.FormData()
            form.add_field("sheet", SHEET, content_type="application/yaml")
            response = await client.put(request_path, data=form, headers=AUTH)
        else:
            response = await client.post(request_path, json=body, headers=AUTH)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"]) == (400, field), answer
    assert shots == 0
    assert not library.exists() or list(library.iterdir()) == []


# --- webhooks --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://10.1.2.3:6379/", "http://[::1]:5432/", "http://0x7f000001/",
    "http://localhost:1/", "http://[::ffff:127.0.0.1]/", "http://192.168.0.1/", "file:///etc/passwd",
    "http://user:pw@example.com/", "gopher://example.com/", "http://93.184.215.14/#fragment",
])
def test_webhooks_to_the_farms_own_network_are_refused(database_url, tmp_path, url):
    async def work(client, pool):
        response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x"}],
                                                              "webhook_url": url}, headers=AUTH)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"], shots) == (400, "webhook_url", 0), answer


@pytest.mark.parametrize("url", ["http://a..b/hook", "http://.example/", "http://\u3002example/",
                                 "http://" + "a" * 64 + ".example/"])
def test_a_webhook_host_that_is_no_host_name_is_a_400_not_a_500(database_url, tmp_path, url):
    """Empty labels and labels over 63 characters made the IDNA codec raise UnicodeError out of the check."""
    async def work(client, pool):
        response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x"}],
                                                              "webhook_url": url}, headers=AUTH)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"], shots) == (400, "webhook_url", 0), answer
    assert "not a valid host name" in answer["error"]


class Receiver:
    """A tiny webhook receiver on 127.0.0.1: records what it is sent; `/redirect-*` answer 302."""

    def __init__(self, status: list[int] | None = None):
        self.received: list[tuple[str, bytes, str | None]] = []
        self.statuses = list(status or [])
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)
        self.app.router.add_post("/landing", self.hook)
        self.app.router.add_post("/redirect-metadata", self.redirect("http://169.254.169.254/latest/meta-data"))
        self.app.router.add_post("/redirect-landing", self.redirect("/landing"))
        self.server = TestServer(self.app, host="127.0.0.1")

    async def hook(self, request):
        self.received.append((request.path, await request.read(), request.headers.get("X-Shotline-Signature")))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)

    def redirect(self, location):
        async def handler(request):
            self.received.append((request.path, await request.read(), request.headers.get("X-Shotline-Signature")))
            raise web.HTTPFound(location)
        return handler

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


LOCAL = WebhookPolicy(parse_allow_list("127.0.0.1"))


def webhook_sender(pool, secret: bytes = b"s3cret", policy=LOCAL) -> tuple[WebhookSender, aiohttp.ClientSession]:
    """The sender and session as workers/webhooks.py runs them (its resolver checks every address)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=CheckedResolver(policy)))
    return WebhookSender(ShotStore(pool), secret, policy, ControllerMetrics()), session


def test_an_allowed_local_receiver_gets_one_signed_post_when_the_batch_finishes(database_url, tmp_path):
    receiver = Receiver()

    async def work(client, pool):
        async with receiver.server:
            created = await submit(client, webhook_url=receiver.url("/hook"))
            other = await submit(client)  # no webhook_url: never posted
            sender, session = webhook_sender(pool)
            async with session:
                before = await sender.round(session)  # nothing final yet
                await sql(pool, "UPDATE shots SET status = 'approved' WHERE batch_id = %s", (created["batch_id"],))
                await sql(pool, "UPDATE shots SET status = 'rejected' WHERE id = %s", (created["shot_ids"][1],))
                await sql(pool, "UPDATE shots SET status = 'failed' WHERE batch_id = %s", (other["batch_id"],))
                due = await sender.round(session)
                again = await sender.round(session)  # delivered once: never again
            flags = await sql(pool, "SELECT id, finished_at IS NOT NULL, notified_at IS NOT NULL FROM batches")
            return created, (before, due, again), flags

    created, rounds, flags = run_service(database_url, tmp_path, work, webhook_policy=LOCAL)
    assert rounds == (0, 1, 0)
    [(path, body, signature)] = receiver.received
    assert path == "/hook"
    assert signature == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert json.loads(body) == {"batch_id": created["batch_id"], "counts": {"approved": 1, "rejected": 1},
                                "total": 2}
    flags = {str(batch_id): (finished, notified) for batch_id, finished, notified in flags}
    assert flags[created["batch_id"]] == (True, True)
    assert sorted(flags.values()) == [(True, False), (True, True)]


def test_the_allow_list_comes_from_the_environment(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOTLINE_WEBHOOK_ALLOW", "127.0.0.1, 10.0.0.0/8")

    async def work(client, pool):
        answers = []
        for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3:6379/", "http://192.168.0.1/"):
            response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x"}],
                                                                  "webhook_url": url}, headers=AUTH)
            answers.append(response.status)
        return answers

    assert run_service(database_url, tmp_path, work) == [201, 201, 400]


def test_a_failed_delivery_is_tried_again_with_the_same_signed_body(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(webhooks, "WEBHOOK_BACKOFF_SECONDS", 0.01)
    receiver = Receiver(status=[500])  # the first try fails

    async def work(client, pool):
        async with receiver.server:
            created = await submit(client, [{"id": "a", "prompt": "x"}], webhook_url=receiver.url("/hook"))
            await sql(pool, "UPDATE shots SET status = 'approved' WHERE batch_id = %s", (created["batch_id"],))
            sender, session = webhook_sender(pool, secret=TOKEN.encode())
            async with session:
                return await sender.round(session), sender.metrics

    due, metrics = run_service(database_url, tmp_path, work, webhook_policy=LOCAL)
    assert due == 1
    (_, first, signature), (_, second, _) = receiver.received
    assert first == second and signature == "sha256=" + hmac.new(TOKEN.encode(), first, hashlib.sha256).hexdigest()
    assert metrics.webhooks.labels("delivered")._value.get() == 1


def test_webhook_redirects_are_not_followed(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(webhooks, "WEBHOOK_BACKOFF_SECONDS", 0.01)
    receiver = Receiver()

    async def work(client, pool):
        async with receiver.server:
            sender, session = webhook_sender(pool)
            async with session:
                return [await sender.deliver(session, receiver.url(path), b'{"batch_id": "x"}')
                        for path in ("/redirect-metadata", "/redirect-landing")], sender.metrics

    delivered, metrics = run_service(database_url, tmp_path, work, webhook_policy=LOCAL)
    assert delivered == [False, False]
    paths = [path for path, _, _ in receiver.received]
    assert "/landing" not in paths  # a followed redirect would have landed here
    assert paths == ["/redirect-metadata"] * webhooks.WEBHOOK_TRIES + ["/redirect-landing"] * webhooks.WEBHOOK_TRIES
    assert metrics.webhooks.labels("failed")._value.get() == 2


# --- media: uploads and file parts, never server files ---------------------------------------------------------

@pytest.mark.parametrize("image", ["/etc/passwd", "../../x.png", "/root/.ssh/id_rsa.png", "refs/pose.png",
                                   "sha256:" + "0" * 64])
def test_a_shot_image_never_names_a_server_file(database_url, tmp_path, image):
    async def work(client, pool):
        response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x", "image": image}]},
                                     headers=AUTH)
        return response.status, await response.json(), await shot_count(pool)

    status, answer, shots = run_service(database_url, tmp_path, work)
    assert (status, answer["field"], shots) == (400, "shots[0].image", 0), answer
    assert_names_no_server_path(answer["error"], tmp_path, given=image)


def test_images_come_as_file_parts_of_the_submission_or_as_uploads(database_url, tmp_path):
    png_ref = "sha256:" + hashlib.sha256(PNG).hexdigest()

    async def work(client, pool):
        answers = {}
        shot_list = json.dumps({"shots": [{"id": "a", "prompt": "x", "image": "pose.png"}]}).encode()
        body, headers = multipart(field_part("shots", shot_list, '; filename="shots.json"'),
                                  field_part("pose", PNG, '; filename="pose.png"'))
        response = await client.post("/api/v1/batches", data=body, headers=headers)
        answers["file part"] = response.status, await response.json()
        response = await client.post("/api/v1/uploads", data=PNG, headers=AUTH)
        answers["upload"] = response.status, await response.json()
        form = aiohttp.FormData()
        form.add_field("file", PNG, filename="anything.bin", content_type="application/octet-stream")
        response = await client.post("/api/v1/uploads", data=form, headers=AUTH)
        answers["upload again"] = response.status, await response.json()
        response = await client.post("/api/v1/uploads", data=b"just some text", headers=AUTH)
        answers["text upload"] = response.status, await response.json()
        wav = await (await client.post("/api/v1/uploads", data=WAV, headers=AUTH)).json()
        for name, image in (("by ref", png_ref), ("audio ref", wav["ref"])):
            response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x",
                                                                              "image": image}]}, headers=AUTH)
            answers[name] = response.status, await response.json()
        body, headers = multipart(field_part("shots", shot_list), field_part("pose", b"not an image",
                                                                             '; filename="pose.png"'))
        response = await client.post("/api/v1/batches", data=body, headers=headers)
        answers["text part"] = response.status, await response.json()
        params = [row[0] for row in await sql(pool, "SELECT params FROM shots ORDER BY created_at")]
        uploads = await sql(pool, "SELECT media_type, size_bytes FROM uploads ORDER BY media_type")
        return answers, params, uploads

    answers, params, uploads = run_service(database_url, tmp_path, work)
    assert answers["file part"][0] == 201
    assert answers["upload"] == (201, {"ref": png_ref, "sha256": png_ref[7:], "media_type": "image/png",
                                       "size_bytes": len(PNG)})
    assert answers["upload again"] == answers["upload"]
    assert answers["text upload"][0] == 415 and answers["text upload"][1]["field"] == "body"
    assert answers["by ref"][0] == 201
    assert (answers["audio ref"][0], answers["audio ref"][1]["field"]) == (400, "shots[0].image")
    assert (answers["text part"][0], answers["text part"][1]["field"]) == (400, "shots[0].image")
    assert [p["image"] for p in params] == [png_ref, png_ref]
    assert uploads == [("audio/wav", len(WAV)), ("image/png", len(PNG))]


def test_assembly_music_is_an_audio_upload_and_never_a_path(database_url, tmp_path):
    music_of = {}

    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}])
        await add_output(pool, created["shot_ids"][0], "a.png")
        await sql(pool, "UPDATE shots SET status = 'approved'")
        refs = {}
        for name, data in (("png", PNG), ("wav", WAV)):
            refs[name] = (await (await client.post("/api/v1/uploads", data=data, headers=AUTH)).json())["ref"]
        answers = {}
        music_of.update({"path": "/etc/passwd", "relative": "music/theme.mp3", "png": refs["png"],
                         "unknown": "sha256:" + "1" * 64, "wav": refs["wav"]})
        for name, music in music_of.items():
            response = await client.post(f"/api/v1/batches/{created['batch_id']}/assemblies",
                                         json={"music": music}, headers=AUTH)
            answers[name] = response.status, await response.json()
        jobs = await sql(pool, "SELECT request FROM assembly_jobs")
        return answers, refs, jobs

    answers, refs, jobs = run_service(database_url, tmp_path, work)
    for name in ("path", "relative", "png", "unknown"):
        status, answer = answers[name]
        assert (status, answer["field"]) == (400, "music"), (name, answer)
        assert_names_no_server_path(answer["error"], tmp_path, given=music_of[name])
    assert answers["wav"][0] == 202
    assert jobs == [({"music": refs["wav"], "crossfade_s": 0.5},)]


def test_an_unknown_preset_names_no_server_folder(database_url, tmp_path, monkeypatch):
    presets = tmp_path / "my-presets"
    presets.mkdir()
    monkeypatch.setenv("SHOTLINE_PRESETS", str(presets))

    async def work(client, pool):
        response = await client.post("/api/v1/batches", json={"shots": [{"id": "a", "prompt": "x",
                                                                          "workflow": "nope"}]}, headers=AUTH)
        return response.status, await response.json()

    status, answer = run_service(database_url, tmp_path, work)
    assert (status, answer["field"]) == (400, "shots[0].workflow")
    assert "nope" in answer["error"] and "shot_txt2img" in answer["error"]
    assert "/" not in answer["error"], answer["error"]


# --- YAML off the event loop -----------------------------------------------------------------------------------

def big_yaml_shot_list(shots: int = 10_000) -> bytes:
    """A shot list of `shots` shots with a dozen fields each: about 3.6 MB of YAML."""
    lines = ["shots:"]
    for i in range(shots):
        lines += [f"  - id: s{i:05d}", f"    prompt: a girl with silver hair on a rooftop at dusk, city lights, {i}",
                  "    negative: blurry, lowres, extra fingers", f"    seed: {i}", "    size: [512, 768]",
                  "    steps: 20", "    cfg: 6.5", f"    scene: sc{i % 50:02d}", "    duration: 2.5",
                  "    checkpoint: sd15/model.safetensors", "    dialogue: Where is she? I thought she was here.",
                  "    workflow: shot_video_dialogue"]
    return ("\n".join(lines) + "\n").encode()


class HealthPoller:
    """Asks GET /health from a thread of its own (so a stalled event loop cannot hide from the clock) and keeps
    the slowest answer."""

    def __init__(self, url: str):
        self.url, self.worst, self.answered = url, 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self.stop.is_set():
            asked = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as response:
                self.answered += response.status == 200
            self.worst = max(self.worst, time.perf_counter() - asked)
            time.sleep(0.02)

    async def __aenter__(self):
        self.thread.start()
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 30)  # the loop keeps serving the question in flight


def test_yaml_is_parsed_off_the_event_loop(database_url, tmp_path):
    data = big_yaml_shot_list()
    started = time.perf_counter()
    parse_yaml(data)
    parse_seconds = time.perf_counter() - started

    async def work(client, pool):
        async with HealthPoller(str(client.make_url("/health"))) as health:
            started = time.perf_counter()
            response = await client.post("/api/v1/batches", data=data,
                                         headers={**AUTH, "Content-Type": "application/yaml"})
            submitted = time.perf_counter() - started
        over = data + b"  - id: extra\n    prompt: " + b"x" * (MAX_YAML_BYTES - len(data)) + b"\n"
        too_big = await client.post("/api/v1/batches", data=over, headers={**AUTH, "Content-Type": "text/yaml"})
        return response.status, health, submitted, too_big.status, await too_big.json(), await shot_count(pool)

    status, health, submitted, too_big, refusal, shots = run_service(database_url, tmp_path, work)
    print(f"\n{len(data) / 1e6:.1f} MB of YAML: parsed alone in {parse_seconds:.1f} s, submitted in {submitted:.1f} s; "
          f"/health answered {health.answered} times meanwhile, the slowest in {health.worst * 1000:.0f} ms")
    assert status == 201 and shots == 10_000
    assert 3.4e6 < len(data) < MAX_YAML_BYTES and parse_seconds > 2.0  # else the test proves nothing
    assert health.answered >= 10 and health.worst < min(1.0, parse_seconds / 4)
    assert (too_big, refusal["field"]) == (400, "body") and "YAML over" in refusal["error"]


# --- event streams ---------------------------------------------------------------------------------------------

async def read_event(response) -> tuple[str, dict]:
    """The next server-sent event: its name and its data, both as the document describes them."""
    event, data = None, None
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            raise EOFError("stream closed")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            problems = event_problems(event, data)
            assert not problems, problems
            return event, json.loads(data)


def event_problems(event: str, data: str) -> list[str]:
    """Why one event of GET /api/v1/batches/{batch_id}/events does not match the document: the event itself,
    and its data (JSON text) against the event's `contentSchema`."""
    from shotline_controller.api.openapi import openapi_document
    document = openapi_document()
    schema = document["paths"]["/api/v1/batches/{batch_id}/events"]["get"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]
    problems = []
    for value, part in (({"event": event, "data": data}, schema), (json.loads(data),
                                                                   schema["properties"]["data"]["contentSchema"])):
        validator = jsonschema_rs.validator_for({"components": document["components"], **part},
                                                validate_formats=True)
        problems += [error.message for error in validator.iter_errors(value)]
    return problems


def events_of(client, batch_id, headers=AUTH):
    return client.get(f"/api/v1/batches/{batch_id}/events", headers=headers)


def test_event_stream_follows_a_batch_until_done(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client)
        a, b = created["shot_ids"]
        async with events_of(client, created["batch_id"]) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(read_event(response), 5)
            # a change through the store NOTIFYs: the event comes before the 2 s tick would
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert (await client.post(f"/api/v1/shots/{a}/cancel", headers=AUTH)).status == 200
            second = await asyncio.wait_for(read_event(response), 5)
            woke_after = time.monotonic() - started
            # the dispatcher's way: a status written in SQL, with a NOTIFY
            await sql(pool, "UPDATE shots SET status = 'approved' WHERE id = %s", (b,))
            await sql(pool, "SELECT pg_notify(%s, 'changed ' || %s)", (EVENTS_CHANNEL, created["batch_id"]))
            events = [await asyncio.wait_for(read_event(response), 5) for _ in range(2)]
            closed = await asyncio.wait_for(response.content.read(), 5)
        missing = await events_of(client, uuid.uuid4())
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
        async with events_of(client, created["batch_id"]) as response:
            await read_event(response)
            await sql(pool, "UPDATE shots SET status = 'failed'")  # no NOTIFY: the 2 s tick finds it
            return [await asyncio.wait_for(read_event(response), 6) for _ in range(2)]

    events = run_service(database_url, tmp_path, work)
    assert [event for event, _ in events] == ["progress", "done"]


async def listen_connections(pool) -> int:
    [(count,)] = await sql(pool, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND query ILIKE 'LISTEN%%'")
    return count


async def eventually(probe, wanted, seconds: float = 6.0):
    deadline = time.monotonic() + seconds
    while (value := await probe()) != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return value


def test_twenty_event_streams_share_one_listen_connection(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client)
        hub = await eventually(lambda: listen_connections(pool), 1)
        responses = [await events_of(client, created["batch_id"]) for _ in range(20)]
        firsts = [await asyncio.wait_for(read_event(response), 5) for response in responses]
        during = await listen_connections(pool)
        await client.post(f"/api/v1/batches/{created['batch_id']}/cancel", headers=AUTH)
        lasts = [[await asyncio.wait_for(read_event(response), 5) for _ in range(2)] for response in responses]
        for response in responses:
            response.release()
        return hub, [event for event, _ in firsts], during, {tuple(e for e, _ in last) for last in lasts}

    hub, firsts, during, lasts = run_service(database_url, tmp_path, work)
    assert hub == 1
    assert firsts == ["progress"] * 20
    assert during == 1
    assert lasts == {("progress", "done")}


def test_event_streams_past_the_cap_get_503_with_retry_after(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client)
        opened = [await events_of(client, created["batch_id"]) for _ in range(3)]
        for response in opened:
            await asyncio.wait_for(read_event(response), 5)
        refused = await events_of(client, created["batch_id"])
        refusal = (refused.status, refused.headers.get("Retry-After"), await refused.json())
        opened.pop().close()  # the service notices at its next write (the 2 s tick) and frees the slot

        async def status_of_a_new_stream():
            async with events_of(client, created["batch_id"]) as response:
                return response.status
        after = await eventually(status_of_a_new_stream, 200)
        for response in opened:
            response.release()
        return refusal, after

    (status, retry_after, body), after = run_service(database_url, tmp_path, work, max_streams=3)
    assert (status, retry_after) == (503, "5") and "poll" in body["error"]
    assert after == 200


def test_a_database_that_is_busy_or_closed_gives_503_not_500(database_url, tmp_path):
    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}])
        answers = {}
        async with pool.connection():  # the pool's only connection is taken: every request waits, then 503
            for name, method, path, body in (
                    ("read", "GET", f"/api/v1/batches/{created['batch_id']}", None),
                    ("write", "POST", "/api/v1/batches", {"shots": [{"id": "a", "prompt": "x"}]}),
                    ("events", "GET", f"/api/v1/batches/{created['batch_id']}/events", None)):
                response = await client.request(method, path, json=body, headers=AUTH)
                answers[name] = response.status, response.headers.get("Retry-After"), await response.json()
            answers["health"] = (await client.get("/health")).status
        await pool.close()
        response = await client.get(f"/api/v1/batches/{created['batch_id']}/shots")
        answers["closed"] = response.status, response.headers.get("Retry-After"), await response.json()
        return answers

    answers = run_service(database_url, tmp_path, work, pool_options={"max_size": 1, "timeout": 0.5})
    for name in ("read", "write", "events", "closed"):
        status, retry_after, body = answers[name]
        assert (status, retry_after) == (503, "2") and "try again" in body["error"], (name, body)
    assert answers["health"] == 200


def test_an_event_stream_ends_when_the_database_goes_away(database_url, tmp_path):
    """Its answer has begun, so it cannot become a 503: it used to hang, neither ended nor answered."""
    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}])
        async with events_of(client, created["batch_id"]) as response:
            first, _ = await asyncio.wait_for(read_event(response), 5)
            await pool.close()
            rest = await asyncio.wait_for(response.content.read(), 6)  # the 2 s tick finds the database gone
        again = await events_of(client, created["batch_id"])
        return first, rest, again.status

    first, rest, again = run_service(database_url, tmp_path, work)
    assert (first, rest, again) == ("progress", b"", 503)


def test_a_database_that_cannot_be_reached_gives_503(database_url, tmp_path):
    unreachable = "postgresql://shotline@127.0.0.1:1/nothing?connect_timeout=1"

    async def main():
        pool = AsyncConnectionPool(unreachable, min_size=1, max_size=1, timeout=0.5, open=False)
        await pool.open(wait=False)
        try:
            app = create_app(pool, settings_for(database_url, tmp_path), TOKEN)
            async with CheckedClient(TestServer(app, host="127.0.0.1")) as client:
                read = await client.get(f"/api/v1/batches/{uuid.uuid4()}")
                write = await client.post("/api/v1/uploads", data=PNG, headers=AUTH)
                answers = [(r.status, r.headers.get("Retry-After")) for r in (read, write)]
                answers.append((await client.get("/health")).status)
                return answers, await client.problems()
        finally:
            await pool.close()

    answers, problems = asyncio.run(main())
    assert answers == [(503, "2"), (503, "2"), 200]
    assert not problems, problems


# --- steering shots --------------------------------------------------------------------------------------------

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
        await post("no decision", f"/api/v1/shots/{b}/review", {})
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
    assert seen["bad decision"][0] == seen["no decision"][0] == 400
    assert seen["bad decision"][1]["field"] == seen["no decision"][1]["field"] == "decision"
    assert (seen["approve"][0], seen["approve"][1]["status"]) == (200, "approved")
    assert seen["approve again"][0] == 409
    assert (seen["reject"][0], seen["reject"][1]["status"]) == (200, "rejected")
    assert seen["unknown shot"][0] == seen["unknown review"][0] == 404
    assert seen["malformed id"][0] == 400 and seen["malformed id"][1]["field"] == "shot_id"
    assert "'not-a-uuid'" in seen["malformed id"][1]["error"]
    assert seen["batch cancel"][0] == 200 and seen["batch cancel"][1]["cancelled"] == 1
    assert seen["batch cancel"][1]["finished"] is True
    assert seen["batch cancel again"][0] == 409 and seen["unknown batch"][0] == 404
    assert shot["status"] == "approved" and shot["attempts"] == []
    assert statuses == {"a": "cancelled", "b": "approved", "c": "rejected"}


def test_assemblies_are_queued_202_or_refused_404_409_400(database_url, tmp_path):
    async def work(client, pool):
        ready = await submit(client, [{"id": "a", "prompt": "x", "scene": "sc01"}, {"id": "b", "prompt": "y"}])
        await add_output(pool, ready["shot_ids"][0], "a.png")
        await sql(pool, "UPDATE shots SET status = 'approved' WHERE id = %s", (ready["shot_ids"][0],))
        unready = await submit(client)
        answers = {}

        async def post(name, batch_id, body):
            response = await client.post(f"/api/v1/batches/{batch_id}/assemblies", json=body, headers=AUTH)
            answers[name] = response.status, response.headers.get("Location"), await response.json()

        await post("queued", ready["batch_id"], {"scenes": ["sc01"], "crossfade_s": 0.25})
        await post("no approved shot", ready["batch_id"], {"scenes": ["main"]})
        await post("unknown scene", ready["batch_id"], {"scenes": ["sc09"]})
        await post("bad size", ready["batch_id"], {"size": "1281x720"})
        await post("unready", unready["batch_id"], {})
        await post("unknown batch", uuid.uuid4(), {})
        job = await (await client.get(answers["queued"][1])).json()
        listed = await (await client.get(f"/api/v1/batches/{ready['batch_id']}/assemblies")).json()
        return ready, answers, job, listed

    ready, answers, job, listed = run_service(database_url, tmp_path, work)
    status, location, body = answers["queued"]
    assert status == 202 and location == body["location"] == f"/api/v1/assembly-jobs/{body['job_id']}"
    assert body["status"] == "queued"
    assert (job["id"], job["batch_id"], job["status"], job["request"]) == (
        body["job_id"], ready["batch_id"], "queued", {"scenes": ["sc01"], "crossfade_s": 0.25})
    assert answers["no approved shot"][0] == answers["unready"][0] == 409
    assert "no approved shot" in answers["unready"][2]["error"]
    assert (answers["unknown scene"][0], answers["unknown scene"][2]["field"]) == (400, "scenes[0]")
    assert (answers["bad size"][0], answers["bad size"][2]["field"]) == (400, "size")
    assert answers["unknown batch"][0] == 404
    assert listed == {"batch_id": ready["batch_id"], "assemblies": []}


# --- characters, backends, analytics ---------------------------------------------------------------------------

def test_characters_put_and_list(database_url, tmp_path):
    library = tmp_path / "comfyui" / "models" / "shotline_characters"

    def raw_form(file_name: str):
        return multipart(field_part("sheet", SHEET.encode()),
                         field_part("reference", PNG, f'; filename="{file_name}"\r\nContent-Type: image/png'))

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
        await put("form", "ren", f"sheet={SHEET.replace('Aiko', 'Ren')}",
                  {**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
        await put("dot folder", ".hidden", form())
        await put("encoded traversal", "..%2F..%2Fescaped", form())
        await put("traversal reference", "kai", *raw_form("../../escaped.png"))
        await put("absolute reference", "kai", *raw_form("/tmp/escaped.png"))
        await put("encoded reference", "kai", form(references=[("../../escaped.png", PNG)]))
        await put("not an image", "kai", form(references=[("notes.png", b"hi")]))
        await put("bad style", "kai", form(sheet=SHEET.replace("anime", "cartoon")))
        await put("no sheet", "kai", form(sheet=None))
        await put("not multipart", "kai", json.dumps({"sheet": SHEET}), {**AUTH, "Content-Type": "application/json"})
        listed = await (await client.get("/api/v1/characters")).json()
        return answers, listed

    answers, listed = run_service(database_url, tmp_path, work)
    assert answers["create"] == (200, {"id": answers["create"][1]["id"], "folder": "aiko", "name": "Aiko",
                                       "style": "anime", "references": ["front.png"]})
    assert answers["update"][0] == 200 and answers["update"][1]["references"] == ["front.png", "smile.jpg"]
    assert answers["update"][1]["id"] == answers["create"][1]["id"]
    assert answers["form"][0] == 200 and answers["form"][1]["name"] == "Ren"
    assert (library / "aiko" / "references" / "front.png").read_bytes() == PNG
    for name in ("dot folder", "encoded traversal"):
        assert (answers[name][0], answers[name][1]["field"]) == (400, "folder"), name
    for name in ("traversal reference", "absolute reference", "encoded reference", "not an image"):
        assert (answers[name][0], answers[name][1]["field"][:11]) == (400, "references."), (name, answers[name])
    assert (answers["bad style"][0], answers["bad style"][1]["field"]) == (400, "sheet.style")
    assert (answers["no sheet"][0], answers["no sheet"][1]["field"]) == (400, "sheet")
    assert answers["not multipart"][0] == 415
    assert not list(tmp_path.rglob("escaped*")) and not (library / "kai").exists()
    assert [(c["folder"], c["name"], c["style"], c["reference_count"]) for c in listed["characters"]] == [
        ("aiko", "Aiko", "photo", 2), ("ren", "Ren", "anime", 0)]


def test_character_library_from_the_environment(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("SHOTLINE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SHOTLINE_CHARACTER_LIBRARY", str(tmp_path / "elsewhere"))

    async def work(client, pool):
        data = aiohttp.FormData()
        data.add_field("sheet", SHEET)
        response = await client.put("/api/v1/characters/aiko", data=data, headers=AUTH)
        return response.status

    assert run_service(database_url, tmp_path, work, settings=load_settings()) == 200
    assert (tmp_path / "elsewhere" / "aiko" / "character.yaml").is_file()


class StandInBackend:
    """The attributes the dispatcher's backends expose; pure data, no ComfyUI behind it."""

    def __init__(self, base_url, stats=None, error=None, hang=False):
        self.base_url, self.connected = base_url, error is None and not hang
        self.queue_remaining = 2 if self.connected else None
        self.loaded_checkpoint = "model.safetensors" if self.connected else None
        self.stats, self.error, self.hang = stats, error, hang

    async def system_stats(self):
        if self.hang:
            await asyncio.sleep(60)
        if self.error:
            raise self.error
        return self.stats


def test_backends_report_state_and_errors(database_url, tmp_path, monkeypatch):
    monkeypatch.setattr(system, "BACKEND_STATS_TIMEOUT_SECONDS", 0.2)
    backends = [StandInBackend("http://gpu1:8188", stats={"system": {"os": "posix"}, "devices": []}),
                StandInBackend("http://gpu2:8188", error=ComfyUnavailable("connection refused")),
                StandInBackend("http://gpu3:8188", hang=True)]

    async def work(client, pool):
        response = await client.get("/api/v1/backends")
        return response.status, await response.json()

    status, answer = run_service(database_url, tmp_path, work, backends=backends)
    assert status == 200
    up, down, hung = answer["backends"]
    assert up == {"base_url": "http://gpu1:8188", "connected": True, "managed": False, "restarts": 0,
                  "queue_remaining": 2, "loaded_checkpoint": "model.safetensors",
                  "system_stats": {"system": {"os": "posix"}, "devices": []}, "error": None}
    assert down["connected"] is False and down["system_stats"] is None
    assert down["error"] == "system_stats: connection refused"
    assert hung["error"] == "system_stats: no answer in 0.2 s"


def test_analytics_per_character_and_correction_reason(database_url, tmp_path):
    async def work(client, pool):
        _, (a, b, c) = await ShotStore(pool).submit_batch(
            shots_of([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "c", "prompt": "z"}]), "test")

        async def attempt(shot, scores=None, correction=None, status="succeeded"):
            """An attempt as the dispatcher records it, written in SQL; scores: {character: score or None}."""
            [(attempt_id,)] = await sql(
                pool, "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, correction) "
                      "VALUES (%s, (SELECT coalesce(max(attempt_no), 0) + 1 FROM attempts WHERE shot_id = %s), "
                      "%s, 'http://gpu1', %s, %s) RETURNING id",
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


# --- the contract ----------------------------------------------------------------------------------------------

def test_openapi_is_the_contract_of_every_route(database_url, tmp_path):
    async def work(client, pool):
        document = await (await client.get("/openapi.json")).json()
        routes = {(route.method.lower(), route.resource.canonical) for route in client.app.router.routes()
                  if route.method != "HEAD"}
        return document, routes

    document, routes = run_service(database_url, tmp_path, work)
    assert document["openapi"].startswith("3.1")
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert described == routes
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "503" in responses, (method, path)
            if "{" in path or "requestBody" in operation:
                assert "400" in responses, (method, path)
            # writes, event streams and the dataset download (frames fetched from the backends) need the token
            if method in ("post", "put", "delete") or path.endswith(("/events", "/dataset")):
                assert "401" in responses and operation["security"] == [{"bearer": []}], (method, path)
            else:
                assert "401" not in responses and "security" not in operation, (method, path)
    refs = {value for value in json.dumps(document).split('"') if value.startswith("#/components/schemas/")}
    schemas = document["components"]["schemas"]
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(schemas)
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}

    assert "image" in schemas["ShotInput"]["properties"]
    priority = schemas["BatchRequest"]["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (-1_000_000, 1_000_000)
    assert {"type": "null"} in schemas["BatchRequest"]["properties"]["webhook_url"]["anyOf"]
    assert schemas["Batch"]["properties"]["webhook_url"]["anyOf"][-1] == {"type": "null"}
    events = document["paths"]["/api/v1/batches/{batch_id}/events"]["get"]
    [(media_type, stream)] = events["responses"]["200"]["content"].items()
    assert media_type == "text/event-stream" and stream["schema"]["required"] == ["event", "data"]
    assert stream["schema"]["properties"]["data"] == {
        "type": "string", "contentMediaType": "application/json",
        "contentSchema": {"$ref": "#/components/schemas/BatchEvent"}}
    batches = document["paths"]["/api/v1/batches"]["post"]
    assert set(batches["requestBody"]["content"]) == {"application/json", "application/yaml", "multipart/form-data"}
    assert batches["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchRequest"}
    assert {"413", "415"} <= set(batches["responses"])


def test_the_answer_check_catches_an_answer_that_drifts_from_the_document():
    from shotline_controller.api.openapi import openapi_document
    document = openapi_document()
    assert answer_problems(document, "GET", "/health", 200, "application/json", b'{"ok": true}') == []
    assert answer_problems(document, "GET", "/health", 200, "application/json", b'{"ok": "yes"}')
    assert answer_problems(document, "GET", "/health", 200, "application/json", b'{"ok": true, "extra": 1}')
    assert answer_problems(document, "GET", "/health", 418, "application/json", b'{"ok": true}')
    assert answer_problems(document, "GET", "/health", 200, "text/html", b"<p>ok</p>")
    assert answer_problems(document, "GET", f"/api/v1/batches/{uuid.uuid4()}", 404, "application/json",
                           b'{"error": 1}')
    assert event_problems("progress", json.dumps({"id": str(uuid.uuid4())}))
