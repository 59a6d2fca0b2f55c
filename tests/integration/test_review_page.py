"""The review page in a real browser: the service under test (real PostgreSQL, a real ComfyUI as its backend) serves
`/`, headless Debian Chromium driven by Playwright opens it, and a person's approval reaches PostgreSQL.

The shots' output images are files in the real ComfyUI's output folder, recorded as the dispatcher records an
attempt, so each thumbnail is a real fetch through that ComfyUI's /view.
"""
from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from shotline_controller.comfy.client import ComfyBackend

from tests.integration.test_editor_browser import CHROMIUM, INSTALL_CHROMIUM
from tests.integration.test_identity_nodes import png_bytes
from tests.integration.test_service import AUTH, TOKEN, run_service, sql, submit

pytestmark = pytest.mark.integration

DOWN = "http://127.0.0.1:9"   # a configured backend that is down (the discard port: nothing listens)
BOX = [16.0, 24.0, 80.0, 96.0]   # x0, y0, x1, y1 in pixels of the 128 px frame


def _playwright():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install it with `{INSTALL_CHROMIUM}` (as root; "
                    "`python3 install.py --test` does it)", pytrace=False)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install -e '.[test]'` (`python3 install.py --test` "
                    "does it)", pytrace=False)
    return async_playwright


def identity_verdict(score: float) -> dict:
    """An identity verdict as IdentityCheck reports it: one frame, one face owned by Ada."""
    return {"check": "identity", "score": score, "passed": False, "threshold": 0.8, "reasons": ["low identity"],
            "characters": {"Ada": {"score": score, "threshold": 0.8, "passed": False, "min": score, "mean": score,
                                   "pass_share": 0.0}},
            "frames": [{"score": score, "passed": False, "faces": [{"box": BOX, "score": 0.99}],
                        "characters": {"Ada": {"face": 0, "idr": score, "passed": False}}}]}


async def rendered_for_review(pool, shot_id, backend_url: str, output_dir, attempt_no: int = 1) -> None:
    """A succeeded attempt with one PNG on the backend and its identity verdict; the shot then needs review."""
    name = f"review_{uuid.uuid4().hex[:8]}.png"
    (output_dir / "shotline").mkdir(exist_ok=True)
    (output_dir / "shotline" / name).write_bytes(png_bytes(np.random.default_rng(attempt_no).random((128, 128, 3))))
    correction = json.dumps({"changes": {"cfg": 6}, "reason": "low identity: Ada", "step": "identity_strength"})
    [(attempt_id,)] = await sql(
        pool, "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status, finished_at, correction) "
              "VALUES (%s, %s, %s, %s, 'succeeded', now(), %s) RETURNING id",
        (shot_id, attempt_no, uuid.uuid4(), backend_url, correction if attempt_no > 1 else None))
    await sql(pool, "INSERT INTO outputs (attempt_id, node_id, kind, filename, subfolder) "
                    "VALUES (%s, '9', 'images', %s, 'shotline')", (attempt_id, name))
    await sql(pool, "INSERT INTO verdicts (attempt_id, node_id, check_name, score, passed, details) "
                    "VALUES (%s, '12', 'identity', 0.61, false, %s)", (attempt_id, json.dumps(identity_verdict(0.61))))
    await sql(pool, "UPDATE shots SET status = 'needs_review', updated_at = now() WHERE id = %s", (shot_id,))


def test_the_review_page_lists_needs_review_shots_and_approves_one(database_url, tmp_path, comfy_server):
    async_playwright = _playwright()
    timings = {}

    async def work(client, pool):
        created = await submit(client, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                                        {"id": "c", "prompt": "z"}, {"id": "d", "prompt": "w"}])
        a, b, c, d = created["shot_ids"]
        for shot in (a, b, c):
            await rendered_for_review(pool, shot, comfy_server.url, comfy_server.output_dir)
        await rendered_for_review(pool, c, comfy_server.url, comfy_server.output_dir, attempt_no=2)
        # d stays queued: not in the grid, and the batch stays open so its event stream keeps running
        base = str(client.make_url("/"))

        # the API the page reads
        listed = await (await client.get("/api/v1/batches?limit=5")).json()
        assert listed["batches"][0]["id"] == created["batch_id"]
        assert listed["batches"][0]["counts"] == {"needs_review": 3, "queued": 1}
        assert (await client.get("/api/v1/batches?limit=0")).status == 400
        assert (await client.get("/api/v1/batches?limit=x")).status == 400
        [(attempt_id,)] = await sql(pool, "SELECT id FROM attempts WHERE shot_id = %s", (a,))
        image = await client.get(f"/api/v1/attempts/{attempt_id}/outputs/0")
        assert (image.status, image.content_type) == (200, "image/png")
        assert (await client.get(f"/api/v1/attempts/{attempt_id}/outputs/1")).status == 404
        assert (await client.get(f"/api/v1/attempts/{uuid.uuid4()}/outputs/0")).status == 404
        assert (await client.get("/api/v1/attempts/nope/outputs/0")).status == 400
        [(down,)] = await sql(pool, "INSERT INTO attempts (shot_id, attempt_no, prompt_id, backend, status) VALUES "
                                    "(%s, 1, %s, %s, 'succeeded') RETURNING id", (d, uuid.uuid4(), DOWN))
        await sql(pool, "INSERT INTO outputs (attempt_id, node_id, kind, filename) VALUES (%s, '9', 'images', "
                        "'x.png')", (down,))
        assert (await client.get(f"/api/v1/attempts/{down}/outputs/0")).status == 502
        await sql(pool, "DELETE FROM attempts WHERE id = %s", (down,))

        started = time.monotonic()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                context = await browser.new_context()  # one browser profile: both pages share its localStorage
                page = await context.new_page()
                errors = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("console", lambda message: message.type == "error" and errors.append(message.text))
                response = await page.goto(base)
                assert "script-src 'self'" in response.headers["content-security-policy"]
                await page.fill("#token", TOKEN)
                await page.click("#token-form button[type=submit]")
                await page.click(f"#batches button[data-batch='{created['batch_id']}']")
                await page.wait_for_selector(".card[data-shot]")
                await page.wait_for_function("() => document.querySelectorAll('.card[data-shot]').length === 3")
                listed_ids = await page.eval_on_selector_all(".card .shot-id", "els => els.map(e => e.textContent)")
                assert sorted(listed_ids) == sorted([a, b, c])
                await page.wait_for_function(
                    "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
                assert await page.eval_on_selector_all(".card img", "els => els.map(e => e.naturalWidth)") == [128] * 3
                assert await page.locator(f".card[data-shot='{a}'] .box").count() == 1
                assert "Ada 0.61" in await page.locator(f".card[data-shot='{a}'] .box").text_content()
                assert "0.610" in await page.locator(f".card[data-shot='{a}'] .scores").text_content()
                assert "identity_strength" in await page.locator(f".card[data-shot='{c}'] .attempts").text_content()
                await page.wait_for_function("() => document.getElementById('live').classList.contains('on')")
                assert await page.evaluate("localStorage.getItem('shotline.token')") == TOKEN

                # approve a from the page, with a reason and a note
                card = page.locator(f".card[data-shot='{a}']")
                await card.locator("select[name=reason]").select_option("other")
                await card.locator("input[name=note]").fill("fine <b>really</b>")
                await card.locator("button.approve").click()
                await page.wait_for_function(
                    f"() => document.querySelector(\".card[data-shot='{a}'] .status\")?.textContent === 'approved'")
                await page.wait_for_function(f"() => !document.querySelector(\".card[data-shot='{a}']\")")
                [(status,)] = await sql(pool, "SELECT status FROM shots WHERE id = %s", (a,))
                assert status == "approved"

                # a second page, already holding the token: a review made elsewhere reaches it through the stream
                second = await context.new_page()
                await second.goto(base)
                await second.click(f"#batches button[data-batch='{created['batch_id']}']")
                await second.wait_for_function("() => document.querySelectorAll('.card[data-shot]').length === 2")
                assert await second.locator("#token-form").is_hidden()
                await second.wait_for_function("() => document.getElementById('live').classList.contains('on')")
                answer = await client.post(f"/api/v1/shots/{b}/review", json={"decision": "approve"}, headers=AUTH)
                assert answer.status == 200
                await second.wait_for_function(f"() => !document.querySelector(\".card[data-shot='{b}']\")",
                                               timeout=10_000)
                assert await second.locator(".card[data-shot]").count() == 1
                assert not errors, errors
            finally:
                await browser.close()
        timings["browser"] = time.monotonic() - started
        return await sql(pool, "SELECT shot_key, status FROM shots ORDER BY shot_key")

    statuses = run_service(database_url, tmp_path, work,
                           # only their addresses are used (for /view): no watcher is started
                           backends=[ComfyBackend(comfy_server.url, session=None), ComfyBackend(DOWN, session=None)])
    print(f"\nbrowser part: {timings['browser']:.1f} s")
    assert statuses == [("a", "approved"), ("b", "approved"), ("c", "needs_review"), ("d", "queued")]
