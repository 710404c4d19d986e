"""The settable fields of hosts and link directions: their YAML keys, spec attributes,
parsers (YAML value or ``--set`` string -> spec value) and formatters (spec value -> YAML).

The YAML loader and ``apply_overrides`` both go through here, so a value means the same
wherever it is written. Parsers raise :class:`TopologyError` without a location.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

from .errors import TopologyError, kind_of
from .units import (format_cpuset, format_duration_ms, format_fraction, format_rate,
                    format_size, parse_cpuset, parse_duration_ms, parse_fraction, parse_rate, parse_size)

UNLIMITED = ("none", "unlimited")  # spellings that clear a limit
AUTO = ("auto", "none")            # spellings of "let the emulation size the queue"
CPUS_ALLOWED = "a number of cores, e.g. 0.5, or unlimited"
CPU_PERIOD_ALLOWED = "a duration from 1ms to 1s, e.g. 100ms (the kernel's default), or auto (a 1ms quota: 4ms at 0.25 cores)"


def _is_word(value: object, words: tuple[str, ...]) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in words)


def parse_cpus(value: object) -> float | None:
    """0.5 / '0.5' -> 0.5; None / 'none' / 'unlimited' -> None (no CPU quota)."""
    if _is_word(value, UNLIMITED):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TopologyError(f"expected a number of cores, got {kind_of(value)}", CPUS_ALLOWED)
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,2})?\s*", value):
            raise TopologyError(f"'{value.strip()}' is not a number of cores", CPUS_ALLOWED)
        value = float(value)
    if not math.isfinite(value):
        raise TopologyError(f"{value} is not a number of cores", CPUS_ALLOWED)
    return float(value)


def parse_memory(value: object) -> int | None:
    """'1GiB' -> 1073741824; None / 'none' / 'unlimited' -> None (no memory limit)."""
    return None if _is_word(value, UNLIMITED) else parse_size(value)  # type: ignore[arg-type]


def parse_cpuset_value(value: object) -> tuple[int, ...] | None:
    """'0-3,5' / [0, 1] / 3 -> CPU numbers; None / 'none' -> None (any CPU)."""
    if _is_word(value, ("none", "any")):
        return None
    return parse_cpuset(value)  # type: ignore[arg-type]


def parse_cpu_period(value: object) -> int | None:
    """'10ms' -> 10000 (microseconds); None / 'auto' / 'default' -> None (the shortest period for
    the host's share: topologies.checks.auto_cpu_period_us)."""
    if _is_word(value, ("auto", "default")):
        return None
    if isinstance(value, bool) or not isinstance(value, str):
        raise TopologyError(f"expected a duration, got {kind_of(value)}", CPU_PERIOD_ALLOWED)
    return round(parse_duration_ms(value) * 1000)


def parse_bandwidth(value: object) -> int | None:
    """'200Mbit' -> 200_000_000; None / 'none' / 'unlimited' -> None (unshaped)."""
    return None if _is_word(value, UNLIMITED) else parse_rate(value)  # type: ignore[arg-type]


def parse_queue(value: object) -> int | None:
    """'256KiB' -> 262144; None / 'auto' / 'none' -> None (sized by the emulation)."""
    return None if _is_word(value, AUTO) else parse_size(value)  # type: ignore[arg-type]


def _format_cpus(v: float | None) -> float | str:
    return "unlimited" if v is None else float(v)


def _or(word: str, fmt: Callable) -> Callable:
    return lambda v: word if v is None else fmt(v)


# YAML key -> (spec attribute, parser, formatter)
HOST_FIELDS: dict[str, tuple[str, Callable, Callable]] = {
    "cpus": ("cpus", parse_cpus, _format_cpus),
    "memory": ("memory_bytes", parse_memory, _or("unlimited", format_size)),
    "cpuset": ("cpuset", parse_cpuset_value, _or("none", format_cpuset)),
    "cpu_period": ("cpu_period_us", parse_cpu_period, _or("auto", lambda us: format_duration_ms(us / 1000))),
}
DIRECTION_FIELDS: dict[str, tuple[str, Callable, Callable]] = {
    "bandwidth": ("rate_bps", parse_bandwidth, _or("unlimited", format_rate)),
    "delay": ("delay_ms", parse_duration_ms, format_duration_ms),
    "jitter": ("jitter_ms", parse_duration_ms, format_duration_ms),
    "loss": ("loss", parse_fraction, format_fraction),
    "queue": ("queue_bytes", parse_queue, _or("auto", format_size)),
}
DIRECTIONS = ("forward", "reverse")
TOP_KEYS = ("name", "hosts", "links")
LINK_KEYS = tuple(DIRECTION_FIELDS) + DIRECTIONS
# What an experiment file's links take besides DIRECTION_FIELDS, at a link's level (both
# directions) or under forward/reverse: a trace file replayed on the direction during every
# cell (topologies.traces, emulation.replay), how it repeats, and Mahimahi's window. Not part of
# a topology: a topology file, and ``--set`` on a spec, refuse them.
TRACE_FIELDS = ("trace", "trace_mode", "trace_window")
TRACE_ALLOWED = ("a CSV or Mahimahi trace file relative to the experiment file, e.g. "
                 "{trace: traces/walk.csv, trace_mode: loop, trace_window: 100ms}")
