"""What a person sees in the editor: ComfyUI's own frontend, served by the server under test, in headless Chromium.

Every editor-format preset (workflows/*.json) loads with every node type known and no node on top of another, and
a check node run from the page shows its boxed preview. The browser is Debian's Chromium (`python3 install.py
--test` installs it as root), driven by Playwright for Python; `playwright install` (a browser download) is never
needed. Screenshots go to pytest's temp folder; their paths are printed (`-s` shows them).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from shotline.core.characters import parse_sheet, write_character
from shotline_controller.settings import PROJECT_ROOT
from tests.images import jpeg, save_png
from tests.integration.test_identity_nodes import png_bytes
from tests.unit.test_identity import t1_tiles
from workflows.make_editor_format import editor_from_api, node_height, node_width, overlaps

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_CHROMIUM = "apt-get install -y chromium"
EDITOR_PRESETS = sorted((PROJECT_ROOT / "workflows").glob("*.json"))
API_PRESETS = sorted((PROJECT_ROOT / "workflows" / "api").glob("*.json"))
MISSING_NODES_DIALOG = '.p-dialog[aria-labelledby="global-missing-nodes"]'
# The page reads these instead of the server's user settings: no first-run templates dialog over the canvas, the
# missing-nodes warning on whatever the user chose, node details drawn even when a wide graph is zoomed out.
# The page's own setting writes are answered here, so a test run never edits the ComfyUI install's user folder.
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True,
                 "LiteGraph.Canvas.MinFontSizeForLOD": 1}
APP_READY = "() => window.app?.graph && Object.keys(window.LiteGraph?.registered_node_types ?? {}).length > 0"
NODES = """() => app.graph._nodes.map(n => ({id: n.id, type: n.type, pos: [...n.pos], size: [...n.size],
                                          registered: n.type in LiteGraph.registered_node_types}))"""
TITLE_HEIGHT = "() => LiteGraph.NODE_TITLE_HEIGHT"
WIDGET_VALUES = """() => Object.fromEntries(app.graph._nodes.map(n => [String(n.id),
                     Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value]))]))"""
SEARCH_INPUT = ".comfy-vue-node-search-container input"
SEARCH_RESULT = ".comfy-vue-node-search-container .option-display-name"
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install it with `{INSTALL_CHROMIUM}` (as root; "
                    "`python3 install.py --test` does it)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: `pip install -e '.[test]'` (`python3 install.py --test` "
                    "does it)", pytrace=False)
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        print(f"\nChromium started in {time.monotonic() - started:.1f} s")
        yield browser
        browser.close()


def _settings(route) -> None:
    if route.request.method != "GET":
        route.fulfill(status=200, body="")
        return
    response = route.fetch()
    route.fulfill(response=response, json={**response.json(), **PAGE_SETTINGS})


def open_editor(browser, url: str):
    """A new tab with the editor, once the frontend has registered the server's node types."""
    started = time.monotonic()
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.route("**/api/settings**", _settings)
    page.goto(url)
    page.wait_for_function(APP_READY, timeout=60_000)
    print(f"\neditor ready in {time.monotonic() - started:.1f} s")
    return page


def load_workflow(page, workflow: dict) -> None:
    page.evaluate("async workflow => { await app.loadGraphData(workflow) }", workflow)
    page.evaluate(NEXT_FRAMES)  # the frontend sizes nodes and opens its dialogs on the next frames


@pytest.fixture(scope="module")
def editor(browser, comfy_server):
    page = open_editor(browser, comfy_server.url)
    yield page
    page.close()


@pytest.mark.parametrize("preset", EDITOR_PRESETS, ids=lambda path: path.stem)
def test_preset_loads_in_the_editor_with_known_nodes_apart(editor, preset, tmp_path):
    started = time.monotonic()
    load_workflow(editor, json.loads(preset.read_text()))
    nodes = editor.evaluate(NODES)
    seconds = time.monotonic() - started
    screenshot = tmp_path / f"{preset.stem}.png"
    editor.screenshot(path=screenshot)
    print(f"\n{preset.name}: {len(nodes)} nodes loaded in {seconds:.2f} s; screenshot {screenshot}")
    assert editor.locator(MISSING_NODES_DIALOG).count() == 0, editor.locator(MISSING_NODES_DIALOG).inner_text()
    assert [n["type"] for n in nodes if not n["registered"]] == []
    assert len(nodes) == len(json.loads(preset.read_text())["nodes"])
    assert overlaps(nodes, editor.evaluate(TITLE_HEIGHT)) == []


