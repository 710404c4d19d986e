"""Operators: what turns a model into a deployable artifact, declared once and validated.

Each operator has a name, a *kind* and a parameter table. Kinds fix the order of a chain:
training operators (they change weights) come first, then post-training ones (they rewrite
the graph of a trained model), then placement ones (they split the result across hosts)::

    training  ->  post-training  ->  placement
    qat, prune,   quantize,          partition
    distill       early_exit

A chain is written in an experiment file as a list of names or one-key mappings, e.g.
``[quantize, {early_exit: {kind: heads, threshold: 0.8}}, {partition: {cut: auto}}]``.
`parse_chain` turns it into `OperatorCall`s with every parameter validated and defaulted, so
nothing downstream re-checks user input and the call (with its defaults) is what the
artifact's content key is built from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import WorkloadError, choices
from .params import Param, boolean, int_range, is_number, one_of, open_unit, parse_params
from .quantize_params import OPERATOR_FIELDS as QUANTIZE_FIELDS, STATIC_ONLY

KINDS = ("training", "post-training", "placement")


@dataclass(frozen=True)
class OperatorDef:
    name: str
    kind: str
    help: str
    params: dict[str, Param]
    once: bool = True             # may appear at most once in a chain


@dataclass(frozen=True)
class OperatorCall:
    """An operator with every parameter filled in; hashable, and stable as a cache key.
    ``given``: the parameters the user wrote (not part of equality or the key)."""
    name: str
    params: tuple[tuple[str, Any], ...]
    given: frozenset = field(default=frozenset(), compare=False)

    def get(self, key: str) -> Any:
        return dict(self.params)[key]

    def as_dict(self) -> dict:
        return {self.name: {k: _plain(v) for k, v in self.params}}

    def label(self) -> str:
        """Short text for tables: ``quantize``, ``partition(cut=auto)`` (non-defaults only)."""
        d = OPERATORS[self.name]
        diff = [f"{k}={_text(v)}" for k, v in self.params if v != d.params[k].default]
        return f"{self.name}({', '.join(diff)})" if diff else self.name


def _plain(v):
    return list(_plain(x) for x in v) if isinstance(v, tuple) else v


def _text(v) -> str:
    return "/".join(_text(x) for x in v) if isinstance(v, tuple) else str(v)


# ---- parameter parsers: return the value or raise ValueError("what is allowed") ----------
# (the generic ones, shared with the quantizer's parameters, are in `params`)

fraction_open = open_unit("a number between 0 and 1 (exclusive)")
_fraction_cut = open_unit("auto, a tensor name, or a FLOPs fraction in (0, 1)")
# partition's ``cut: fastest``: the cut is chosen per sweep point by predicted latency
# (testbed.fastest); the artifact deployed has the chosen tensor as its cut
FASTEST = "fastest"


def _cut_one(v):
    return v if isinstance(v, str) and v else _fraction_cut(v)


def cut_spec(v):
    """``auto``, ``fastest``, a tensor name, a FLOPs fraction, or a list of those but
    ``fastest`` (one per boundary)."""
    if isinstance(v, list):
        if not v:
            raise ValueError("auto, fastest, a tensor name, a FLOPs fraction in (0, 1), or a list of those")
        if FASTEST in v:
            raise ValueError("fastest alone (cut: fastest chooses the one cut of two parts), not in a list")
        return tuple(_cut_one(x) for x in v)
    return _cut_one(v)


def thresholds(v):
    """One confidence threshold in (0, 1], or a list of them (one per exit head)."""
    def one(x):
        if is_number(x) and 0 < x <= 1:
            return float(x)
        raise ValueError("a confidence in (0, 1], or a list of them (one per exit)")
    return tuple(one(x) for x in v) if isinstance(v, list) else one(v)


def exit_points(v):
    """``auto`` (evenly spaced by FLOPs), a count of exits, or a list of tensor names / FLOPs fractions."""
    if v == "auto":
        return v
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8:
        return v
    if isinstance(v, list) and v:
        return tuple(_cut_one(x) for x in v)
    raise ValueError("auto, a count 1..8, or a list of tensor names / FLOPs fractions")


def names_or_auto(v):
    if v == "auto":
        return v
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return tuple(v)
    raise ValueError("auto, or a list of module names")


def optional_positive_int(v):
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10_000_000:
        return v
    raise ValueError("a whole number >= 1, or none")


def optional_positive_seconds(v):
    if v is None:
        return None
    if is_number(v) and 0 < v <= 7 * 24 * 3600:
        return float(v)
    raise ValueError("seconds above 0 (at most a week), or none")


learning_rate = open_unit("a number in (0, 1), e.g. 0.0005")


def student_spec(v):
    if isinstance(v, str) and v:
        return v
    raise ValueError("auto, narrow, shallow, or a registry model name")


def _positive(v, hi: float) -> float:
    if is_number(v) and 0 < v <= hi:
        return float(v)
    raise ValueError(f"a number above 0 and at most {hi:g}")


def fraction_closed(v):
    if is_number(v) and 0 <= v <= 1:
        return float(v)
    raise ValueError("a number from 0 to 1")


def _budget_params(epochs: int | None, lr: float) -> dict[str, Param]:
    """The training budget and optimiser settings every training operator takes: training
    stops when the first budget given is spent; at least one must be set."""
    return {
        "epochs": Param(epochs, optional_positive_int, "training epochs over the model's training data (none: unlimited)"),
        "steps": Param(None, optional_positive_int, "optimizer steps (none: unlimited)"),
        "seconds": Param(None, optional_positive_seconds, "wall-clock seconds (none: unlimited)"),
        "lr": Param(lr, learning_rate, "learning rate (Adam, cosine decay over the budget)"),
        "batch_size": Param(64, lambda v: int_range(1, 4096)(v), "samples per step"),
    }


OPERATORS: dict[str, OperatorDef] = {d.name: d for d in (
    OperatorDef("partition", "placement", "split the graph at tensors; one part per host", {
        "cut": Param("auto", cut_spec, "auto, fastest, a tensor name, a FLOPs fraction, or a list (one per "
                     "boundary); fastest: per sweep point, the candidate cut of least predicted latency"),
        "verify": Param(True, boolean, "check that the chained parts equal the whole model (max abs diff)"),
        "atol": Param(1e-5, open_unit("a number in (0, 1)"), "tolerance of that check"),
    }),
    OperatorDef("quantize", "post-training", "int8 post-training quantization (ONNX Runtime)", QUANTIZE_FIELDS),
    OperatorDef("early_exit", "post-training", "stop early: exit heads with a confidence threshold, or skipped blocks", {
        "kind": Param("heads", one_of("heads", "skip"), "heads: trained exit classifiers; skip: drop blocks (study A)"),
        "threshold": Param(0.8, thresholds, "exit when the head's top softmax probability reaches this"),
        "points": Param("auto", exit_points, "where exit heads attach (kind heads)"),
        "blocks": Param("auto", names_or_auto, "residual blocks to drop (kind skip)"),
        "epochs": Param(3, int_range(1, 100), "training epochs of each exit head (backbone frozen)"),
    }),
    OperatorDef("qat", "training", "quantization-aware training: fine-tune with fake int8, export as int8 (QDQ)", {
        "per_channel": Param(True, boolean, "int8 weight scales per output channel (else one per tensor)"),
        **_budget_params(epochs=1, lr=1e-4),
    }),
    OperatorDef("prune", "training", "remove channels (structured, faster) or zero weights (unstructured), then fine-tune", {
        "kind": Param("structured", one_of("structured", "unstructured"),
                      "structured: whole channels, dependency-aware (torch-pruning); unstructured: smallest weights"),
        "ratio": Param(0.5, fraction_open, "fraction of channels (structured) or weights (unstructured) removed"),
        "round_to": Param(8, int_range(1, 64), "structured: keep channel counts multiples of this (ORT's convolution "
                          "kernels are slow on odd counts)"),
        **_budget_params(epochs=1, lr=5e-4),
    }),
    OperatorDef("distill", "training", "train a smaller student on the model's outputs (knowledge distillation)", {
        "student": Param("auto", student_spec, "narrow (the model with channels removed), shallow (fewer repeated "
                         "layers: transformers), a registry model name, or auto (shallow for text, else narrow)"),
        "ratio": Param(0.5, fraction_open, "narrow: fraction of channels removed; shallow: fraction of layers removed"),
        "temperature": Param(4.0, lambda v: _positive(v, 100.0), "softening of both models' outputs"),
        "alpha": Param(0.9, fraction_closed, "weight of the teacher's soft targets (the rest: the labels)"),
        **_budget_params(epochs=3, lr=1e-3),
    }),
)}


def parse_call(item: Any, where: str) -> OperatorCall:
    """One chain entry (``name`` or ``{name: {param: value}}``) as a validated call."""
    if isinstance(item, str):
        name, given = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, given = next(iter(item.items()))
        given = {} if given is None else given
        if not isinstance(given, dict):
            raise WorkloadError(f"{where}.{name}: parameters must be a mapping, e.g. {{{name}: {{...}}}}")
    else:
        raise WorkloadError(f"{where}: an operator is a name or a one-key mapping {{name: {{params}}}}; "
                            f"operators: {choices(OPERATORS)}")
    d = OPERATORS.get(name)
    if d is None:
        raise WorkloadError(f"{where}: operator {name!r} unknown; valid: {choices(OPERATORS)}")
    values = parse_params(d.params, given, f"{where}.{name}")
    call = OperatorCall(name, tuple(values.items()), frozenset(given))
    if name == "quantize" and call.get("mode") == "dynamic":
        static_only(call, where)
    if name == "prune" and call.get("kind") == "unstructured" and "round_to" in given:
        raise WorkloadError(f"{where}.prune.round_to: applies to structured pruning only; remove it or use "
                            "kind: structured")
    if name == "distill" and call.get("student") not in ("auto", "narrow", "shallow") and "ratio" in given:
        raise WorkloadError(f"{where}.distill.ratio: applies to narrow and shallow students only; a registry "
                            f"student ({call.get('student')}) has its own size: remove ratio")
    if d.kind == "training" and all(call.get(k) is None for k in ("epochs", "steps", "seconds")):
        raise WorkloadError(f"{where}.{name}: no training budget; give epochs, steps or seconds (a number >= 1)")
    return call


def static_only(call: OperatorCall, where: str) -> None:
    """Dynamic quantization has no calibration: a static-only parameter set away from its
    default would be silently ignored, so it is an error."""
    d = OPERATORS["quantize"].params
    for key in STATIC_ONLY:
        if call.get(key) != d[key].default:
            raise WorkloadError(f"{where}.quantize.{key}: applies to static quantization only "
                                "(mode: dynamic quantizes activations at run time); remove it or use mode: static")


def parse_chain(items: Any, where: str) -> tuple[OperatorCall, ...]:
    """A validated chain: known operators, valid parameters, kinds in order, no repeats."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise WorkloadError(f"{where}: operators must be a list, e.g. [quantize, {{partition: {{cut: auto}}}}]")
    calls = tuple(parse_call(item, f"{where}[{i}]") for i, item in enumerate(items))
    seen: set[str] = set()
    last = 0
    for i, c in enumerate(calls):
        d = OPERATORS[c.name]
        if d.once and c.name in seen:
            raise WorkloadError(f"{where}[{i}]: operator {c.name} appears twice; a chain applies each operator once")
        seen.add(c.name)
        rank = KINDS.index(d.kind)
        if rank < last:
            raise WorkloadError(f"{where}[{i}]: {c.name} ({d.kind}) after a {KINDS[last]} operator; "
                                f"order: {' -> '.join(KINDS)}")
        last = rank
    return calls


