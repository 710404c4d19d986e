"""Units of topology values: what parses, to what, and the exact message for what does not."""
from __future__ import annotations

import pytest

from topologies import (TopologyError, format_cpuset, format_duration_ms, format_fraction, format_rate, format_size,
                        parse_cpuset, parse_duration_ms, parse_fraction, parse_rate, parse_size)

RATE_UNITS = "bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"
SIZE_UNITS = "B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)"
CPUSET = "CPU numbers 0 to 8191 and ranges, e.g. 0-3,5, or a list of numbers"


def message(fn, value) -> str:
    with pytest.raises(TopologyError) as info:
        fn(value)
    return str(info.value)


@pytest.mark.parametrize("text, bps", [
    ("200Mbit", 200_000_000), ("1Gbit", 1_000_000_000), ("10kbit", 10_000), ("10Kbit", 10_000),
    ("1.5Mbit", 1_500_000), ("100bit", 100), ("1Tbit", 10**12), ("50Mbps", 50_000_000), ("2Gbps", 2 * 10**9),
    ("64kbps", 64_000), ("100bps", 100), (" 200 Mbit ", 200_000_000), ("1.1Mbit", 1_100_000), ("1e3kbit", 10**6),
    ("-5Mbit", -5_000_000),
])
def test_rates_parse_to_bits_per_second_with_decimal_prefixes(text, bps):
    assert parse_rate(text) == bps


@pytest.mark.parametrize("value, expected", [
    ("200", f"'200' needs a unit, e.g. 200Mbit; allowed: {RATE_UNITS}"),
    (200, f"'200' needs a unit, e.g. 200Mbit; allowed: {RATE_UNITS}"),
    ("200Mbs", f"unknown unit 'Mbs'; allowed: {RATE_UNITS}"),
    ("200mbit", f"unknown unit 'mbit' (did you mean 'Mbit'?); allowed: {RATE_UNITS}"),
    ("10MB/s", f"'10MB/s' is in bytes per second, rates are in bits: write 80Mbit; allowed: {RATE_UNITS}"),
    ("1GBps", f"'1GBps' is in bytes per second, rates are in bits: write 8Gbit; allowed: {RATE_UNITS}"),
    ("fast", f"'fast' is not a rate like 200Mbit; allowed: {RATE_UNITS}"),
    ("", f"'' is not a rate like 200Mbit; allowed: {RATE_UNITS}"),
    ("1.5bit", f"'1.5bit' is not a whole number of bit/s; allowed: {RATE_UNITS}"),
    (True, f"expected a rate like 200Mbit, got a boolean (true); allowed: {RATE_UNITS}"),
    ([1], f"expected a rate like 200Mbit, got a list; allowed: {RATE_UNITS}"),
])
def test_bad_rates_say_what_is_wrong_and_which_units_exist(value, expected):
    assert message(parse_rate, value) == expected


