"""Units of topology values: parse what people write, format what the specs hold.

Callers may rely on:

- ``parse_rate`` -> int bit/s, ``parse_size`` -> int bytes, ``parse_duration_ms`` -> float
  milliseconds, ``parse_fraction`` -> float fraction (``"0.5%"`` -> 0.005),
  ``parse_cpuset`` -> sorted tuple of distinct CPU numbers;
- the parsers check syntax and units only; ranges are checked by ``validate``. A sign is
  accepted so that a negative value is reported as out of range, not as a typo;
- numbers are read as decimals, so ``"1.1Mbit"`` is exactly 1_100_000;
- the ``format_*`` functions give a short human string that the matching parser turns back
  into exactly the same value;
- every error is a :class:`TopologyError` without source or path (the loader adds them).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection
from decimal import Decimal

from .errors import TopologyError, kind_of

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_CPU = 8191  # highest CPU number a cpuset may name (the kernel's NR_CPUS ceiling)

# decimal prefixes, as tc reads them: 1kbit = 1000 bit/s
RATE_UNITS = {"bit": 1, "kbit": 10**3, "Kbit": 10**3, "Mbit": 10**6, "Gbit": 10**9, "Tbit": 10**12,
              "bps": 1, "kbps": 10**3, "Kbps": 10**3, "Mbps": 10**6, "Gbps": 10**9, "Tbps": 10**12}
RATE_ALLOWED = "bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"
SIZE_UNITS = {"B": 1, "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
SIZE_ALLOWED = "B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)"
DURATION_UNITS = {"us": Decimal("0.001"), "\u00b5s": Decimal("0.001"), "ms": Decimal(1), "s": Decimal(1000)}
DURATION_ALLOWED = "us, ms, s"
FRACTION_ALLOWED = "% (a percentage, e.g. 0.1%)"
CPUSET_ALLOWED = f"CPU numbers 0 to {MAX_CPU} and ranges, e.g. 0-3,5, or a list of numbers"

# an exponent of at most two digits: '1e999999Mbit' must not build a million-digit integer
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,2})?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*(\S*?)\s*$")
_BYTE_RATE = re.compile(r"^([kKMGT]i?)?(?:B/s|Bps|bytes?/s)$")


def _text(value: object, what: str, allowed: str) -> str:
    """The string form of a YAML scalar; other kinds are a type error."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TopologyError(f"expected {what}, got {kind_of(value)}", allowed)
    return value if isinstance(value, str) else repr(value)


def _quantity(value: object, what: str, example: str, units: Collection[str], allowed: str, *,
              bare_zero: bool = True,
              explain: Callable[[Decimal, str, str], str | None] | None = None) -> tuple[Decimal, str, str]:
    """(number, unit, original text) of a quantity like ``example`` ('200Mbit') whose unit is
    one of ``units``. A number without a unit is an error that shows it with ``example``'s
    unit, except a bare 0 where ``bare_zero`` allows it (its unit is then ''). ``explain``
    may say better than "unknown unit" what an unknown unit is (else it returns None)."""
    text = _text(value, f"{what} like {example}", allowed)
    m = _QUANTITY.match(text)
    if not m:
        raise TopologyError(f"'{text.strip()}' is not {what} like {example}", allowed)
    number, unit, raw = Decimal(m.group(1)), m.group(2), text.strip()
    if not unit:
        if bare_zero and number == 0:
            return number, unit, raw
        raise TopologyError(f"'{raw}' needs a unit, e.g. {_plain(number)}{example.lstrip('0123456789.')}", allowed)
    if unit not in units:
        raise TopologyError((explain and explain(number, unit, raw)) or _unknown_unit(unit, units), allowed)
    return number, unit, raw


def _unknown_unit(unit: str, units: Collection[str]) -> str:
    close = [u for u in units if u.lower() == unit.lower()]
    return f"unknown unit '{unit}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def _whole(number: Decimal, text: str, what: str, allowed: str) -> int:
    if number != number.to_integral_value():
        raise TopologyError(f"'{text}' is not a whole number of {what}", allowed)
    return int(number)


def _plain(number: Decimal) -> str:
    """Decimal -> shortest fixed-point text ('1.50' -> '1.5', '1E+3' -> '1000')."""
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _byte_rate(number: Decimal, unit: str, raw: str) -> str | None:
    """What to write instead of a rate in bytes per second (people copy MB/s from download
    dialogs); None for any other unit."""
    byte_rate = _BYTE_RATE.match(unit)
    if not byte_rate:
        return None
    prefix = byte_rate.group(1) or ""
    factor = SIZE_UNITS[("K" + prefix[1:] if prefix[:1] == "k" else prefix) + "B"] if prefix else 1
    bits = number * factor * 8
    hint = f"write {format_rate(int(bits))}" if bits == bits.to_integral_value() else "write it in bits"
    return f"'{raw}' is in bytes per second, rates are in bits: {hint}"


