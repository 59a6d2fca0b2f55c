"""`shotline render` end to end: shot list -> real ComfyUI -> rows in a real PostgreSQL."""
import hashlib
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import psycopg
import pytest
import yaml

from shotline_controller.comfy.presets import preset_path
from shotline_controller.embedded_postgres import EmbeddedPostgres, public_temp_dir
from tests.integration.processes import SHOTLINE, shotline

pytestmark = pytest.mark.integration
TWO_SHOTS = {  # one attempt each: these tests look at a single render, retries have their own test
    "defaults": {"size": "128x128", "steps": 2},
    "shots": [{"id": "s01", "prompt": "a girl with silver hair", "seed": 1},
              {"id": "s02", "prompt": "the same girl, close-up", "seed": 2, "size": "128x96"}],
}


def write_list(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def recorded(url: str) -> dict:
    with psycopg.connect(url) as conn:
        def rows(sql):
            cursor = conn.execute(sql)
            return [dict(zip([c.name for c in cursor.description], row)) for row in cursor.fetchall()]
        return {
            "shots": rows("SELECT * FROM shots ORDER BY position"),
            "attempts": rows("SELECT a.*, s.shot_key FROM attempts a JOIN shots s ON s.id = a.shot_id "
                             "ORDER BY s.position"),
            "outputs": rows("SELECT o.*, s.shot_key FROM outputs o JOIN attempts a ON a.id = o.attempt_id "
                            "JOIN shots s ON s.id = a.shot_id ORDER BY s.position"),
            "verdicts": rows("SELECT v.*, s.shot_key FROM verdicts v JOIN attempts a ON a.id = v.attempt_id "
                             "JOIN shots s ON s.id = a.shot_id ORDER BY s.position"),
        }


def test_render_two_shots_records_shots_attempts_outputs_verdicts(comfy, comfy_server, database_url, tmp_path):
    result = shotline("render", write_list(tmp_path / "two.yaml", TWO_SHOTS), "--comfy", comfy.url,
                      "--max-attempts", "1", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stdout + result.stderr
    db = recorded(database_url)

    assert [s["shot_key"] for s in db["shots"]] == ["s01", "s02"]
    assert {s["status"] for s in db["shots"]} <= {"approved", "rejected"}
    assert db["shots"][1]["params"]["height"] == 96
    assert [a["shot_key"] for a in db["attempts"]] == ["s01", "s02"]
    for attempt in db["attempts"]:
        assert attempt["status"] == "succeeded" and attempt["error"] is None
        assert attempt["backend"] == comfy.url and attempt["attempt_no"] == 1
        assert attempt["started_at"] <= attempt["finished_at"]
        assert attempt["inputs"]["Sampler.steps"] == 2
        # our prompt_id is ComfyUI's: its history holds the same verdict we recorded
        history = comfy.get(f"/history/{attempt['prompt_id']}")[str(attempt["prompt_id"])]
        [verdict_row] = [v for v in db["verdicts"] if v["attempt_id"] == attempt["id"]]
        [ui_verdict] = history["outputs"][verdict_row["node_id"]]["shotline_verdict"]
        assert verdict_row["score"] == ui_verdict["score"]
        assert verdict_row["passed"] == ui_verdict["passed"]
        assert verdict_row["check_name"] == "quality"
        shot = next(s for s in db["shots"] if s["id"] == attempt["shot_id"])
        assert shot["status"] == ("approved" if ui_verdict["passed"] else "rejected")

    assert [o["shot_key"] for o in db["outputs"]] == ["s01", "s02"]
    for output in db["outputs"]:
        assert output["kind"] == "images" and output["folder_type"] == "output"
        assert (comfy_server.output_dir / output["subfolder"] / output["filename"]).is_file()
    assert "s01" in result.stdout and "s02" in result.stdout  # the summary table


def test_malformed_shot_list_is_a_clear_error(tmp_path):
    bad = {"shots": [{"id": "s01", "prompt": "x"}, {"id": "s02", "prompt": "y", "seed": "soon"}]}
    result = shotline("render", write_list(tmp_path / "bad.yaml", bad), "--comfy", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "shots[1].seed: must be a whole number, got 'soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_comfy_leaves_no_shot_lost(database_url, tmp_path):
    result = shotline("render", write_list(tmp_path / "two.yaml", TWO_SHOTS), "--comfy", "http://127.0.0.1:9",
                      env={"DATABASE_URL": database_url})
    assert result.returncode == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    db = recorded(database_url)
    assert db["shots"] == []  # refused before anything was queued: nothing half-recorded


def test_render_on_embedded_defaults(settings, model_cache, tmp_path):
    """The README's main job: no --comfy and no DATABASE_URL, so it starts ComfyUI and PostgreSQL itself."""
    home = public_temp_dir("shotline-home-")
    recorded_install = json.loads((settings.state_dir / "install.json").read_text())
    extra_paths = home / "extra_model_paths.yaml"
    extra_paths.write_text(f"shotline_tests:\n    base_path: {model_cache}\n    checkpoints: checkpoints\n")
    (home / "install.json").write_text(json.dumps({**recorded_install, "extra_model_paths": str(extra_paths)}))
    env = {"SHOTLINE_HOME": str(home)}
    env.pop("DATABASE_URL", None)
    started = time.monotonic()
    result = subprocess.run([str(SHOTLINE), "render", str(write_list(tmp_path / "two.yaml", TWO_SHOTS)),
                             "--max-attempts", "1"],
                            capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in {**os.environ, **env}.items() if k != "DATABASE_URL"})
    elapsed = time.monotonic() - started
    print(f"\ntwo-shot render on embedded defaults: {elapsed:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ComfyUI ready" in result.stdout

    server = EmbeddedPostgres(home / "pgdata")  # the CLI stopped the server it started; read what it left
    assert not server.is_running()
    server.start()
    try:
        db = recorded(server.url)
    finally:
        server.stop()
    assert [s["shot_key"] for s in db["shots"]] == ["s01", "s02"]
    assert len(db["attempts"]) == 2 and len(db["outputs"]) == 2 and len(db["verdicts"]) == 2
    assert all(a["status"] == "succeeded" for a in db["attempts"])


def test_a_rejected_shot_is_retried_with_a_correction(comfy, database_url, tmp_path):
    """128 px fails the shot's 160 px minimum: the second attempt is corrected to 160 px and says why. (Without
    `min_side` the check follows the size the shot asks for, and 128 px passes as 128 px.)"""
    one = {"shots": [{"id": "small", "workflow": "shot_txt2img", "prompt": "a girl", "seed": 4, "size": "128x128",
                      "steps": 1, "min_side": 160, "learning": "off"}]}  # the table's own correction
    result = shotline("render", write_list(tmp_path / "one.yaml", one), "--comfy", comfy.url, "--max-attempts", "2",
                      env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stdout + result.stderr
    db = recorded(database_url)
    first, second = db["attempts"]
    assert (first["attempt_no"], second["attempt_no"]) == (1, 2)
    assert first["correction"] is None
    # noise is also blurry and flat: the corrections combine, each named
    assert {"too small", "blurry"} <= set(second["correction"]["reason"].split(", "))
    assert second["correction"]["changes"]["width"] == 160 and second["inputs"]["Size.width"] == 160
    assert second["inputs"]["Sampler.steps"] == 9  # 1 step + 8
    assert second["inputs"]["Sampler.seed"] == first["inputs"]["Sampler.seed"]  # these fixes keep the seed
    assert len(db["verdicts"]) == 2 and db["shots"][0]["status"] in ("approved", "rejected")


def test_editor_format_preset_and_an_uploaded_input_image(comfy, comfy_server, database_url, tmp_path):
    """A user preset saved only in editor format is converted against the server's /object_info, and the shot's
    image is uploaded to the server that runs it, where the preset's "Input Image" node reads it."""
    editor = json.loads(preset_path("shot_txt2img", api=False).read_text())
    editor["nodes"] += [
        {"id": 20, "type": "LoadImage", "title": "Input Image", "pos": [0, 700], "size": [300, 300], "flags": {},
         "order": 8, "mode": 0, "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [20]},
                                                          {"name": "MASK", "type": "MASK", "links": None}],
         "properties": {}, "widgets_values": ["example.png", "image"]},
        {"id": 21, "type": "ShotQualityScore", "title": "Input Check", "pos": [400, 700], "size": [300, 200],
         "flags": {}, "order": 9, "mode": 0, "inputs": [{"name": "image", "type": "IMAGE", "link": 20}],
         "outputs": [], "properties": {}, "widgets_values": [100.0, 0.08, 0.15, 64]},
    ]
    editor["links"].append([20, 20, 0, 21, 0, "IMAGE"])
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "with_image.json").write_text(json.dumps(editor))  # editor format only, no api/
    pose = np.zeros((72, 88, 3), np.uint8)
    pose[20:50, 30:60] = 255
    (tmp_path / "lists" / "refs").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "lists" / "refs" / "pose.png"), pose)
    shots = {"shots": [{"id": "img", "workflow": "with_image", "prompt": "x", "size": "64x64", "steps": 1,
                        "image": "refs/pose.png"}]}  # relative to the list's folder
    result = shotline("render", write_list(tmp_path / "lists" / "one.yaml", shots), "--comfy", comfy.url,
                      "--max-attempts", "1",
                      env={"DATABASE_URL": database_url, "SHOTLINE_PRESETS": str(tmp_path / "presets")})
    assert result.returncode == 0, result.stdout + result.stderr
    db = recorded(database_url)
    [attempt] = db["attempts"]
    # stored as an upload named by its content, and put on the ComfyUI that ran the shot under that name
    pose_bytes = (tmp_path / "lists" / "refs" / "pose.png").read_bytes()
    digest = hashlib.sha256(pose_bytes).hexdigest()
    assert db["shots"][0]["params"]["image"] == f"sha256:{digest}"
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT media_type, content FROM uploads WHERE sha256 = %s",
                            (digest,)).fetchone() == ("image/png", pose_bytes)
    uploaded = attempt["inputs"]["Input Image.image"]
    assert uploaded == f"shotline/{digest[:16]}.png"
    assert (comfy_server.input_dir / uploaded).read_bytes() == pose_bytes
    subfolder, name = uploaded.split("/")
    served = comfy.url + "/view?" + urllib.parse.urlencode({"filename": name, "subfolder": subfolder,
                                                             "type": "input"})
    with urllib.request.urlopen(served, timeout=30) as response:
        assert response.read() == pose_bytes
    [input_check] = [v for v in db["verdicts"] if v["node_id"] == "21"]
    assert (input_check["details"]["images"][0]["width"], input_check["details"]["images"][0]["height"]) == (88, 72)


