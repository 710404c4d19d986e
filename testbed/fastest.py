"""``partition: {cut: fastest}``: the cut is chosen per sweep point, as Neurosurgeon does, by
the least predicted end-to-end latency for the strategy's placement at that point's network,
so two points with different links may deploy different cuts. (``cut: auto`` keeps its
meaning: a cut chosen from the graph alone.)

The candidates (:func:`pick`) are cuts of the model as the operators before the partition
leave it (e.g. quantized): the model is prepared through those operators as one part (an
artifact of its own, cached) and its graph analysed (``workloads.graph.analyze``). A graph
with at most :data:`MAX_CANDIDATES` valid cuts offers them all; a larger one offers the cut
``auto`` would choose plus, in each of ``MAX_CANDIDATES - 1`` equal bins of the FLOPs
fraction computed before the cut, the cut with the fewest bytes crossing it (ties: the
earlier one). Each candidate is an artifact of its own, ``partition: {cut: <tensor>}``:
`testbed prepare` builds and `testbed profile` profiles every one.

At a point, every candidate is predicted by `testbed.plan` (one request, from the compute
profiles and the links' arithmetic: :func:`testbed.plan.predict`) and the one with the least
predicted p50 is deployed (ties: the earlier cut). `testbed run` profiles what has no profile
yet before its network comes up (:func:`resolve`), never falls back to another cut, and
stores the chosen chain in the cell's ``operators`` and the why in ``choice_json``: each
candidate's tensor, bytes, FLOPs fraction, predicted p50/p90 and its compute, transmission
and harness split. `testbed plan` shows the best candidate as the strategy's row, with its
``cut`` and ``choice``; `testbed run --dry-run` shows the cut when every candidate is
prepared and profiled.

Refused, each with one line: ``fastest`` in a list of cuts, a placement of other than two
hosts, early-exit heads before the partition (``workloads.operators.check_placement``); a
point whose links replay traces or have loss or jitter (the prediction assumes steady links);
``--executor ray`` (profiles are per machine: the choice would be made for the driver's).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from topologies.errors import TestbedError
from workloads.errors import WorkloadError
from workloads.operators import FASTEST, OperatorCall

from .experiment import ArtifactNeed, Experiment, ModelRef, Strategy, point_label

MAX_CANDIDATES = 8
RULE = "the candidate cut of least predicted p50 at this point (testbed.fastest)"


class FastestError(TestbedError):
    """A ``cut: fastest`` that cannot be chosen: a point with unsteady links, a candidate
    that could not be prepared or profiled."""


@dataclass(frozen=True)
class Candidate:
    """One candidate cut: its tensor, position in the graph, bytes crossing it, the share of
    the model's FLOPs computed before it, and whether ``cut: auto`` would choose it."""

    tensor: str
    index: int
    bytes: int
    fraction: float
    auto: bool


def is_fastest(s: Strategy) -> bool:
    return any(c.name == "partition" and c.get("cut") == FASTEST for c in s.operators)


def with_cut(chain: tuple[OperatorCall, ...], tensor: str) -> tuple[OperatorCall, ...]:
    """``chain`` with its partition cutting at ``tensor`` (the same call a file writing
    ``cut: <tensor>`` makes, so the artifact is shared with it)."""
    return tuple(OperatorCall(c.name, tuple((k, tensor if k == "cut" else v) for k, v in c.params), c.given)
                 if c.name == "partition" else c for c in chain)


def concrete(s: Strategy, tensor: str) -> Strategy:
    """The strategy ``s`` deploying the cut ``tensor`` (same name and placement)."""
    return Strategy(s.name, with_cut(s.operators, tensor), s.placement)


