"""The quantizer's parameters, declared once: `QuantizeParams` (what `quantize.quantize_model`
takes) and `OPERATOR_FIELDS` (the subset an experiment file's ``quantize`` operator takes).

Kept apart from `quantize` (onnx, onnxruntime, numpy) so that experiment files are validated
with the standard library only; `quantize` re-exports `QuantizeParams`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from .errors import WorkloadError, choices
from .params import Param, boolean, int_range, names, one_of, optional, parse_params

if TYPE_CHECKING:
    import onnx

MODES = ("static", "dynamic")
FORMATS = ("qdq", "qoperator")
METHODS = ("minmax", "entropy", "percentile")
INT_TYPES = ("int8", "uint8")
# The limit experiment files have always had. Far more is never useful: a sample beyond the
# data set's calibration split (at most 5,000 built in, 128 of a user's data) is not used, and
# each costs ORT one run of the model with every activation as an output (efficientnet_lite0 on
# 2 cores: 0.25 s with minmax; with entropy or percentile 2.4 s and 63 MiB held to the end).
MAX_SAMPLES = 100_000


def _per_channel(v):
    if isinstance(v, bool) or v == "auto":
        return v
    raise ValueError("true | false | auto")


FIELDS: dict[str, Param] = {
    "mode": Param("static", one_of(*MODES), "static (calibrated activations) or dynamic"),
    "format": Param("qdq", one_of(*FORMATS), "ONNX Runtime's quantized graph format"),
    "per_channel": Param("auto", _per_channel, "per-channel weight scales; auto = where the model has convolutions"),
    "method": Param("minmax", one_of(*METHODS), "calibration method"),
    "samples": Param(128, int_range(1, MAX_SAMPLES), "calibration samples from the model's data set"),
    "activation_type": Param(None, optional(one_of(*INT_TYPES)), "activations' integer type (none: uint8)"),
    "weight_type": Param(None, optional(one_of(*INT_TYPES)), "weights' integer type (none: int8)"),
    "reduce_range": Param(False, boolean, "7-bit weights (for CPUs without VNNI that saturate)"),
    "op_types": Param(None, optional(names), "op types to quantize (none: every type ORT can)"),
    "exclude_nodes": Param(None, optional(names), "nodes left in float"),
}

# What an experiment file's quantize operator takes. They are part of every quantize
# artifact's cache key (an `OperatorCall` holds each with its default): adding one rebuilds them.
OPERATOR_FIELDS: dict[str, Param] = {
    **{k: FIELDS[k] for k in ("mode", "format", "per_channel", "method", "samples", "reduce_range")},
    "mode": Param("auto", one_of("auto", *MODES),
                  "static (calibrated activations) or dynamic; auto = dynamic for text models, else static"),
}

# Refused in an experiment file with mode dynamic, which has no calibration: set away from its
# default such a parameter would be silently ignored. (quantize_dynamic does take per_channel;
# the operator has refused it with dynamic from the start.)
STATIC_ONLY = ("format", "per_channel", "method", "samples")


@dataclass(frozen=True)
class QuantizeParams:
    """How to quantize (one field per entry of `FIELDS`, with its default); `from_mapping`
    builds one from a user's mapping.

    ``activation_type``/``weight_type`` of ``None`` mean uint8 activations and int8 weights
    (U8S8), the pair ORT's x86 int8 kernels (MLAS) compute natively. ORT's documentation
    names S8S8 QDQ as a first choice, but on x86-64 (ORT 1.32, AVX2 without VNNI, resnet18)
    S8S8 QDQ left 11 of 20 convolutions in float (those reading a MaxPool/Add output, which
    stay float too), 57 % of the MACs in int8 and 1.8x the latency of U8S8, which fuses
    completely; ORT warns that S8S8 QOperator is slow on x86-64 as well.
    Dynamic quantization quantizes activations to uint8 at run time
    (``DynamicQuantizeLinear``) and weights to int8 by default. ``format``, ``method``,
    ``samples`` and ``activation_type`` apply to static quantization only; dynamic ignores them
    (so the defaults of an operator call need not be unset).
    ``reduce_range`` (7-bit weights) avoids the int16 saturation of U8S8 ``VPMADDUBSW`` on
    AVX2/AVX-512 CPUs without VNNI; try it if accuracy drops there.
    """
    mode: str = FIELDS["mode"].default
    format: str = FIELDS["format"].default
    per_channel: bool | str = FIELDS["per_channel"].default
    method: str = FIELDS["method"].default
    samples: int = FIELDS["samples"].default
    activation_type: str | None = FIELDS["activation_type"].default
    weight_type: str | None = FIELDS["weight_type"].default
    reduce_range: bool = FIELDS["reduce_range"].default
    op_types: tuple[str, ...] | None = FIELDS["op_types"].default
    exclude_nodes: tuple[str, ...] | None = FIELDS["exclude_nodes"].default

    def __post_init__(self):
        for key, value in _validate({f.name: getattr(self, f.name) for f in fields(self)}, "quantize").items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_mapping(cls, d: dict | None, where: str) -> "QuantizeParams":
        """Validated parameters from a user mapping (an experiment file's ``quantize:``
        entry); ``where`` (e.g. ``strategies[3].operators[0].quantize``) prefixes errors.
        Sequences given as tuples (an `OperatorCall`'s values) are accepted as lists."""
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise WorkloadError(f"{where}: parameters must be a mapping, e.g. {{mode: static, method: minmax}}")
        return cls(**_validate(d, where))

    @property
    def activation_qtype(self) -> str:
        """The activation type used: the explicit one or the recommended default."""
        return self.activation_type or "uint8"

    @property
    def weight_qtype(self) -> str:
        return self.weight_type or "int8"

    def resolved_per_channel(self, model: onnx.ModelProto) -> bool:
        """``per_channel``, with ``auto`` resolved: True for models with convolutions."""
        if self.per_channel == "auto":
            return any(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)
        return bool(self.per_channel)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _validate(given: dict, where: str) -> dict:
    """Every field, checked (`parse_params`: a one-line `WorkloadError` naming the field) and
    defaulted; op types must be ones ORT quantizes in the mode chosen."""
    out = parse_params(FIELDS, given, where)
    if out["op_types"]:
        known = _quantizable_op_types(out["mode"])
        for op in out["op_types"]:
            if op not in known:
                raise WorkloadError(f"{where}.op_types: {op!r} cannot be quantized in {out['mode']} "
                                    f"mode; allowed: {choices(sorted(known))}")
    return out


def _quantizable_op_types(mode: str) -> set[str]:
    from onnxruntime.quantization import registry

    if mode == "dynamic":
        return set(registry.IntegerOpsRegistry)
    # what quantize_static itself quantizes by default, in either format
    return set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry)
