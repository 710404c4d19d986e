"""`testbed clean`: remove what crashed runs left behind, and nothing else.

A run is *abandoned* when the process that owns it (pid + start time in its registry record)
is gone. Leftovers are looked for in four independent places, so a run killed half-way
through writing its registry is still found:

- registry records in /run/testbed,
- processes whose environment carries ``TESTBED_RUN=<run_id>`` (our mark, never a name),
- cgroup directories under ``testbed/<run_id>``,
- root-namespace interfaces named ``<run_id>-...``.

Runs whose owner is alive are left alone: two testbeds may run at once.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import cgroups, registry


@dataclass(frozen=True)
class Leftover:
    kind: str      # registry | process | cgroup | interface
    run_id: str
    what: str      # pid, path or interface name

    def as_dict(self) -> dict:
        return {"kind": self.kind, "run_id": self.run_id, "what": self.what}


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _root_interfaces() -> list[str]:
    return sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []


def find_leftovers(directory: Path | None = None, cgroup_root: Path = cgroups.CGROUP_ROOT,
                   owned_by: int | None = None) -> list[Leftover]:
    """Objects of abandoned runs, plus (for tests) those of runs owned by process ``owned_by``."""
    live = {r["run_id"] for r in registry.load_records(directory)
            if registry.owner_alive(r) and r["owner"]["pid"] != owned_by}
    me = os.getpid()
    found: list[Leftover] = []
    for record in registry.load_records(directory):
        rid = record["run_id"]
        if rid in live:
            continue
        for proc in record.get("processes", []):
            if registry.process_alive(proc["pid"], proc.get("starttime")):
                found.append(Leftover("process", rid, str(proc["pid"])))
        found.append(Leftover("registry", rid, str((directory or registry.REGISTRY_DIR) / f"{rid}.json")))
    seen = {(f.kind, f.what) for f in found}
    for pid in _all_pids():
        if pid == me:
            continue
        rid = registry.process_run_mark(pid)
        if rid and registry.RUN_ID_RE.match(rid) and rid not in live and ("process", str(pid)) not in seen:
            found.append(Leftover("process", rid, str(pid)))
    for rid in sorted(cgroups.list_run_ids(cgroup_root)):
        if rid not in live and registry.RUN_ID_RE.match(rid):
            for d in cgroups.run_cgroup_dirs(rid, cgroup_root):
                if d.is_dir():
                    found.append(Leftover("cgroup", rid, str(d)))
    for name in _root_interfaces():
        m = registry.IFNAME_RE.match(name)
        if m and m.group(1) not in live:
            found.append(Leftover("interface", m.group(1), name))
    return found


def left_by(pid: int, directory: Path | None = None) -> list[Leftover]:
    """What the runs that process ``pid`` owns (by their registry records) still hold: the
    objects `testbed clean` will remove once that process is gone."""
    runs = {r["run_id"] for r in registry.load_records(directory) if (r.get("owner") or {}).get("pid") == pid}
    return [f for f in find_leftovers(directory, owned_by=pid) if f.run_id in runs] if runs else []


def describe(found: list[Leftover]) -> str:
    """``run tb1a2b: 2 processes, 4 cgroups, its registry record`` for each run in ``found``."""
    words = {"process": ("process", "processes"), "cgroup": ("cgroup", "cgroups"),
             "interface": ("interface", "interfaces")}
    out = []
    for rid in sorted({f.run_id for f in found}):
        mine = [f for f in found if f.run_id == rid]
        parts = []
        for kind, (one, many) in words.items():
            n = sum(f.kind == kind for f in mine)
            if n:
                parts.append(f"{n} {one if n == 1 else many}")
        if any(f.kind == "registry" for f in mine):
            parts.append("its registry record")
        out.append(f"run {rid}: {', '.join(parts)}")
    return "; ".join(out)


def _kill(pids: list[int], grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whoever is still there after the grace period.

    Each pid is checked against its start time before every signal, so a pid recycled by
    another program in between is never signalled.
    """
    start = {pid: registry.proc_starttime(pid) for pid in pids}
    start = {pid: st for pid, st in start.items() if st is not None}  # already gone: nothing to do
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, st in start.items():
            if registry.process_alive(pid, st):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(registry.process_alive(p, s) for p, s in start.items()):
            time.sleep(0.02)


def _delete_interface(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if idx:
            ipr.link("del", index=idx[0])


def clean(dry_run: bool = False, directory: Path | None = None,
          cgroup_root: Path = cgroups.CGROUP_ROOT) -> list[Leftover]:
    """Remove every leftover of abandoned runs; returns what was (or would be) removed.

    Order matters: processes first (their death releases the namespaces, and with them the
    veth pairs inside), then interfaces still in the root namespace, then cgroups (which must
    be empty), then the registry records.
    """
    found = find_leftovers(directory, cgroup_root)
    if dry_run:
        return found
    _kill([int(f.what) for f in found if f.kind == "process"])
    for f in found:
        if f.kind == "interface" and f.what in _root_interfaces():
            _delete_interface(f.what)
    for rid in sorted({f.run_id for f in found if f.kind == "cgroup"}):
        cgroups.remove_run_cgroups(rid, cgroup_root)
    for f in found:
        if f.kind == "registry":
            Path(f.what).unlink(missing_ok=True)
    return found
