"""The calibration table: every host's CPU period and burst slowdown, a note naming the hosts
where short inferences would be fast-or-slow under the quota alone, and the per-request compute
check with its verdict (or why it was not judged)."""
from __future__ import annotations

from testbed import output


COMPUTE = {"label": "busy loop 20 ms", "cpu_period_us": 4000, "paced": True, "unconstrained_p50_ms": 20.1,
           "expected_ms": 80.4, "p10_ms": 79.9, "p50_ms": 80.5, "p90_ms": 81.2, "ratio_p10_p50_p90": [0.99, 1.0, 1.01],
           "checks": {"compute": True}, "note": None}


def _report(mobile_slowdown: dict) -> dict:
    host = {"measured_cpus": 0.25, "memory_bytes": None, "memory_enforced": None, "pass": True}
    return {"run_id": "r1", "topology": "three_tier", "links": [], "pass": True,
            "tolerances": {"goodput_ratio": [0.93, 1.02], "rtt": "p50 within max(0.5 ms, 3%)", "cpus": "5%", "loss": "x"},
            "hosts": [{**host, "host": "mobile", "cpus": 0.25, "cpu_period_us": 100_000,
                       "burst_slowdown": mobile_slowdown, "compute": [COMPUTE]},
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


def test_the_compute_per_request_is_tabled_with_its_verdict_and_why_not_judged(capsys):
    report = _report({"5": 3.2, "50": 3.8})
    short = {**COMPUTE, "label": "fmnist_cnn", "expected_ms": 1.6, "checks": {"compute": None},
             "note": "expected compute 1.6 ms: under 20 ms"}
    report["hosts"][0]["compute"].append(short)
    output.print_calibration(report)
    out = capsys.readouterr().out
    assert "compute per request" in out and "80.40 ms" in out and "0.99 / 1.00 / 1.01" in out and "pass" in out
    assert "not judged: mobile (fmnist_cnn): expected compute 1.6 ms: under 20 ms" in out


def test_a_failed_direction_shows_its_delay_lines_counters_and_a_passed_one_does_not(capsys):
    report = _report({"5": 3.2, "50": 3.8})
    link = {"link": "mobile-edge", "bandwidth_bps": 50_000_000, "goodput_bps": 39_661_403, "expected_rtt_ms": 20.03,
            "rtt_ms": 20.2, "loss": 0.0, "measured_loss": 0.0116}
    line = {"packets": 31000, "dropped_queue": 12, "dropped_enobufs": 0, "kernel_queue_dropped": 0,
            "late_us_mean": 9.5, "late_us_max": 41250.0}
    report["links"] = [{**link, "direction": "edge->mobile", "goodput_ratio": 0.793, "delay_line": line, "pass": False},
                       {**link, "direction": "mobile->edge", "goodput_ratio": 0.956, "loss_socket_drops": 365,
                        "loss_packets": 2498,
                        "delay_line": {**line, "late_us_max": 777.0}, "pass": True}]
    output.print_calibration(report)
    out = " ".join(capsys.readouterr().out.split())
    # datagrams the receiving socket dropped are shown beside the link's loss, not in it
    assert ("* mobile-edge mobile->edge: 365 of 2498 datagrams were dropped by the receiving socket (its buffer "
            "full), not by the link: not in its loss") in out and "edge->mobile: 365" not in out
    assert "edge->mobile: its delay line so far: 31000 packets, latest batch 41250.0 us late" in out
    assert "queue full 12, ENOBUFS 0, kernel queue 0" in out
    assert "777.0" not in out
