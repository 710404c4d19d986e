"""Synthetic bandwidth traces (`testbed traces synth`) and a trace's summary (`testbed traces show`).

Two seeded processes, each written as a CSV trace (:func:`topologies.traces.to_csv`) whose
header comments say the command and every parameter that made it:

- :func:`walk`, a **log-normal random walk**: the logarithm of the bandwidth is an AR(1)
  process, ``x[k+1] = mu + phi (x[k] - mu) + sigma sqrt(1 - phi^2) e[k]`` with standard
  normal ``e``, ``phi = exp(-step / coherence)`` (the autocorrelation falls to 1/e over the
  coherence time) and ``sigma^2 = ln(1 + cv^2)``, ``mu = ln(mean) - sigma^2 / 2`` so that the
  bandwidth itself has the given mean and coefficient of variation; the walk starts in its
  stationary distribution;
- :func:`markov`, a **Markov-modulated** process: a good and a bad state with their mean
  bandwidths and mean sojourn times (exponential, so a step of length ``step`` leaves the
  state with probability ``1 - exp(-step / sojourn)``), starting in the stationary
  distribution; within a state each step's bandwidth is log-normal around the state's mean
  with coefficient of variation ``cv`` (0: exactly the mean).

Bandwidths are rounded to whole kbit/s and held to ``[floor, cap]`` (how many steps were held
is written in the header, never hidden). numpy's PCG64 generator with the given seed: the
same parameters and seed give the same file.
"""
from __future__ import annotations

import math

import numpy as np

from topologies.checks import RATE_MAX, RATE_MIN
from topologies.traces import Trace, load_trace, to_csv
from topologies.units import format_rate


def _rounded(rates: np.ndarray, floor_bps: int, cap_bps: int) -> tuple[list[int], int]:
    """Whole kbit/s within [floor, cap], and how many steps had to be held to it."""
    r = np.round(rates / 1000.0) * 1000
    held = int(np.sum((r < floor_bps) | (r > cap_bps)))
    return [int(v) for v in np.clip(r, floor_bps, cap_bps)], held


def _times(step_ms: float, duration_ms: float) -> np.ndarray:
    return np.arange(int(math.floor(duration_ms / step_ms + 1e-9))) * step_ms


def walk(mean_bps: float, cv: float, coherence_ms: float, step_ms: float, duration_ms: float, seed: int,
         floor_bps: int = RATE_MIN, cap_bps: int = RATE_MAX) -> tuple[list[tuple[float, int]], int]:
    """Steps (time ms, bandwidth bit/s) of the log-normal AR(1) walk, and how many were held to [floor, cap]."""
    times = _times(step_ms, duration_ms)
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(mean_bps) - sigma * sigma / 2
    phi = math.exp(-step_ms / coherence_ms)
    e = rng.standard_normal(len(times))
    x = np.empty(len(times))
    x[0] = mu + sigma * e[0]
    innovation = sigma * math.sqrt(1 - phi * phi)
    for k in range(1, len(times)):
        x[k] = mu + phi * (x[k - 1] - mu) + innovation * e[k]
    rates, held = _rounded(np.exp(x), floor_bps, cap_bps)
    return list(zip(times.tolist(), rates)), held


def markov(good_bps: float, bad_bps: float, good_ms: float, bad_ms: float, cv: float, step_ms: float,
           duration_ms: float, seed: int, floor_bps: int = RATE_MIN,
           cap_bps: int = RATE_MAX) -> tuple[list[tuple[float, int]], int, float]:
    """Steps of the good/bad Markov-modulated process, how many were held to [floor, cap], and
    the share of steps spent in the good state."""
    times = _times(step_ms, duration_ms)
    rng = np.random.default_rng(seed)
    leave = {True: 1 - math.exp(-step_ms / good_ms), False: 1 - math.exp(-step_ms / bad_ms)}
    good = bool(rng.random() < good_ms / (good_ms + bad_ms))
    states = np.empty(len(times), dtype=bool)
    for k in range(len(times)):
        states[k] = good
        if rng.random() < leave[good]:
            good = not good
    means = np.where(states, good_bps, bad_bps)
    sigma = math.sqrt(math.log1p(cv * cv))
    noise = np.exp(sigma * rng.standard_normal(len(times)) - sigma * sigma / 2)   # mean 1
    rates, held = _rounded(means * noise, floor_bps, cap_bps)
    return list(zip(times.tolist(), rates)), held, float(states.mean()) if len(states) else 0.0


def synth_csv(steps: list[tuple[float, int]], duration_ms: float, comments: list[str], held: int,
              floor_bps: int, cap_bps: int) -> str:
    """The CSV text: the comments, a line saying what came out (as `testbed traces show` sums
    it up), the steps and the end."""
    bw = summary(load_trace("<synth>", text=to_csv(steps, duration_ms), mode="loop"))["bandwidth_bps"]
    said = (f"generated: {len(steps)} steps, mean {format_rate(round(bw['mean'], -3))}, p10 {format_rate(bw['p10'])}, "
            f"p90 {format_rate(bw['p90'])}; {held} step(s) held to [{format_rate(floor_bps)}, {format_rate(cap_bps)}]")
    return to_csv(steps, duration_ms, [*comments, said])


def summary(trace: Trace) -> dict:
    """What `testbed traces show` prints: format, mode, duration, steps, the shortest step, the
    bandwidth's mean and p10 / p50 / p90 weighted by time over the trace's duration (a trace
    without an end: up to its last step), min and max, delay / jitter / loss ranges where the
    trace sets them, and its notes."""
    lengths = np.array(trace.lengths_ms(), dtype=float)
    closed = lengths if trace.period_ms is not None else lengths[:-1]
    if not closed.sum():                    # one step and no end: it is the whole trace
        lengths = np.ones(1)
    rates = np.array([s.rate_bps for s in trace.steps], dtype=float)
    order = np.argsort(rates, kind="stable")
    cum = np.cumsum(lengths[order]) / lengths.sum()

    def weighted(q: float) -> int:
        return int(rates[order][min(int(np.searchsorted(cum, q)), len(rates) - 1)])

    out = {"source": trace.source, "format": trace.format, "mode": trace.mode,
           "duration_ms": trace.duration_ms, "steps": len(trace.steps),
           "shortest_step_ms": float(closed.min()) if len(closed) else None,
           "bandwidth_bps": {"mean": int(round(float(np.average(rates, weights=lengths)))), "p10": weighted(0.1),
                             "p50": weighted(0.5), "p90": weighted(0.9), "min": int(rates.min()),
                             "max": int(rates.max())},
           "notes": list(trace.notes)}
    for name in ("delay_ms", "jitter_ms", "loss"):
        values = [getattr(s, name) for s in trace.steps if getattr(s, name) is not None]
        if values:
            out[name] = {"min": min(values), "max": max(values)}
    return out
