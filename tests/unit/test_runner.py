"""Runner pieces that need no root: cell keys, thread budgets, addresses on the planned
network, the summary of stored rows, and the experiment file's `serving` section."""
from __future__ import annotations

import pytest

from emulation.plan import plan
from testbed.experiment import ExperimentError, load_experiment_dict
from testbed.runner import (RunError, cell_key, check_connections, check_pace, check_threads, entry_address,
                            host_pace, host_threads, judge_compute)
from testbed.summary import host_flags, summarize

BASE = {"name": "t", "topology": "three_tier", "models": ["fmnist_cnn"],
        "strategies": [{"name": "edge", "placement": "edge"},
                       {"name": "ec", "operators": [{"partition": {"cut": "auto"}}], "placement": ["edge", "cloud"]}]}


def load(extra: dict | None = None, sets=()):
    return load_experiment_dict({**BASE, **(extra or {})}, sets, cores=2, memory_bytes=32 << 30, source="t.yaml")


def test_cell_keys_are_stable_and_change_with_what_defines_the_cell():
    exp = load()
    m, s = exp.models[0], exp.strategies[0]
    k = cell_key(exp, {}, m, s)
    assert k == cell_key(load(), {}, m, s) and k.startswith("fmnist_cnn/edge/")
    assert k != cell_key(exp, {"links.edge-cloud.bandwidth": "5Mbit"}, m, s)
    assert k != cell_key(load({"codec": "json-base64"}), {}, m, s)
    assert k != cell_key(load({"requests": {"repeat": 5}}), {}, m, s)
    assert k != cell_key(load({"serving": {"connection": "per-request"}}), {}, m, s)
    assert k != cell_key(exp, {}, m, exp.strategies[1])
    # the connection cap measures nothing: cells keep their keys (and stored runs resume) whatever it is
    assert k == cell_key(load({"serving": {"max_connections": 5000}}), {}, m, s)


def test_threads_read_back_from_a_server_must_match_what_was_asked():
    check_threads("edge", {"threads": 3, "sessions": 2, "pool_threads": 4})
    check_threads("edge", {"threads": 1, "sessions": 1, "pool_threads": 0})
    with pytest.raises(RunError, match=r"server on edge: asked ONNX Runtime for 3 intra-op threads per session, "
                                       r"but its 2 session\(s\) started 2 pool threads, not 4"):
        check_threads("edge", {"threads": 3, "sessions": 2, "pool_threads": 2})
    with pytest.raises(RunError, match="cannot read back"):
        check_threads("cloud", {"threads": 2, "sessions": 1, "pool_threads": None})


def test_threads_follow_the_core_budget_unless_set():
    exp = load()      # three_tier on 2 cores: mobile 0.25, edge 0.5, cloud 1 core
    assert [host_threads(exp, h, 2) for h in ("mobile", "edge", "cloud")] == [1, 1, 1]
    big = load(sets=[("hosts.cloud.cpus", "1.5")])
    assert host_threads(big, "cloud", 2) == 2
    assert host_threads(load({"serving": {"threads": 3}}), "edge", 2) == 3
    per = load({"serving": {"threads": {"cloud": 2}}})
    assert host_threads(per, "cloud", 2) == 2 and host_threads(per, "edge", 2) == 1


