"""Continuity through a real ComfyUI and PostgreSQL: a scene as a chain of shots, each starting from the last frame
of the approved shot before it; a killed controller; a rejected shot blocking the shot after it; engines chosen
by the shot; character state in the filled prompt."""
import hashlib
import json
import time
import urllib.parse
import urllib.request

import psycopg
import pytest
import yaml

from tests.integration.processes import (  # noqa: F401 (controllers: a fixture)
    TOKEN,
    controllers,
    http,
    shotline,
    wait_until,
)

pytestmark = pytest.mark.integration

# the random test checkpoint paints noise: the checks are opened so that its pictures pass, and the chain runs
PASSING = {"Quality.min_sharpness": 0.1, "Quality.min_contrast": 0.001, "Quality.max_clipped": 1.0,
           "Quality.max_noise": 255.0}
ENGINES = {"image_to_video": "shot_img2img", "text_to_video": "shot_txt2img"}


def scene(prefix: str, strict_first: bool = False) -> dict:
    """Three chained shots in scene `sc1` and one shot of another scene; the engines choose the presets."""
    first = {"id": f"{prefix}1", "prompt": "a girl on a rooftop at dusk", "scene": "sc1", "seed": 1}
    if strict_first:  # a check the noise cannot pass: the first shot is rejected
        first["set"] = {**PASSING, "Quality.min_side": 4096}
    return {"defaults": {"size": "128x128", "steps": 2, "engines": ENGINES, "set": PASSING},
            "shots": [first,
                      {"id": f"{prefix}2", "prompt": "she turns", "scene": "sc1", "continuity": "previous",
                       "seed": 2},
                      {"id": f"{prefix}3", "prompt": "she walks away", "scene": "sc1", "continuity": "previous",
                       "seed": 3},
                      {"id": f"{prefix}9", "prompt": "a harbour at night", "scene": "sc2", "seed": 9}]}


def rows(database_url: str, sql: str, params=()) -> list[dict]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(sql, params)
        return [dict(zip([c.name for c in cursor.description], row)) for row in cursor.fetchall()]


def shots_of(database_url: str, batch_id) -> dict[str, dict]:
    return {row["shot_key"]: row for row in rows(
        database_url, "SELECT s.shot_key, s.status, s.params, s.workflow, "
                      "(SELECT p.shot_key FROM shots p WHERE p.id = s.after_shot) AS continues "
                      "FROM shots s WHERE s.batch_id = %s ORDER BY s.position", (batch_id,))}


def final_attempts(database_url: str, batch_id) -> dict[str, dict]:
    """Each shot's latest attempt that ran to its end, with its outputs."""
    found = rows(database_url,
                 "SELECT DISTINCT ON (s.id) s.shot_key, a.backend, a.inputs, a.status, "
                 "  (SELECT json_agg(o ORDER BY o.id) FROM outputs o WHERE o.attempt_id = a.id) AS outputs "
                 "FROM shots s JOIN attempts a ON a.shot_id = s.id WHERE s.batch_id = %s "
                 "AND a.status IN ('succeeded', 'failed') ORDER BY s.id, a.attempt_no DESC", (batch_id,))
    return {row["shot_key"]: row for row in found}


def view(backend: str, output: dict) -> bytes:
    query = urllib.parse.urlencode({"filename": output["filename"], "subfolder": output["subfolder"],
                                    "type": output["folder_type"]})
    with urllib.request.urlopen(f"{backend}/view?{query}", timeout=30) as response:
        return response.read()


def input_file(backend: str, name: str) -> bytes:
    """A file in the ComfyUI's input folder, as LoadImage names it (subfolder/name)."""
    subfolder, _, filename = name.rpartition("/")
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": "input"})
    with urllib.request.urlopen(f"{backend}/view?{query}", timeout=30) as response:
        return response.read()


