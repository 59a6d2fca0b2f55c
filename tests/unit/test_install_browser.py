"""install.py's browser step for the editor tests: nothing when Chromium is there, the command to run without root."""
import importlib.util

import pytest

from shotline_controller.settings import PROJECT_ROOT


@pytest.fixture
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("shotline_install", PROJECT_ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands = []
    monkeypatch.setattr(module, "run", lambda command, **options: commands.append(command))
    module.commands = commands
    return module


def test_present_chromium_is_left_alone(install, tmp_path):
    install.CHROMIUM = tmp_path / "chromium"
    install.CHROMIUM.touch()
    install.ensure_browser()
    assert install.commands == []


def test_without_root_it_names_the_command_and_installs_nothing(install, tmp_path, monkeypatch, capsys):
    install.CHROMIUM = tmp_path / "chromium"
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)
    install.ensure_browser()
    assert install.commands == []
    assert "apt-get install -y --no-install-recommends chromium" in capsys.readouterr().out


def test_as_root_it_installs_debian_chromium(install, tmp_path, monkeypatch):
    install.CHROMIUM = tmp_path / "chromium"
    monkeypatch.setattr(install.os, "geteuid", lambda: 0)
    monkeypatch.setattr(install.shutil, "which", lambda name: f"/usr/bin/{name}")
    install.ensure_browser()
    assert install.commands == [["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                                        "chromium"]]