def pick(info, model_name: str = "model", limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """The candidate cuts of a graph (``workloads.graph.GraphInfo``), in graph order: all its
    cuts when it has at most ``limit``; else ``auto``'s cut and, in each of ``limit - 1`` equal
    bins of the FLOPs fraction, the cut with the fewest bytes (ties: the earlier)."""
    from workloads import graph

    auto = graph.resolve_cut(info, "auto", model_name)       # (a graph without cuts: its one-line error)
    chosen = {auto.index: auto}
    if len(info.cuts) <= limit:
        chosen.update((c.index, c) for c in info.cuts)
    else:
        bins = limit - 1
        for k in range(bins):
            inside = [c for c in info.cuts if k / bins <= c.fraction < (k + 1) / bins
                      or (k == bins - 1 and c.fraction >= 1)]
            if inside:
                best = min(inside, key=lambda c: (c.bytes, c.index))
                chosen[best.index] = best
    return [Candidate(c.tensor, c.index, c.bytes, round(c.fraction, 4), c.index == auto.index)
            for _, c in sorted(chosen.items())]


_candidates: dict[tuple, list[Candidate]] = {}      # (model, chain before, cache root) -> candidates


def candidates(model: ModelRef, chain: tuple[OperatorCall, ...], *, cache=None, build: bool = True,
               progress: Callable[[str], None] = lambda message: None) -> list[Candidate] | None:
    """The candidate cuts of ``model`` under ``chain`` (:func:`pick` of the graph the operators
    before the partition leave). The model is prepared through those operators as one part
    (cached); with ``build`` false nothing is built and None means not prepared yet."""
    import onnx

    from workloads import graph
    from workloads.cache import Cache
    from workloads.prepare import cached_artifact, prepare

    before = tuple(c for c in chain if c.name != "partition")
    root = (cache or Cache()).root
    key = (model, before, str(root))
    if key not in _candidates:
        if build:
            progress(f"{model.name}: the graph that cut: fastest chooses in")
            folder = prepare(model.name, before, parts=1, weights=model.weights, data=model.data, cache=cache,
                             progress=progress).path
        else:
            folder = cached_artifact(model.name, before, parts=1, weights=model.weights, data=model.data,
                                     cache=cache)
            if folder is None:
                return None
        info = graph.analyze(onnx.load(str(Path(folder) / "seg0.onnx")))
        _candidates[key] = pick(info, model.name)
    return _candidates[key]


def expand(need: ArtifactNeed, *, cache=None, build: bool = True,
           progress: Callable[[str], None] = lambda message: None) -> list[ArtifactNeed]:
    """``[need]``, or for a ``cut: fastest`` chain one need per candidate cut. With ``build``
    false and the candidates not known yet: ``[need]`` (which no cache holds: not prepared)."""
    if not any(c.name == "partition" and c.get("cut") == FASTEST for c in need.operators):
        return [need]
    found = candidates(need.model, need.operators, cache=cache, build=build, progress=progress)
    if found is None:
        return [need]
    return [ArtifactNeed(need.model, with_cut(need.operators, c.tensor), need.parts) for c in found]


def best_row(e: Experiment, point: dict, model: ModelRef, s: Strategy, known) -> dict:
    """The plan's row of a ``cut: fastest`` strategy at the point ``e`` is at: its best
    candidate's prediction, with ``cut`` (the tensor) and ``choice`` (:data:`RULE` and every
    candidate's prediction). ``known``: the plan's artifacts and profiles (``plan._Known``)."""
    from .plan import PlanError, _predict_need

    found = candidates(model, s.operators, cache=known.cache, build=False)
    if found is None:       # (the plan's missing profiles name it first: a bug if reached)
        raise PlanError(f"{model.name} [{s.name}]: the candidates of cut: fastest are not prepared")
    rows = []
    for c in found:
        here = concrete(s, c.tensor)
        rows.append((c, _predict_need(e, point, model, here, ArtifactNeed(model, here.operators, here.parts), known)))
    chosen, best = min(rows, key=lambda cr: (cr[1]["p50_ms"], cr[0].index))
    choice = {"rule": RULE, "cut": chosen.tensor, "p50_ms": best["p50_ms"],
              "candidates": [{"tensor": c.tensor, "index": c.index, "bytes": c.bytes, "fraction": c.fraction,
                              "auto": c.auto, **{k: r[k] for k in ("p50_ms", "p90_ms", "compute_ms",
                                                                    "transmission_ms", "overhead_ms")}}
                             for c, r in rows]}
    return {**best, "cut": chosen.tensor, "choice": choice}


def choice_key(point: dict, model: ModelRef, strategy: str) -> tuple:
    return json.dumps(point, sort_keys=True, default=str), model, strategy


def check_steady(e: Experiment, point: dict, s: Strategy) -> None:
    """A ``cut: fastest`` is chosen from steady links: a FastestError where they are not."""
    what = ("this experiment replays link traces" if e.traces else
            next((f"link {lk.name} has loss or jitter" for lk in e.topology.links
                  for d in (lk.forward, lk.reverse) if d.loss or d.jitter_ms), None))
    if what:
        raise FastestError(f"strategy {s.name} at {point_label(point)}: cut: fastest is chosen from predictions that "
                           f"assume steady links, and {what}: give the cut (auto or a tensor name)")


def possible(exp: Experiment) -> bool:
    """Whether any cell of ``exp`` may be ``cut: fastest``: a strategy is, or the sweep changes
    strategies (without either, nothing need look at every point)."""
    return any(is_fastest(s) for s in exp.strategies) or any(p.startswith("strategies") for p, _ in exp.sweep)


def _cells(exp: Experiment, keep) -> list[tuple[dict, Experiment, ModelRef, Strategy]]:
    if not possible(exp):
        return []
    return [(point, e, m, s) for point, e in exp.points() for m in e.models for s in e.strategies if keep(m, s)]


def _choose(exp: Experiment, cells: list, known) -> dict[tuple, tuple[Strategy, dict]]:
    out = {}
    for point, e, m, s in cells:
        row = best_row(e, point, m, s, known)
        out[choice_key(point, m, s.name)] = (concrete(s, row["cut"]), row["choice"])
    return out


def _known(arts: dict, profs: dict, cache, links: dict | None):
    from .plan import _Known
    from .recommend import TOLERANCE

    return _Known(arts, profs, float(os.cpu_count() or 1), TOLERANCE, links, cache)


def resolve(exp: Experiment, *, cache=None, skip: frozenset = frozenset(),
            progress: Callable[[str], None] = lambda message: None) -> dict[tuple, tuple[Strategy, dict]]:
    """For `testbed run` (root, before its network comes up; the candidates prepared): every
    cell of a ``cut: fastest`` strategy, :func:`choice_key` -> (the strategy with the chosen
    cut, the why). Parts without a profile are profiled first (``testbed.profile``, on a
    network of their own), so the choice is never made without them. ``skip``: the declared
    needs (model, chain, parts) left out (their candidates could not be prepared)."""
    from .plan import _profiles_for
    from .profile import profile_experiment, profile_links

    def keep(m: ModelRef, s: Strategy) -> bool:
        return is_fastest(s) and ArtifactNeed(m, s.operators, s.parts) not in skip

    cells = _cells(exp, keep)
    if not cells:
        return {}
    for point, e, _m, s in cells:
        check_steady(e, point, s)
    points = exp.cells_grid()
    arts, profs, missing = _profiles_for(exp, points, cache, only=keep)
    if missing:
        progress(f"cut: fastest: profiling {len(missing)} candidate part(s) without a profile")
        try:
            profile_experiment(exp, points, cache=cache, only=keep, progress=progress)
        except WorkloadError as e:
            raise FastestError(f"cut: fastest: {e}") from None
        arts, profs, missing = _profiles_for(exp, points, cache, only=keep)
        if missing:
            raise FastestError(f"cut: fastest: {missing[0]} even after profiling")
    links = profile_links(progress=progress, cache=cache)      # measured once per machine, then stored
    return _choose(exp, cells, _known(arts, profs, cache, links))


def preview(exp: Experiment, cache=None) -> tuple[dict[tuple, tuple[Strategy, dict]], str | None]:
    """For `testbed run --dry-run` (nothing built, profiled or run): the choices as
    :func:`resolve` makes them when every candidate is prepared and profiled, else ``({},
    why not)``."""
    def keep(m: ModelRef, s: Strategy) -> bool:
        return is_fastest(s)

    from .plan import _profiles_for

    cells = _cells(exp, keep)
    if not cells:
        return {}, None
    try:
        for point, e, _m, s in cells:
            check_steady(e, point, s)
    except FastestError as e:
        return {}, str(e)
    from .profile import load_links

    arts, profs, missing = _profiles_for(exp, exp.cells_grid(), cache, only=keep)
    links = load_links(cache)
    if links is None:
        missing.append("this machine's links have no profile (one pass through a link's emulation)")
    if missing:
        return {}, (f"{missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                    + ": testbed run prepares and profiles what is missing first (or testbed profile)")
    return _choose(exp, cells, _known(arts, profs, cache, links)), None