def assert_chained(database_url: str, batch_id, keys: list[str]) -> None:
    """Each shot after the first started from its predecessor's last frame: the file uploaded to its backend as
    its Input Image is, byte for byte, the image the approved predecessor saved."""
    attempts = final_attempts(database_url, batch_id)
    for before, after in zip(keys, keys[1:]):
        saved = [o for o in attempts[before]["outputs"] if o["folder_type"] == "output"]
        last_frame = view(attempts[before]["backend"], saved[-1])
        inputs = attempts[after]["inputs"]
        start = inputs["continuity.start_frame"]
        assert start["shot"] == before, inputs
        assert start["sha256"] == hashlib.sha256(last_frame).hexdigest(), (before, after)
        uploaded = input_file(attempts[after]["backend"], inputs["Input Image.image"])
        assert hashlib.sha256(uploaded).hexdigest() == start["sha256"], (before, after)


def test_a_scene_renders_as_a_chain_and_the_engines_choose_its_presets(comfy, database_url, tmp_path):
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene("c")))
    result = shotline("render", path, "--comfy", comfy.url, "--max-attempts", "1",
                      env={"DATABASE_URL": database_url}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    [batch_id] = [line.split()[1].rstrip(":") for line in result.stdout.splitlines()
                  if line.startswith("batch ") and "queued" in line]
    shots = shots_of(database_url, batch_id)
    assert {key: shot["status"] for key, shot in shots.items()} == dict.fromkeys(["c1", "c2", "c3", "c9"],
                                                                                   "approved")
    # the engine rules: no source image -> text-to-video preset, a continued shot -> the image-to-video one
    assert {key: (shot["workflow"], shot["params"]["engine_rule"].split(":")[0]) for key, shot in shots.items()} == {
        "c1": ("shot_txt2img", "text_to_video"), "c2": ("shot_img2img", "image_to_video"),
        "c3": ("shot_img2img", "image_to_video"), "c9": ("shot_txt2img", "text_to_video")}
    assert [shots[key]["continues"] for key in ("c1", "c2", "c3", "c9")] == [None, "c1", "c2", None]
    assert_chained(database_url, batch_id, ["c1", "c2", "c3"])
    attempts = final_attempts(database_url, batch_id)
    # colour anchoring, on for a chain: both continuing shots match the scene's first approved shot
    assert attempts["c2"]["inputs"]["continuity.colour_anchor"]["shot"] == "c1"
    assert attempts["c3"]["inputs"]["continuity.colour_anchor"]["shot"] == "c1"
    assert "Anchor Image.image" in attempts["c3"]["inputs"]


def test_a_killed_controller_while_a_shot_waits_leaves_the_scene_to_the_next(comfy, controllers, database_url):
    first = controllers([comfy.url])
    batch_id = first.submit({**scene("k"), "max_attempts": 1})
    wait_until(lambda: shots_of(database_url, batch_id)["k2"]["status"] == "waiting"
               and shots_of(database_url, batch_id)["k1"]["status"] in ("queued", "running"), 60, "k2 waiting")
    first.kill()  # kill -9 while k2 waits for k1
    assert shots_of(database_url, batch_id)["k2"]["status"] in ("waiting", "queued")
    second = controllers([comfy.url])
    wait_until(lambda: second.finished(batch_id), 400, "the scene finished by the second controller")
    shots = shots_of(database_url, batch_id)
    assert {key: shot["status"] for key, shot in shots.items()} == dict.fromkeys(["k1", "k2", "k3", "k9"],
                                                                                   "approved")
    assert_chained(database_url, batch_id, ["k1", "k2", "k3"])


def post(url: str, body: dict | None = None) -> dict:
    return http(url, body if body is not None else {})


def test_a_rejected_shot_blocks_the_next_until_it_is_retried_or_approved(comfy, controllers, database_url):
    service = controllers([comfy.url])
    batch_id = service.submit({**scene("b", strict_first=True), "max_attempts": 1})
    batch_url = f"{service.url}/api/v1/batches/{batch_id}"
    wait_until(lambda: service.get(batch_url.removeprefix(service.url))["settled"], 300, "the batch settled")
    listed = {shot["shot_key"]: shot for shot in service.get(f"/api/v1/batches/{batch_id}/shots")["shots"]}
    assert {key: shot["status"] for key, shot in listed.items()} == {
        "b1": "rejected", "b2": "blocked", "b3": "waiting", "b9": "approved"}  # the other scene was not held up
    assert listed["b2"]["continues"] == "b1" and listed["b3"]["continues"] == "b2"
    batch = service.get(f"/api/v1/batches/{batch_id}")
    assert batch["counts"]["blocked"] == 1 and not batch["finished"]

    # a retry of b1 puts b2 back to waiting at once (the same transaction), and it is blocked again on rejection
    post(f"{service.url}/api/v1/shots/{listed['b1']['id']}/retry")
    assert shots_of(database_url, batch_id)["b2"]["status"] == "waiting"
    wait_until(lambda: shots_of(database_url, batch_id)["b2"]["status"] == "blocked", 300, "b2 blocked again")
    # a person approves b1 as it is: b2 and then b3 run, each from the last frame before it
    reviewed = post(f"{service.url}/api/v1/shots/{listed['b1']['id']}/review", {"decision": "approve"})
    assert reviewed["status"] == "approved"
    wait_until(lambda: service.finished(batch_id), 300, "the scene finished")
    statuses = {key: shot["status"] for key, shot in shots_of(database_url, batch_id).items()}
    assert statuses == dict.fromkeys(["b1", "b2", "b3", "b9"], "approved")
    assert_chained(database_url, batch_id, ["b1", "b2", "b3"])


def test_bad_continuity_is_refused_naming_the_field(comfy, controllers):
    service = controllers([comfy.url])
    cases = {
        "shots[0].continuity": {"shots": [{"id": "a", "prompt": "x", "continuity": "previous"}]},
        "shots[1].continuity": {"shots": [{"id": "a", "prompt": "x"},
                                          {"id": "b", "prompt": "y", "continuity": "previous",
                                           "workflow": "shot_txt2img"}]},
        "shots[0].engines.text_to_video": {"shots": [{"id": "a", "prompt": "x",
                                                      "engines": {"text_to_video": "../etc"}}]},
    }
    for field, body in cases.items():
        request = urllib.request.Request(service.url + "/api/v1/batches", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {TOKEN}",
                                                  "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=30)
            raise AssertionError(f"{field}: accepted")
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read())
            assert (error.code, answer["field"]) == (400, field), answer


def test_state_changes_reach_the_filled_prompt_of_the_shots_after_them(comfy, comfy_server, controllers,
                                                                        database_url):
    from shotline_controller.example_characters import ensure_example_characters
    ensure_example_characters(comfy_server.characters_dir)
    service = controllers([comfy.url], env={"SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)})
    shot = {"prompt": "standing on a rooftop", "characters": ["example_a"], "workflow": "shot_character"}
    batch_id = service.submit({
        "defaults": {"size": "128x128", "steps": 1, "refine_cycles": 1, "refine_size": 128}, "max_attempts": 1,
        "shots": [{"id": "s1", **shot},
                  {"id": "s2", **shot, "state": {"example_a": {"outfit": "torn jacket", "injuries": "cut cheek"}}},
                  {"id": "s3", **shot}, {"id": "s4", **shot}]})
    # set through the API while the batch runs: from s4 on, the jacket is gone (a field set to '' ends it)
    post(f"{service.url}/api/v1/batches/{batch_id}/states",
         {"character": "example_a", "from_shot": "s4", "state": {"outfit": "", "emotion": "relieved"}})
    wait_until(lambda: service.finished(batch_id), 600, "the batch finished")
    inputs = {key: attempt["inputs"] for key, attempt in final_attempts(database_url, batch_id).items()}
    assert not any(key.startswith("State 1.") for key in inputs["s1"])
    for key in ("s2", "s3"):
        assert inputs[key]["State 1.outfit"] == "torn jacket" and "torn jacket" in inputs[key]["State 1.fragment"]
        assert "cut cheek" in inputs[key]["State 1.fragment"]
    assert "torn jacket" not in inputs["s4"]["State 1.fragment"]
    assert "relieved" in inputs["s4"]["State 1.fragment"] and "cut cheek" in inputs["s4"]["State 1.fragment"]
    timeline = service.get(f"/api/v1/batches/{batch_id}/continuity")["states"]
    assert [(entry["from_shot"], entry["source"]) for entry in timeline] == [("s2", "shot list"), ("s4", "api")]


def test_music_auto_is_made_from_the_scenes_mood_where_the_model_files_are(comfy, controllers, database_url):
    """music: auto queues the music_ace_step preset on a backend: this ComfyUI has no ACE-Step weights, so the job
    fails naming the file and its folder (it never cuts the scene with made-up music); a scene with no mood is
    refused before any job."""
    service = controllers([comfy.url])
    base = {"defaults": {"size": "128x128", "steps": 2, "set": PASSING}, "max_attempts": 1}
    moody = service.submit({**base, "shots": [{"id": "m1", "prompt": "a harbour", "mood": "calm piano, rain"}]})
    plain = service.submit({**base, "shots": [{"id": "p1", "prompt": "a harbour"}]})
    wait_until(lambda: service.finished(moody) and service.finished(plain), 300, "both batches rendered")

    request = urllib.request.Request(f"{service.url}/api/v1/batches/{plain}/assemblies",
                                     data=json.dumps({"music": "auto"}).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a scene with no mood was accepted for music: auto")
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read())
        assert (error.code, answer["field"]) == (400, "music") and "mood" in answer["error"]

    job = post(f"{service.url}/api/v1/batches/{moody}/assemblies", {"music": "auto"})
    ended = wait_until(lambda: (found := service.get(job["location"]))["status"] in ("done", "failed") and found,
                       120, "the assembly job ended")
    assert ended["status"] == "failed" and ended["error"]["status"] == 502, ended
    assert "ace_step_v1_3.5b.safetensors (put it in ComfyUI's models/checkpoints/)" in ended["error"]["message"]
    assert service.get(f"/api/v1/batches/{moody}/assemblies")["assemblies"] == []


def test_the_cli_sets_and_shows_a_characters_state(database_url):
    import asyncio

    from psycopg_pool import AsyncConnectionPool

    from shotline_controller.contract import shots_of as queued_shots
    from shotline_controller.store.migrations import apply_migrations
    from shotline_controller.store.shots import ShotStore

    async def submit():
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
            await apply_migrations(pool)
            batch_id, _ = await ShotStore(pool).submit_batch(
                queued_shots([{"id": "s1", "prompt": "x"}, {"id": "s2", "prompt": "y"}]), "test")
            return batch_id
    batch_id = asyncio.run(submit())
    env = {"DATABASE_URL": database_url}
    result = shotline("state", "set", batch_id, "aiko", "--from", "s2", "--outfit", "torn jacket", env=env)
    assert result.returncode == 0, result.stderr
    assert "aiko" in result.stdout and "s2" in result.stdout and "outfit: torn jacket" in result.stdout
    refused = shotline("state", "set", batch_id, "aiko", "--from", "s9", "--outfit", "x", env=env)
    assert refused.returncode == 2 and "--from: no shot 's9'" in refused.stderr and "Traceback" not in refused.stderr
    empty = shotline("state", "set", batch_id, "aiko", "--from", "s1", env=env)
    assert empty.returncode == 2 and "--outfit/--injuries" in empty.stderr
    shown = shotline("state", "show", batch_id, env=env)
    assert shown.returncode == 0 and shown.stdout.count("torn jacket") == 1 and "cli" in shown.stdout
