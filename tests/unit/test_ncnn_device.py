"""The device combo of Upscale and Interpolate Frames: `vulkan:N` only for the devices a child process counted."""
from __future__ import annotations

from shotline.core import ncnn_device
from shotline.core.ncnn_device import (ProbeResult, count_vulkan_devices, device_choices, device_problem,
                                       run_probe_child)


def counting_runner(returncode, messages, stderr=""):
    asked = []

    def runner(code, args, timeout):
        asked.append((args, timeout))
        return returncode, messages, stderr
    return runner, asked


def test_only_the_counted_devices_are_offered():
    assert device_choices(0) == ("cpu", "auto")
    assert device_choices(2) == ("cpu", "auto", "vulkan:0", "vulkan:1")
    runner, asked = counting_runner(0, [{"gpu_count": 2}])
    two = count_vulkan_devices(runner)
    assert (two.usable, two.gpu_count, two.detail) == (True, 2, "ncnn sees 2 Vulkan device(s)")
    assert asked == [([], ncnn_device.COUNT_TIMEOUT_S)]  # a short timeout: the editor waits for this answer


def test_a_count_that_crashes_or_hangs_offers_the_cpu_only():
    returncode, messages, _ = run_probe_child("import ctypes; ctypes.string_at(0)", [])
    assert returncode < 0 and messages == []
    crashed = count_vulkan_devices(counting_runner(returncode, messages, "vkCreateInstance failed -9")[0])
    assert (crashed.gpu_count, crashed.usable) == (0, False)
    assert "crashed with SIGSEGV" in crashed.detail and "vkCreateInstance failed -9" in crashed.detail
    hung = count_vulkan_devices(counting_runner(None, [], "no answer within 30 s")[0])
    assert hung.gpu_count == 0 and "timed out" in hung.detail
    missing = count_vulkan_devices(counting_runner(1, [], "ModuleNotFoundError: No module named 'x'")[0])
    assert missing.gpu_count == 0 and "exited with status 1 (ModuleNotFoundError" in missing.detail


def test_the_real_count_answers_without_harming_this_process():
    result = count_vulkan_devices()  # a child Python asks ncnn; this machine has no GPU, a GPU machine some
    assert result.gpu_count >= 0 and result.detail
    assert ncnn_device.available_device_choices()[:2] == ("cpu", "auto")


def test_a_saved_graph_naming_an_absent_device_gets_a_clear_validation_message():
    none = ProbeResult(False, 0, "ncnn sees 0 Vulkan device(s)")
    one = ProbeResult(True, 1, "ncnn sees 1 Vulkan device(s)")
    assert device_problem("cpu", none) is None and device_problem("auto", none) is None
    assert device_problem("vulkan:0", one) is None and device_problem("vulkan", one) is None
    assert device_problem("vulkan:2", none) == (
        "device 'vulkan:2' is not on this machine (ncnn sees 0 Vulkan device(s)); choose one of cpu, auto "
        "('auto' uses a GPU only when one works)")
    assert "choose one of cpu, auto, vulkan:0 " in device_problem("vulkan:1", one)
    assert "use 'cpu', 'auto' or 'vulkan:N'" in device_problem("cuda:0", one)


def test_the_count_runs_once_per_process(monkeypatch):
    calls = []

    def fake_count():
        calls.append(1)
        return ProbeResult(True, 1, "ncnn sees 1 Vulkan device(s)")
    monkeypatch.setattr(ncnn_device, "count_vulkan_devices", fake_count)
    monkeypatch.setattr(ncnn_device, "_count_cache", [])
    assert ncnn_device.available_device_choices() == ("cpu", "auto", "vulkan:0")
    assert ncnn_device.cached_device_count() is ncnn_device.cached_device_count()
    assert calls == [1]
