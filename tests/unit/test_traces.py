"""Trace files: both formats parse to the steps they mean, and every mistake is one line naming
the file, the line and the column."""
from __future__ import annotations

import pytest

from topologies.traces import (FRAME_BYTES, MIN_STEP_MS, Trace, TraceError, TraceStep, load_trace,
                               to_csv)

RATES = "bit, kbit, Mbit, Gbit, Tbit (or bps, kbps, Mbps, Gbps, Tbps)"


def load(text: str, **kw) -> Trace:
    return load_trace("t.csv", text=text, **kw)


def message(text: str, **kw) -> str:
    with pytest.raises(TraceError) as info:
        load(text, **kw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_csv_steps_with_units_and_an_end_loop():
    t = load("# a comment\ntime,bandwidth,delay\n0s,50Mbit,20ms\n2s,5Mbit,40ms\n\n4s,50Mbit,20ms\n6s\n", mode="loop")
    assert t.steps == (TraceStep(0.0, 50_000_000, 20.0), TraceStep(2000.0, 5_000_000, 40.0),
                       TraceStep(4000.0, 50_000_000, 20.0))
    assert [s.line for s in t.steps] == [3, 4, 6]
    assert (t.mode, t.period_ms, t.duration_ms, t.format) == ("loop", 6000.0, 6000.0, "csv")
    assert t.steps[1].changes() == {"rate_bps": 5_000_000, "delay_ms": 40.0}
    assert t.lengths_ms() == [2000.0, 2000.0, 2000.0]


def test_plain_numbers_take_the_documented_default_units():
    t = load("0,50,20,2,0.5\n1.5,0.5,10,0,0\n")
    assert t.steps[0] == TraceStep(0.0, 50_000_000, 20.0, 2.0, 0.005)
    assert t.steps[1] == TraceStep(1500.0, 500_000, 10.0, 0.0, 0.0)
    assert t.period_ms is None and t.duration_ms == 1500.0


def test_step_at_follows_the_schedule_and_loops():
    t = load("0s,50Mbit\n2s,5Mbit\n4s,20Mbit\n6s\n", mode="loop")
    assert [t.step_at(ms).rate_bps for ms in (-1, 0, 1999, 2000, 5999, 6000, 8500)] == [
        50_000_000, 50_000_000, 50_000_000, 5_000_000, 20_000_000, 50_000_000, 5_000_000]
    once = load("0s,50Mbit\n2s,5Mbit\n", mode="once")
    assert once.step_at(10_000).rate_bps == 5_000_000      # the last step holds


@pytest.mark.parametrize("text, expected", [
    ("0s,50Mbit\n1s,5Mbs\n", f"t.csv:2: bandwidth: unknown unit 'Mbs'; allowed: {RATES}"),
    ("0s,50Mbit\n2s,5Mbit\n1s,7Mbit\n",
     "t.csv:3: time: time 1s is before the step before it (2s, line 2); allowed: times increasing, each step once"),
    ("0s,50Mbit\n2s,5Mbit\n2s,7Mbit\n",
     "t.csv:3: time: time 2s repeats the step before it (2s, line 2); allowed: times increasing, each step once"),
    ("1s,50Mbit\n", "t.csv:1: time: the first step is at 1s: a trace starts at 0s; allowed: 0s first"),
    ("0s,-5Mbit\n", "t.csv:1: bandwidth: -5Mbit is out of range; allowed: 1kbit to 100Gbit"),
    ("0s,200Gbit\n", "t.csv:1: bandwidth: 200Gbit is out of range; allowed: 1kbit to 100Gbit"),
    ("0s,50Mbit,90s\n", "t.csv:1: delay: 90s is out of range; allowed: 0ms to 60s"),
    ("0s,50Mbit,10ms,20ms\n", "t.csv:1: jitter: jitter 20ms is larger than the delay 10ms; allowed: 0ms to the delay"),
    ("0s,50Mbit,10ms,1ms,100%\n", "t.csv:1: loss: 100% is out of range; allowed: 0% up to but not including 100%"),
    ("0s,50Mbit,10ms,1ms,-1\n", "t.csv:1: loss: -1% is out of range; allowed: 0% up to but not including 100%"),
    ("0s,50Mbit\n5ms,5Mbit\n1s,5Mbit\n",
     f"t.csv:1: time: the step at 0ms lasts 5ms, shorter than the {MIN_STEP_MS:g}ms a link change needs here; "
     f"allowed: steps of at least {MIN_STEP_MS:g}ms"),
    ("0s,50Mbit\n1s,5Mbit\n1.005s\n",
     f"t.csv:2: time: the step at 1s lasts 5ms, shorter than the {MIN_STEP_MS:g}ms a link change needs here; "
     f"allowed: steps of at least {MIN_STEP_MS:g}ms"),
    ("0s,50Mbit\n1s,5Mbit,3ms\n", "t.csv:2: 3 values where the trace has 2 (time, bandwidth); allowed: time, "
                                  "bandwidth[, delay[, jitter[, loss]]] per line, e.g. 0s, 50Mbit, 20ms (plain numbers: "
                                  "s, Mbit/s, ms, ms, %)"),
    ("0s,,20ms\n", "t.csv:1: bandwidth: empty value; allowed: a value in every column; leave the column out to keep "
                   "the link's own bandwidth"),
    ("time,bw\n0,1\n", "t.csv:1: header time, bw: the columns are time, bandwidth[, delay[, jitter[, loss]]] in that "
                       "order; allowed: time, bandwidth, delay, jitter, loss"),
    ("0s,50Mbit\n2s\n3s,5Mbit\n", "t.csv:2: a line with only a time ends the trace: it must be the last line; allowed: "
                                  "time, bandwidth[, delay[, jitter[, loss]]] per line, e.g. 0s, 50Mbit, 20ms (plain "
                                  "numbers: s, Mbit/s, ms, ms, %)"),
    ("0s,50Mbit\n2s,5Mbit\n1s\n", "t.csv:3: time: the end 1s is not after the last step's 2s; allowed: an end after "
                                  "every step"),
    ("# only a comment\n\n", "t.csv: empty trace: no steps; allowed: time, bandwidth[, delay[, jitter[, loss]]] per "
                             "line, e.g. 0s, 50Mbit, 20ms (plain numbers: s, Mbit/s, ms, ms, %), or Mahimahi's one "
                             "millisecond timestamp per line"),
    ("time,bandwidth\n", "t.csv:1: empty trace: a header and no steps; allowed: time, bandwidth[, delay[, jitter[, "
                         "loss]]] per line, e.g. 0s, 50Mbit, 20ms (plain numbers: s, Mbit/s, ms, ms, %)"),
])
def test_csv_mistakes_are_one_line_with_file_line_and_column(text, expected):
    assert message(text) == expected


def test_a_looped_trace_needs_its_end():
    assert message("0s,50Mbit\n2s,5Mbit\n", mode="loop") == (
        "t.csv:2: a looped trace needs its end: add a last line with only its time, e.g. 4s; allowed: mode: once, "
        "or an end line")


def test_bad_mode_format_and_missing_file(tmp_path):
    assert message("0s,1Mbit\n", mode="twice") == "t.csv: unknown trace mode 'twice'; allowed: once or loop"
    assert message("0s,1Mbit\n", format="pcap") == "t.csv: unknown trace format 'pcap'; allowed: auto, csv, mahimahi"
    with pytest.raises(TraceError, match=r"nope.csv: no such trace file"):
        load_trace(tmp_path / "nope.csv")


def test_mahimahi_opportunities_become_bandwidth_per_window():
    # 10 packets in 0-100 ms, none in 100-200 ms (an outage), 2 in 200-300 ms; the period is 300 ms,
    # and the stamp at 300 is the next period's 0: 11 packets in the first window of each period
    text = "\n".join(["0"] * 10 + ["250", "280", "300"]) + "\n"
    t = load_trace("lte.up", text=text, mode="loop")
    assert t.format == "mahimahi" and t.period_ms == 300.0
    per_window = FRAME_BYTES * 8 / 0.1
    assert [s.at_ms for s in t.steps] == [0.0, 100.0, 200.0]
    assert [s.rate_bps for s in t.steps] == [round(11 * per_window), 1000, round(2 * per_window)]
    assert any("1 window(s) without a delivery opportunity" in n for n in t.notes)


def test_mahimahi_window_is_settable_and_a_short_last_window_is_folded():
    text = "\n".join(str(ms) for ms in range(1, 206)) + "\n"    # one packet a ms, period 205 ms
    t = load_trace("lte.up", text=text, window_ms=50.0)
    assert [s.at_ms for s in t.steps] == [0.0, 50.0, 100.0, 150.0]   # 200-205 folded into 150-205
    assert t.steps[0].rate_bps == round(50 * FRAME_BYTES * 8 / 0.05)  # stamps 1..49, and 205: the next period's 0
    assert t.steps[-1].rate_bps == round(55 * FRAME_BYTES * 8 / 0.055)
    assert any("folded" in n for n in t.notes)


def test_mahimahi_mistakes_are_one_line():
    with pytest.raises(TraceError) as info:
        load_trace("lte.up", text="5\n7\n6\n")
    assert str(info.value) == ("lte.up:3: timestamp 6 is before the one on the line before it (7); allowed: timestamps "
                               "that never decrease (the same one twice is two packets)")
    with pytest.raises(TraceError) as info:
        load_trace("lte.up", text="5\n7\nx\n", format="mahimahi")
    assert str(info.value).startswith("lte.up:3: 'x' is not a millisecond timestamp")
    with pytest.raises(TraceError) as info:
        load_trace("lte.up", text="0\n0\n")
    assert str(info.value).startswith("lte.up:2: every timestamp is 0")
    with pytest.raises(TraceError) as info:
        load_trace("lte.up", text="1\n2\n500\n", window_ms=2)
    assert str(info.value) == ("lte.up: window: window 2 ms is shorter than the 10ms a link change needs here; "
                               "allowed: at least 10ms")


def test_to_csv_reads_back_as_the_same_steps():
    text = to_csv([(0.0, 12_345_000), (100.0, 2_000_000)], 200.0, ["made by a test"])
    assert text.startswith("# made by a test\ntime,bandwidth\n")
    t = load(text, mode="loop")
    assert [(s.at_ms, s.rate_bps) for s in t.steps] == [(0.0, 12_345_000), (100.0, 2_000_000)]
    assert t.period_ms == 200.0