@pytest.mark.parametrize("serving, message", [
    ({"connection": "udp"}, "t.yaml: serving.connection: 'udp' is not a connection mode; allowed: persistent | per-request"),
    ({"threads": 0}, "serving.threads: 0 is not a thread count"),
    ({"threads": {"fog": 2}}, "serving.threads.fog: unknown host 'fog'"),
    ({"threads": {"edge": "many"}}, "serving.threads.edge: 'many' is not a thread count"),
    ({"pool": 3}, "serving.pool: unknown key; allowed: connection, threads, pace, max_connections"),
    ({"pace": "yes"}, "serving.pace: 'yes' is not true or false; allowed: true"),
    ({"max_connections": 0}, "serving.max_connections: 0 is not a connection count; allowed: auto (twice what"),
    ({"max_connections": True}, "serving.max_connections: True is not a connection count"),
    ({"max_connections": "many"}, "serving.max_connections: 'many' is not a connection count"),
    ({"max_connections": 2 ** 21}, "serving.max_connections: 2097152 is not a connection count; allowed: auto "
                                   "(twice what the load may hold open, at least 1024), or a whole number 1 to 1048576"),
])
def test_serving_section_errors_are_one_line(serving, message):
    with pytest.raises(ExperimentError) as e:
        load({"serving": serving})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_servers_pace_to_their_hosts_cores_unless_told_not_to():
    """serving.pace: the cores each server paces inferences to (None: unlimited host, or off),
    and its read-back from the server's ready line."""
    exp = load()
    assert [host_pace(exp, h) for h in ("mobile", "edge", "cloud")] == [0.25, 0.5, 1.0]
    assert host_pace(load({"serving": {"pace": False}}), "mobile") is None
    assert host_pace(load(sets=[("hosts.edge.cpus", "none")]), "edge") is None
    check_pace("mobile", {"pace": 0.25}, 0.25)
    with pytest.raises(RunError, match="asked to pace inferences to 0.25 cores, but it reports None"):
        check_pace("mobile", {"pace": None}, 0.25)


def test_each_hosts_compute_is_judged_against_its_cpu_time_stretched_by_its_share():
    """The slowdown stored with each cell's hosts: compute / (CPU time / min(cores, threads)) per
    request; outside the tolerance the host is flagged in the summary with the reason."""
    paced = [(40.0 + i * 0.1, 10.0) for i in range(20)]        # 0.25 cores: 40 ms per 10 ms of CPU
    j = judge_compute(paced, 0.25, 1)
    assert j["within"] is True and j["expected_ms"] == 40.0 and j["requests"] == 20
    assert j["cpu_p50_ms"] == 10.0       # an inference's own CPU time, to set beside its profile's
    assert j["slowdown"][0] == pytest.approx(1.0, abs=0.01) and j["slowdown"][2] < 1.05
    starved = judge_compute([(60.0, 10.0)] * 20, 0.25, 1)       # got a sixth of a core, not a quarter
    assert starved["within"] is False and "1.50x what 0.25 cores give" in starved["note"]
    short = judge_compute([(1.6, 0.4)] * 5, 0.25, 1)            # 1.6 ms: reported, not judged
    assert short["within"] is None and "under 20 ms" in short["note"]
    assert judge_compute([(5.0, 10.0)] * 3, None, 2)["slowdown"] == [1.0, 1.0, 1.0]  # 2 threads in parallel
    assert judge_compute([(10.0, 10.0)] * 3, 1.5, 2)["slowdown"] == [1.5, 1.5, 1.5]  # 1.5 cores: 6.7 ms due
    assert judge_compute([(8.0, 0.0)], 0.5, 1)["within"] is None
    flags = host_flags({"mobile": {"compute": starved}, "edge": {"compute": j}, "cloud": {}})
    assert flags == [f"mobile: {starved['note']}"] and host_flags(None) == []


def test_serving_round_trips_through_to_dict():
    exp = load({"serving": {"connection": "per-request", "threads": {"edge": 2}, "pace": False}})
    again = load_experiment_dict(exp.to_dict(), cores=2, memory_bytes=32 << 30)
    assert again.serving == exp.serving and again.serving.to_dict() == {
        "connection": "per-request", "threads": {"edge": 2}, "pace": False, "max_connections": "auto"}
    assert load().serving.pace is True  # pacing is the default
    capped = load({"serving": {"max_connections": 64}})
    assert load_experiment_dict(capped.to_dict(), cores=2, memory_bytes=32 << 30).serving.max_connections == 64


