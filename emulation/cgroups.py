"""CPU and memory limits for emulated hosts, on cgroup v1 and cgroup v2.

Layout: every run owns one directory, so `testbed clean` can find and remove exactly what a
run made:

- cgroup v2 under systemd (most users' machines): systemd owns the tree and lets a program
  manage only a subtree delegated to it. A run gets a transient scope unit
  ``testbed-<run_id>.scope`` in ``testbed.slice`` with ``Delegate=yes`` (what container
  runtimes use), held by one idle process of the run's in its ``.holder`` group; hosts are
  ``/sys/fs/cgroup/testbed.slice/testbed-<run_id>.scope/<host>``. Stopping the unit removes
  it all;
- cgroup v2 without systemd: ``<root>/testbed/<run_id>/<host>``;
- cgroup v1: ``/sys/fs/cgroup/<controller>/testbed/<run_id>/<host>``.

The *requests* (which file gets which value) are built by pure functions, the same for both
versions' callers, so they are unit-testable without root; :class:`HostCgroup` applies them,
reads them back and reports OOM kills.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from topologies.checks import CPU_PERIOD_US_DEFAULT as CPU_PERIOD_US
from topologies.checks import CPU_QUOTA_US_MIN, auto_cpu_period_us

from .errors import EmulationError

CGROUP_ROOT = Path("/sys/fs/cgroup")
TOP = "testbed"  # every cgroup this project makes lives under this directory
SLICE = "testbed.slice"      # ... or, under systemd, in a scope unit of this slice
SCOPE_PREFIX = "testbed-"
HOLDER = ".holder"           # the scope's own process lives here (not a host: names cannot start with '.')
SCOPE_WAIT_S = 10.0
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory")


class CgroupError(EmulationError):
    """A limit could not be applied or read back; the message says which and why."""


@dataclass(frozen=True)
class Limits:
    """What a host may use. ``None`` means unlimited."""

    cpus: float | None = None
    memory_bytes: int | None = None
    cpuset: tuple[int, ...] | None = None
    cpu_period_us: int | None = None   # the period the CPU quota is counted over; None = auto

    @property
    def period_us(self) -> int:
        return self.cpu_period_us or auto_cpu_period_us(self.cpus)


def detect_version(root: Path = CGROUP_ROOT) -> int:
    """2 on a unified (v2) hierarchy, 1 when the v1 cpu and memory controllers are mounted."""
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "cpu").is_dir() and (root / "memory").is_dir():
        return 1
    raise CgroupError(f"no usable cgroup hierarchy under {root}: need cgroup v2 or v1 cpu+memory")


def systemd_booted() -> bool:
    """True when systemd is the init system (sd_booted(3): /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def delegated(root: Path = CGROUP_ROOT, version: int | None = None) -> bool:
    """Whether runs' cgroups live in systemd-delegated scopes: cgroup v2 on the real root with
    systemd as init. (A test's own root, or v1, or no systemd: the plain layout.)"""
    return root == CGROUP_ROOT and (version or detect_version(root)) == 2 and systemd_booted()


def scope_unit(run_id: str) -> str:
    return f"{SCOPE_PREFIX}{run_id}.scope"


def run_base(run_id: str, root: Path = CGROUP_ROOT, version: int | None = None) -> Path:
    """The v2 directory that holds a run's host groups."""
    if delegated(root, version):
        return root / SLICE / scope_unit(run_id)
    return root / TOP / run_id


def _start_scope(run_id: str, root: Path) -> Path:
    """Create the run's delegated scope (idempotent) and return its directory, ready for host
    groups: its holder moved into ``.holder`` (a cgroup with children may hold no process) and
    the cpu, memory and cpuset controllers enabled for its children."""
    import subprocess

    scope = root / SLICE / scope_unit(run_id)
    if not (scope / HOLDER / "cgroup.procs").exists():
        # the holder: an idle process in a session of its own (a terminal's Ctrl-C is for the
        # run, which stops the unit in order); systemd-run execs it inside the new scope
        holder = subprocess.Popen(
            ["systemd-run", "--quiet", "--scope", f"--unit={scope_unit(run_id)}", f"--slice={SLICE}",
             "--property=Delegate=yes", "--collect", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + SCOPE_WAIT_S
        want = f"0::/{SLICE}/{scope_unit(run_id)}"
        while True:
            if holder.poll() is not None:
                err = (holder.stderr.read().decode(errors="replace").strip().splitlines() or [""])[-1]
                raise CgroupError(f"systemd-run could not start the run's scope {scope_unit(run_id)} "
                                  f"(exit {holder.returncode}): {err[:200]}")
            try:
                if Path(f"/proc/{holder.pid}/cgroup").read_text().strip() == want:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                holder.kill()
                raise CgroupError(f"systemd did not put the run's scope {scope_unit(run_id)} in place within "
                                  f"{SCOPE_WAIT_S:g} s")
            time.sleep(0.02)
        holder.stderr.close()
        (scope / HOLDER).mkdir(exist_ok=True)
        _write(scope / HOLDER / "cgroup.procs", str(holder.pid))
    available = _read(scope / "cgroup.controllers").split()
    missing = [c for c in ("cpu", "memory") if c not in available]
    if missing:
        raise CgroupError(f"systemd delegated {scope} without controllers {missing} (has: {available})")
    _write(scope / "cgroup.subtree_control", " ".join(f"+{c}" for c in ("cpu", "memory", "cpuset") if c in available))
    return scope


def _stop_scope(run_id: str, root: Path) -> None:
    """Stop the run's scope unit (its holder goes, systemd removes its cgroup) and wait for it."""
    import subprocess

    scope = root / SLICE / scope_unit(run_id)
    if not scope.exists():
        return
    done = subprocess.run(["systemctl", "stop", scope_unit(run_id)], capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 5.0
    while scope.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if scope.exists():
        for d in (scope / HOLDER, scope):           # what systemd left, if anything
            with contextlib.suppress(OSError):
                _rmdir_when_empty(d, timeout_s=1.0)
    if scope.exists():
        why = (done.stderr.strip().splitlines() or [""])[-1]
        raise CgroupError(f"cannot remove the run's scope {scope}: systemctl stop {scope_unit(run_id)}: "
                          f"{why or 'it is still there'}{_who(scope)}")


def format_cpuset(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2,5' (the kernel's own list format)."""
    parts: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = ordered[0]
    for c in ordered[1:] + [None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


def parse_cpuset(text: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5); '' -> ()."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return tuple(out)


def cpu_quota_us(cpus: float, period_us: int = CPU_PERIOD_US) -> int:
    quota = round(cpus * period_us)
    if quota < CPU_QUOTA_US_MIN:      # topology checks refuse this first; never round a limit up silently
        raise CgroupError(f"cpus {cpus:g} over a {period_us} us period is a {quota} us quota, under the kernel's "
                          f"{CPU_QUOTA_US_MIN} us minimum: give more cpus or a longer cpu_period")
    return quota


def v1_requests(limits: Limits, parent_mems: str = "0", raising_memory: bool = True) -> list[tuple[str, str, str]]:
    """(controller, file, value) writes for cgroup v1, in the order they must happen.

    v1 insists memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every step, so the
    memory+swap cap goes first when the limit rises and last when it falls.
    """
    quota = str(cpu_quota_us(limits.cpus, limits.period_us)) if limits.cpus is not None else "-1"
    req = [("cpu", "cpu.cfs_period_us", str(limits.period_us)), ("cpu", "cpu.cfs_quota_us", quota),
           # cpuset.mems must be set before any task can join a v1 cpuset group
           ("cpuset", "cpuset.mems", parent_mems)]
    if limits.cpuset is not None:
        req.append(("cpuset", "cpuset.cpus", format_cpuset(limits.cpuset)))
    mem = str(limits.memory_bytes) if limits.memory_bytes is not None else "-1"
    # swap off for the host: memory+swap capped at the same value, and no swapping
    memory = [("memory", "memory.limit_in_bytes", mem), ("memory", "memory.memsw.limit_in_bytes", mem)]
    req.append(("memory", "memory.swappiness", "0"))
    req.extend(reversed(memory) if raising_memory else memory)
    return req


def v2_requests(limits: Limits) -> dict[str, str]:
    """{file: value} for cgroup v2."""
    req: dict[str, str] = {}
    if limits.cpus is not None:
        req["cpu.max"] = f"{cpu_quota_us(limits.cpus, limits.period_us)} {limits.period_us}"
    else:
        req["cpu.max"] = f"max {limits.period_us}"
    if limits.cpuset is not None:
        req["cpuset.cpus"] = format_cpuset(limits.cpuset)
    if limits.memory_bytes is not None:
        req["memory.max"] = str(limits.memory_bytes)
        req["memory.swap.max"] = "0"
    else:
        req["memory.max"] = "max"
    return req


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        hint = ""
        if e.errno == errno.EBUSY and "memory" in path.name:
            hint = " (the host uses more memory than the new limit; stop its processes first)"
        raise CgroupError(f"cannot write {value!r} to {path}: {reason}{hint}") from None


def _rmdir_when_empty(path: Path, timeout_s: float = 5.0) -> None:
    """rmdir a cgroup; its last processes may take a moment to be reaped."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {os.strerror(e.errno)}{_who(path)}") from None
            time.sleep(0.02)


def _who(path: Path) -> str:
    """' (still holds: pid cmdline, ...)' for an error message, or ''."""
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return ""
    names = []
    for pid in pids[:5]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        names.append(f"{pid} {cmd[:60]}")
    return f" (still holds: {', '.join(names)})" if names else ""


class HostCgroup:
    """The cgroup(s) of one emulated host. Create with :meth:`create`, release with :meth:`remove`.

    ``paths`` lists every directory made (one per v1 controller, or one on v2); the caller
    records them in the run registry *before* calling :meth:`create`.
    """

    def __init__(self, run_id: str, host: str, version: int | None = None, root: Path = CGROUP_ROOT):
        self.run_id = run_id
        self.host = host
        self.root = root
        self.version = version or detect_version(root)
        self.limits = Limits()

    # -- layout -------------------------------------------------------------------------
    def run_dirs(self) -> list[Path]:
        return run_cgroup_dirs(self.run_id, self.root, self.version)

    @property
    def paths(self) -> list[Path]:
        return [d / self.host for d in self.run_dirs()]

    def _dir(self, controller: str) -> Path:
        if self.version == 2:
            return run_base(self.run_id, self.root, self.version) / self.host
        return self.root / controller / TOP / self.run_id / self.host

    # -- lifecycle ----------------------------------------------------------------------
    def create(self, limits: Limits) -> None:
        with top_lock(self.root):  # another run may be removing the shared top directory
            if self.version == 2:
                self._create_v2()
            else:
                self._create_v1()
        self.apply(limits)

    def _create_v2(self) -> None:
        wanted = ["cpu", "memory", "cpuset"]
        available = _read(self.root / "cgroup.controllers").split()
        missing = [c for c in ("cpu", "memory") if c not in available]
        if missing:
            raise CgroupError(f"cgroup v2 root lacks controllers {missing}; available: {available}")
        if delegated(self.root, 2):
            scope = _start_scope(self.run_id, self.root)
            (scope / self.host).mkdir(exist_ok=True)
            return
        enable = " ".join(f"+{c}" for c in wanted if c in available)
        parent = self.root
        for part in (TOP, self.run_id, self.host):
            # a v2 group can only delegate controllers its parent enabled for its children
            _write(parent / "cgroup.subtree_control", enable)
            parent = parent / part
            parent.mkdir(exist_ok=True)

    def _create_v1(self) -> None:
        from cgroupspy import trees  # v1 only; cgroupspy walks the hierarchy it is given

        for controller in V1_CONTROLLERS:
            base = self.root / controller
            if not base.is_dir():
                raise CgroupError(f"cgroup v1 controller {controller!r} is not mounted at {base}")
            top = base / TOP
            if not top.is_dir():
                top.mkdir()
                if controller == "cpuset":  # v1 cpuset groups start empty: inherit the parent's
                    _write(top / "cpuset.cpus", _read(base / "cpuset.cpus"))
                    _write(top / "cpuset.mems", _read(base / "cpuset.mems"))
            tree = trees.Tree(root_path=str(base.parent).encode() + b"/", groups=[controller])
            node = tree.get_node_by_path(f"/{controller}/{TOP}/".encode())
            run_node = next((c for c in node.children if c.name == self.run_id.encode()), None)
            if run_node is None:
                run_node = node.create_cgroup(self.run_id)
                if controller == "cpuset":
                    _write(Path(run_node.full_path.decode()) / "cpuset.cpus", _read(top / "cpuset.cpus"))
                    _write(Path(run_node.full_path.decode()) / "cpuset.mems", _read(top / "cpuset.mems"))
            host_node = next((c for c in run_node.children if c.name == self.host.encode()), None)
            if host_node is None:
                host_node = run_node.create_cgroup(self.host)
            if controller == "cpuset":
                _write(Path(host_node.full_path.decode()) / "cpuset.cpus", _read(top / "cpuset.cpus"))

    def apply(self, limits: Limits) -> None:
        """Write the limits (also for live changes); call :meth:`verify` to read them back."""
        if self.version == 2:
            for name, value in v2_requests(limits).items():
                f = self._dir("") / name
                if name == "memory.swap.max" and not f.exists():
                    continue  # kernel built without swap accounting: there is no swap to limit
                _write(f, value)
        else:
            mems = _read(self.root / "cpuset" / TOP / self.run_id / "cpuset.mems")
            current = self.read_back().memory_bytes  # None: unlimited
            want = limits.memory_bytes
            raising = want is None or (current is not None and want > current)
            for controller, name, value in v1_requests(limits, mems, raising_memory=raising):
                f = self._dir(controller) / name
                if name == "memory.memsw.limit_in_bytes" and not f.exists():
                    continue  # kernel without swap accounting: there is no swap to cap
                _write(f, value)
        self.limits = limits

    def read_back(self) -> Limits:
        """The limits the kernel holds now."""
        if self.version == 2:
            d = self._dir("")
            quota, period = _read(d / "cpu.max").split()
            cpus = None if quota == "max" else int(quota) / int(period)
            mem = _read(d / "memory.max")
            memory = None if mem == "max" else int(mem)
            cpuset_file = d / "cpuset.cpus"
            cs = _read(cpuset_file) if cpuset_file.exists() else ""
        else:
            quota = int(_read(self._dir("cpu") / "cpu.cfs_quota_us"))
            period = int(_read(self._dir("cpu") / "cpu.cfs_period_us"))
            cpus = None if quota < 0 else quota / period
            mem = int(_read(self._dir("memory") / "memory.limit_in_bytes"))
            memory = None if mem >= (1 << 62) else mem  # v1 reports "unlimited" as ~2^63
            cs = _read(self._dir("cpuset") / "cpuset.cpus")
        return Limits(cpus=cpus, memory_bytes=memory, cpuset=parse_cpuset(cs) if cs else None,
                      cpu_period_us=int(period))

    def verify(self) -> list[str]:
        """Differences between what was asked and what the kernel holds; empty when equal."""
        got = self.read_back()
        want = self.limits
        problems = []
        if want.cpus is None:
            if got.cpus is not None:
                problems.append(f"{self.host}: cpu quota {got.cpus} set, expected unlimited")
        elif got.cpus is None or abs(got.cpus - cpu_quota_us(want.cpus, want.period_us) / want.period_us) > 1e-9:
            problems.append(f"{self.host}: cpu quota reads {got.cpus}, expected {want.cpus}")
        if got.period_us != want.period_us:
            problems.append(f"{self.host}: cpu period reads {got.period_us} us, expected {want.period_us} us")
        if want.memory_bytes is None:
            if got.memory_bytes is not None:
                problems.append(f"{self.host}: memory limit {got.memory_bytes} set, expected unlimited")
        elif got.memory_bytes is None or got.memory_bytes != _page_align(want.memory_bytes):
            problems.append(f"{self.host}: memory limit reads {got.memory_bytes}, expected {want.memory_bytes}")
        if want.cpuset is not None and tuple(sorted(set(want.cpuset))) != got.cpuset:
            problems.append(f"{self.host}: cpuset reads {got.cpuset}, expected {want.cpuset}")
        return problems

    def procs_files(self) -> list[Path]:
        """Files a process writes its pid into to join this host (all controllers)."""
        return [p / "cgroup.procs" for p in self.paths]

    def join(self, pid: int) -> None:
        for f in self.procs_files():
            _write(f, str(pid))

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files():
            if f.exists():
                out.update(int(x) for x in f.read_text().split())
        return out

    def kill_all(self, timeout_s: float = 3.0) -> None:
        """SIGKILL every process in this host's cgroup until it is empty (for teardown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took from this host so far."""
        if self.version == 2:
            f = self._dir("") / "memory.events"
        else:
            f = self._dir("memory") / "memory.oom_control"
        for line in f.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_usage_ns(self) -> int:
        """CPU time used by the host's processes so far (cpuacct / cpu.stat)."""
        if self.version == 2:
            for line in (self._dir("") / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
            return 0
        return int(_read(self._dir("cpuacct") / "cpuacct.usage"))

    def remove(self) -> None:
        remove_run_cgroups(self.run_id, self.root, self.version, hosts=[self.host])


@contextlib.contextmanager
def top_lock(root: Path):
    """Serialise creating run groups with removing the shared ``testbed`` directory.

    Several runs share ``<controller>/testbed``; the last one out removes it. Without the
    lock a run could create its groups just as another run removes the (momentarily empty)
    top directory. The lock file lives with the registry in /run (tmpfs).
    """
    lock_dir = Path(os.environ.get("TESTBED_REGISTRY_DIR", "/run/testbed"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    key = str(root).strip("/").replace("/", "_") or "root"
    with open(lock_dir / f".cgroup-{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _page_align(n: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return n // page * page


def run_cgroup_dirs(run_id: str, root: Path = CGROUP_ROOT, version: int | None = None) -> list[Path]:
    version = version or detect_version(root)
    if version == 2:
        return [run_base(run_id, root, version)]
    return [root / c / TOP / run_id for c in V1_CONTROLLERS]


def list_run_ids(root: Path = CGROUP_ROOT) -> set[str]:
    """Run ids that still own a cgroup directory (for `testbed clean`)."""
    try:
        version = detect_version(root)
    except CgroupError:
        return set()
    tops = [root / TOP] if version == 2 else [root / c / TOP for c in V1_CONTROLLERS]
    found = {p.name for t in tops if t.is_dir() for p in t.iterdir() if p.is_dir()}
    if delegated(root, version) and (root / SLICE).is_dir():
        found |= {p.name[len(SCOPE_PREFIX):-len(".scope")] for p in (root / SLICE).iterdir()
                  if p.is_dir() and p.name.startswith(SCOPE_PREFIX) and p.name.endswith(".scope")}
    return found


def remove_run_cgroups(run_id: str, root: Path = CGROUP_ROOT, version: int | None = None,
                       hosts: list[str] | None = None) -> list[Path]:
    """Remove a run's host groups (all, or the named ones) and then the run directory when empty.

    Processes still inside must have been stopped by the caller; returns what was removed.
    """
    removed: list[Path] = []
    with top_lock(root):
        _remove_run_dirs(run_id, root, version, hosts, removed)
    return removed


def _remove_run_dirs(run_id: str, root: Path, version: int | None, hosts: list[str] | None,
                     removed: list[Path]) -> None:
    for run_dir in run_cgroup_dirs(run_id, root, version):
        if not run_dir.is_dir():
            continue
        children = [run_dir / h for h in hosts] if hosts else \
            [p for p in run_dir.iterdir() if p.is_dir() and p.name != HOLDER]
        for child in children:
            if child.is_dir():
                _rmdir_when_empty(child)
                removed.append(child)
        if delegated(root, version):
            if not any(p.is_dir() and p.name != HOLDER for p in run_dir.iterdir()):
                _stop_scope(run_id, root)       # systemd's to remove, with its holder
                removed.append(run_dir)
            continue
        if not any(p.is_dir() for p in run_dir.iterdir()):
            _rmdir_when_empty(run_dir)
            removed.append(run_dir)
            top = run_dir.parent
            try:
                top.rmdir()  # last run out removes the shared top directory
            except OSError:
                pass
