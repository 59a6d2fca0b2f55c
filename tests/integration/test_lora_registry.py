"""The LoRA registry end to end: `shotline character lora add/list` against the real ComfyUI and PostgreSQL, two
small random LoRAs for the random test checkpoint, validation renders through the real dispatcher."""
import asyncio
import hashlib
import json
import struct
import time

import numpy as np
import psycopg
import pytest
import yaml
from shotline.core.characters import load_character, parse_sheet, write_character

from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from tests.integration.processes import shotline

pytestmark = pytest.mark.integration
CHARACTER = "lora_subject"
QUICK = ["--size", "128x128", "--steps", "2"]


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format by hand (an 8-byte header length, the JSON header, the raw little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array.astype(np.float16)).tobytes()
        header[name] = {"dtype": "F16", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def checkpoint_attention_layers(model_cache) -> dict[str, list[int]]:
    """The random checkpoint's UNet attention projections: ComfyUI LoRA key -> weight shape."""
    with open(model_cache / "checkpoints" / RANDOM_CHECKPOINT_NAME, "rb") as file:
        header = json.loads(file.read(struct.unpack("<Q", file.read(8))[0]))
    prefix = "model.diffusion_model."
    return {"lora_unet_" + key[len(prefix):-len(".weight")].replace(".", "_"): value["shape"]
            for key, value in header.items()
            if key.startswith(prefix) and ".attn" in key and key.endswith(".weight")}


def random_lora(path, layers: dict[str, list[int]], scale: float, seed: int, rank: int = 4):
    """A rank-`rank` LoRA over every attention projection, with up/down weights of standard deviation `scale`."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, (out_features, in_features) in layers.items():
        tensors[f"{key}.lora_down.weight"] = rng.normal(0, scale, (rank, in_features))
        tensors[f"{key}.lora_up.weight"] = rng.normal(0, scale, (out_features, rank))
        tensors[f"{key}.alpha"] = np.array(float(rank))
    write_safetensors(path, tensors)
    return path


@pytest.fixture
def two_loras(model_cache, tmp_path):
    """A near no-op LoRA (weights ~1e-4: its change is far below fp16 noise) and a destructive one (~0.5)."""
    layers = checkpoint_attention_layers(model_cache)
    assert layers, "the random checkpoint has no attention layers to adapt"
    return (random_lora(tmp_path / "gentle.safetensors", layers, 1e-4, seed=1),
            random_lora(tmp_path / "harsh.safetensors", layers, 0.5, seed=2))


@pytest.fixture
def character(comfy_server):
    """A character of this test's own (example_a's references), so other tests' sheets are not touched."""
    from shotline_controller.example_characters import ensure_example_characters
    ensure_example_characters(comfy_server.characters_dir)
    example = load_character(comfy_server.characters_dir / "example_a")
    sheet = parse_sheet({"name": "Lora Subject", "style": "photo", "design_prompt": example.sheet.design_prompt,
                         "loras": [{"name": "users_own_style.safetensors", "strength": 0.0}]})
    write_character(comfy_server.characters_dir, CHARACTER, sheet,
                    {path.name: path.read_bytes() for path in example.references})
    # the user's own LoRA the sheet names (strength 0: it must stay in the sheet, it changes nothing)
    write_safetensors(comfy_server.loras_dir / "users_own_style.safetensors",
                      {"lora_unet_x.alpha": np.array(1.0)})
    yield comfy_server.characters_dir / CHARACTER