def test_max_connections_auto_leaves_room_for_what_the_load_can_hold_open():
    """Twice what the cell's load may hold open to one server (512 per source for an open
    loop, the requests in flight for a closed one), at least 1024; a number is taken as set,
    and refused in one line below the need, at every sweep point."""
    assert load().connections_needed() == (1, "one request at a time") and load().max_connections() == 1024
    star = {"topology": "star:mobiles=8", "strategies": [{"name": "edge", "placement": "edge"}]}
    server = load({**star, "load": {"scenario": "server", "qps": 10, "sources": 8}})
    assert server.connections_needed() == (4096, "8 sources x 512 in the server scenario")
    assert server.max_connections() == 8192
    closed = load({"load": {"scenario": "multi-stream", "concurrency": 3000}})
    assert closed.connections_needed()[0] == 3000 and closed.max_connections() == 6000
    assert load({"load": {"scenario": "offline"}}).connections_needed()[0] == 64
    assert load({"serving": {"max_connections": 7}}).max_connections() == 7
    with pytest.raises(ExperimentError) as e:
        load({**star, "load": {"scenario": "server", "qps": 10, "sources": 8}, "serving": {"max_connections": 4000}})
    assert str(e.value) == ("t.yaml: serving.max_connections: 4000 is below the 4096 connections this experiment's "
                            "load may hold open to one server (8 sources x 512 in the server scenario); allowed: "
                            "auto, or a whole number 4096 to 1048576")
    with pytest.raises(ExperimentError, match=r"sweep.load.sources\[1\]: with this value, serving.max_connections: "
                                              r"1000 is below the 1024 connections"):
        load({**star, "load": {"scenario": "server", "qps": 10}, "serving": {"max_connections": 1000},
              "sweep": {"load.sources": [1, 2]}})


def test_the_connection_cap_is_read_back_from_each_server():
    check_connections("edge", {"max_connections": 8192}, 8192)
    with pytest.raises(RunError, match="server on edge: asked to take 8192 connections at most, but it reports 1024"):
        check_connections("edge", {"max_connections": 1024}, 8192)


def test_a_server_that_refused_connections_or_lost_one_to_a_bug_is_flagged():
    hosts = {"edge": {"max_connections": 1024, "server": {"served": 9, "refused": 3, "stalled": 2, "bad_frames": 1,
                                                          "internal_errors": 0, "uncaught": 0}},
             "cloud": {"max_connections": 1024, "server": {"served": 9, "refused": 0, "internal_errors": 1,
                                                           "uncaught": 1}},
             "mobile": {"max_connections": 1024, "server": {"served": 9, "refused": 0, "stalled": 5}}}
    assert host_flags(hosts) == ["edge: refused 3 connections beyond serving.max_connections (1024)",
                                 "cloud: 2 connections ended by an internal error (a bug: see logs/cloud.log)"]


def test_entry_address_is_the_address_on_the_arriving_link():
    exp = load()
    spec = exp.topology
    net = plan(spec, "tbtest")   # the network's layout answers as the network does, without root
    edge = net.addresses("edge")
    assert len(edge) == 2                                # one per link
    from_mobile = entry_address(net, spec, "mobile", "edge")
    from_cloud = entry_address(net, spec, "cloud", "edge")
    assert {from_mobile, from_cloud} == set(edge) and from_mobile != from_cloud
    # mobile -> cloud crosses edge; cloud is entered over edge-cloud (its only link)
    assert entry_address(net, spec, "mobile", "cloud") == net.addresses("cloud")[0]
    assert entry_address(net, spec, "edge", "edge") == edge[0]


def _req(cell, seq, status="ok", e2e=10.0, comp=4.0, trans=5.0, exit_segment=None, match=True):
    return {"cell": cell, "seq": seq, "status": status, "e2e_ms": e2e if status == "ok" else None,
            "compute_ms": comp, "transmission_ms": trans, "bytes_sent": 1000, "exit_segment": exit_segment,
            "output_match": match}


def _hop(cell, seq, kind, src, dst, ms):
    return {"cell": cell, "seq": seq, "kind": kind, "src": src, "dst": dst, "ms": ms}


