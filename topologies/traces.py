"""Link traces: a link direction's bandwidth (and delay, jitter, loss) over time, read from a
file into frozen data, checked once at load time. Nothing here touches the kernel: the
replay driver (:mod:`emulation.replay`) applies a trace to a running network.

Two formats (``format="auto"`` tells them apart: a file whose every line is one whole
number is Mahimahi's):

- **CSV steps**: ``time, bandwidth[, delay[, jitter[, loss]]]``, one step per line, each in
  force from its time until the next step's. Values are written as everywhere in the
  testbed (``0s, 50Mbit, 20ms, 2ms, 0.5%``, :mod:`topologies.units`); a plain number has a
  default unit: **time in seconds, bandwidth in Mbit/s, delay and jitter in ms, loss in
  percent**. An optional header row names the columns (``time,bandwidth,delay``: the same
  names, in that order). ``#`` starts a comment line. The first step is at time 0. A last
  line with only a time marks the trace's **end**: the period of a looped trace (``mode:
  loop`` needs it; the generator writes it). A column the file leaves out is not touched
  (the link keeps its own value).
- **Mahimahi** (packet delivery opportunities): one millisecond timestamp per line, each an
  opportunity to deliver one 1500-byte packet; the same timestamp on several lines is
  several packets; the last timestamp is the trace's period. It becomes steps of bandwidth
  over windows of ``window_ms`` (default 100 ms): N opportunities in a window of W ms are
  N x 1514 bytes (the packet as our links count it, with its Ethernet header) x 8 / W. A
  window without any opportunity (an outage) is held at the lowest rate a link takes
  (``RATE_MIN``, 1kbit), and said so in the trace's ``notes``; a last window shorter than
  :data:`MIN_STEP_MS` is folded into the one before it (noted too).

``mode``: ``once`` (the last step stays in force) or ``loop`` (the trace repeats with its
period).

Every problem is one line naming the file and line (:class:`TraceError`): times that do not
increase, negative or absurd values (bandwidth outside 1kbit..100Gbit, delay above 60 s,
jitter above the delay, loss of 100 % or more), an empty trace, a step shorter than
:data:`MIN_STEP_MS`.
"""
from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from .checks import DELAY_MAX_MS, RATE_MAX, RATE_MIN
from .errors import LocatedError
from .units import (format_duration_ms, format_fraction, format_rate, parse_duration_ms, parse_fraction,
                    parse_rate)

# The shortest step a trace may hold. A bandwidth step costs 0.5 ms at p50 and 3.5 ms at p99
# on the testbed's 2-core VM (4.1 ms with the machine busy), and the replay has it in force
# 0.5-1 ms after its due time (benchmarks/results/trace.md, docs/emulation.md#traces); a step
# must outlast its own application by a wide margin, and the apply-lag goal (5 ms at p99)
# too, or the link would spend a sizeable share of the step in the previous state.
MIN_STEP_MS = 10.0
MAHIMAHI_WINDOW_MS = 100.0
MAHIMAHI_PACKET_BYTES = 1500     # a delivery opportunity carries one packet of this many IP bytes
FRAME_BYTES = MAHIMAHI_PACKET_BYTES + 14   # ... which our links count with its Ethernet header
MODES = ("once", "loop")
FORMATS = ("auto", "csv", "mahimahi")
COLUMNS = ("time", "bandwidth", "delay", "jitter", "loss")
# a plain number in a CSV cell has this unit
DEFAULT_UNITS = {"time": "s", "bandwidth": "Mbit", "delay": "ms", "jitter": "ms", "loss": "%"}
CSV_ALLOWED = ("time, bandwidth[, delay[, jitter[, loss]]] per line, e.g. 0s, 50Mbit, 20ms "
               "(plain numbers: s, Mbit/s, ms, ms, %)")


class TraceError(LocatedError):
    """A trace file, or a value in it, is not acceptable. ``str()`` is one line:
    ``<file>:<line>: <column>: <problem>; allowed: <what is allowed>``."""


