"""The run registry: what each testbed run created, written down *before* it is created.

One JSON file per run in ``/run/testbed/<run_id>.json`` (tmpfs: gone at reboot, like the
kernel objects it describes). `testbed clean` reads these files to remove exactly what a
crashed run left behind, and nothing else. Processes are identified by pid *and* start time,
so a recycled pid is never mistaken for ours; every process a run starts also carries
``TESTBED_RUN=<run_id>`` in its environment as a second, independent mark.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import string
import time
from pathlib import Path

REGISTRY_DIR = Path(os.environ.get("TESTBED_REGISTRY_DIR", "/run/testbed"))
ENV_MARK = "TESTBED_RUN"
RUN_ID_RE = re.compile(r"^tb[a-z0-9]{4}$")
# interface names: <run_id>-<suffix>, 15 bytes at most (IFNAMSIZ - 1)
IFNAME_RE = re.compile(r"^(tb[a-z0-9]{4})-[a-z0-9]{1,8}$")


def new_run_id(directory: Path | None = None) -> str:
    directory = directory or REGISTRY_DIR
    alphabet = string.ascii_lowercase + string.digits
    while True:
        run_id = "tb" + "".join(secrets.choice(alphabet) for _ in range(4))
        if not (directory / f"{run_id}.json").exists():
            return run_id


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return stat[stat.rindex(")") + 2:].split()


def proc_starttime(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = proc_stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int, starttime: int | None) -> bool:
    now = proc_starttime(pid)
    return now is not None and (starttime is None or now == starttime)


def process_run_mark(pid: int) -> str | None:
    """The TESTBED_RUN value in a process's environment, if it has one."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{ENV_MARK}=".encode()
    for item in env.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


class RunRegistry:
    """The record of one run. Every ``add_*`` call is flushed to disk before it returns."""

    def __init__(self, run_id: str, directory: Path | None = None):
        self.run_id = run_id
        self.directory = directory or REGISTRY_DIR
        self.path = self.directory / f"{run_id}.json"
        self.record: dict = {
            "run_id": run_id,
            "owner": {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())},
            "created": time.time(),
            "processes": [],
            "cgroups": [],
            "interfaces": [],
        }

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, self.path)

    def add_process(self, pid: int, role: str) -> None:
        self.record["processes"].append({"pid": pid, "starttime": proc_starttime(pid), "role": role})
        self._save()

    def add_cgroups(self, paths: list[Path]) -> None:
        self.record["cgroups"].extend(str(p) for p in paths)
        self._save()

    def add_interfaces(self, names: list[str]) -> None:
        self.record["interfaces"].extend(names)
        self._save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def load_records(directory: Path | None = None) -> list[dict]:
    directory = directory or REGISTRY_DIR
    if not directory.is_dir():
        return []
    out = []
    for f in sorted(directory.glob("tb*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            # a torn write cannot happen (atomic rename), but a hand-edited file can
            out.append({"run_id": f.stem, "owner": {"pid": -1, "starttime": None}, "processes": [],
                        "cgroups": [], "interfaces": [], "corrupt": True})
    return out


def owner_alive(record: dict) -> bool:
    owner = record.get("owner") or {}
    pid = owner.get("pid", -1)
    return pid > 0 and process_alive(pid, owner.get("starttime"))
