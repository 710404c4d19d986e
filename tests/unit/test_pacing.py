"""Per-request CPU shaping without root: compute pacing (workloads.pacing: which hosts are paced,
and a paced inference never answers before its CPU time / share has passed), and the argument
checks of the real-time helpers (the CPU ticker, the delay line's priority)."""
from __future__ import annotations

import time

import pytest

from workloads import pacing


@pytest.mark.parametrize("share,threads,factor", [(None, 1, None), (1.0, 1, None), (2.0, 2, None), (3.0, 2, None),
                                                  (0.25, 1, 4.0), (0.5, 1, 2.0), (1.5, 2, 1 / 1.5)])
def test_only_hosts_slower_than_their_threads_are_paced(share, threads, factor):
    got = pacing.pace_factor(share, threads)
    assert got == (None if factor is None else pytest.approx(factor))


def _busy(ms: float) -> str:
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return "done"


def test_a_paced_inference_takes_its_cpu_time_over_the_share():
    pacer = pacing.Pacer(0.25, threads=1)
    pacing.sharp_timers()
    t0 = time.monotonic_ns()
    assert pacer.run(_busy, 5.0) == "done"
    wall = time.monotonic_ns() - t0
    cpu, ran, waited = pacer.last
    assert cpu >= 5_000_000                  # the work's own CPU time is what is paced
    assert wall >= 4 * cpu                   # never answers before cpu / share
    assert waited > 0 and ran + waited <= wall


def test_an_unpaced_host_does_not_wait():
    pacer = pacing.Pacer(None)
    pacer.run(_busy, 2.0)
    assert pacer.factor is None and pacer.last[2] == 0


def test_pool_threads_count_with_the_caller(monkeypatch):
    """Above one core the engine's pool threads' CPU time is the inference's too (read from
    /proc/self/task/<tid>/schedstat); a thread that is gone counts nothing."""
    import threading

    spent = threading.Event()
    box = {}

    def worker():
        box["tid"] = threading.get_native_id()
        _busy(20.0)
        spent.set()
        time.sleep(0.5)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    spent.wait(5)
    assert pacing._task_cpu_ns(box["tid"]) >= 20_000_000
    assert pacing._task_cpu_ns(2 ** 30) == 0
    t.join()


def test_the_cpu_ticker_refuses_an_interval_out_of_range(capsys):
    from emulation import ticker

    assert ticker.main(["--interval-us", "50"]) == 1
    out = capsys.readouterr().out
    assert '"ready": false' in out and "--interval-us 50: allowed 100..10000" in out


def test_the_delay_line_reports_its_scheduler_and_refuses_a_bad_priority():
    import os

    from emulation.delayline import realtime

    now = realtime(0)                      # 0: left as it is, and reported
    assert now["policy"] in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR") and now["priority"] == os.sched_getparam(0).sched_priority
    with pytest.raises(ValueError, match="--rt-priority 100: allowed 1..99"):
        realtime(100)


def _fake_proc(tmp_path, cgroup: str, mountinfo: str):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return str(proc)


def test_a_process_finds_its_cpu_cgroups_stat_on_v1_and_v2_and_none_at_the_root(tmp_path):
    v1_mount = tmp_path / "cpu"
    (v1_mount / "testbed" / "tbab12" / "mobile").mkdir(parents=True)
    (v1_mount / "testbed" / "tbab12" / "mobile" / "cpu.stat").write_text("throttled_time 5\n")
    mounts = (f"30 25 0:26 / {tmp_path}/cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpuacct\n"
              f"31 25 0:27 / {v1_mount} rw,relatime shared:10 - cgroup cgroup rw,cpu\n"
              f"32 25 0:28 / {tmp_path}/unified rw,relatime shared:11 - cgroup2 cgroup2 rw\n")
    proc = _fake_proc(tmp_path, "2:cpuacct:/\n1:cpu:/testbed/tbab12/mobile\n0::/\n", mounts)
    assert pacing._cgroup_cpu_stat(proc) == f"{v1_mount}/testbed/tbab12/mobile/cpu.stat"
    stalls = pacing.QuotaStalls(f"{v1_mount}/testbed/tbab12/mobile/cpu.stat")
    assert stalls.enabled and stalls.throttled_ns() == 5 and stalls.wait_ns() >= 0
    stalls.close()

    v2_root = tmp_path / "v2"
    (v2_root / "testbed" / "tbab12" / "edge").mkdir(parents=True)
    (v2_root / "testbed" / "tbab12" / "edge" / "cpu.stat").write_text("usage_usec 9\nthrottled_usec 7\n")
    proc2 = tmp_path / "p2"
    proc2.mkdir()
    (proc2 / "cgroup").write_text("0::/testbed/tbab12/edge\n")
    (proc2 / "mountinfo").write_text(f"40 25 0:30 / {v2_root} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n")
    path = pacing._cgroup_cpu_stat(str(proc2))
    assert path == f"{v2_root}/testbed/tbab12/edge/cpu.stat"
    assert pacing.QuotaStalls(path).throttled_ns() == 7000      # usec, in ns

    root = tmp_path / "p3"
    root.mkdir()
    (root / "cgroup").write_text("1:cpu:/\n0::/\n")
    (root / "mountinfo").write_text(mounts)
    assert pacing._cgroup_cpu_stat(str(root)) is None
    off = pacing.QuotaStalls(find=False)
    assert not off.enabled and off.throttled_ns() == 0 and off.wait_ns() == 0