@pytest.mark.parametrize("preset", API_PRESETS, ids=lambda path: path.stem)
def test_api_preset_keeps_its_values_in_the_editor(editor, preset):
    """Loaded as an API graph (the editor's own loader sets each widget through its callback, which snaps numbers
    to the widget's step), every widget holds the value the file gives it: no 512 read back as 513."""
    graph = json.loads(preset.read_text())
    editor.evaluate("async graph => { await app.loadApiJson(graph, 'preset.json') }", graph)
    editor.evaluate(NEXT_FRAMES)
    values = editor.evaluate(WIDGET_VALUES)
    expected = {node_id: {name: value for name, value in node["inputs"].items() if not isinstance(value, list)}
                for node_id, node in graph.items()}
    changed = {f"{node_id}.{name}": (value, values[node_id].get(name)) for node_id, inputs in expected.items()
               for name, value in inputs.items() if name in values[node_id] and values[node_id][name] != value}
    assert changed == {}
    assert sum(len(inputs) for inputs in expected.values()) > len(graph)  # widgets were compared


def test_searching_shotline_finds_every_shotline_node(editor, comfy):
    """The editor's node search box (the one a double click on the canvas opens), typed into as a person does. In
    frontend 1.32.9 it matches a node's id and display name only, so ShotQualityScore and ShotVerdict carry
    "(Shotline)" in theirs."""
    object_info = comfy.get("/object_info")
    shotline = {info["display_name"] for info in object_info.values() if "shotline" in info["python_module"].lower()}
    load_workflow(editor, json.loads(EDITOR_PRESETS[0].read_text()))
    editor.evaluate("() => app.graph.clear()")
    editor.evaluate("async () => { await app.extensionManager.command.execute('Workspace.SearchBox.Toggle') }")
    search = editor.locator(SEARCH_INPUT)
    search.wait_for(timeout=10_000)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # the browser fixture says when it is missing
    settled = f"""() => [...document.querySelectorAll('{SEARCH_RESULT}')]
                       .filter(e => e.innerText.includes('Shotline')).length >= {len(shotline)}"""
    for _ in range(3):  # a box just opened may still reset its query once: type again until the list follows it
        search.fill("")
        search.press_sequentially("shotline")
        try:
            editor.wait_for_function(settled, timeout=5_000)
            break
        except PlaywrightTimeout:
            pass  # the assertion below names what is missing
    found = {text.split("\n")[0].strip() for text in editor.locator(SEARCH_RESULT).all_inner_texts()}  # name, category
    editor.keyboard.press("Escape")
    assert len(shotline) >= 17
    assert shotline - found == set(), found


def test_the_editor_checks_see_a_missing_node_and_an_overlap(editor):
    """The two checks above can fail: an unknown node type opens the dialog, a node moved onto another overlaps."""
    workflow = json.loads(EDITOR_PRESETS[0].read_text())
    workflow["nodes"][0]["type"] = "ShotlineNoSuchNode"
    workflow["nodes"][1]["pos"] = [workflow["nodes"][2]["pos"][0] + 10, workflow["nodes"][2]["pos"][1] + 10]
    load_workflow(editor, workflow)
    try:
        editor.locator(MISSING_NODES_DIALOG).wait_for(timeout=10_000)
        assert "ShotlineNoSuchNode" in editor.locator(MISSING_NODES_DIALOG).inner_text()
        nodes = editor.evaluate(NODES)
        assert [n["type"] for n in nodes if not n["registered"]] == ["ShotlineNoSuchNode"]
        assert len(overlaps(nodes, editor.evaluate(TITLE_HEIGHT))) >= 1
    finally:
        editor.keyboard.press("Escape")
        editor.locator(MISSING_NODES_DIALOG).wait_for(state="detached", timeout=10_000)


