"""JSON and YAML bodies and files parsed with limits, and never on the event loop.

Shared by the CLI (shot-list files) and the API (bodies, sheets). A 3.6 MB YAML once took 30 s of parsing on the
event loop that also renews leases. So YAML uses libyaml's C parser where it is installed (it also caps nesting
at 1000 levels; the pure-Python one hits Python's recursion limit, reported the same way), is limited to
MAX_YAML_BYTES (its constructor still runs in Python: about 2 s per MB), and `parse_off_loop` runs anything but
a small body off the event loop: JSON in a worker thread, YAML in a worker process. A thread is not enough for
YAML: libyaml composes the whole node tree in one C call that holds the GIL (0.3 s here, 1.1 s on CI for 3.5 MB),
and the event loop waits for the GIL as it would for the parse. JSON's own recursion guard becomes a 400 too.

YAML aliases let a few hundred bytes stand for billions of values (nine lists of nine aliases, nine levels deep:
387 million), and everything that walks the result afterwards (validation, the message that quotes a wrong value)
takes that long and that much memory. A document holding more values than its text could spell out without
aliases (MAX_VALUES_PER_BYTE) is refused; anchors and merge keys that a person writes stay well below that.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import yaml

from shotline_controller.contract import InputError

MAX_YAML_BYTES = 4 * 1024 * 1024     # a 10,000-shot list is about 1.2 MB of YAML; bigger lists go as JSON
INLINE_BYTES = 64 * 1024             # smaller bodies parse faster than a thread hop costs
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_VALUES_PER_BYTE = 2              # without aliases every value takes at least a byte of text


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes | str, field: str = "body"):
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:  # json's C scanner guards its own recursion
        raise InputError(field, "nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
        raise InputError(field, f"not valid JSON: {error}") from None


def parse_yaml(data: bytes | str, field: str = "body"):
    if len(data) > MAX_YAML_BYTES:
        raise InputError(field, f"YAML over {MAX_YAML_BYTES // (1024 * 1024)} MB: send bigger lists as JSON")
    try:
        parsed = yaml.load(data, Loader=_Loader)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except (yaml.YAMLError, ValueError, OverflowError) as error:
        # ValueError: undecodable text, and what the constructors raise (a 5000-digit int, the date 2024-13-45)
        raise InputError(field, f"not valid YAML: {error}") from None
    except RecursionError:
        raise InputError(field, "not valid YAML: nested too deeply") from None
    _check_expansion(parsed, MAX_VALUES_PER_BYTE * len(data) + 100, field)
    return parsed


def _check_expansion(parsed, budget: int, field: str) -> None:
    """InputError when `parsed`, walked as the tree its readers see, holds more than `budget` values; the walk
    stops there, so it costs at most `budget` steps (a recursive alias too)."""
    pending, seen = [parsed], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > budget:
            raise InputError(field, "YAML whose aliases expand to more values than its text holds: write the "
                                    "values out (or use `defaults`)")
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def parse_text(data: bytes | str, as_yaml: bool, field: str = "body"):
    return parse_yaml(data, field) if as_yaml else parse_json(data, field)


_yaml_workers: ProcessPoolExecutor | None = None


def _yaml_process() -> ProcessPoolExecutor:
    """One worker process for big YAML bodies, started on first use ("spawn": forking a threaded server is unsafe)."""
    global _yaml_workers
    if _yaml_workers is None:
        _yaml_workers = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _yaml_workers


def stop_yaml_process() -> None:
    global _yaml_workers
    if _yaml_workers is not None:
        _yaml_workers.shutdown(wait=False, cancel_futures=True)
        _yaml_workers = None


async def parse_off_loop(data: bytes | str, as_yaml: bool, field: str = "body"):
    """`parse_text` off the event loop for anything but small bodies (YAML in a process, JSON in a thread), so the
    event loop keeps serving and renewing leases."""
    if len(data) <= INLINE_BYTES:
        return parse_text(data, as_yaml, field)
    if as_yaml:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_yaml_process(), parse_yaml, data, field)
        except BrokenProcessPool:  # the worker died (killed for memory?): a new one, once
            stop_yaml_process()
            return await loop.run_in_executor(_yaml_process(), parse_yaml, data, field)
    return await asyncio.to_thread(parse_text, data, as_yaml, field)
