"""install.py with an existing ComfyUI: it links (or copies) the pack and leaves that ComfyUI's torch alone."""
import json
import os
import subprocess
import sys
import time

import pytest

from shotline_controller.embedded_postgres import public_temp_dir
from shotline_controller.settings import PROJECT_ROOT, RANDOM_CHECKPOINT_NAME

pytestmark = pytest.mark.integration


def installed(python, package: str) -> str:
    return subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_install_into_an_existing_comfyui(settings, model_cache):
    home = public_temp_dir("shotline-install-")
    # A user's ComfyUI: the real one's files, with a custom_nodes folder of its own.
    comfyui = home / "ComfyUI"
    comfyui.mkdir()
    for entry in settings.comfyui_dir.iterdir():
        if entry.name != "custom_nodes":
            (comfyui / entry.name).symlink_to(entry)
    (comfyui / "custom_nodes").mkdir()
    (home / "models" / "checkpoints").mkdir(parents=True)  # reuse the cached checkpoint instead of rebuilding
    (home / "models" / "checkpoints" / RANDOM_CHECKPOINT_NAME).symlink_to(
        model_cache / "checkpoints" / RANDOM_CHECKPOINT_NAME)
    torch_before = installed(settings.comfyui_python, "torch")
    command = [sys.executable, str(PROJECT_ROOT / "install.py"), "--comfyui", str(comfyui),
               "--comfyui-python", str(settings.comfyui_python)]
    env = {**os.environ, "SHOTLINE_HOME": str(home)}

    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    link = comfyui / "custom_nodes" / "shotline"
    assert link.is_symlink() and link.resolve() == PROJECT_ROOT / "custom_nodes" / "shotline"
    state = json.loads((home / "install.json").read_text())
    assert (state["comfyui"], state["managed"]) == (str(comfyui), False)
    assert "(yours)" in first.stdout
    assert not (home / "comfyui").exists()  # no second ComfyUI installed
    assert installed(settings.comfyui_python, "torch") == torch_before

    started = time.monotonic()
    second = subprocess.run(command[:2], capture_output=True, text=True, env=env, timeout=600)  # remembered
    print(f"\nsecond install.py run: {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stdout and str(comfyui) in second.stdout

    copied = subprocess.run(command[:2] + ["--copy"], capture_output=True, text=True, env=env, timeout=600)
    assert copied.returncode == 0, copied.stderr
    assert not link.is_symlink() and (link / "quality_score.py").is_file()


def test_install_refuses_a_folder_that_is_not_comfyui(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "install.py"), "--comfyui", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "SHOTLINE_HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "is not a ComfyUI folder" in result.stderr
