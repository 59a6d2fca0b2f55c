"""Assembly end to end: shots rendered on a real ComfyUI, recorded in a real PostgreSQL, cut into scenes and an
episode through the service's API (a durable job its worker runs) and `shotline assemble`, their files fetched
back through ComfyUI's /view."""
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from shotline.core.video_encode import probe_media

from shotline_controller.api.app import create_app
from shotline_controller.settings import Settings
from shotline_controller.workers.runner import Workers
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration
SHOTLINE = Path(sys.executable).parent / "shotline"
TOKEN = "test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# scene order is first appearance: "opening" (a1, a2, a3), then "alley" (b1), though a3 comes after b1
SHOTS = {"defaults": {"size": "64x64", "steps": 1, "scene": "opening", "duration": 1.0},
         "shots": [{"id": "a1", "prompt": "a rooftop at dusk", "seed": 1},
                   {"id": "a2", "prompt": "a girl on the rooftop", "seed": 2},
                   {"id": "b1", "prompt": "a dark alley", "seed": 3, "scene": "alley", "duration": 1.5},
                   {"id": "a3", "prompt": "the girl looks up", "seed": 4}]}


@pytest.fixture(scope="module")
def rendered(postgres, comfy, tmp_path_factory):
    """A database of its own holding the four shots rendered once on the real ComfyUI; yields (url, batch_id)."""
    with fresh_database(postgres) as url:
        shot_list = tmp_path_factory.mktemp("lists") / "shots.yaml"
        shot_list.write_text(yaml.safe_dump(SHOTS))
        result = subprocess.run([str(SHOTLINE), "render", str(shot_list), "--comfy", comfy.url, "--max-attempts",
                                 "1"], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "DATABASE_URL": url})
        assert result.returncode == 0, result.stdout + result.stderr
        with psycopg.connect(url) as conn:
            [(batch_id,)] = conn.execute("SELECT id FROM batches").fetchall()
        yield url, batch_id


def set_status(url: str, status: str, keys=None) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE shots SET status = %s WHERE %s::text[] IS NULL OR shot_key = ANY(%s::text[])",
                     (status, keys, keys))


def run_service(url, state_dir, work):
    """`work(client)` against the service as `shotline serve` runs it: the app beside its workers (here the
    assembly worker runs the jobs; there is no ComfyUI backend to render on)."""
    settings = Settings(state_dir=state_dir, comfyui_dir=None, comfyui_python=None, extra_model_paths=None,
                        database_url=url)

    async def main():
        async with AsyncConnectionPool(url, min_size=1, max_size=6, open=False) as pool:
            workers, stop = Workers(pool, []), asyncio.Event()
            running = asyncio.create_task(workers.run(stop=stop))
            try:
                app = create_app(pool, settings, TOKEN, notifications=workers.notifications, metrics=workers.metrics)
                async with TestClient(TestServer(app)) as client:
                    return await work(client)
            finally:
                stop.set()
                await running

    return asyncio.run(main())


async def post_assembly(client, batch_id, body):
    """POST an assembly request: (status, body, Location header)."""
    response = await client.post(f"/api/v1/batches/{batch_id}/assemblies", json=body, headers=AUTH)
    return response.status, await response.json(), response.headers.get("Location")