@dataclass(frozen=True)
class TraceStep:
    """One step: from ``at_ms`` (after the trace's start) the direction has these values until
    the next step. None: the trace leaves that value alone (the file has no such column)."""

    at_ms: float
    rate_bps: int
    delay_ms: float | None = None
    jitter_ms: float | None = None
    loss: float | None = None
    line: int | None = field(default=None, compare=False)   # where the step was written

    def changes(self) -> dict:
        """The DirectionSpec fields this step sets (``rate_bps``, and ``delay_ms`` etc. where given)."""
        out = {"rate_bps": self.rate_bps}
        for name in ("delay_ms", "jitter_ms", "loss"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def describe(self) -> str:
        parts = [format_rate(self.rate_bps)]
        if self.delay_ms is not None:
            parts.append(f"delay {format_duration_ms(self.delay_ms)}")
        if self.jitter_ms is not None:
            parts.append(f"jitter {format_duration_ms(self.jitter_ms)}")
        if self.loss is not None:
            parts.append(f"loss {format_fraction(self.loss)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Trace:
    """A parsed, checked trace. ``period_ms``: where the trace ends (its end line, or
    Mahimahi's last timestamp), None when the file gives no end (``once`` only)."""

    steps: tuple[TraceStep, ...]
    mode: str = "once"
    period_ms: float | None = None
    source: str = "<trace>"
    format: str = "csv"
    notes: tuple[str, ...] = ()

    @property
    def duration_ms(self) -> float:
        """How long the trace runs before it repeats or holds: its period, or its last step's time."""
        return self.period_ms if self.period_ms is not None else self.steps[-1].at_ms

    def step_at(self, t_ms: float) -> TraceStep:
        """The step in force ``t_ms`` after the start, as the trace schedules it (repeating with
        the period in ``loop`` mode; before 0, the first step)."""
        if t_ms < 0:
            return self.steps[0]
        if self.mode == "loop" and self.period_ms:
            t_ms = t_ms % self.period_ms
        return self.steps[bisect.bisect_right(self.steps, t_ms, key=lambda s: s.at_ms) - 1]

    def lengths_ms(self) -> list[float]:
        """How long each step holds (the last one up to the period; 0 when there is none)."""
        ends = [s.at_ms for s in self.steps[1:]] + [self.period_ms if self.period_ms is not None else self.steps[-1].at_ms]
        return [end - s.at_ms for s, end in zip(self.steps, ends)]


# ---- loading ---------------------------------------------------------------------------------

def load_trace(path: str | Path, mode: str = "once", format: str = "auto",      # noqa: A002 - the user's word
               window_ms: float = MAHIMAHI_WINDOW_MS, text: str | None = None) -> Trace:
    """Read and check a trace file (``text``: its contents, already read). Raises
    :class:`TraceError` (one line, naming the file and line) for anything wrong."""
    source = str(path)
    if mode not in MODES:
        raise TraceError(f"unknown trace mode {mode!r}", " or ".join(MODES), source=source)
    if format not in FORMATS:
        raise TraceError(f"unknown trace format {format!r}", ", ".join(FORMATS), source=source)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TraceError("no such trace file", "a CSV or Mahimahi trace file", source=source) from None
        except (OSError, UnicodeDecodeError) as e:
            raise TraceError(f"cannot read it: {getattr(e, 'strerror', None) or e}", None, source=source) from None
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if not lines:
        raise TraceError("empty trace: no steps", CSV_ALLOWED + ", or Mahimahi's one millisecond timestamp per line",
                         source=source)
    if format == "auto":
        format = "mahimahi" if all(line.isdigit() for _, line in lines) else "csv"
    if format == "mahimahi":
        trace = _mahimahi(lines, source, window_ms)
    else:
        trace = _csv(lines, source)
    if mode == "loop" and trace.period_ms is None:
        last = trace.steps[-1]
        raise TraceError("a looped trace needs its end: add a last line with only its time, "
                         f"e.g. {format_duration_ms(last.at_ms + (trace.lengths_ms()[-2] if len(trace.steps) > 1 else 1000))}",
                         "mode: once, or an end line", source=source, line=last.line)
    return Trace(trace.steps, mode, trace.period_ms, source, format, trace.notes)


def _cell(value: str, column: str, source: str, line: int):
    """One CSV cell as the spec's unit (ms, bit/s, fraction); a plain number takes the column's
    default unit."""
    text = value.strip()
    plain = text.replace(".", "", 1).lstrip("+-").isdigit()
    if plain:
        text += DEFAULT_UNITS[column]
    try:
        if column == "bandwidth":
            return parse_rate(text)
        if column == "loss":
            return parse_fraction(text)
        return parse_duration_ms(text)
    except LocatedError as e:
        raise TraceError(e.problem, e.allowed, source=source, line=line, path=column) from None


def _csv(lines: list[tuple[int, str]], source: str) -> Trace:
    def fail(line: int, problem: str, allowed: str | None = CSV_ALLOWED, column: str | None = None):
        raise TraceError(problem, allowed, source=source, line=line, path=column)

    rows = [(i, [c.strip() for c in next(csv.reader([line]))]) for i, line in lines]
    columns: tuple[str, ...] | None = None
    first_line, first = rows[0]
    if first and first[0].lower() == "time":
        names = tuple(c.lower() for c in first)
        if names != COLUMNS[:len(names)] or len(names) < 2:
            fail(first_line, f"header {', '.join(first)}: the columns are time, bandwidth[, delay[, jitter[, loss]]] "
                             "in that order", ", ".join(COLUMNS))
        columns = names
        rows = rows[1:]
    if not rows:
        fail(first_line, "empty trace: a header and no steps")
    steps: list[TraceStep] = []
    period = None
    prev_at = None
    for n, (i, cells) in enumerate(rows):
        if len(cells) == 1 or (len(cells) > 1 and not any(cells[1:])):   # "6s" or "6s,": the end line
            if n != len(rows) - 1:
                fail(i, "a line with only a time ends the trace: it must be the last line")
            if not steps:
                fail(i, "empty trace: only an end line")
            end = _cell(cells[0], "time", source, i)
            if end <= prev_at:
                fail(i, f"the end {format_duration_ms(end)} is not after the last step's "
                        f"{format_duration_ms(prev_at)}", "an end after every step", "time")
            period = end
            continue
        if columns is None:
            if not 2 <= len(cells) <= len(COLUMNS):
                fail(i, f"{len(cells)} values")
            columns = COLUMNS[:len(cells)]
        if len(cells) != len(columns):
            fail(i, f"{len(cells)} values where the trace has {len(columns)} ({', '.join(columns)})")
        if any(not c for c in cells):
            column = columns[[bool(c) for c in cells].index(False)]
            fail(i, "empty value", f"a value in every column; leave the column out to keep the link's own {column}",
                 column)
        values = {c: _cell(v, c, source, i) for c, v in zip(columns, cells)}
        at = values["time"]
        if not steps and at != 0:
            fail(i, f"the first step is at {format_duration_ms(at)}: a trace starts at 0s", "0s first", "time")
        if at < 0:
            fail(i, f"negative time {format_duration_ms(at)}", "0s and later, increasing", "time")
        if prev_at is not None and at <= prev_at:
            what = "repeats" if at == prev_at else "is before"
            fail(i, f"time {format_duration_ms(at)} {what} the step before it ({format_duration_ms(prev_at)}, "
                    f"line {steps[-1].line})", "times increasing, each step once", "time")
        step = TraceStep(at, values["bandwidth"], values.get("delay"), values.get("jitter"), values.get("loss"), line=i)
        _check_values(step, source)
        steps.append(step)
        prev_at = at
    trace = Trace(tuple(steps), period_ms=period, source=source, format="csv")
    _check_lengths(trace, source)
    return trace


def _check_values(step: TraceStep, source: str) -> None:
    def fail(column: str, problem: str, allowed: str):
        raise TraceError(problem, allowed, source=source, line=step.line, path=column)

    if not RATE_MIN <= step.rate_bps <= RATE_MAX:
        fail("bandwidth", f"{format_rate(step.rate_bps)} is out of range",
             f"{format_rate(RATE_MIN)} to {format_rate(RATE_MAX)}")
    if step.delay_ms is not None and not 0 <= step.delay_ms <= DELAY_MAX_MS:
        fail("delay", f"{format_duration_ms(step.delay_ms)} is out of range",
             f"0ms to {format_duration_ms(DELAY_MAX_MS)}")
    if step.jitter_ms is not None:
        if step.jitter_ms < 0:
            fail("jitter", f"{format_duration_ms(step.jitter_ms)} is out of range", "0ms to the delay")
        if step.jitter_ms > (step.delay_ms or 0.0):
            fail("jitter", f"jitter {format_duration_ms(step.jitter_ms)} is larger than the delay "
                           f"{format_duration_ms(step.delay_ms or 0.0)}", "0ms to the delay")
    if step.loss is not None and not 0 <= step.loss < 1:
        fail("loss", f"{format_fraction(step.loss)} is out of range", "0% up to but not including 100%")


def _check_lengths(trace: Trace, source: str) -> None:
    """Every step must hold at least MIN_STEP_MS (the last one too, when the trace has an end)."""
    lengths = trace.lengths_ms()
    for k, (step, length) in enumerate(zip(trace.steps, lengths)):
        if k == len(lengths) - 1 and trace.period_ms is None:
            break       # the last step of an open-ended trace holds until the replay stops
        if length < MIN_STEP_MS:
            raise TraceError(f"the step at {format_duration_ms(step.at_ms)} lasts {format_duration_ms(length)}, "
                             f"shorter than the {format_duration_ms(MIN_STEP_MS)} a link change needs here",
                             f"steps of at least {format_duration_ms(MIN_STEP_MS)}", source=source,
                             line=step.line, path="time")


def _mahimahi(lines: list[tuple[int, str]], source: str, window_ms: float) -> Trace:
    if not (isinstance(window_ms, (int, float)) and math.isfinite(window_ms)) or window_ms < MIN_STEP_MS:
        raise TraceError(f"window {window_ms!r} ms is shorter than the {format_duration_ms(MIN_STEP_MS)} a link change "
                         "needs here", f"at least {format_duration_ms(MIN_STEP_MS)}", source=source, path="window")
    stamps = []
    prev = None
    for i, line in lines:
        if not line.isdigit():
            raise TraceError(f"'{line}' is not a millisecond timestamp", "one whole number of milliseconds per line, "
                             "never decreasing", source=source, line=i)
        t = int(line)
        if prev is not None and t < prev:
            raise TraceError(f"timestamp {t} is before the one on the line before it ({prev})",
                             "timestamps that never decrease (the same one twice is two packets)",
                             source=source, line=i)
        stamps.append((t, i))
        prev = t
    period = float(stamps[-1][0])
    if period <= 0:
        raise TraceError("every timestamp is 0: the trace has no length", "a last timestamp above 0 (the period)",
                         source=source, line=stamps[-1][1])
    # window k covers [k W, (k+1) W) of one period; a stamp at the period is the next period's 0
    n = max(1, math.ceil(period / window_ms - 1e-9))
    bounds = [k * window_ms for k in range(n)] + [period]
    notes = []
    if n > 1 and bounds[-1] - bounds[-2] < MIN_STEP_MS:
        notes.append(f"the last window ({format_duration_ms(bounds[-1] - bounds[-2])}) is shorter than "
                     f"{format_duration_ms(MIN_STEP_MS)}: folded into the one before it")
        del bounds[-2]
    counts = [0] * (len(bounds) - 1)
    first_line = [None] * len(counts)
    for t, i in stamps:
        t = t % period if t >= period else t
        k = min(int(t // window_ms), len(counts) - 1)
        counts[k] += 1
        first_line[k] = first_line[k] or i
    steps = []
    outages = 0
    for k, count in enumerate(counts):
        length = bounds[k + 1] - bounds[k]
        rate = round(count * FRAME_BYTES * 8 / (length / 1000))
        if rate < RATE_MIN:
            outages += 1
            rate = RATE_MIN
        steps.append(TraceStep(bounds[k], rate, line=first_line[k] or stamps[-1][1]))
        _check_values(steps[-1], source)
    if outages:
        notes.append(f"{outages} window(s) without a delivery opportunity (outages): held at "
                     f"{format_rate(RATE_MIN)}, the lowest rate a link takes")
    trace = Trace(tuple(steps), period_ms=period, source=source, format="mahimahi", notes=tuple(notes))
    _check_lengths(trace, source)
    return trace


# ---- writing -----------------------------------------------------------------------------------

def to_csv(steps: list[tuple[float, int]], period_ms: float, comments: list[str] = ()) -> str:
    """A CSV trace of (time ms, bandwidth bit/s) steps with its end line, ``comments`` first."""
    out = [f"# {c}" for c in comments] + ["time,bandwidth"]
    out += [f"{format_duration_ms(t)},{format_rate(r)}" for t, r in steps]
    out.append(format_duration_ms(period_ms))
    return "\n".join(out) + "\n"