def test_validation_activates_the_better_version_and_keeps_both_scores(comfy, comfy_server, database_url, two_loras,
                                                                      character, tmp_path):
    gentle, harsh = two_loras
    env = {"DATABASE_URL": database_url, "SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)}
    common = ["--comfy", comfy.url, "--loras-dir", comfy_server.loras_dir, *QUICK]

    first = shotline("character", "lora", "add", CHARACTER, gentle, *common, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "v1 of lora_subject registered" in first.stdout and "active (no active version" in first.stdout
    assert (comfy_server.loras_dir / "shotline" / CHARACTER / "v1.safetensors").read_bytes() == gentle.read_bytes()

    started = time.monotonic()
    second = shotline("character", "lora", "add", CHARACTER, harsh, "--validate", "2", *common, env=env)
    print(f"\nvalidation of v2 (2 seeds x 2 versions): {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, second.stdout + second.stderr
    print(second.stdout)

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT version, file_name, sha256, status, validation FROM character_loras "
                            "WHERE character_name = %s ORDER BY version", (CHARACTER,)).fetchall()
    assert [row[0] for row in rows] == [1, 2]  # the earlier version stays listed
    validation = rows[1][4]
    print(f"measured: candidate {validation['candidate_scores']} mean {validation['candidate_mean']:.4f}, "
          f"active {validation['active_scores']} mean {validation['active_mean']:.4f}: {validation['reason']}")
    assert validation["seeds"] == [1, 2] and validation["against"] == "v1"
    assert len(validation["candidate_scores"]) == len(validation["active_scores"]) == 2
    means = [sum(score or 0.0 for score in validation[f"{side}_scores"]) / 2 for side in ("candidate", "active")]
    assert [validation["candidate_mean"], validation["active_mean"]] == pytest.approx(means)
    better = validation["candidate_mean"] > validation["active_mean"]
    winner, loser = (2, 1) if better else (1, 2)
    statuses = {row[0]: row[3] for row in rows}
    assert statuses == {winner: "active", loser: "retired" if better else "rejected"}
    assert validation["decision"] == ("activated" if better else "kept the active")

    # presets apply the active version: the sheet names it (the user's own LoRA kept), as does the database
    active_file = f"shotline/{CHARACTER}/v{winner}.safetensors"
    sheet = yaml.safe_load((character / "character.yaml").read_text())
    assert [lora["name"] for lora in sheet["loras"]] == ["users_own_style.safetensors", active_file]
    with psycopg.connect(database_url) as conn:
        [(recorded,)] = conn.execute("SELECT sheet FROM characters WHERE folder = %s", (CHARACTER,)).fetchall()
    assert recorded["loras"][-1]["name"] == active_file

    # the validation renders ran each version: their attempts carry the override, one per version
    with psycopg.connect(database_url) as conn:
        overrides = {row[0]: row[1] for row in conn.execute(
            "SELECT s.shot_key, a.inputs->>'set.Character LoRAs.lora_override' FROM attempts a "
            "JOIN shots s ON s.id = a.shot_id").fetchall()}
    assert overrides == {"candidate-1": f"shotline/{CHARACTER}/v2.safetensors:1",
                         "candidate-2": f"shotline/{CHARACTER}/v2.safetensors:1",
                         "active-1": f"shotline/{CHARACTER}/v1.safetensors:1",
                         "active-2": f"shotline/{CHARACTER}/v1.safetensors:1"}

    listing = shotline("character", "lora", "list", CHARACTER, env=env)
    assert listing.returncode == 0, listing.stderr
    assert "v1" in listing.stdout and "v2" in listing.stdout and validation["reason"] in listing.stdout

    # a render of the character after the decision applies the active version through the Character LoRAs node
    log_start = comfy_server.log_path.stat().st_size
    shots = tmp_path / "after.yaml"
    shots.write_text(yaml.safe_dump({"defaults": {"size": "128x128", "steps": 2, "learning": "off"}, "shots": [
        {"id": "after", "prompt": "standing in a park", "seed": 7, "characters": [CHARACTER],
         "workflow": "shot_character"}]}))
    render = shotline("render", shots, "--comfy", comfy.url, "--max-attempts", "1", env=env)
    assert render.returncode == 0, render.stdout + render.stderr
    with open(comfy_server.log_path, "rb") as log:
        log.seek(log_start)
        applied = log.read().decode(errors="replace")
    assert f"Character LoRAs: applied {active_file} at 1" in applied
    assert f"shotline/{CHARACTER}/v{loser}.safetensors" not in applied


def test_a_first_version_is_validated_against_no_registry_lora_and_the_api_lists_it(comfy, comfy_server,
                                                                                     database_url, two_loras,
                                                                                     character):
    """--validate with no active version measures the candidate against the sheet without a registry LoRA; then
    GET /api/v1/characters/{folder}/loras lists every version with its scores."""
    env = {"DATABASE_URL": database_url, "SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)}
    gentle, harsh = two_loras
    common = ["--loras-dir", comfy_server.loras_dir]
    validated = shotline("character", "lora", "add", CHARACTER, harsh, "--validate", "1", "--comfy", comfy.url,
                         *common, *QUICK, env=env)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    with psycopg.connect(database_url) as conn:
        [(status, validation)] = conn.execute("SELECT status, validation FROM character_loras").fetchall()
        overrides = [row[0] for row in conn.execute("SELECT a.inputs->>'set.Character LoRAs.lora_override' "
                                                    "FROM attempts a JOIN shots s ON s.id = a.shot_id "
                                                    "ORDER BY s.shot_key").fetchall()]
    assert overrides == [None, f"shotline/{CHARACTER}/v1.safetensors:1"]  # "active": the sheet as it was
    assert validation["against"] == "no registry LoRA"
    assert status == ("active" if validation["candidate_mean"] > validation["active_mean"] else "rejected")
    second = shotline("character", "lora", "add", CHARACTER, gentle, *common, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    second_status = "candidate" if status == "active" else "active"  # unvalidated: active only if none is
    from aiohttp.test_utils import TestClient, TestServer
    from psycopg_pool import AsyncConnectionPool
    from shotline_controller.api.app import create_app
    from shotline_controller.settings import load_settings

    async def listed():
        async with AsyncConnectionPool(database_url, open=False, kwargs={"autocommit": True}) as pool:
            app = create_app(pool, load_settings(), token="t")
            async with TestClient(TestServer(app)) as client:
                response = await client.get(f"/api/v1/characters/{CHARACTER}/loras")
                return response.status, await response.json()
    http_status, body = asyncio.run(listed())
    assert http_status == 200, body
    assert body["active"] == (1 if status == "active" else 2)
    assert [(v["version"], v["status"]) for v in body["versions"]] == [(1, status), (2, second_status)]
    assert body["versions"][0]["sha256"] == hashlib.sha256(harsh.read_bytes()).hexdigest()
    assert body["versions"][0]["validation"] == validation  # both scores and the decision, as recorded
    assert body["versions"][1]["validation"] is None


def test_the_status_enum_is_the_databases_own_and_one_version_is_active(database_url):
    import re

    from psycopg_pool import AsyncConnectionPool
    from shotline_controller.store.loras import LoraStatus
    from shotline_controller.store.migrations import apply_migrations

    async def migrate():
        async with AsyncConnectionPool(database_url, open=False, kwargs={"autocommit": True}) as pool:
            await apply_migrations(pool)
    asyncio.run(migrate())
    with psycopg.connect(database_url, autocommit=True) as conn:
        [(check,)] = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                  "WHERE conname = 'character_loras_status_check'").fetchall()
        assert set(re.findall(r"'(\w+)'", check)) == {status.value for status in LoraStatus}
        insert = ("INSERT INTO character_loras (character_name, version, file_name, sha256, size_bytes, status) "
                  "VALUES ('aiko', %s, 'f', 'h', 1, 'active')")
        conn.execute(insert, (1,))
        with pytest.raises(psycopg.errors.UniqueViolation, match="character_loras_one_active"):
            conn.execute(insert, (2,))
