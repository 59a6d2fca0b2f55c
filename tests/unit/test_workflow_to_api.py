"""`shotline workflow to-api` on API-format files: no server needed (an editor file needs one: integration)."""
import io
import json

from shotline_controller.cli import main
from shotline_controller.comfy.presets import preset_path
from tests.unit.test_graph_roles import txt2img


def run(capsys, monkeypatch, *args, stdin: str | None = None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(["workflow", "to-api", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_api_graph_from_stdin_is_printed_with_the_roles_a_shot_would_fill(capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, "-", stdin=json.dumps(txt2img()))
    assert code == 0 and json.loads(out) == txt2img()  # no shot: printed as it stands
    assert "Prompt: node 6 (CLIPTextEncode) text <- prompt" in err
    assert "Save: node 9 (SaveImage) filename_prefix <- the controller" in err


def test_a_shot_fills_the_graph_as_a_render_would(capsys, monkeypatch, tmp_path):
    shots = tmp_path / "shots.yaml"
    shots.write_text("shots:\n  - {id: a, prompt: first}\n  - {id: b, prompt: second, size: 128x64, seed: 4,"
                     " set: {Sampler.denoise: 0.5}}\n")
    code, out, _ = run(capsys, monkeypatch, preset_path("shot_txt2img"), "--shot", shots, "--id", "b")
    graph = json.loads(out)
    by_title = {node["_meta"]["title"]: node["inputs"] for node in graph.values()}
    assert code == 0 and by_title["Prompt"]["text"] == "second" and by_title["Sampler"]["seed"] == 4
    assert (by_title["Size"]["width"], by_title["Size"]["height"], by_title["Sampler"]["denoise"]) == (128, 64, 0.5)
    assert by_title["Save"]["filename_prefix"] == "shotline/to-api/b"


def test_refusals_name_the_field(capsys, monkeypatch, tmp_path):
    shots = tmp_path / "shots.yaml"
    shots.write_text("shots:\n  - {id: a, prompt: x, set: {Sampler.nope: 1}}\n")
    code, _, err = run(capsys, monkeypatch, preset_path("shot_txt2img"), "--shot", shots)
    assert code == 2 and "set.Sampler.nope: node 3 (KSampler) has no input 'nope'" in err
    code, _, err = run(capsys, monkeypatch, preset_path("shot_txt2img"), "--shot", shots, "--id", "zz")
    assert code == 2 and "no shot 'zz'" in err
    code, _, err = run(capsys, monkeypatch, "-", stdin="[1, 2]")
    assert code == 1 and "neither an editor-format nor an API-format" in err