@pytest.mark.parametrize("text, ms", [
    ("20ms", 20.0), ("1s", 1000.0), ("500us", 0.5), ("500\u00b5s", 0.5), ("0.5ms", 0.5), ("0", 0.0), (0, 0.0),
    ("1.5s", 1500.0), ("0ms", 0.0),
])
def test_durations_parse_to_milliseconds(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("value, expected", [
    ("5", "'5' needs a unit, e.g. 5ms; allowed: us, ms, s"),
    (5, "'5' needs a unit, e.g. 5ms; allowed: us, ms, s"),
    ("5m", "unknown unit 'm'; allowed: us, ms, s"),
    ("5MS", "unknown unit 'MS' (did you mean 'ms'?); allowed: us, ms, s"),
    ("soon", "'soon' is not a duration like 20ms; allowed: us, ms, s"),
])
def test_bad_durations_say_what_is_wrong(value, expected):
    assert message(parse_duration_ms, value) == expected


@pytest.mark.parametrize("text, nbytes", [
    ("1GiB", 1 << 30), ("512MiB", 512 << 20), ("64KiB", 64 << 10), ("100KB", 100_000), ("1GB", 10**9),
    ("123B", 123), ("0", 0), ("1.5GiB", 3 << 29), ("2TiB", 2 << 40), ("1kB", 1000),
])
def test_sizes_parse_to_bytes_with_binary_and_decimal_units(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("value, expected", [
    ("512", f"'512' needs a unit, e.g. 512MiB; allowed: {SIZE_UNITS}"),
    (1073741824, f"'1073741824' needs a unit, e.g. 1073741824MiB; allowed: {SIZE_UNITS}"),
    ("1Mbit", f"unknown unit 'Mbit'; allowed: {SIZE_UNITS}"),
    ("1gib", f"unknown unit 'gib' (did you mean 'GiB'?); allowed: {SIZE_UNITS}"),
    ("0.5B", f"'0.5B' is not a whole number of bytes; allowed: {SIZE_UNITS}"),
    ("lots", f"'lots' is not a size like 512MiB; allowed: {SIZE_UNITS}"),
])
def test_bad_sizes_say_what_is_wrong(value, expected):
    assert message(parse_size, value) == expected


@pytest.mark.parametrize("text, fraction", [("0.5%", 0.005), ("0.1%", 0.001), ("0%", 0.0), ("0", 0.0), ("100%", 1.0)])
def test_percentages_parse_to_fractions(text, fraction):
    assert parse_fraction(text) == fraction


@pytest.mark.parametrize("value, expected", [
    ("0.1", "'0.1' needs a unit, e.g. 0.1%; allowed: % (a percentage, e.g. 0.1%)"),
    (0.1, "'0.1' needs a unit, e.g. 0.1%; allowed: % (a percentage, e.g. 0.1%)"),
    ("1 percent", "unknown unit 'percent'; allowed: % (a percentage, e.g. 0.1%)"),
])
def test_fractions_need_a_percent_sign(value, expected):
    assert message(parse_fraction, value) == expected


@pytest.mark.parametrize("value, cpus", [
    ("0-3,5", (0, 1, 2, 3, 5)), ("2", (2,)), (3, (3,)), ([1, 0], (0, 1)), ("0-1,1-2", (0, 1, 2)), (" 4 - 5 ", (4, 5)),
])
def test_cpusets_parse_to_sorted_distinct_cpus(value, cpus):
    assert parse_cpuset(value) == cpus


@pytest.mark.parametrize("value, expected", [
    ("3-1", f"'3-1' is a backwards range; allowed: {CPUSET}"),
    ("0-x", f"'0-x' is not a CPU list; allowed: {CPUSET}"),
    ("-1", f"'-1' is not a CPU list; allowed: {CPUSET}"),
    ("", f"empty CPU list; allowed: {CPUSET}"),
    ([], f"empty CPU list; allowed: {CPUSET}"),
    ([-1], f"CPU -1 is out of range; allowed: {CPUSET}"),
    (["0"], f"'0' is not a CPU number; allowed: {CPUSET}"),
    ("0-100000", f"CPU 100000 is out of range; allowed: {CPUSET}"),
    (1.5, f"expected a CPU list like 0-3,5, got a number; allowed: {CPUSET}"),
])
def test_bad_cpusets_are_refused(value, expected):
    assert message(parse_cpuset, value) == expected


@pytest.mark.parametrize("bps, text", [
    (200_000_000, "200Mbit"), (1_000_000, "1Mbit"), (1_500_000, "1.5Mbit"), (999, "999bit"), (0, "0bit"),
    (10**15, "1000Tbit"), (943_123_456, "943.123456Mbit"), (-5_000_000, "-5Mbit"),
])
def test_rates_format_exactly_in_the_largest_unit(bps, text):
    assert format_rate(bps) == text
    assert parse_rate(text) == bps


@pytest.mark.parametrize("nbytes, text", [
    (768 << 20, "768MiB"), (3 << 30, "3GiB"), (3 << 29, "1.5GiB"), (100_000, "100KB"), (10**9, "1GB"),
    (1514, "1514B"), (1500, "1500B"), (1000, "1KB"), (123, "123B"), (0, "0B"), (16_712_345_678, "16712345678B"), (64 << 40, "64TiB"),
])
def test_sizes_format_short_and_exact(nbytes, text):
    assert format_size(nbytes) == text
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("ms, text", [
    (20.0, "20ms"), (1500.0, "1.5s"), (0.5, "500us"), (0.0, "0ms"), (60_000.0, "60s"), (0.0001, "0.1us"),
    (1234.567, "1.234567s"), (2.5, "2.5ms"),
])
def test_durations_format_short_and_exact(ms, text):
    assert format_duration_ms(ms) == text
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.005, 0.123456789, 1e-7, 0.3333333333333333])
def test_fractions_round_trip_exactly(fraction):
    assert parse_fraction(format_fraction(fraction)) == fraction


def test_cpusets_format_as_kernel_lists():
    assert format_cpuset((0, 1, 2, 3, 5)) == "0-3,5"
    assert format_cpuset((7,)) == "7"
    assert parse_cpuset(format_cpuset((0, 2, 3, 4, 9, 10))) == (0, 2, 3, 4, 9, 10)


def test_parser_errors_are_value_errors_with_parts():
    with pytest.raises(ValueError) as info:
        parse_rate("10Mbs")
    e = info.value
    assert (e.problem, e.source, e.line, e.path) == ("unknown unit 'Mbs'", None, None, None)
    assert e.allowed == RATE_UNITS