def check_placement(chain: tuple[OperatorCall, ...], hosts: int, where: str) -> None:
    """A placement on ``hosts`` hosts needs a partition into that many parts, and a partition
    needs a placement on as many hosts as it makes parts (``cut: auto`` fits any count ≥ 2)."""
    part = next((c for c in chain if c.name == "partition"), None)
    if part is None:
        if hosts > 1:
            raise WorkloadError(f"{where}: placement on {hosts} hosts needs a partition operator, "
                                "e.g. operators: [{partition: {cut: auto}}]")
        return
    cut = part.get("cut")
    if hosts < 2:
        raise WorkloadError(f"{where}: a partition needs a placement on two or more hosts, e.g. [mobile, edge]")
    if cut == FASTEST:
        if hosts != 2:
            raise WorkloadError(f"{where}: cut: fastest chooses one cut, for a placement on two hosts, not {hosts}; "
                                "give cut: auto or one cut per boundary (a list)")
        heads = next((c for c in chain if c.name == "early_exit" and c.get("kind") == "heads"), None)
        if heads is not None:
            raise WorkloadError(f"{where}: cut: fastest after early_exit heads is not supported (the candidates are "
                                "cuts of the backbone, which the exits split); give cut: auto or a tensor name")
    made = len(cut) + 1 if isinstance(cut, tuple) else (hosts if cut == "auto" else 2)
    if made != hosts:
        raise WorkloadError(f"{where}: the partition makes {made} parts but the placement names {hosts} hosts; "
                            "give one cut per boundary (a list) or cut: auto")
