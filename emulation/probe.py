"""What this machine can enforce, found by trying it (`testbed doctor`).

Kernel features are probed inside a throw-away network namespace (``unshare --net``), so
the probe never touches the machine's own interfaces or firewall: the namespace, and every
qdisc and rule made in it, vanish when the probe process exits.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from . import cgroups

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _in_netns_probe() -> dict:
    """Runs inside a fresh network namespace: try each qdisc and iptables target."""
    from pyroute2 import IPRoute

    out: dict = {"qdiscs": {}}
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        trials = {
            "tbf": dict(rate=1_000_000, burst=3028, limit=15140),
            "htb": dict(default=0x10),
            "netem": dict(delay=1000, limit=100),
        }
        for kind, kw in trials.items():
            try:
                ipr.tc("add", kind, index=lo, handle=0x10000, **kw)
                ipr.tc("del", index=lo, handle=0x10000, parent=0xFFFFFFFF)
                out["qdiscs"][kind] = True
            except Exception as e:  # noqa: BLE001 - any refusal means "not available"
                out["qdiscs"][kind] = False
                out.setdefault("qdisc_errors", {})[kind] = str(e)
    ipt = shutil.which("iptables")
    out["iptables"] = ipt
    for name, rule in {"nfqueue": ["-j", "NFQUEUE", "--queue-num", "7"],
                       "statistic": ["-m", "statistic", "--mode", "random", "--probability", "0.5",
                                     "-j", "DROP"]}.items():
        if not ipt:
            out[name] = False
            continue
        res = subprocess.run([ipt, "-w", "-A", "OUTPUT", *rule], capture_output=True, text=True)
        out[name] = res.returncode == 0
        if res.returncode != 0:
            out.setdefault("iptables_errors", {})[name] = res.stderr.strip()
    return out


def _kernel_probe() -> dict:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        return {"probed": False, "reason": "needs root and unshare(1)" if unshare else "unshare(1) missing"}
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([unshare, "--net", sys.executable, "-m", "emulation.probe", "--in-netns"],
                         capture_output=True, text=True, timeout=60, env=env)
    if res.returncode != 0:
        return {"probed": False, "reason": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "probe failed"}
    data = json.loads(res.stdout)
    data["probed"] = True
    return data


def netem_hint(kernel: str | None = None, modules: Path = Path("/lib/modules")) -> str:
    """How to get netem where the kernel refused it: load the module when this kernel has it,
    else say which package has it (Ubuntu ships it apart from the kernel image)."""
    kernel = kernel or platform.release()
    try:
        dep = (modules / kernel / "modules.dep").read_text()
    except OSError:
        dep = ""
    if "/sch_netem.ko" in dep:
        return "the sch_netem module is there but not loaded: sudo modprobe sch_netem"
    return (f"this kernel ({kernel}) has no sch_netem module (on Ubuntu: apt install "
            f"linux-modules-extra-{kernel}); until then delay and loss use the NFQUEUE delay line")


def _cpu_info() -> dict:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu_model": model, "cpu_features": {f: f in flags for f in CPU_FEATURES}}


def machine_memory_bytes() -> int:
    """The machine's memory (``MemTotal`` of /proc/meminfo) in bytes, 0 where it does not say:
    the budget every host's memory limit must fit into, as :func:`machine_cores` is for cores."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_cores() -> float:
    """Cores this process may use (affinity), which is what host limits must fit into."""
    return float(len(os.sched_getaffinity(0)))


@functools.lru_cache(maxsize=1)
def capabilities() -> dict:
    """The machine's facts; JSON-ready. Cached for the life of the process."""
    try:
        cg_version = cgroups.detect_version()
        if cg_version == 2:
            controllers = (cgroups.CGROUP_ROOT / "cgroup.controllers").read_text().split()
        else:
            controllers = sorted(p.name for p in cgroups.CGROUP_ROOT.iterdir()
                                 if p.is_dir() and p.name in ("cpu", "cpuacct", "cpuset", "memory", "pids"))
    except (cgroups.CgroupError, OSError):
        cg_version, controllers = None, []
    try:
        from mininet.net import VERSION as mn_version
    except Exception:  # noqa: BLE001 - report any import failure as "missing"
        mn_version = None
    kernel = _kernel_probe()
    qd = kernel.get("qdiscs", {})
    if qd.get("netem"):
        delay, loss = "netem", "netem"
    elif kernel.get("nfqueue"):
        delay = "nfqueue"
        loss = "iptables-statistic" if kernel.get("statistic") else "unavailable"
    else:
        delay = "unavailable"
        loss = "iptables-statistic" if kernel.get("statistic") else "unavailable"
    if not kernel.get("probed"):
        delay = loss = "unknown"
    try:
        cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        cc = None
    caps = {
        "root": os.geteuid() == 0,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cgroup_version": cg_version,
        "cgroup_controllers": controllers,
        # where hosts' groups go: a systemd scope with Delegate=yes, or the plain layout
        "cgroup_layout": (None if cg_version is None else
                          f"systemd scope ({cgroups.SLICE}/{cgroups.SCOPE_PREFIX}<run>.scope, Delegate=yes)"
                          if cgroups.delegated(version=cg_version) else
                          f"{cgroups.CGROUP_ROOT}/{cgroups.TOP}/<run>" if cg_version == 2 else
                          f"{cgroups.CGROUP_ROOT}/<controller>/{cgroups.TOP}/<run>"),
        "qdiscs": qd,
        "netem_hint": None if qd.get("netem") or not kernel.get("probed") else netem_hint(),
        "shaping": "tbf" if qd.get("tbf") else ("unknown" if not kernel.get("probed") else "unavailable"),
        "delay_mechanism": delay,
        "loss_mechanism": loss,
        "nfqueue": kernel.get("nfqueue"),
        "iptables": kernel.get("iptables") or shutil.which("iptables"),
        "kernel_probe": {k: v for k, v in kernel.items() if k in ("probed", "reason", "qdisc_errors", "iptables_errors")},
        "mininet": mn_version,
        "mnexec": shutil.which("mnexec"),
        "iperf3": shutil.which("iperf3"),
        "ping": shutil.which("ping"),
        "tcp_congestion_control": cc,
        "cpus": machine_cores(),
        "memory_bytes": machine_memory_bytes(),
    }
    caps.update(_cpu_info())
    return caps


def problems_for_emulation(caps: dict) -> list[str]:
    """Why this machine cannot bring a network up; empty when it can."""
    out = []
    if not caps["root"]:
        out.append("needs root: run it with sudo")
    if not caps["mnexec"]:
        out.append("mnexec not found: install Debian's mininet package (scripts/setup.sh does)")
    if not caps["mininet"]:
        out.append("the mininet Python package does not import: run scripts/setup.sh")
    if caps["cgroup_version"] is None:
        out.append("no usable cgroup hierarchy (need v2, or v1 with cpu and memory)")
    return out


if __name__ == "__main__" and "--in-netns" in sys.argv:
    print(json.dumps(_in_netns_probe()))
