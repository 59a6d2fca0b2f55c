"""Start a local ComfyUI server as a child process and wait until it answers."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# ComfyUI keeps serving when a custom node fails to import; these lines in its log are the only sign.
IMPORT_FAILURE = re.compile(r"IMPORT FAILED|Cannot import .*module for custom nodes", re.IGNORECASE)


class ComfyStartError(RuntimeError):
    pass


def default_device_args() -> list[str]:
    """`--cpu` unless a GPU is there: ComfyUI will not start on a machine without one otherwise.

    SHOTLINE_COMFYUI_ARGS replaces this choice (e.g. "--lowvram" or "--cuda-device 1").
    """
    if "SHOTLINE_COMFYUI_ARGS" in os.environ:
        return shlex.split(os.environ["SHOTLINE_COMFYUI_ARGS"])
    return [] if shutil.which("nvidia-smi") or sys.platform == "darwin" else ["--cpu"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalComfyServer:
    def __init__(self, comfyui_dir: Path, python: Path, log_path: Path, port: int | None = None,
                 extra_model_paths: Path | None = None, input_dir: Path | None = None,
                 output_dir: Path | None = None):
        if not (Path(comfyui_dir) / "main.py").exists():
            raise ComfyStartError(f"no ComfyUI at {comfyui_dir}: run `python3 install.py` or pass --comfy URL")
        self.comfyui_dir = Path(comfyui_dir)
        self.python = Path(python)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(self.python), "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                        "--disable-auto-launch", *default_device_args()]
        if extra_model_paths:
            self.command += ["--extra-model-paths-config", str(extra_model_paths)]
        if input_dir:
            self.command += ["--input-directory", str(input_dir)]
        if output_dir:
            self.command += ["--output-directory", str(output_dir)]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start the server; returns the seconds until /system_stats answered."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise ComfyStartError(f"ComfyUI exited with code {self.process.returncode} while starting; "
                                      f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2):
                    return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.stop()
        raise ComfyStartError(f"ComfyUI did not answer within {timeout:.0f} s; see {self.log_path}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if IMPORT_FAILURE.search(line)]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
