"""The calibration table: every host's CPU period and burst slowdown, and a note naming the
hosts where short inferences will be fast-or-slow rather than steadily slow."""
from __future__ import annotations

from testbed import output


def _report(mobile_slowdown: dict) -> dict:
    host = {"measured_cpus": 0.25, "memory_bytes": None, "memory_enforced": None, "pass": True}
    return {"run_id": "r1", "topology": "three_tier", "links": [], "pass": True,
            "tolerances": {"goodput_ratio": [0.93, 1.02], "rtt": "max(0.5 ms, 3%)", "cpus": "5%", "loss": "x"},
            "hosts": [{**host, "host": "mobile", "cpus": 0.25, "cpu_period_us": 100_000,
                       "burst_slowdown": mobile_slowdown},
                      {**host, "host": "cloud", "cpus": None, "measured_cpus": 2.0, "cpu_period_us": 100_000,
                       "burst_slowdown": None}]}


def test_a_host_whose_short_bursts_run_at_full_speed_is_named(capsys):
    output.print_calibration(_report({"5": 1.0, "50": 1.4}))
    out = capsys.readouterr().out
    assert "100 ms" in out and "1.00x / 1.40x" in out
    assert "note: on mobile a short burst runs at full speed until the period's quota is spent" in out


def test_no_note_when_short_bursts_are_slowed_steadily(capsys):
    output.print_calibration(_report({"5": 3.2, "50": 3.8}))
    out = capsys.readouterr().out
    assert "3.20x / 3.80x" in out and "note:" not in out
