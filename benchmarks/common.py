"""What the benchmark drivers share: the SIGTERM handler, a log line, the machine's state
(load average, other testbed runs), a process's CPU time, and the null model
served on loopback (an ONNX Identity or ReduceSum, :func:`null_artifact`, run by real
``workloads.serving serve`` processes, :class:`Procs`)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from emulation import registry, signals
from emulation.process import terminate

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt in this process, so that every `with`/finally tears down
    what it built. A forked helper (pyroute2 opens netns sockets from fork()ed children and
    stops them with SIGTERM) inherits the handler: it must die, never unwind our stack."""

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signals.install(on_term, signal.SIGTERM)


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process, in seconds; None once it is gone."""
    f = registry.proc_stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def other_runs() -> list[str]:
    """Live testbed runs of other processes (their traffic competes for the same cores)."""
    out = []
    for r in registry.load_records():
        if registry.owner_alive(r) and (r.get("owner") or {}).get("pid") != os.getpid():
            out.append(r["run_id"])
    return out


def machine_state() -> dict:
    """The load average and the other live testbed runs, now."""
    return {"loadavg": list(os.getloadavg()), "other_testbed_runs": other_runs(), "time": time.time()}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_sections(res: dict, sections: Iterable[str], run: Callable[[str], object]) -> None:
    """``res[sec] = run(sec)`` for each section in turn; one that raises (an interrupt aside)
    leaves its traceback in ``res["errors"][sec]`` and the others still run."""
    for sec in sections:
        log(f"== {sec}")
        try:
            res[sec] = run(sec)
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - one broken section must not lose the others
            res.setdefault("errors", {})[sec] = traceback.format_exc()
            log(f"section {sec} failed:\n{res['errors'][sec]}")


def errors_markdown(errors: dict[str, str]) -> list[str]:
    """The report's lines for the sections that failed: the last line of each traceback."""
    if not errors:
        return []
    return ["## Errors", ""] + [f"- {k}: {v.strip().splitlines()[-1]}" for k, v in errors.items()] + [""]


def write_results(out: Path, stem: str, res: dict, md: str) -> None:
    """``stem.json`` (every number) and ``stem.md`` (the report) in ``out``; prints the report."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    (out / f"{stem}.md").write_text(md + "\n")
    print(md)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- null artifacts -----------------------------------------------------------------------

def null_artifact(folder: Path, op: str, parts: int = 1) -> Path:
    """``parts`` segments of X[1, n] float32 -> Identity ... (``op`` = identity), or one
    segment X -> ReduceSum -> Y[1, 1] (``op`` = sink)."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    segments = []
    names = ["X"] + [f"H{i}" for i in range(1, parts)] + ["Y"]
    for i in range(parts):
        src, dst = names[i], names[i + 1]
        if op == "identity":
            nodes = [helper.make_node("Identity", [src], [dst])]
            out_shape = [1, "n"]
            inits = []
        else:
            nodes = [helper.make_node("ReduceSum", [src, "axes"], [dst], keepdims=1)]
            inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
            out_shape = [1, 1]
        g = helper.make_graph(nodes, f"null{i}", [helper.make_tensor_value_info(src, TensorProto.FLOAT, [1, "n"])],
                              [helper.make_tensor_value_info(dst, TensorProto.FLOAT, out_shape)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, str(folder / f"seg{i}.onnx"))
        segments.append({"file": f"seg{i}.onnx", "part": i, "inputs": [src], "outputs": [dst]})
    (folder / "artifact.json").write_text(json.dumps({"model": f"null-{op}", "parts": parts, "inputs": ["X"],
                                                      "outputs": ["Y"], "segments": segments}))
    return folder


class Procs:
    """Part servers on loopback (``workloads.serving serve``), stopped by :meth:`close`."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.log = tempfile.TemporaryFile("w+")

    def server(self, artifact: Path, part: int, nxt: int | None = None, threads: int = 1) -> int:
        """Start part ``part``'s server and wait until it is ready; returns its port."""
        port = free_port()
        argv = [PY, "-m", "workloads.serving", "serve", "--artifact", str(artifact), "--part", str(part),
                "--host", f"h{part}", "--listen", f"127.0.0.1:{port}", "--threads", str(threads)]
        if nxt is not None:
            argv += ["--next", f"127.0.0.1:{nxt}"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO)
        self.procs.append(p)
        if not p.stdout.readline():
            self.log.seek(0)
            raise RuntimeError(f"server did not start: {self.log.read()[-2000:]}")
        return port

    def chain(self, artifact: Path, parts: int) -> int:
        nxt = None
        for part in reversed(range(parts)):
            nxt = self.server(artifact, part, nxt)
        return nxt

    def close(self):
        terminate(self.procs)
        self.procs.clear()
