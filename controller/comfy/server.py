"""Start a local ComfyUI server as a child process, wait until it answers, and keep it running.

`LocalComfyServer` starts and stops one `main.py`; `ComfySupervisor` watches it from the event loop and starts it
again on the same port when it dies, so a batch waits out a crash instead of stalling.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

log = logging.getLogger("shotline.comfy.server")

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
    """One ComfyUI `main.py` child process on 127.0.0.1:`port`.

    `state_dir`: when given, everything this ComfyUI writes goes under `state_dir/comfyui/` (`input`, `output`,
    `temp`, `user`, and its sqlite database in `user`) rather than into the ComfyUI install. `input_dir` and
    `output_dir` override those two folders.
    """

    def __init__(self, comfyui_dir: Path, python: Path, log_path: Path, port: int | None = None,
                 extra_model_paths: Path | None = None, input_dir: Path | None = None,
                 output_dir: Path | None = None, state_dir: Path | None = None):
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
        self.work_dir = Path(state_dir).resolve() / "comfyui" if state_dir else None
        self.user_dir = self.work_dir / "user" if self.work_dir else None
        if self.work_dir:
            input_dir = input_dir or self.work_dir / "input"
            output_dir = output_dir or self.work_dir / "output"
            self.command += ["--temp-directory", str(self.work_dir),  # ComfyUI adds the "temp" itself
                             "--user-directory", str(self.user_dir),
                             "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}"]
        self.input_dir = Path(input_dir).resolve() if input_dir else None
        self.output_dir = Path(output_dir).resolve() if output_dir else None
        if self.input_dir:
            self.command += ["--input-directory", str(self.input_dir)]
        if self.output_dir:
            self.command += ["--output-directory", str(self.output_dir)]
        self.process: subprocess.Popen | None = None
        self._launch = threading.Lock()   # start() in a thread and stop() agree on whether a process exists
        self._stop_asked = False

    def start(self, timeout: float = 120.0, append_log: bool = False) -> float:
        """Start the server; returns the seconds until /system_stats answered.

        `append_log` keeps what the log holds (a restart after a crash) instead of starting it afresh.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for folder in (self.input_dir, self.output_dir, self.user_dir):  # ComfyUI refuses a missing user folder
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self._launch, open(self.log_path, "ab" if append_log else "wb") as log_file:  # the child keeps a copy
            if self._stop_asked:  # stop() came while this start was getting ready (in its thread): start nothing
                raise ComfyStartError("stopped before ComfyUI was started")
            self.process = subprocess.Popen(self.command, cwd=self.comfyui_dir, stdout=log_file,
                                            stderr=subprocess.STDOUT)
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

    def arm(self) -> None:
        """Allow the next start() again after a stop() (a supervisor restarting it). Called on the caller's
        thread before start() runs in another, so a stop() in between still wins."""
        with self._launch:
            self._stop_asked = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if IMPORT_FAILURE.search(line)]

    def stop(self) -> None:
        with self._launch:  # a start running in another thread either has its process now, or will start none
            self._stop_asked = True
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ComfySupervisor:
    """Keeps a LocalComfyServer running from the event loop: when its process exits without being asked to,
    the supervisor logs a warning (exit code, last log lines) and starts it again on the same port, waiting
    `min_backoff` seconds before the first try and doubling up to `max_backoff` while starts keep failing or the
    server keeps dying; the wait goes back to `min_backoff` once a server has stayed up `stable_seconds`.

    `restarts` counts the successful restarts, `last_exit` is the exit code of the last unexpected exit
    (negative: killed by that signal), `running` says whether the process is alive now; `status()` gives them
    with the URL for the service's backends and metrics. Use it as `async with ComfySupervisor(server):` or call
    `start()` / `stop()`.
    """

    def __init__(self, server: LocalComfyServer, start_timeout: float = 120.0, min_backoff: float = 1.0,
                 max_backoff: float = 60.0, stable_seconds: float = 60.0, poll_seconds: float = 0.5):
        self.server = server
        self.start_timeout = start_timeout
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.stable_seconds = stable_seconds
        self.poll_seconds = poll_seconds
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None  # why the last restart attempt failed, while it keeps failing
        self._stopping = asyncio.Event()
        self._watcher: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def running(self) -> bool:
        return self.server.running

    def status(self) -> dict:
        return {"url": self.url, "running": self.running, "restarts": self.restarts, "last_exit": self.last_exit,
                "last_error": self.last_error}

    async def start(self) -> float:
        """Start the server (raises ComfyStartError when it cannot start at all), then watch it; returns the
        seconds until it answered."""
        self.server.arm()
        seconds = await asyncio.to_thread(self.server.start, self.start_timeout)
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise ComfyUI {self.url}")
        return seconds

    async def stop(self) -> None:
        """Stop the server for good: it is not restarted afterwards."""
        self._stopping.set()
        await asyncio.to_thread(self.server.stop)  # also ends a start in progress: it sees its process exit
        if self._watcher:
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await asyncio.to_thread(self.server.stop)  # a process the watcher launched while we were stopping

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`, or less when stop() is called; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass
        return self._stopping.is_set()

    async def _watch(self) -> None:
        backoff = self.min_backoff
        try:
            while True:
                up_since = time.monotonic()
                while self.server.running:
                    if await self._sleep(self.poll_seconds):
                        return
                if self._stopping.is_set():
                    return
                self.last_exit = self.server.process.returncode
                if time.monotonic() - up_since >= self.stable_seconds:
                    backoff = self.min_backoff
                log.warning("ComfyUI at %s exited with code %s; restarting it in %.0f s. Last lines of %s:\n%s",
                            self.url, self.last_exit, backoff, self.server.log_path, self.server.log_tail(15))
                while not await self._sleep(backoff):
                    backoff = min(backoff * 2, self.max_backoff)
                    if await self._restart(backoff):
                        break
                if self._stopping.is_set():
                    return
        finally:
            if not self._stopping.is_set():  # cancelled without stop(): leave no ComfyUI behind
                await asyncio.to_thread(self.server.stop)

    async def _restart(self, next_backoff: float) -> bool:
        """One try at starting the server again on its port; True when it answers."""
        def restart() -> float:
            with open(self.server.log_path, "ab") as log_file:  # the crashed run's lines stay above this one
                log_file.write(f"\n--- shotline: restarting ComfyUI after exit code {self.last_exit} ---\n".encode())
            return self.server.start(self.start_timeout, append_log=True)
        self.server.arm()
        try:
            seconds = await asyncio.to_thread(restart)
        except ComfyStartError as error:
            if not self._stopping.is_set():
                self.last_error = str(error).splitlines()[0]
                if self.server.process and self.server.process.returncode is not None:
                    self.last_exit = self.server.process.returncode
                log.warning("restarting ComfyUI at %s failed (%s); next try in %.0f s",
                            self.url, self.last_error, next_backoff)
            return False
        self.restarts, self.last_error = self.restarts + 1, None
        log.info("ComfyUI at %s is back after %.1f s (restart %d)", self.url, seconds, self.restarts)
        return True