def parse_rate(text: str) -> int:
    """'200Mbit' -> 200_000_000 bit/s. Units: bit, kbit/Kbit, Mbit, Gbit, Tbit, or ...bps."""
    number, unit, raw = _quantity(text, "a rate", "200Mbit", RATE_UNITS, RATE_ALLOWED, bare_zero=False,
                                  explain=_byte_rate)
    return _whole(number * RATE_UNITS[unit], raw, "bit/s", RATE_ALLOWED)


def parse_size(text: str) -> int:
    """'512MiB' -> 536_870_912 bytes; '100KB' -> 100_000. A unit is required except for 0."""
    number, unit, raw = _quantity(text, "a size", "512MiB", SIZE_UNITS, SIZE_ALLOWED)
    return _whole(number * SIZE_UNITS[unit], raw, "bytes", SIZE_ALLOWED) if unit else 0


def parse_duration_ms(text: str) -> float:
    """'20ms' -> 20.0, '1s' -> 1000.0, '500us' -> 0.5; '0' -> 0.0 (the only bare number)."""
    number, unit, _ = _quantity(text, "a duration", "20ms", DURATION_UNITS, DURATION_ALLOWED)
    return float(number * DURATION_UNITS[unit]) if unit else 0.0


def parse_fraction(text: str) -> float:
    """'0.5%' -> 0.005; '0' -> 0.0. Any other number needs its '%' (0.1 could mean 10% or 0.1%)."""
    number, unit, _ = _quantity(text, "a percentage", "0.1%", ("%",), FRACTION_ALLOWED)
    return float(number / 100) if unit else 0.0


def parse_cpuset(value: str | int | list | tuple) -> tuple[int, ...]:
    """'0-3,5' or [0, 1] or 3 -> sorted distinct CPU numbers; never empty."""
    if isinstance(value, bool) or not isinstance(value, (str, int, list, tuple)):
        raise TopologyError(f"expected a CPU list like 0-3,5, got {kind_of(value)}", CPUSET_ALLOWED)
    if isinstance(value, int):
        value = [value]
    cpus: set[int] = set()
    if isinstance(value, str):
        if not value.strip():
            raise TopologyError("empty CPU list", CPUSET_ALLOWED)
        for part in value.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise TopologyError(f"'{value.strip()}' is not a CPU list", CPUSET_ALLOWED)
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise TopologyError(f"'{part.strip()}' is a backwards range", CPUSET_ALLOWED)
            if hi > MAX_CPU:
                raise TopologyError(f"CPU {hi} is out of range", CPUSET_ALLOWED)
            cpus.update(range(lo, hi + 1))
    else:
        if not value:
            raise TopologyError("empty CPU list", CPUSET_ALLOWED)
        for c in value:
            if isinstance(c, bool) or not isinstance(c, int):
                raise TopologyError(f"{c!r} is not a CPU number", CPUSET_ALLOWED)
            if not 0 <= c <= MAX_CPU:
                raise TopologyError(f"CPU {c} is out of range", CPUSET_ALLOWED)
            cpus.add(c)
    return tuple(sorted(cpus))


def format_rate(bps: int) -> str:
    """200_000_000 -> '200Mbit'; exact, in the largest unit that keeps the number >= 1."""
    if bps == 0:
        return "0bit"
    for unit, mult in (("Tbit", 10**12), ("Gbit", 10**9), ("Mbit", 10**6), ("kbit", 10**3)):
        if abs(bps) >= mult:
            return _plain(Decimal(int(bps)).scaleb(-len(str(mult)) + 1)) + unit
    return f"{int(bps)}bit"


def format_size(nbytes: int) -> str:
    """805_306_368 -> '768MiB', 100_000 -> '100KB', 1514 -> '1514B': exact, the shortest text wins."""
    n = int(nbytes)
    best = f"{n}B"
    # on a tie the earlier unit wins: binary (how memory comes), then bytes, then decimal
    for unit, mult in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB),
                       ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(n) >= mult and (n * 1000) % mult == 0:  # at most three decimals in this unit
            text = _plain(Decimal(n * 1000 // mult) / 1000) + unit
            if len(text) < len(best) or (len(text) == len(best) and unit.endswith("iB")):
                best = text
    return best


def format_duration_ms(ms: float) -> str:
    """20.0 -> '20ms', 1500.0 -> '1.5s', 0.5 -> '500us'; 0 -> '0ms'."""
    d = Decimal(repr(float(ms)))  # repr is the shortest text that reads back as the same float
    if d == 0:
        return "0ms"
    if abs(d) >= 1000:
        return _plain(d.scaleb(-3)) + "s"
    if abs(d) < 1:
        return _plain(d.scaleb(3)) + "us"
    return _plain(d) + "ms"


def format_fraction(fraction: float) -> str:
    """0.005 -> '0.5%'; 0 -> '0%'."""
    return _plain(Decimal(repr(float(fraction))).scaleb(2)) + "%"


def format_cpuset(cpus: tuple[int, ...] | list[int]) -> str:
    """(0, 1, 2, 5) -> '0-2,5', the kernel's own list format."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
