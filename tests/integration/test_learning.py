"""Learning through a real ComfyUI and PostgreSQL: one batch's outcomes change the next batch's first-attempt
choice (recorded with the statistics behind it), and a person's rejection teaches the character a negative term
its next shot carries."""
import json
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest

from tests.integration.processes import TOKEN, controllers, shotline, wait_until  # noqa: F401
from tests.integration.test_continuity import rows

pytestmark = pytest.mark.integration

PASSING = {"Quality.min_sharpness": 0.1, "Quality.min_contrast": 0.001, "Quality.max_clipped": 1.0,
           "Quality.max_noise": 255.0}
FAILING = {**PASSING, "Quality.min_side": 4096}  # a check the noise of the test checkpoint cannot pass


def attempts_of(database_url: str, batch_id) -> dict[str, dict]:
    return {row["shot_key"]: row for row in rows(
        database_url, "SELECT s.shot_key, s.status, a.inputs, a.outcome, a.knobs, a.learned FROM shots s "
                      "JOIN attempts a ON a.shot_id = s.id WHERE s.batch_id = %s ORDER BY a.attempt_no", (batch_id,))}


def request(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    sent = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_one_batch_teaches_the_next_batch_its_first_attempt(comfy, controllers, database_url):
    from shotline_controller.learner import knob_arms
    arms = sorted(knob_arms("cfg", 7.0, low=0.0, high=100.0), key=float)  # shot_txt2img's Sampler: cfg 7
    good, bad = float(arms[0]), float(arms[-1])
    service = controllers([comfy.url])
    # explicit values are never chosen for, and still count: three passing shots at one cfg, three failing at
    # another (both unlike the preset's own 7)
    first = service.submit({
        "defaults": {"size": "128x128", "steps": 2, "learning": "exploit"}, "max_attempts": 1,
        "shots": [{"id": f"good{i}", "prompt": "a harbour", "seed": i, "cfg": good, "set": PASSING}
                  for i in range(3)] + [{"id": f"bad{i}", "prompt": "a harbour", "seed": i, "cfg": bad,
                                         "set": FAILING} for i in range(3)]})
    wait_until(lambda: service.finished(first), 300, "the first batch rendered")
    taught = attempts_of(database_url, first)
    assert {key: (row["status"], row["outcome"], row["knobs"]["cfg"]) for key, row in taught.items()} == {
        **{f"good{i}": ("approved", "approved", f"{good:g}") for i in range(3)},
        **{f"bad{i}": ("rejected", "rejected", f"{bad:g}") for i in range(3)}}
    assert "cfg" not in taught["good0"]["learned"]  # given by the shot: not the learner's choice

    second = service.submit({"defaults": {"size": "128x128", "steps": 2, "learning": "exploit"}, "max_attempts": 1,
                             "shots": [{"id": "next", "prompt": "a harbour", "seed": 9, "set": PASSING}]})
    wait_until(lambda: service.finished(second), 300, "the second batch rendered")
    [attempt] = attempts_of(database_url, second).values()
    choice = attempt["learned"]["cfg"]
    assert choice["arm"] == f"{good:g}" and attempt["inputs"]["Sampler.cfg"] == good, choice
    assert attempt["knobs"]["cfg"] == f"{good:g}"
    assert choice["stats"][f"{good:g}"]["successes"] == 3 and choice["stats"][f"{good:g}"]["failures"] == 0
    assert choice["stats"][f"{bad:g}"]["failures"] == 3 and choice["stats"][f"{bad:g}"]["successes"] == 0
    assert f"cfg {good:g}" in choice["why"], choice["why"]
    # the same statistics, as the API shows them ("why cfg ...?")
    shot_id = rows(database_url, "SELECT id FROM shots WHERE batch_id = %s", (second,))[0]["id"]
    [shown] = service.get(f"/api/v1/shots/{shot_id}")["attempts"]
    assert shown["learned"]["cfg"] == choice and shown["outcome"] == "approved"
    learning = {entry["character"]: entry for entry in service.get("/api/v1/analytics")["learning"]}
    preferred = {p["decision"]: p for p in learning[""]["preferences"]}
    assert preferred["cfg"]["arm"] == f"{good:g}" and preferred["cfg"]["trials"] == 4
    assert preferred["cfg"]["low"] <= preferred["cfg"]["mean"] <= preferred["cfg"]["high"]


def test_a_rejection_teaches_the_characters_next_shot_a_negative(comfy, comfy_server, controllers, database_url):
    from shotline_controller.example_characters import ensure_example_characters
    ensure_example_characters(comfy_server.characters_dir)
    library = str(comfy_server.characters_dir)
    service = controllers([comfy.url], env={"SHOTLINE_CHARACTER_LIBRARY": library})
    shot = {"prompt": "standing on a rooftop", "characters": ["example_a"], "workflow": "shot_character"}
    defaults = {"size": "128x128", "steps": 1, "refine_cycles": 1, "refine_size": 128, "learning": "exploit"}
    first = service.submit({"defaults": defaults, "max_attempts": 1, "shots": [{"id": "crowded", **shot}]})
    wait_until(lambda: service.finished(first), 300, "the first shot rendered")
    [before] = attempts_of(database_url, first).values()
    assert "learned.negative" not in before["inputs"]
    # the test checkpoint's noise has no face to score, so its verdict is a rejection: the shot is put in the
    # review band by hand, as a borderline score would
    with psycopg.connect(database_url) as conn:
        shot_id = conn.execute("UPDATE shots SET status = 'needs_review' WHERE batch_id = %s RETURNING id",
                               (first,)).fetchone()[0]
    status, answer = request("POST", f"{service.url}/api/v1/shots/{shot_id}/review",
                             {"decision": "reject", "reason": "extra_people", "note": "two girls in the back"})
    assert status == 200 and answer["status"] == "rejected", answer
    assert [(r["decision"], r["category"], r["note"]) for r in answer["reviews"]] == [
        ("reject", "extra_people", "two girls in the back")]
    assert answer["attempts"][-1]["outcome"] == "rejected"
    assert request("POST", f"{service.url}/api/v1/shots/{shot_id}/review",
                   {"decision": "reject", "reason": "crowd"})[1]["field"] == "reason"

    second = service.submit({"defaults": defaults, "max_attempts": 1, "shots": [{"id": "after", **shot}]})
    wait_until(lambda: service.finished(second), 300, "the next shot rendered")
    [after] = attempts_of(database_url, second).values()
    assert after["inputs"]["learned.negative"] == ["crowd", "extra people", "multiple people"]
    assert "crowd, extra people, multiple people" in after["inputs"]["Character Prompt.negative"]

    learned = service.get("/api/v1/characters/example_a/learning")
    assert [(n["term"], n["category"], n["times"], n["last_shot"]) for n in learned["negatives"]] == [
        (term, "extra_people", 1, "crowded") for term in ("crowd", "extra people", "multiple people")]
    term = urllib.parse.quote("multiple people")
    status, removed = request("DELETE", f"{service.url}/api/v1/characters/example_a/negatives/{term}")
    assert status == 200 and [n["term"] for n in removed["negatives"] if n["removed_at"] is None] == [
        "crowd", "extra people"]
    assert request("DELETE", f"{service.url}/api/v1/characters/example_a/negatives/{term}")[0] == 404
    result = shotline("character", "learned", "example_a", "--remove", "crowd", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "removed 'crowd'" in result.stdout and "extra people" in result.stdout
    assert [n["term"] for n in service.get("/api/v1/characters/example_a/learning")["negatives"]
            if n["removed_at"] is None] == ["extra people"]
