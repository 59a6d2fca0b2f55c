"""ComfyUI's official templates (PyPI `comfyui-workflow-templates-json`, editor format, many with subgraphs) through
`shotline workflow to-api` and the real server, beside comfy-cli's own converter; and one unmodified template
rendered by `shotline render` with the shot's `set`."""
import contextlib
import io
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from shotline_controller.cli import main
from shotline_controller.comfy.presets import PresetError
from shotline_controller.comfy.queued_graph import api_graph
from shotline_controller.contract import Shot, parse_shot_list
from shotline_controller.settings import RANDOM_CHECKPOINT_NAME
from tests.integration.processes import shotline
from tests.integration.test_render import recorded

pytestmark = pytest.mark.integration
templates_json = pytest.importorskip("comfyui_workflow_templates_json")
TEMPLATES = Path(templates_json.__file__).parent / "templates"
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}  # the editor's own: never sent to a server
# what a server lacking the template's models or example inputs answers: expected here, not a structural fault
MISSING_FILE_ERRORS = {"value_not_in_list"}
MISSING_INPUT_FILE = ("Invalid image file", "Invalid video file", "Invalid audio file")  # LoadImage/Video/Audio


def templates() -> dict[str, dict]:
    found = {}
    for path in sorted(TEMPLATES.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            found[path.stem] = data
    return found


def node_types(data: dict) -> set[str]:
    subgraphs = data.get("definitions", {}).get("subgraphs", []) or []
    types = {node.get("type") for node in data["nodes"]}
    types |= {node.get("type") for subgraph in subgraphs for node in subgraph.get("nodes", [])}
    return types - {subgraph.get("id") for subgraph in subgraphs} - FRONTEND_ONLY - {None}


def verdict(comfy_url: str, graph: dict) -> str | None:
    """None when the server takes the graph as it stands, or refuses it only for model or input files it lacks;
    else what it refused. An accepted prompt is taken off the queue again (nothing here should run)."""
    body = json.dumps({"prompt": graph, "client_id": str(uuid.uuid4())}).encode()
    request = urllib.request.Request(comfy_url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read() or b"{}")
        faults = [f"node {node_id} ({info.get('class_type')}): {e.get('type')} {e.get('details', '')}".strip()
                  for node_id, info in (answer.get("node_errors") or {}).items()
                  for e in info.get("errors", []) if e.get("type") not in MISSING_FILE_ERRORS
                  and not str(e.get("details", "")).partition(" - ")[2].startswith(MISSING_INPUT_FILE)]
        if not answer.get("node_errors"):
            faults.append(f"{answer.get('error', {}).get('type')}: {answer.get('error', {}).get('message')}")
        return "; ".join(faults) or None
    for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {})):
        urllib.request.urlopen(urllib.request.Request(comfy_url + path, data=json.dumps(payload).encode(),
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    return None


def to_api(path: Path, comfy_url: str) -> tuple[int, str, str]:
    """`shotline workflow to-api FILE --comfy URL`, run in this process (660 CLI starts would take minutes)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["workflow", "to-api", str(path), "--comfy", comfy_url])
    return code, out.getvalue(), err.getvalue()


def test_every_runnable_official_template_converts_at_least_as_well_as_comfy_cli(comfy):
    from comfy_cli.workflow_to_api import convert_ui_to_api
    object_info = comfy.get("/object_info")
    runnable = {name: data for name, data in templates().items() if node_types(data) <= set(object_info)}
    assert runnable, "no official template uses only nodes this ComfyUI has"
    theirs, ours, failures, filled, unfillable = 0, 0, {}, {}, {}
    shot = Shot.from_input(parse_shot_list([{"id": "t", "prompt": "a lighthouse", "seed": 1}]).shots[0])
    for name, data in runnable.items():
        try:
            problem = verdict(comfy.url, convert_ui_to_api(json.loads(json.dumps(data)), object_info))
        except Exception as error:  # noqa: BLE001 - the reference converter's own failures are counted, not raised
            problem = f"comfy-cli: {type(error).__name__}: {error}"
        theirs += problem is None
        code, out, err = to_api(TEMPLATES / f"{name}.json", comfy.url)
        problem = err.strip() if code else verdict(comfy.url, json.loads(out))
        if problem is None:
            ours += 1
        else:
            failures[name] = problem
        if problem is None:  # and filled with a plain shot: where the roles are clear, still valid
            try:
                graph, _, _ = api_graph(json.loads(out), name, object_info, shot)
                filled[name] = verdict(comfy.url, graph)
            except PresetError as error:
                unfillable[name] = str(error)
    report = "\n".join(f"  {name}: {problem[:300]}" for name, problem in failures.items())
    print(f"\n{len(runnable)} of {len(templates())} templates use only this server's nodes; structurally valid: "
          f"comfy-cli {theirs}, shotline workflow to-api {ours}\nfailures:\n{report}")
    print(f"filled with a shot: {sum(v is None for v in filled.values())} valid, "
          f"{sum(v is not None for v in filled.values())} invalid, {len(unfillable)} refused before queueing:\n"
          + "\n".join(f"  {name}: {why[:200]}" for name, why in {**unfillable, **{
              k: v for k, v in filled.items() if v}}.items()))
    assert ours >= theirs, report
    assert not [name for name, problem in filled.items() if problem], "a filled graph the server refuses"


def test_an_unmodified_official_template_renders_with_set(comfy, comfy_server, database_url, tmp_path):
    """image_sdxl_simple as shipped (editor format, no Shotline titles but 'Negative Prompt'): the prompt, seed,
    steps and size are found from its wiring, `set` names the random checkpoint by the loader's node id."""
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "image_sdxl_simple.json").write_bytes((TEMPLATES / "image_sdxl_simple.json").read_bytes())
    shots = {"shots": [{"id": "tpl", "workflow": "image_sdxl_simple", "prompt": "a lighthouse", "size": "128x128",
                        "steps": 2, "set": {"15.ckpt_name": RANDOM_CHECKPOINT_NAME, "12.sampler_name": "euler"}}]}
    (tmp_path / "shots.yaml").write_text(yaml.safe_dump(shots))
    env = {"DATABASE_URL": database_url, "SHOTLINE_PRESETS": str(presets)}
    result = shotline("render", tmp_path / "shots.yaml", "--comfy", comfy.url, "--max-attempts", "1", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    [attempt] = recorded(database_url)["attempts"]
    assert attempt["inputs"]["Prompt.text"] == "a lighthouse" and attempt["inputs"]["Size.width"] == 128
    assert attempt["inputs"]["set.15.ckpt_name"] == RANDOM_CHECKPOINT_NAME
    assert attempt["status"] == "succeeded", attempt
    [output] = [o for o in recorded(database_url)["outputs"] if o["shot_key"] == "tpl"]
    assert (comfy_server.output_dir / output["subfolder"] / output["filename"]).exists()

    # a value the server would refuse is named before anything is queued
    shots["shots"][0]["set"] = {"12.steps": 0}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(shots))
    result = shotline("render", tmp_path / "bad.yaml", "--comfy", comfy.url, "--max-attempts", "1", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "shots[0].set.12.steps" in result.stderr and "must be from 1 to" in result.stderr


def test_workflow_to_api_prints_the_filled_graph_a_render_would_queue(comfy, tmp_path):
    shots = {"shots": [{"id": "one", "prompt": "a harbour", "size": "256x192", "seed": 3,
                        "set": {"15.ckpt_name": RANDOM_CHECKPOINT_NAME}}]}
    (tmp_path / "shots.yaml").write_text(yaml.safe_dump(shots))
    result = shotline("workflow", "to-api", TEMPLATES / "image_sdxl_simple.json", "--comfy", comfy.url,
                      "--shot", tmp_path / "shots.yaml")
    assert result.returncode == 0, result.stderr
    graph = json.loads(result.stdout)
    assert graph["10"]["inputs"]["text"] == "a harbour" and graph["12"]["inputs"]["seed"] == 3
    assert (graph["13"]["inputs"]["width"], graph["13"]["inputs"]["height"]) == (256, 192)
    assert graph["15"]["inputs"]["ckpt_name"] == RANDOM_CHECKPOINT_NAME
    assert graph["7"]["inputs"]["filename_prefix"] == "shotline/to-api/one"
    assert "Prompt: node 10 (CLIPTextEncode) text <- prompt" in result.stderr
    assert verdict(comfy.url, graph) is None
    del shots["shots"][0]["set"]  # with `set`, the shot would drive the samplers itself
    (tmp_path / "shots.yaml").write_text(yaml.safe_dump(shots))
    two_samplers = shotline("workflow", "to-api", TEMPLATES / "sdxl_simple_example.json", "--comfy", comfy.url,
                            "--shot", tmp_path / "shots.yaml")
    assert two_samplers.returncode == 1 and "2 samplers: 10 (KSamplerAdvanced" in two_samplers.stderr


def test_the_service_refuses_a_set_entry_the_backend_would_refuse_naming_it(comfy, database_url, tmp_path):
    from tests.integration.test_service import AUTH, run_service
    object_info = comfy.get("/object_info")

    class Backend:  # the real server's /object_info, as a connected backend of the service holds it
        connected, base_url = True, comfy.url

        async def object_info(self):
            return object_info

    async def work(client, pool):
        answers = []
        for entry in ({"Sampler.sampler_name": "no_such_sampler"}, {"Sampler.cfg": 1000}, {"Sampler.cfg": 6.5}):
            response = await client.post("/api/v1/batches", headers=AUTH, json={
                "shots": [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y", "set": entry}]})
            answers.append((response.status, await response.json()))
        return answers

    (bad_option, status_1), (out_of_range, status_2), (fine, status_3) = [
        (answer, status) for status, answer in run_service(database_url, tmp_path, work, backends=[Backend()])]
    assert (status_1, bad_option["field"]) == (400, "shots[1].set.Sampler.sampler_name")
    assert "must be one of the server's options" in bad_option["error"]
    assert (status_2, out_of_range["field"]) == (400, "shots[1].set.Sampler.cfg")
    assert "must be from 0.0 to 100.0, got 1000" in out_of_range["error"]
    assert status_3 == 201, fine
