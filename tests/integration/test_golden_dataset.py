"""Golden datasets through a real PostgreSQL and a real ComfyUI: approved shots recorded by the real store, their
pictures real photos in the ComfyUI's output folder (fetched back through its /view), exported by
`shotline character dataset` and by `GET /api/v1/characters/{folder}/dataset`."""
import asyncio
import hashlib
import io
import json
import urllib.error
import urllib.request
import uuid
import zipfile

import cv2
import numpy as np
import pytest
from psycopg_pool import AsyncConnectionPool
from shotline.core.characters import parse_sheet, write_character
from shotline.core.faces import load_detector
from shotline.core.identity import IdentityVerdict, aggregate_frames

from shotline_controller.contract import shots_of
from shotline_controller.golden_dataset import BUCKETS
from shotline_controller.store.migrations import apply_migrations
from shotline_controller.store.shots import ShotStore
from shotline_controller.store.status import ShotStatus
from tests.integration.processes import TOKEN, controllers, shotline  # noqa: F401 (controllers: a fixture)
from tests.unit.test_golden_dataset import t1_people

pytestmark = pytest.mark.integration
DESIGN = "Aiko, a woman with dark hair, red scarf"


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def near_copy(rgb: np.ndarray) -> bytes:
    """The picture re-encoded as JPEG q70, 8 % brighter and 0.95x: what a re-render or a re-save gives."""
    brighter = np.clip(rgb.astype(np.float32) * 1.08, 0, 255).astype(np.uint8)
    smaller = cv2.resize(brighter, (round(rgb.shape[1] * 0.95), round(rgb.shape[0] * 0.95)),
                         interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", cv2.cvtColor(smaller, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes()


def verdict_for(data: bytes, idr: float) -> dict:
    """The identity verdict the node emits for this picture: its faces found by the node's detector, the
    character given the largest face at `idr` (the test sets the score: above or below the threshold)."""
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    faces = load_detector("mtcnn").detect(rgb.astype(np.float32) / 255.0)
    assert faces, "no face found in a test picture"
    largest = max(range(len(faces)), key=lambda i: faces[i].width * faces[i].height)
    frame = IdentityVerdict(score=idr, passed=idr >= 0.75, face_count=len(faces),
                            characters={"Aiko": {"face": largest, "idr": idr, "passed": idr >= 0.75}},
                            unmatched_faces=[i for i in range(len(faces)) if i != largest], missing=[],
                            threshold=0.75, faces=[face.as_dict() for face in faces])
    return {"node_id": "12", "backend": "mtcnn_low+animeface-dlib", **aggregate_frames([frame])}


def output(filename: str) -> dict:
    return {"node_id": "9", "kind": "images", "filename": filename, "subfolder": SUBFOLDER, "type": "output"}


def record(database_url: str, backend: str, files: dict[str, bytes], shots: dict[str, tuple[str, float, str]],
           first_try: dict[str, tuple[str, float]]) -> None:
    """One shot per entry, through the store as the dispatcher records them: shot key -> (output file, IDR,
    status); a shot in `first_try` first gets a rejected attempt (file, IDR) and a correction."""
    async def finish(store, claimed, filename, idr, status, retry=None):
        await store.finish_attempt(claimed.attempt_id, status, outputs=[output(filename)],
                                   verdicts=[verdict_for(files[filename], idr)], retry=retry)

    async def main():
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
            await apply_migrations(pool)
            store = ShotStore(pool)
            await store.submit_batch(shots_of([{"id": key, "prompt": f"{key} scene, night city"}
                                               for key in shots]), "test")
            for _ in shots:
                claimed = await store.claim("w1", 30, backend)
                if claimed.shot_key in first_try:
                    await finish(store, claimed, *first_try[claimed.shot_key], ShotStatus.REJECTED, retry={
                        "params": claimed.params, "correction": {"changes": {}, "reason": "a test"}})
                    claimed = await store.claim("w1", 30, backend)
                await finish(store, claimed, *shots[claimed.shot_key])
    asyncio.run(main())


SUBFOLDER = f"golden-{uuid.uuid4().hex[:8]}"


def api_get(url: str, token: str | None = TOKEN) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def test_a_characters_golden_dataset_from_the_cli_and_the_api(comfy_server, database_url, controllers, tmp_path):
    people = t1_people()
    (aiko, _), (other, _), (third, _) = people
    library = tmp_path / "library"
    write_character(library, "aiko", parse_sheet({"name": "Aiko", "style": "photo", "design_prompt": DESIGN}),
                    {"front.png": png(aiko)})
    folder = comfy_server.output_dir / SUBFOLDER
    folder.mkdir()
    files = {"best.png": png(aiko), "copy.jpg": near_copy(aiko), "second.png": png(third),
             "low.png": png(other), "review.png": png(np.ascontiguousarray(third[:, ::-1])),
             "first_try.png": png(np.ascontiguousarray(other[:, ::-1]))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    record(database_url, comfy_server.url, files, {
        "best": ("best.png", 0.96, ShotStatus.APPROVED),
        "copy": ("copy.jpg", 0.93, ShotStatus.APPROVED),           # a near-copy of best: dropped
        "retried": ("second.png", 0.9, ShotStatus.APPROVED),       # its rejected first attempt is not used
        "low": ("low.png", 0.62, ShotStatus.APPROVED),             # under the threshold
        "review": ("review.png", 0.97, ShotStatus.NEEDS_REVIEW)},  # not approved
        first_try={"retried": ("first_try.png", 0.99)})

    out = tmp_path / "dataset"
    result = shotline("character", "dataset", "aiko", "--out", out, "--min-score", "0.85", "--library", library,
                      env={"DATABASE_URL": database_url}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 frame(s) and 2 face crop(s)" in result.stdout, result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["thresholds"]["min_score"] == 0.85 and manifest["character"] == "Aiko"
    assert sorted((image["kind"], image["source"]["shot"]) for image in manifest["images"]) == [
        ("face", "best"), ("face", "retried"), ("frame", "best"), ("frame", "retried")]
    assert {image["source"]["output"] for image in manifest["images"]} == {f"{SUBFOLDER}/best.png",
                                                                           f"{SUBFOLDER}/second.png"}
    dropped = {entry["source"]["shot"]: entry for entry in manifest["dropped"]}
    assert set(dropped) == {"copy", "low"}
    assert dropped["copy"]["reason"].startswith("near-copy of best-") and dropped["copy"]["copy_of"]["shot"] == "best"
    assert "score 0.620 < min_score 0.85" in dropped["low"]["reason"]
    for image in manifest["images"]:
        path = out / image["file"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
        picture = cv2.imread(str(path))
        assert picture.shape[0] == picture.shape[1] == image["size"][0] and image["size"][0] in BUCKETS
        text = path.with_suffix(".txt").read_text().strip()
        assert text == image["caption"] and text.startswith("Aiko, ")
        assert f"{image['source']['shot']} scene" in text and "night city" in text
        assert "a woman with dark hair" in text and "red scarf" in text
        if image["kind"] == "face":
            assert text.startswith("Aiko, face close-up, ")
            assert load_detector("mtcnn").detect(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB).astype(np.float32) / 255)
    assert sorted(p.name for p in out.iterdir()) == ["faces", "frames", "manifest.json"]

    # a stricter threshold: only the best remains, and the API serves the same dataset as a zip
    controller = controllers([comfy_server.url], env={"SHOTLINE_CHARACTER_LIBRARY": str(library)})
    status, body, content_type = api_get(controller.url + "/api/v1/characters/aiko/dataset?min_score=0.95")
    assert status == 200 and content_type == "application/zip", body[:300]
    archive = zipfile.ZipFile(io.BytesIO(body))
    served = json.loads(archive.read("aiko-dataset/manifest.json"))
    assert [(i["kind"], i["source"]["shot"]) for i in served["images"]] == [("frame", "best"), ("face", "best")]
    assert {entry["source"]["shot"] for entry in served["dropped"]} == {"copy", "retried", "low"}
    best = {i["kind"]: i["sha256"] for i in manifest["images"] if i["source"]["shot"] == "best"}
    assert {i["kind"]: i["sha256"] for i in served["images"]} == best  # the same pictures as the CLI's
    for image in served["images"]:
        assert hashlib.sha256(archive.read(f"aiko-dataset/{image['file']}")).hexdigest() == image["sha256"]
        assert archive.read(f"aiko-dataset/{image['caption_file']}").decode().strip() == image["caption"]

    # refusals: 4xx naming the field, never a 500
    for query, field in (("?min_score=high", "min_score"), ("?min_score=2", "min_score"),
                         ("?min_score=nan", "min_score"), ("?size=9", "size")):
        status, body, _ = api_get(controller.url + "/api/v1/characters/aiko/dataset" + query)
        assert status == 400 and json.loads(body)["field"] == field, (query, status, body)
    status, body, _ = api_get(controller.url + "/api/v1/characters/nobody/dataset")
    assert status == 404 and json.loads(body)["field"] == "character", body
    status, body, _ = api_get(controller.url + "/api/v1/characters/..%2Fetc/dataset")
    assert 400 <= status < 500, (status, body)
    status, _, _ = api_get(controller.url + "/api/v1/characters/aiko/dataset", token=None)
    assert status == 401
    bad = shotline("character", "dataset", "aiko", "--out", out, "--min-score", "lots", "--library", library,
                   env={"DATABASE_URL": database_url}, timeout=120)
    assert bad.returncode == 2 and "--min-score" in bad.stderr, bad.stderr