async def wait_for_job(client, location, timeout=120.0):
    """Poll an assembly job until it is done or failed."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(location)
        assert response.status == 200, await response.text()
        job = await response.json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"the job is still {job['status']} after {timeout} s: {job}"
        await asyncio.sleep(0.1)


def test_scene_and_episode_from_approved_shots(rendered, tmp_path):
    url, batch_id = rendered
    set_status(url, "approved")
    set_status(url, "rejected", ["b1"])

    async def through_the_api(client):
        refused = await post_assembly(client, batch_id, {"crossfade_s": 0.25})
        queued = await post_assembly(client, batch_id, {"scenes": ["opening"], "crossfade_s": 0.25})
        return refused, queued, await wait_for_job(client, queued[2])

    refused, queued, job = run_service(url, tmp_path / "state", through_the_api)
    status, body, _ = refused  # checked before anything is queued
    assert status == 409 and "scene 'alley' has no approved shot (1 rejected)" in body["error"]
    status, body, location = queued
    assert status == 202, body
    assert body == {"job_id": body["job_id"], "status": "queued",
                    "location": f"/api/v1/assembly-jobs/{body['job_id']}"} and location == body["location"]
    assert (job["id"], job["status"], job["error"], job["attempts"]) == (body["job_id"], "done", None, 1)
    assert job["request"] == {"scenes": ["opening"], "crossfade_s": 0.25}
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    [scene] = job["assemblies"]
    path = tmp_path / "state" / "assemblies" / str(batch_id) / "opening.mp4"
    assert (scene["kind"], scene["scene"], scene["path"]) == ("scene", "opening", str(path))
    info = probe_media(path)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 64, 64)
    assert info.duration_s == pytest.approx(3 * 1.0 - 2 * 0.25, abs=1 / 24)   # 3 stills x 1 s - 2 crossfades
    assert (scene["duration_s"], scene["frame_count"], scene["fps"]) == (2.5, 60, 24.0)
    assert Path(scene["thumbnail"]).is_file() and scene["thumbnail"].endswith("opening.jpg")
    assert [(p["shot_key"], p["start_s"], p["duration_s"]) for p in scene["parts"]] == [
        ("a1", 0.0, 1.0), ("a2", 0.75, 1.0), ("a3", 1.5, 1.0)]  # b1 is in another scene; a3 after a2
    assert all(p["file"].startswith("shotline/") and p["file"].endswith(".png") for p in scene["parts"])

    # the CLI: every scene (b1 approved now) and the episode, named for a media library
    set_status(url, "approved", ["b1"])
    result = subprocess.run(
        [str(SHOTLINE), "assemble", str(batch_id), "--crossfade", "0.25", "--episode", "1", "--title",
         "Pilot: Night", "--output", str(tmp_path / "scenes"), "--library", str(tmp_path / "My Show")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "DATABASE_URL": url})
    assert result.returncode == 0, result.stdout + result.stderr
    episode = tmp_path / "My Show" / "Season 01" / "S01E01 - Pilot - Night.mp4"
    assert episode.is_file() and episode.with_suffix(".jpg").is_file()
    assert str(episode) in result.stdout and "S01E01" in result.stdout and "opening" in result.stdout
    info = probe_media(episode)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.duration_s == pytest.approx(2.5 + 1.5 - 0.25, abs=1 / 24)

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, kind, scene_key, season, episode, title, output_path, thumbnail_path, "
                            "duration_s, frame_count, width, height, crossfade_s FROM assemblies "
                            "WHERE batch_id = %s ORDER BY created_at", (batch_id,)).fetchall()
        cli_jobs = conn.execute("SELECT status, claimed_by, attempts, max_attempts, cardinality(assembly_ids) "
                                "FROM assembly_jobs WHERE claimed_by LIKE '%%:cli:%%'").fetchall()
        episode_parts = conn.execute(
            "SELECT s.scene_key, p.start_s, p.duration_s FROM assembly_parts p JOIN assemblies s "
            "ON s.id = p.scene_assembly_id WHERE p.assembly_id = %s ORDER BY p.position", (rows[-1][0],)).fetchall()
    assert [(r[1], r[2]) for r in rows] == [("scene", "opening"), ("scene", "opening"), ("scene", "alley"),
                                            ("episode", None)]
    assert rows[-1][3:6] == (1, 1, "Pilot: Night") and rows[-1][6] == str(episode)
    assert [r[8] for r in rows] == [2.5, 2.5, 1.5, 3.75] and rows[2][9] == 36
    assert all(Path(r[6]).is_file() and Path(r[7]).is_file() for r in rows)
    assert episode_parts == [("opening", 0.0, 2.5), ("alley", 2.25, 1.5)]
    assert [(j[0], j[2], j[3], j[4]) for j in cli_jobs] == [("done", 1, 1, 3)]  # the CLI ran its job in place

    async def listed(client):
        response = await client.get(f"/api/v1/batches/{batch_id}/assemblies")
        return response.status, await response.json()

    status, answer = run_service(url, tmp_path / "state", listed)
    assert status == 200 and [a["id"] for a in answer["assemblies"]] == [str(r[0]) for r in rows]
    assert [p["scene"] for p in answer["assemblies"][-1]["parts"]] == ["opening", "alley"]


def test_refusals_name_the_field_the_shot_and_the_file(rendered, tmp_path):
    """What the request or the batch gets wrong is refused before a job is queued; what only the media work finds
    (a crossfade longer than a shot, a file its ComfyUI no longer serves) ends the job failed after one attempt."""
    url, batch_id = rendered
    set_status(url, "rejected")

    async def work(client):
        answers = {}

        async def post(name, body, batch=batch_id):
            answers[name] = await post_assembly(client, batch, body)

        await post("nothing approved", {})
        await post("bad crossfade", {"crossfade_s": "soft"})
        await post("bad episode", {"episode": {"season": 1, "number": 100, "title": "x"}})
        await post("unknown scene", {"scenes": ["finale"]})
        await post("unknown batch", {}, uuid.uuid4())
        set_status(url, "approved")
        await post("too long a crossfade", {"scenes": ["opening"], "crossfade_s": 0.6})
        answers["too long a crossfade"] += (await wait_for_job(client, answers["too long a crossfade"][2]),)
        with psycopg.connect(url) as conn:  # the ComfyUI that rendered a2 is gone
            conn.execute("UPDATE attempts SET backend = 'http://127.0.0.1:9' FROM shots "
                         "WHERE shots.id = attempts.shot_id AND shots.shot_key = 'a2'")
        await post("backend gone", {"scenes": ["opening"]})
        answers["backend gone"] += (await wait_for_job(client, answers["backend gone"][2]),)
        answers["unauthorised"] = (await client.post(f"/api/v1/batches/{batch_id}/assemblies", json={})).status
        for name, job_id in (("unknown job", uuid.uuid4()), ("bad job id", "nope")):
            response = await client.get(f"/api/v1/assembly-jobs/{job_id}")
            answers[name] = (response.status, await response.json())
        return answers

    try:
        answers = run_service(url, tmp_path / "state", work)
    finally:
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE attempts SET backend = (SELECT backend FROM attempts a JOIN shots s "
                         "ON s.id = a.shot_id WHERE s.shot_key = 'a1') WHERE backend = 'http://127.0.0.1:9'")
    status, body, _ = answers["nothing approved"]
    assert status == 409 and "scene 'opening' has no approved shot (3 rejected)" in body["error"]
    assert "scene 'alley'" in body["error"]
    assert (answers["bad crossfade"][0], answers["bad crossfade"][1]["field"]) == (400, "crossfade_s")
    assert (answers["bad episode"][0], answers["bad episode"][1]["field"]) == (400, "episode.number")
    assert answers["unknown scene"][0] == 400 and answers["unknown scene"][1]["field"] == "scenes[0]"
    assert "opening, alley" in answers["unknown scene"][1]["error"]
    assert answers["unknown batch"][0] == 404
    status, _, _, job = answers["too long a crossfade"]
    assert (status, job["status"], job["attempts"], job["max_attempts"]) == (202, "failed", 1, 3)
    assert (job["error"]["status"], job["error"]["field"]) == (400, "crossfade_s")
    assert "shot 'a2'" in job["error"]["message"] and job["assemblies"] == [] and job["finished_at"]
    status, _, _, job = answers["backend gone"]
    assert (status, job["status"], job["attempts"], job["error"]["status"]) == (202, "failed", 1, 502)
    message = job["error"]["message"]
    assert "shot 'a2'" in message and "http://127.0.0.1:9" in message
    assert "output/shotline/" in message and ".png" in message
    assert answers["unauthorised"] == 401
    assert answers["unknown job"][0] == 404 and answers["unknown job"][1]["field"] == "job_id"
    assert answers["bad job id"][0] == 400
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM assemblies WHERE batch_id = %s AND created_at > now() - "
                            "interval '1 minute' AND output_path LIKE %s",
                            (batch_id, f"{tmp_path}%")).fetchone() == (0,)
        # each refusal before the queue left no job; the two that failed are all there is
        assert conn.execute("SELECT count(*) FROM assembly_jobs WHERE scenes_dir LIKE %s",
                            (f"{tmp_path}%",)).fetchone() == (2,)


def test_a_job_left_by_a_dead_controller_is_run_again(rendered, tmp_path):
    """Jobs a controller claimed and then stopped renewing (it died): the service's worker claims the lapsed one
    again and runs it to done; one that already used every attempt ends failed, saying why."""
    url, batch_id = rendered
    set_status(url, "approved")
    scenes = tmp_path / "scenes" / str(batch_id)
    with psycopg.connect(url) as conn:
        [orphan, exhausted] = [conn.execute(
            "INSERT INTO assembly_jobs (batch_id, request, scenes_dir, library_dir, status, claimed_by, lease_until, "
            "  attempts, started_at) VALUES (%s, %s, %s, %s, 'running', 'dead', now() - interval '5 seconds', %s, "
            "  now() - interval '2 minutes') RETURNING id",
            (batch_id, Jsonb({"scenes": ["opening"], "crossfade_s": 0.25}), str(scenes), str(tmp_path / "library"),
             attempts)).fetchone()[0] for attempts in (1, 3)]

    async def work(client):
        return [await wait_for_job(client, f"/api/v1/assembly-jobs/{job_id}") for job_id in (orphan, exhausted)]

    orphan, exhausted = run_service(url, tmp_path / "state", work)
    assert (orphan["status"], orphan["attempts"], orphan["error"]) == ("done", 2, None)
    assert orphan["claimed_by"] != "dead" and ":assembly:" in orphan["claimed_by"]
    [scene] = orphan["assemblies"]
    assert (scene["scene"], scene["path"], scene["duration_s"]) == ("opening", str(scenes / "opening.mp4"), 2.5)
    assert probe_media(scenes / "opening.mp4").duration_s == pytest.approx(2.5, abs=1 / 24)
    assert (exhausted["status"], exhausted["attempts"], exhausted["assemblies"]) == ("failed", 3, [])
    assert "the controller running it (dead) stopped before it finished, 3 time(s)" in exhausted["error"]["message"]


def test_cli_flags_are_checked_before_anything_runs(tmp_path):
    result = subprocess.run([str(SHOTLINE), "assemble", str(uuid.uuid4()), "--crossfade", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--crossfade: must be greater than or equal to 0, got -1.0" in result.stderr
    result = subprocess.run([str(SHOTLINE), "assemble", str(uuid.uuid4()), "--crossfade", "11"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--crossfade: must be less than or equal to 10, got 11.0" in result.stderr
    result = subprocess.run([str(SHOTLINE), "assemble", str(uuid.uuid4()), "--episode", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--title: required" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_music_is_stored_as_an_upload_and_ducked_under_the_scene(rendered, tmp_path):
    """`--music FILE` is checked (audio, by its content) before anything runs, stored as an upload by its hash
    (so the job names it as the API's would), and mixed into the scene."""
    import hashlib

    import numpy as np
    from shotline.core.video_encode import read_video

    from tests.images import write_wav
    url, batch_id = rendered
    set_status(url, "approved")
    env = {**os.environ, "DATABASE_URL": url}
    (tmp_path / "not-audio.wav").write_bytes(b"just text, whatever the name says")
    refused = subprocess.run([str(SHOTLINE), "assemble", str(batch_id), "--music", str(tmp_path / "not-audio.wav")],
                             capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "--music: " in refused.stderr and "is not an audio file" in refused.stderr
    assert "Traceback" not in refused.stderr

    seconds = np.arange(4 * 22050) / 22050
    music = write_wav(tmp_path / "theme.wav", 0.5 * np.sin(2 * np.pi * 220 * seconds), 22050)
    digest = hashlib.sha256(music.read_bytes()).hexdigest()
    result = subprocess.run([str(SHOTLINE), "assemble", str(batch_id), "--scene", "alley", "--crossfade", "0",
                             "--music", str(music), "--output", str(tmp_path / "scenes")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT media_type, content FROM uploads WHERE sha256 = %s",
                            (digest,)).fetchone() == ("audio/wav", music.read_bytes())
        [(music_ref, request)] = conn.execute(
            "SELECT a.music_path, j.request FROM assemblies a JOIN assembly_jobs j ON a.id = ANY(j.assembly_ids) "
            "WHERE a.output_path LIKE %s", (f"{tmp_path}%",)).fetchall()
    assert music_ref == f"sha256:{digest}" and request["music"] == music_ref
    _, _, audio, _ = read_video(tmp_path / "scenes" / str(batch_id) / "alley.mp4")
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.01  # the still shot is silent: what is heard is the music


def test_speaking_video_shots_from_the_video_preset_cut_into_a_scene(database_url, comfy, tmp_path):
    """The whole chain: shot_video_dialogue renders MP4s with speech on the real server, the controller records
    them, and the scene is cut from those videos (not from their last-frame stills), audio included."""
    import numpy as np
    from shotline.core.video_encode import read_video
    url = database_url
    shot_list = tmp_path / "scene.yaml"
    shot_list.write_text(yaml.safe_dump({
        "defaults": {"workflow": "shot_video_dialogue", "size": "64x64", "steps": 1, "frames": 6, "fps": 6,
                     "scene": "talk"},
        "shots": [{"id": "t1", "prompt": "a girl speaks", "dialogue": "You came after all.", "seed": 1},
                  {"id": "t2", "prompt": "a boy answers", "dialogue": "I said I would.", "seed": 2}]}))
    env = {**os.environ, "DATABASE_URL": url}
    result = subprocess.run([str(SHOTLINE), "render", str(shot_list), "--comfy", comfy.url, "--max-attempts", "1"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(url) as conn:
        [(batch_id,)] = conn.execute("SELECT id FROM batches").fetchall()
    set_status(url, "approved")  # the random checkpoint's noise would not pass the quality check
    result = subprocess.run([str(SHOTLINE), "assemble", str(batch_id), "--crossfade", "0.25", "--output",
                             str(tmp_path / "scenes")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(url) as conn:
        files = [row[0] for row in conn.execute(
            "SELECT o.filename FROM assembly_parts p JOIN outputs o ON o.id = p.output_id ORDER BY p.position")]
    assert len(files) == 2 and all(file.endswith(".mp4") for file in files)
    scene = tmp_path / "scenes" / str(batch_id) / "talk.mp4"
    info = probe_media(scene)
    # each shot: 6 frames at 6 fps, interpolated x2 to 11 frames at 12 fps, upscaled x2; 0.25 s = 3 frames overlap
    assert (info.video_codec, info.audio_codec, info.fps, info.width, info.height) == ("h264", "aac", 12.0, 128, 128)
    assert info.frame_count == 2 * 11 - 3
    _, _, audio, _ = read_video(scene)
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.01  # the spoken lines are in the cut
