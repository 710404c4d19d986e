"""Declared parameters: a default, a parser and a description, and the one loop that checks a
user's mapping against such a table.

The operators of an experiment file (`operators`) and the quantizer's own parameters
(`quantize_params`) are declared with these, so a value is checked by one parser and refused
with one message wherever it is given. Standard library only: experiment files are validated
without importing onnx or numpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import WorkloadError, choices


@dataclass(frozen=True)
class Param:
    """One parameter: default, a parser that returns the checked value or raises
    ``ValueError(what is allowed)``, and a one-line description."""
    default: Any
    parse: Callable[[Any], Any]
    help: str


def parse_params(params: Mapping[str, Param], given: Mapping, where: str) -> dict[str, Any]:
    """Every parameter of ``params`` in declaration order: the parsed value where ``given`` has
    one, else the default (not parsed). An unknown key or a value its parser refuses is a
    one-line `WorkloadError`: ``<where>.<key>: <value> is not valid; allowed: <what>``."""
    unknown = sorted(set(given) - set(params), key=str)
    if unknown:
        raise WorkloadError(f"{where}: parameter {unknown[0]!r} unknown; valid: {choices(params)}")
    values = {}
    for key, p in params.items():
        if key not in given:
            values[key] = p.default
            continue
        try:
            values[key] = p.parse(given[key])
        except ValueError as e:
            raise WorkloadError(f"{where}.{key}: {given[key]!r} is not valid; allowed: {e}") from None
    return values


# ---- parsers: return the value or raise ValueError("what is allowed") ----------------------

def is_number(v) -> bool:
    """An int or a float; not a bool (to Python, YAML's ``true`` is the int 1)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_of(*words: str) -> Callable[[Any], str]:
    def parse(v):
        if isinstance(v, str) and v in words:
            return v
        raise ValueError(" | ".join(words))
    return parse


def boolean(v):
    if isinstance(v, bool):
        return v
    raise ValueError("true | false")


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(v):
        if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
            return v
        raise ValueError(f"a whole number in {lo}..{hi}")
    return parse


def open_unit(allowed: str) -> Callable[[Any], float]:
    """A parser of numbers strictly between 0 and 1 (returned as float); ``allowed`` is its
    error text."""
    def parse(v):
        if is_number(v) and 0 < v < 1:
            return float(v)
        raise ValueError(allowed)
    return parse


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``parse``, letting None (the parameter unset) through."""
    return lambda v: None if v is None else parse(v)


def names(v) -> tuple[str, ...]:
    """A non-empty list (or tuple) of non-empty strings, as a tuple."""
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) and x for x in v):
        return tuple(v)
    raise ValueError("a non-empty list of names")