def test_missing_input_image_names_the_field(tmp_path):
    bad = {"shots": [{"id": "a", "prompt": "x", "image": "nowhere.png"}]}
    result = shotline("render", write_list(tmp_path / "bad.yaml", bad), "--comfy", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "shots[0].image: cannot read nowhere.png: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["parent folder", "absolute path", "symlink out"])
@pytest.mark.parametrize("mode", ["--comfy", "--server"])
def test_an_image_outside_the_lists_folder_is_refused(where, mode, database_url, tmp_path):
    """A shot list names files inside its own folder only (symlinks resolved): nothing else on the machine is read
    and sent, to a ComfyUI or to a service."""
    pose = np.zeros((32, 32, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "outside.png"), pose)  # a real image, readable: only its place is wrong
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "link.png").symlink_to(tmp_path / "outside.png")
    image = {"parent folder": "../outside.png", "absolute path": str(tmp_path / "outside.png"),
             "symlink out": "link.png"}[where]
    shots = {"shots": [{"id": "a", "prompt": "x", "image": image}]}
    target = ["--comfy", "http://127.0.0.1:9"] if mode == "--comfy" else ["--server", "http://127.0.0.1:9",
                                                                         "--token", "t"]
    result = shotline("render", write_list(lists / "one.yaml", shots), *target, env={"DATABASE_URL": database_url},
                      timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "shots[0].image: must be a file inside the shot list's folder" in result.stderr
    assert "Traceback" not in result.stderr
    with psycopg.connect(database_url) as conn:  # refused before the database was even opened
        assert conn.execute("SELECT to_regclass('shots')").fetchone() == (None,)


def test_a_character_shot_climbs_the_identity_ladder_and_records_every_score(comfy, comfy_server, database_url,
                                                                            tmp_path):
    """The example characters, the shot_character preset and the random checkpoint (which draws no face): every
    attempt is refined and checked, each records its rung, its per-character score and Face Refine's record."""
    from shotline_controller.example_characters import ensure_example_characters
    ensure_example_characters(comfy_server.characters_dir)
    one = {"shots": [{"id": "c01", "workflow": "shot_character", "characters": ["example_a"], "prompt": "portrait",
                      "seed": 7, "size": "128x128", "steps": 1, "min_side": 64, "identity_threshold": 0.7,
                      "learning": "off"}]}  # the fixed ladder, rung by rung
    result = shotline("render", write_list(tmp_path / "one.yaml", one), "--comfy", comfy.url, "--max-attempts", "3",
                      env={"DATABASE_URL": database_url, "SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "c01 (example_a): rejected after 3 attempt(s)" in result.stdout
    assert "rung 2 LoRAs + refine" in result.stdout and "cannot match a character" in result.stdout, result.stdout
    db = recorded(database_url)
    attempts = db["attempts"]
    assert [a["attempt_no"] for a in attempts] == [1, 2, 3]
    assert attempts[0]["correction"] is None
    assert attempts[1]["correction"]["step"].startswith("rung 1 seed + weight")
    assert attempts[1]["inputs"]["Character Prompt.character_weight"] == 1.15
    assert attempts[2]["correction"]["step"].startswith("rung 2 LoRAs + refine")
    assert attempts[2]["inputs"]["Face Refine.max_cycles"] == 5 and attempts[2]["inputs"]["Face Refine.denoise"] == 0.55
    assert all(a["inputs"]["Character 1.character"] == "example_a" for a in attempts)
    assert all(a["inputs"]["Identity Check.threshold"] == 0.7 for a in attempts)
    assert len({a["inputs"]["Sampler.seed"] for a in attempts}) == 3  # every rung takes a new seed
    checks = sorted((v["shot_key"], v["check_name"]) for v in db["verdicts"])
    assert checks == [("c01", name) for name in ["face_refine", "identity", "quality", "shot"] for _ in range(3)]
    with psycopg.connect(database_url) as conn:
        scores = conn.execute("SELECT character_name, score, threshold, passed FROM character_scores "
                              "ORDER BY attempt_id").fetchall()
    assert len(scores) == 3 and {row[0] for row in scores} == {"Example A"}
    assert all(row[1] is None and row[2] == 0.7 and row[3] is False for row in scores)  # no face: no score


def test_an_unknown_character_names_the_field(comfy_server, tmp_path):
    bad = {"shots": [{"id": "a", "prompt": "x", "workflow": "shot_character", "characters": ["nobody"]}]}
    result = shotline("render", write_list(tmp_path / "bad.yaml", bad), "--comfy", "http://127.0.0.1:9",
                      env={"SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)})
    assert result.returncode == 2
    assert "shots[0].characters[0]: no character 'nobody' in the library" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_face_repair_shot_refines_each_face_with_its_own_character(comfy, comfy_server, database_url, tmp_path):
    """The example's face-repair shot: a real picture of both example characters; every face is re-sampled with its
    own character's prompt and re-scored, the random checkpoint's samples lose the face, so the input is kept and
    both characters pass the identity check."""
    from shotline_controller.example_characters import ensure_example_characters, ensure_example_inputs
    ensure_example_characters(comfy_server.characters_dir)
    ensure_example_inputs(tmp_path)
    one = {"shots": [{"id": "r01", "workflow": "shot_face_repair", "image": "example_pair.png", "size": "520x200",
                      "characters": ["example_a", "example_b"], "prompt": "detailed face", "steps": 1,
                      "refine_size": 128, "refine_cycles": 2, "min_side": 128}]}
    result = shotline("render", write_list(tmp_path / "one.yaml", one), "--comfy", comfy.url, "--max-attempts", "1",
                      env={"DATABASE_URL": database_url, "SHOTLINE_CHARACTER_LIBRARY": str(comfy_server.characters_dir)})
    assert result.returncode == 0, result.stdout + result.stderr
    db = recorded(database_url)
    verdicts = {v["check_name"]: v["details"] for v in db["verdicts"]}
    faces = verdicts["face_refine"]["faces"]
    assert [face["character"] for face in faces] == ["Example A", "Example B"]
    assert "example a" in faces[0]["prompt"] and "example b" in faces[1]["prompt"]  # each its own design prompt
    for face in faces:
        assert face["cycles"] and all(c["seed"] is not None for c in face["cycles"])
        assert face["score_out"] >= face["score_in"] > 0.75
    assert verdicts["identity"]["passed"] and set(verdicts["identity"]["characters"]) == {"Example A", "Example B"}
    assert db["shots"][0]["status"] in ("approved", "needs_review")
    assert db["attempts"][0]["inputs"]["Face Repair.face_prompt"] == "detailed face"