def test_the_layout_tool_leaves_room_for_every_node_type(editor, comfy):
    """make_editor_format's size for a node is never below the frontend's own (computeSize), for every type the
    server has: a preset the tool lays out has no overlap to find."""
    object_info = comfy.get("/object_info")
    sizes = editor.evaluate("""types => Object.fromEntries(types.map(type => {
        try { return [type, [...LiteGraph.createNode(type).computeSize()]] } catch (error) { return [type, `${error}`] }
    }))""", list(object_info))
    assert {t: size for t, size in sizes.items() if not isinstance(size, list)} == {}
    assert {t: (size[1], node_height(object_info[t])) for t, size in sizes.items()
            if size[1] > node_height(object_info[t])} == {}
    widths = {t: node_width(object_info[t]["display_name"] or t) for t in object_info}
    assert {t: (size[0], widths[t]) for t, size in sizes.items() if size[0] > widths[t]} == {}


def identity_check_graph(image: str, character: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ShotlineLoadCharacter", "inputs": {"character": character}},
        "3": {"class_type": "ShotlineCharacterGallery", "inputs": {
            "character": ["2", 0], "backend": "auto", "insightface_pack": "(none installed)",
            "anime_face_detector": "(none installed)", "character_embedder": "(none installed)"}},
        "4": {"class_type": "ShotlineIdentityCheck", "inputs": {
            "image": ["1", 0], "gallery": ["3", 0], "threshold": 0.75, "allow_extra_faces": False,
            "min_pass_share": 1.0}},
    }


def test_identity_check_run_from_the_editor_shows_its_boxed_preview(browser, comfy, comfy_server, tmp_path):
    face = t1_tiles()[0]
    sheet = parse_sheet({"name": "Ben", "style": "photo", "design_prompt": "Ben, a person from t1"})
    write_character(comfy_server.characters_dir, "editor_ben", sheet, {
        "jpeg.png": png_bytes(jpeg(face, 40)), "mirror.png": png_bytes(np.ascontiguousarray(face[:, ::-1]))})
    save_png(face, comfy_server.input_dir / "editor_ben.png")
    workflow = editor_from_api(identity_check_graph("editor_ben.png", "editor_ben"), comfy.get("/object_info"))
    page = open_editor(browser, comfy_server.url)  # opened after the character exists: its combo lists it
    try:
        load_workflow(page, workflow)
        page.evaluate("""() => { window.shotlineEvents = [];
            for (const name of ['executed', 'execution_error', 'execution_success'])
                app.api.addEventListener(name, event => window.shotlineEvents.push([name, event.detail])) }""")
        started = time.monotonic()
        page.evaluate("async () => { await app.queuePrompt(0) }")
        page.wait_for_function("() => window.shotlineEvents.some(([name]) => name !== 'executed')", timeout=180_000)
        errors = page.evaluate("() => window.shotlineEvents.filter(([name]) => name === 'execution_error')")
        assert errors == [], errors
        # the node draws its picture once the browser has fetched it from /view
        page.wait_for_function("() => app.graph.getNodeById(4).imgs?.[0]?.naturalWidth > 0", timeout=30_000)
        print(f"\nran from the page in {time.monotonic() - started:.1f} s")
        output = page.evaluate("() => app.nodeOutputs['4']")
        sources = page.evaluate("() => app.graph.getNodeById(4).imgs.map(image => image.src)")
        screenshot = tmp_path / "identity_check_preview.png"
        page.screenshot(path=screenshot)
        print(f"screenshot {screenshot}")
    finally:
        page.close()
    [preview] = output["images"]
    assert preview["type"] == "temp" and preview["filename"].endswith(".png")
    assert len(sources) == 1 and "type=temp" in sources[0] and preview["filename"] in sources[0]
    assert output["text"][0].startswith("PASS identity")
    assert output["shotline_verdict"][0]["passed"]
