"""Timing shared by the benchmark scripts."""
import time


def best_seconds(function, repeat: int) -> float:
    """The fastest of `repeat` timed calls, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