def test_summary_medians_shares_and_counts():
    cells = [{"cell": "c1", "model": "m", "strategy": "s", "placement": "edge>cloud", "point": {}, "status": "done",
              "error": None, "metric": "accuracy", "metric_value": 0.9, "baseline_value": 0.91}]
    reqs = [_req("c1", 0, e2e=10), _req("c1", 1, e2e=20, exit_segment=0, match=False), _req("c1", 2, e2e=30),
            _req("c1", 3, status="timeout")]
    hops = [_hop("c1", s, "compute", "edge", "edge", 2.0) for s in range(3)]
    hops += [_hop("c1", s, "compute", "cloud", "cloud", 3.0) for s in (0, 2)]   # seq 1 exited on edge
    hops += [_hop("c1", s, "link", "mobile", "edge", 1.0 + s) for s in range(3)]
    hops += [_hop("c1", s, "link", "edge", "edge", 9.0) for s in range(3)]      # same host: not a link
    hops += [_hop("c1", 3, "link", "mobile", "edge", 99.0)]                      # not an ok request
    [row] = summarize(cells, reqs, hops)
    assert row["counts"] == {"ok": 3, "timeout": 1, "oom": 0, "error": 0}
    assert row["e2e_p50"] == 20 and row["e2e_p90"] == pytest.approx(28)
    assert row["compute"] == {"edge": 2.0, "cloud": 3.0}                          # median of 3, 0, 3
    assert row["transmission"] == {"mobile>edge": 2.0}
    assert row["shares"]["compute"] == pytest.approx(12 / 60) and row["shares"]["transmission"] == pytest.approx(15 / 60)
    assert row["exit_rate"] == pytest.approx(1 / 3) and row["match"] == pytest.approx(2 / 3)
    assert (row["metric"], row["value"], row["baseline"]) == ("accuracy", 0.9, 0.91)
    empty = summarize([{**cells[0], "cell": "c2"}], [], [])[0]
    assert empty["e2e_p50"] is None and empty["shares"] is None and empty["counts"]["ok"] == 0


def test_a_second_run_into_the_same_folder_is_refused_in_one_line_before_it_touches_anything(tmp_path):
    """Issue 19: a second `testbed run E --out X --resume` started while the first was measuring
    was not refused, and measured the same cell side by side on the shared cores."""
    import subprocess
    import sys
    from pathlib import Path

    from testbed.runner import folder_lock, run_experiment

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom testbed.runner import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as info:
            run_experiment(load(), tmp_path)
        msg = str(info.value)
        assert msg == (f"{tmp_path} is in use by another testbed run (pid {holder.pid}): wait for it to end, "
                       "or choose another --out")
        assert not (tmp_path / "results.sqlite").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with folder_lock(tmp_path):      # the kernel let go of it when its holder died
        pass


def test_a_garbled_line_from_a_client_is_one_line_naming_it_and_keeps_the_requests_before():
    """Issue 19: the runner decoded each line of a client's output unguarded; a cut line (the
    client killed mid-line) or a library's print on its stdout ended the run as an internal error."""
    import json

    from testbed.runner import CellExecution, CellPlan, _message

    who = "client on mobile"
    cell = CellExecution(None, None, None, CellPlan("m/mobile/abc", {}, None, None, None, {}), {}, 1.0)
    cell._add_request(_message(json.dumps({"seq": 0, "input": 0, "status": "timeout", "error": "late"}) + "\n", who),
                      who)
    for line, shown in [('{"seq": 1, "input": 1, "stat', '\'{"seq": 1, "input": 1, "stat\''),
                        ("[1, 2]\n", "'[1, 2]'"), ("onnxruntime says hello " * 5 + "\n", "'onnxruntime says hello onnxruntime says '")]:
        with pytest.raises(RunError) as e:
            _message(line, who)
        assert str(e.value) == (f"client on mobile wrote a line that is not a JSON object ({len(line.strip())} "
                                f"characters, starting {shown}); the requests before it are kept")
    for msg, why in [({"seq": 1, "input": 0, "status": "lost"},
                      "StoreError: cell m/mobile/abc request 1: status is 'lost', not one of ok, timeout, oom, error"),
                     ({"seq": 2, "status": "timeout"}, "KeyError: 'input'"),
                     ({"seq": "3", "input": 0, "status": "timeout"},
                      "StoreError: cell m/mobile/abc request '3': seq must be an integer, got str '3'")]:
        with pytest.raises(RunError) as e:
            cell._add_request(msg, who)
        assert str(e.value) == (f"client on mobile reported request {msg['seq']} in a form that cannot be stored "
                                f"({why}); the requests before it are kept")
    with pytest.raises(RunError, match=r"^load generator on phone1 reported request 4 in a form that cannot be "):
        cell._add_request({"seq": 4, "input": 0, "status": "ok", "trace": "garbage"}, "load generator on phone1")
    assert [r.seq for r in cell.requests] == [0] and cell.hops == [] and cell.compute_samples == {}
