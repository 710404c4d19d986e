"""`testbed`: the command line. A thin skin: parse, validate, call the library, print.

Anything a user can get wrong ends in one line on stderr (``Error: ...``), never a traceback.
Every error of the testbed is a :class:`~topologies.errors.TestbedError` and is turned into
that line in one place (:class:`_Testbed`, the command group), whatever command raised it.
Exit codes: 0 done; 1 an error of the testbed (its ``exit_code``) or a failed check
(`calibrate`); 2 a usage error (click); 3 an internal error (a bug: ``TESTBED_DEBUG=1`` shows
the traceback); 128 + signal when interrupted (130 Ctrl-C, 143 SIGTERM). SIGTERM is turned
into an orderly exit so every network is torn down.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import click

from emulation import signals
from topologies import apply_overrides, load_topology
from topologies.errors import TestbedError, no_space, no_space_line, one_line

from . import output


class _Terminated(SystemExit):
    pass


class _Failed(click.ClickException):
    """A testbed error as click shows it: ``Error: <its one line>``, and its exit code."""

    def __init__(self, error: TestbedError) -> None:
        super().__init__(one_line(error))
        self.exit_code = error.exit_code


def _disk_full(e: OSError) -> TestbedError:
    """A full disk that no step named itself: the machine's fault, not a bug (exit 1)."""
    import tempfile

    from workloads.cache import default_root

    where = e.filename or "a file"
    error = TestbedError(no_space_line(where, f"point TESTBED_CACHE ({default_root()}), the output folder "
                                              f"(--out) or TMPDIR ({tempfile.gettempdir()}) elsewhere"))
    for note in getattr(e, "__notes__", ()):
        error.add_note(note)
    return error


class _Testbed(click.Group):
    """The command group, and the one handler of the testbed's errors: whichever command (or
    sub-command) raises a :class:`TestbedError`, the user reads its one line (with the notes
    added to it), not a traceback; so does a full disk."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TestbedError as e:
            raise _Failed(e) from None
        except OSError as e:
            if not no_space(e):
                raise
            raise _Failed(_disk_full(e)) from None


TEARDOWN_BOUND_S = 10.0     # after a signal held during teardown, the most the CLI waits for it to end


class _Stopping:
    """How the CLI stops on SIGINT, SIGTERM and SIGHUP without leaving anything behind.

    The first signal is acted on: it raises (KeyboardInterrupt, or :class:`_Terminated` with
    128 + its number) so that every ``with`` / ``finally`` tears down what it built. Every
    later one is held: teardown must finish (a Ctrl-C that cut it short left namespaces and
    cgroups behind), and so must the store's writes. The first held signal (here or in an
    :func:`emulation.signals.deferred` block, which holds even the first) is said on stderr
    once, and bounds the wait: if the process has not ended :data:`TEARDOWN_BOUND_S` later,
    it names what its runs still hold, says `testbed clean` removes it, and exits with the
    code the first signal asked for."""

    def __init__(self) -> None:
        self.signum: int | None = None      # the signal being acted on
        self.first_held: int | None = None  # the first held (inside a deferred block, it may come first)
        self.timer: threading.Timer | None = None

    def on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.signum is not None:
            self.held(signum)
            return
        # a signal held before (in a deferred block) is the first: the exit follows it, whichever
        # of the two Python hands to this handler first once the block ends
        self.signum = self.first_held or signum
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Terminated(128 + self.signum)

    @property
    def code(self) -> int:
        return 128 + (self.signum or self.first_held or signal.SIGINT)

    def held(self, signum: int) -> None:
        """A signal that arrived while teardown runs (from a handler: note it, never raise)."""
        self.first_held = self.first_held or signum
        if self.timer is not None:
            return
        name = signal.Signals(signum).name
        # os.write: the handler may run while the main thread is inside a write to stderr
        os.write(2, f"testbed: {name}: stopping once what was measured is stored and the network is torn down "
                    f"(a signal cannot cut that short); if it takes over {TEARDOWN_BOUND_S:g} s, what is left is "
                    "named for `testbed clean`\n".encode())
        self.timer = threading.Timer(TEARDOWN_BOUND_S, self.give_up)
        self.timer.daemon = True
        self.timer.start()

    def give_up(self) -> None:
        """Teardown ran past its bound (it hangs): say what is left, exit as the signal asked."""
        from emulation.cleanup import describe, left_by

        try:
            left = describe(left_by(os.getpid()))
        except Exception as e:  # noqa: BLE001 - the exit must happen whatever the scan meets
            left = f"(could not look: {type(e).__name__}: {e})"
        what = f"left: {left}; run `testbed clean` to remove it" if left else "nothing of the network is left"
        os.write(2, f"Error: teardown did not end within {TEARDOWN_BOUND_S:g} s of the signal; {what}\n".encode())
        os._exit(self.code)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


_stopping = _Stopping()


def _install_signal_handlers() -> None:
    global _stopping
    if threading.current_thread() is threading.main_thread():
        _stopping.cancel()
        _stopping = _Stopping()
        # a shell starts background jobs with SIGINT ignored; Ctrl-C / kill -INT must still clean up;
        # fork-safe: a child pyroute2 forks to open sockets in namespaces dies as the signal asks
        signals.install(_stopping.on_signal, *signals.STOP_SIGNALS)
        signals.on_held(_on_held)


def _on_held(signum: int) -> None:
    _stopping.held(signum)


def _ignore_stop_signals_once_stopped() -> None:
    """After the first signal, everything is torn down when the CLI returns; Python then puts
    the default handlers back while it exits, and one more Ctrl-C there would end the process
    by SIGINT instead of with the exit code the first signal asked for."""
    if (_stopping.signum or _stopping.first_held) and threading.current_thread() is threading.main_thread():
        for s in signals.STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    _stopping.cancel()


def _parse_sets(values: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        path, eq, value = v.partition("=")
        if not eq or not path or not value:
            raise click.UsageError(f"--set {v!r}: expected PATH=VALUE, e.g. links.mobile-edge.bandwidth=50Mbit")
        out.append((path.strip(), value.strip()))
    return out


def _experiment_or_none(target: str, sets: tuple[str, ...]):
    """The experiment in ``target`` when it is a YAML file with ``strategies`` (else None: a
    topology); a broken experiment file is one clear error."""
    import yaml

    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment

    path = Path(target)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # the topology loader says what is wrong with the file
    if not isinstance(data, dict) or "strategies" not in data:
        return None
    return load_experiment(path, _parse_sets(sets), cores=machine_cores(), memory_bytes=machine_memory_bytes())


def _load_spec(ref: str, sets: tuple[str, ...]):
    from emulation.probe import machine_cores, machine_memory_bytes

    spec = load_topology(ref, cores=machine_cores(), memory_bytes=machine_memory_bytes())
    overrides = _parse_sets(sets)
    return apply_overrides(spec, overrides) if overrides else spec


def _require_emulation(caps: dict) -> None:
    from emulation.probe import problems_for_emulation

    problems = problems_for_emulation(caps)
    if problems:
        raise click.ClickException("; ".join(problems))


@click.group(cls=_Testbed, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Edge AI deployment testbed: emulate mobile, edge and cloud hosts and measure deployments."""
    _install_signal_handlers()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """What this machine can enforce (links, delay, loss, CPU and memory limits) and how."""
    from emulation.probe import capabilities

    caps = capabilities()
    if as_json:
        click.echo(json.dumps(caps, indent=2))
    else:
        output.print_doctor(caps)


SET_HELP = "Override a topology value, e.g. links.mobile-edge.bandwidth=50Mbit or hosts.mobile.cpus=0.5."


@cli.command()
@click.argument("topology")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help=SET_HELP)
@click.option("--cli", "open_cli", is_flag=True, help="Open Mininet's CLI instead of waiting for Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="Print what was applied as JSON.")
def up(topology: str, sets: tuple[str, ...], open_cli: bool, as_json: bool) -> None:
    """Bring TOPOLOGY up, verify it, print what was applied, hold until Ctrl-C; clean on exit."""
    from emulation.network import EmulatedNetwork
    from emulation.probe import capabilities

    spec = _load_spec(topology, sets)
    caps = capabilities()
    _require_emulation(caps)
    try:
        with EmulatedNetwork(spec, caps=caps) as net:
            applied = net.applied()
            if as_json:
                click.echo(json.dumps(applied, indent=2))
            else:
                output.print_applied(applied)
            if open_cli:
                from mininet.cli import CLI

                CLI(net.mn)
            else:
                click.echo(f"run {net.run_id} is up; Ctrl-C to tear it down", err=True)
                while True:
                    signal.pause()
    except KeyboardInterrupt:
        click.echo("stopped; everything removed", err=True)


@cli.command()
@click.argument("target", metavar="TOPOLOGY|EXPERIMENT")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help=SET_HELP)
@click.option("--duration", type=click.FloatRange(0.5, 120), default=None,
              help="Seconds per goodput / CPU measurement (default: 3, or 6 below 5 Mbit/s).")
@click.option("--no-memory-check", is_flag=True, help="Skip the OOM test of each host's memory limit.")
@click.option("--model", "models", multiple=True, metavar="MODEL",
              help="Check each CPU-limited host's per-request compute with this model (prepared, cached), "
                   "instead of a 20 ms busy loop; repeatable.")
@click.option("--requests", type=click.IntRange(5, 1000), default=30, show_default=True,
              help="Requests per host in the compute check.")
@click.option("--no-pace", is_flag=True, help="Compute check without pacing (serving.pace: false).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def calibrate(target: str, sets: tuple[str, ...], duration: float | None, no_memory_check: bool,
              models: tuple[str, ...], requests: int, no_pace: bool, as_json: bool) -> None:
    """Measure every link direction and host of TOPOLOGY against its spec; exit 1 on a failed check.

    Given an EXPERIMENT file instead, its topology (with the file's overrides and --set) is
    measured, and each CPU-limited host's compute is checked on the very parts the
    experiment's strategies place there (prepared and cached as `testbed prepare` does)."""
    from emulation.calibrate import calibrate as run_calibration
    from emulation.network import EmulatedNetwork
    from emulation.probe import capabilities

    exp = _experiment_or_none(target, sets)
    if exp is not None and models:
        raise click.UsageError("--model goes with a TOPOLOGY; an EXPERIMENT file's hosts are checked on its own parts")
    spec = exp.topology if exp is not None else _load_spec(target, sets)
    caps = capabilities()
    _require_emulation(caps)
    work = None
    if exp is not None:
        from testbed.artifacts import calibration_work

        work = calibration_work(exp, progress=(lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True)))
        no_pace = no_pace or not exp.serving.pace
    elif models:
        from workloads.errors import WorkloadError
        from workloads.prepare import prepare

        try:
            work = [(m, ["--onnx", str(prepare(m).path / "seg0.onnx")]) for m in models]
        except WorkloadError as e:
            raise WorkloadError(f"--model: {e}") from None
    with EmulatedNetwork(spec, caps=caps) as net:
        report = run_calibration(net, duration_s=duration, memory_check=not no_memory_check,
                                 progress=None if as_json else (lambda m: click.echo(f"  measuring {m}", err=True)),
                                 compute=work, compute_requests=requests, pace=not no_pace)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        output.print_calibration(report)
    if not report["pass"]:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def clean(dry_run: bool, as_json: bool) -> None:
    """Remove what crashed testbed runs left behind (by their run id), and nothing else."""
    from emulation.cleanup import clean as do_clean

    if os.geteuid() != 0 and not dry_run:
        raise click.ClickException("cleaning needs root: run it with sudo (or use --dry-run)")
    found = do_clean(dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "items": [f.as_dict() for f in found]}, indent=2))
    else:
        output.print_clean(found, dry_run)


@cli.group()
def models() -> None:
    """The model registry: built-in models, their inputs and where their weights come from."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_list(as_json: bool) -> None:
    """Every built-in model: name, task, metric, offline or needs a download, input shapes."""
    from workloads.models import models as all_models

    rows = [{"name": m.name, "task": m.task, "metric": m.metric, "offline": m.offline,
             "weights": list(m.weights), "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)}
                                                    for i in m.inputs],
             "source": m.source, "description": m.description} for m in all_models()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        output.print_models(rows)


@models.command("cuts")
@click.argument("model")
@click.option("--weights", default=None, help="pretrained | random (default: the model's first, pretrained for built-ins).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_cuts(model: str, weights: str, as_json: bool) -> None:
    """Every valid single-tensor cut of MODEL: tensor, bytes crossing it, FLOPs before and after."""
    import onnx

    from workloads import graph
    from workloads.cache import Cache
    from workloads.export import export_model
    from workloads.models import BuildContext, check_weights, get_model

    entry = get_model(model)
    weights = weights or entry.weights[0]
    check_weights(entry, weights)
    path = export_model(entry, BuildContext(cache=Cache(), weights=weights,
                                            progress=lambda m: click.echo(f"  {m}", err=True)))
    info = graph.analyze(onnx.load(str(path)))
    rows = [{"index": c.index, "tensor": c.tensor, "dtype": c.dtype, "shape": list(c.shape), "bytes": c.bytes,
             "flops_before": c.flops_before, "flops_after": c.flops_after, "fraction": round(c.fraction, 4)}
            for c in info.cuts]
    if as_json:
        click.echo(json.dumps({"model": entry.name, "total_flops": info.total_flops, "params": info.params,
                               "cuts": rows}, indent=2))
    else:
        output.print_cuts(entry.name, info.total_flops, rows)


class _Unit(click.ParamType):
    """A value with a unit, parsed as everywhere in the testbed (:mod:`topologies.units`)."""

    def __init__(self, parse, name: str) -> None:
        self.parse, self.name = parse, name

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except TestbedError as e:
            self.fail(one_line(e), param, ctx)


def _units():
    from topologies import parse_duration_ms, parse_rate

    return _Unit(parse_rate, "rate"), _Unit(parse_duration_ms, "duration")


RATE, DURATION = _units()


@cli.group()
def traces() -> None:
    """Link traces: make synthetic ones, summarise any (CSV steps or Mahimahi)."""


@traces.group()
def synth() -> None:
    """Write a seeded synthetic bandwidth trace as CSV (its parameters in its header)."""


def _synth_options(f):
    for option in reversed([
        click.option("--step", type=DURATION, default="100ms", show_default=True, help="Length of each step."),
        click.option("--duration", type=DURATION, default="60s", show_default=True, help="Length of the trace."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random draws."),
        click.option("--min", "floor", type=RATE, default="1kbit", show_default=True,
                     help="Lowest bandwidth a step may have (lower draws are held to it, and counted)."),
        click.option("--max", "cap", type=RATE, default="100Gbit", show_default=True,
                     help="Highest bandwidth a step may have (higher draws are held to it, and counted)."),
        click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here (default: stdout)."),
    ]):
        f = option(f)
    return f


def _write_synth(text: str, out: str | None) -> None:
    from topologies.traces import load_trace

    load_trace(out or "<synth>", text=text, mode="loop")      # what we write must load back
    if out is None:
        click.echo(text, nl=False)
        return
    Path(out).write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)


def _check_synth(step: float, duration: float, floor: int, cap: int) -> None:
    from topologies.checks import RATE_MAX, RATE_MIN
    from topologies.traces import MIN_STEP_MS

    if step < MIN_STEP_MS:
        raise click.BadParameter(f"{step:g}ms is shorter than the {MIN_STEP_MS:g}ms a link change needs",
                                 param_hint="--step")
    if duration < step:
        raise click.BadParameter("shorter than one step", param_hint="--duration")
    if not RATE_MIN <= floor <= cap <= RATE_MAX:
        raise click.BadParameter(f"need 1kbit <= --min <= --max <= 100Gbit", param_hint="--min/--max")


def _command_line(name: str, params: dict) -> str:
    from topologies import format_duration_ms, format_rate

    def show(k, v):
        if k in ("mean", "good", "bad", "floor", "cap"):
            return format_rate(v)
        if k in ("coherence", "good_time", "bad_time", "step", "duration"):
            return format_duration_ms(v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    flags = {"floor": "min", "cap": "max"}
    return f"testbed traces synth {name} " + " ".join(
        f"--{flags.get(k, k).replace('_', '-')} {show(k, v)}" for k, v in params.items() if k != "out")


@synth.command("walk")
@click.option("--mean", type=RATE, required=True, help="Mean bandwidth, e.g. 20Mbit.")
@click.option("--cv", type=click.FloatRange(0.0, 10.0, min_open=True), default=0.5, show_default=True,
              help="Coefficient of variation of the bandwidth (standard deviation / mean).")
@click.option("--coherence", type=DURATION, default="2s", show_default=True,
              help="Coherence time: the bandwidth's autocorrelation falls to 1/e over it.")
@_synth_options
def synth_walk(mean: int, cv: float, coherence: float, step: float, duration: float, seed: int, floor: int,
               cap: int, out: str | None) -> None:
    """A log-normal random walk: AR(1) in log space with the given mean, CV and coherence time."""
    import math

    from testbed.tracegen import synth_csv, walk

    _check_synth(step, duration, floor, cap)
    if coherence <= 0:
        raise click.BadParameter("must be above 0", param_hint="--coherence")
    params = dict(mean=mean, cv=cv, coherence=coherence, step=step, duration=duration, seed=seed, floor=floor, cap=cap)
    steps, held = walk(mean, cv, coherence, step, duration, seed, floor, cap)
    sigma = math.sqrt(math.log1p(cv * cv))
    comments = [_command_line("walk", params),
                f"log-normal random walk: log bandwidth is AR(1), phi = exp(-step/coherence) = "
                f"{math.exp(-step / coherence):.4f}, sigma = sqrt(ln(1 + cv^2)) = {sigma:.4f}, "
                f"mu = ln(mean) - sigma^2/2; numpy PCG64 seed {seed}"]
    _write_synth(synth_csv(steps, len(steps) * step, comments, held, floor, cap), out)


@synth.command("markov")
@click.option("--good", type=RATE, required=True, help="Mean bandwidth in the good state, e.g. 50Mbit.")
@click.option("--bad", type=RATE, required=True, help="Mean bandwidth in the bad state, e.g. 2Mbit.")
@click.option("--good-time", type=DURATION, default="5s", show_default=True, help="Mean time in the good state.")
@click.option("--bad-time", type=DURATION, default="1s", show_default=True, help="Mean time in the bad state.")
@click.option("--cv", type=click.FloatRange(0.0, 10.0), default=0.2, show_default=True,
              help="Coefficient of variation within a state (0: exactly the state's mean).")
@_synth_options
def synth_markov(good: int, bad: int, good_time: float, bad_time: float, cv: float, step: float, duration: float,
                 seed: int, floor: int, cap: int, out: str | None) -> None:
    """A Markov-modulated process: good and bad states with exponential sojourn times."""
    from testbed.tracegen import markov, synth_csv

    _check_synth(step, duration, floor, cap)
    for name, v in (("--good-time", good_time), ("--bad-time", bad_time)):
        if v < step:
            raise click.BadParameter("shorter than one step", param_hint=name)
    params = dict(good=good, bad=bad, good_time=good_time, bad_time=bad_time, cv=cv, step=step, duration=duration,
                  seed=seed, floor=floor, cap=cap)
    steps, held, share = markov(good, bad, good_time, bad_time, cv, step, duration, seed, floor, cap)
    comments = [_command_line("markov", params),
                f"Markov-modulated: two states, exponential sojourns (leave with 1 - exp(-step/mean time) per step), "
                f"log-normal within a state; numpy PCG64 seed {seed}; {share:.1%} of the steps in the good state"]
    _write_synth(synth_csv(steps, len(steps) * step, comments, held, floor, cap), out)


@traces.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["once", "loop"]), default="once", show_default=True,
              help="How the trace would be replayed (loop needs an end).")
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "mahimahi"]), default="auto", show_default=True)
@click.option("--window", type=DURATION, default="100ms", show_default=True,
              help="Mahimahi traces: the window over which delivery opportunities become bandwidth.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def traces_show(file: str, mode: str, fmt: str, window: float, as_json: bool) -> None:
    """Check FILE as a trace and summarise it: duration, steps, mean / p10 / p90 bandwidth."""
    from testbed.tracegen import summary
    from topologies.traces import load_trace

    info = summary(load_trace(file, mode=mode, format=fmt, window_ms=window))
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        output.print_trace(info)


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a value of the experiment file, e.g. requests.repeat=5.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def prepare(experiment: str, sets: tuple[str, ...], as_json: bool) -> None:
    """Build every artifact EXPERIMENT needs (cached by content) and report each one's quality."""
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.artifacts import prepare_needs
    from testbed.experiment import load_experiment
    from workloads.errors import WorkloadError

    exp = load_experiment(experiment, _parse_sets(sets), cores=machine_cores(), memory_bytes=machine_memory_bytes())
    # (a cut: fastest strategy's candidates: finding them prepares the graph they cut)
    needed = exp.artifacts_needed(progress=(lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True)))
    results = []
    try:
        with output.progress(len(needed)) as bar:
            for _need, r in prepare_needs(needed, progress=bar.describe):
                if isinstance(r, WorkloadError):
                    raise r
                results.append(r)
                bar.advance()
    except (KeyboardInterrupt, _Terminated) as e:
        click.echo(f"interrupted: {len(results)} of {len(needed)} artifacts are built and cached; nothing "
                   "half-built was kept, and training resumes from its checkpoint when you run this again",
                   err=True)
        sys.exit(e.code if isinstance(e, _Terminated) else 130)
    rows = [{"model": r.model, "weights": r.weights, "operators": r.operators, "parts": r.parts,
             "metric": r.metric, "value": r.value, "baseline": r.baseline,
             "interval": r.manifest["quality"].get("interval"), "size_bytes": r.size_bytes,
             "path": str(r.path), "cached": r.cached, "data": r.manifest.get("data")} for r in results]
    if as_json:
        click.echo(json.dumps({"experiment": exp.name, "artifacts": rows}, indent=2))
    else:
        output.print_prepared(exp.name, rows)


MAX_CELLS = 1000


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default results/<name>-<time>).")
@click.option("--resume", is_flag=True, help="Finish the run in --out: cells already done are kept, not re-run.")
@click.option("--dry-run", is_flag=True, help="List the cells and an estimated time; run nothing.")
@click.option("--max-cells", type=click.IntRange(1), default=MAX_CELLS, show_default=True,
              help="Refuse a grid with more cells than this (raise it to confirm a big sweep).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine, one cell after another; ray: cells on the nodes of a Ray cluster, "
                   "one cell per node at a time.")
@click.option("--address", default=None, metavar="ADDR",
              help="Ray cluster to use (host:port of its head); without it --executor ray starts a local one.")
@click.option("--insecure-ray", is_flag=True,
              help="Use a Ray cluster at --address that has no token authentication (refused without this: anyone "
                   "who reaches it can run code as root on its nodes).")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a value of the experiment file, e.g. links.edge-cloud.bandwidth=10Mbit.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def run(experiment: str, out: str | None, resume: bool, dry_run: bool, max_cells: int, executor: str,
        address: str | None, insecure_ray: bool, sets: tuple[str, ...], as_json: bool) -> None:
    """Run EXPERIMENT: prepare, bring the network up, deploy, measure every cell, store, clean up.

    Every combination of the sweep axes x model x strategy is one cell. Between sweep points
    the network is changed live (links, host limits) when its shape stays the same."""
    from pathlib import Path

    from emulation.probe import capabilities, machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment
    from testbed.runner import Events, cells_done, default_out, run_experiment
    from testbed.store import ResultStore
    from testbed.summary import summarize

    exp = load_experiment(experiment, _parse_sets(sets), cores=machine_cores(), memory_bytes=machine_memory_bytes())
    if address and executor != "ray":
        raise click.ClickException("--address names a Ray cluster: add --executor ray")
    if insecure_ray and not address:
        raise click.ClickException("--insecure-ray is about a cluster at --address (a local one always uses a token)")
    if resume and not out:
        raise click.ClickException("--resume needs --out DIR: the folder of the run to finish")
    folder = Path(out) if out else default_out(exp)
    cells = len(exp.cells_grid()) * len(exp.models) * len(exp.strategies)
    if cells > max_cells:
        raise click.ClickException(f"{experiment}: the grid has {cells} cells ({len(exp.cells_grid())} sweep points x "
                                   f"{len(exp.models)} models x {len(exp.strategies)} strategies), above --max-cells "
                                   f"{max_cells}; check the sweep, or pass --max-cells {cells} to run it")
    done = cells_done(folder, exp.name, resume or dry_run)
    if dry_run:
        _dry_run(exp, done, as_json)
        return
    _require_emulation(capabilities())
    status, code = "failed", 0
    # requests per cell, when known ahead (not for a duration, nor a search's runs)
    per_cell = exp.requests.repeat if exp.duration_ms() is None and not exp.load.searching else 0
    with output.run_progress(cells * per_cell or None, None if exp.load.searching else cells) as bar:
        events = Events(stage=bar.describe,
                        cell_start=lambda c, total: bar.describe(f"{c.model.name} / {c.strategy.name}"),
                        request_done=lambda st: bar.advance(),
                        cell_done=lambda o: bar.finish_cell(per_cell - len(o.requests)),
                        cells_skipped=lambda n: bar.finish_cell(n * per_cell, n))
        try:
            status, _ = run_experiment(exp, folder, events=events, executor=executor, address=address,
                                       insecure_ray=insecure_ray)
        except (KeyboardInterrupt, _Terminated) as e:
            status = "interrupted"
            code = e.code if isinstance(e, _Terminated) else 130
            for note in getattr(e, "__notes__", ()):       # e.g. the run's end could not be stored
                click.echo(f"note: {note}", err=True)
    with ResultStore.in_folder(folder, create=False) as store:
        rows = summarize(store.cells(), store.requests(), store.hops())
    if as_json:
        click.echo(json.dumps({"experiment": exp.name, "out": str(folder), "status": status, "cells": rows},
                              indent=2, default=str))
    else:
        output.print_run_summary(exp.name, rows, str(folder))
        click.echo(f"export: testbed results export {folder} --format csv|parquet", err=True)
    if status == "interrupted":
        click.echo(f"interrupted: cells measured so far are kept in {folder}; run the same command with "
                   f"--out {folder} --resume to finish it", err=True)
        sys.exit(code)


def _dry_run(exp, done: set[str], as_json: bool) -> None:
    from testbed.estimate import estimate

    cells, total, unknown = estimate(exp, done)
    if as_json:
        click.echo(json.dumps({"experiment": exp.name, "cells": [vars(c) for c in cells], "estimated_s": total,
                               "without_estimate": unknown}, indent=2, default=str))
        return
    output.print_dry_run(exp.name, cells, total, unknown)


@cli.group()
def results() -> None:
    """Read a run's output folder: summary, export."""


@results.command("show")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--detail", is_flag=True,
              help="Every measured column: compute per host, transmission per link, the compute / transmission / "
                   "other split, bytes, exits, quality with its baseline and same-answer share, requests per status.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (always every field).")
def results_show(folder: str, detail: bool, as_json: bool) -> None:
    """The per-cell summary of the run(s) stored in FOLDER: a table per model, one line per cell,
    grouped by sweep point (the swept values in short form, e.g. EC 5Mbit for links.edge-cloud.bandwidth)."""
    from testbed.store import ResultStore
    from testbed.summary import summarize

    with ResultStore.in_folder(folder, create=False) as store:
        rows = summarize(store.cells(), store.requests(), store.hops())
        runs = store.runs()
    if as_json:
        click.echo(json.dumps({"runs": runs, "cells": rows}, indent=2, default=str))
    else:
        show = output.print_run_detail if detail else output.print_run_summary
        show(", ".join(sorted({r["experiment"] for r in runs})) or "results", rows, folder)


@results.command("export")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Where to write (default FOLDER).")
def results_export(folder: str, fmt: str, dest: str | None) -> None:
    """Write cells, requests (one row per request) and hops (one row per hop) as CSV or Parquet."""
    from testbed.store import export

    paths = export(folder, fmt, dest)
    for p in paths:
        click.echo(str(p))


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Where to write (default FOLDER/report).")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Accuracy loss a recommendation may accept, as a fraction of the metric (0.01 = 1 point).")
@click.option("--json", "as_json", is_flag=True, help="Print the paths and recommendations as JSON.")
def report(folder: str, out: str | None, tolerance: float, as_json: bool) -> None:
    """Write FOLDER/report/index.html: figures, statistics and recommendations; works offline."""
    from testbed.recommend import headlines
    from testbed.report import write_report
    from testbed.summary import axis_names, point_labels
    from testbed.verify import cpu_summary_text

    written = write_report(folder, out, tolerance)
    if as_json:
        click.echo(json.dumps(written.to_dict(), indent=2, default=str))
    else:
        click.echo(f"report: {written.index} ({len(written.figures)} figures, {len(written.tables)} table files "
                   f"in {written.index.parent / 'tables'})")
        lines = headlines(written.recommendations)
        names = axis_names(a for r in lines for a in r["point"])     # the summary's short labels: EC 5Mbit
        for r in lines:
            where = ", ".join(point_labels(r["point"], names))
            click.echo(f"  {r['model']}" + (f" at {where}" if where else "") + f": {r['text']}")
        p = written.predicted or {}
        if p.get("median_abs_error") is not None:
            click.echo(f"  the plan against these cells: median |error| {p['median_abs_error'] * 100:.1f} % over "
                       f"{len(p['cells'])} cells; the predicted winner is the measured one at {p['agreed']} of "
                       f"{p['compared']} (point, model)" + output.indistinguishable_text(p) + cpu_summary_text(p))
        load = p.get("load") or {}
        if load.get("cells"):
            errors = [(k, load[f"median_abs_error{s}"]) for k, s in (("p50", ""), ("p99", "_p99"))]
            click.echo("  the plan against the cells under load: "
                       + ("median |error| " + ", ".join(f"{k} {v * 100:.1f} %" for k, v in errors if v is not None)
                          if any(v is not None for _, v in errors) else "every rate predicted saturated")
                       + f" over {len(load['cells'])} cells; the predicted winner (lowest p99 within the targets) is "
                       f"the measured one at {load['agreed']} of {load['compared']} (point, model)")
    if written.note:
        click.echo(f"note: {written.note}", err=True)


GRID_HELP = ("A grid axis: PATH=LO..HI:N (a link's bandwidth, N values log-spaced) or PATH=V1,V2,...; "
             "repeatable; it replaces the experiment's sweep of that path.")


def _load_for_plan(experiment: str, sets: tuple[str, ...], grids: tuple[str, ...]):
    from emulation.probe import machine_cores, machine_memory_bytes
    from testbed.experiment import load_experiment
    from testbed.plan import grid_points, parse_grid

    exp = load_experiment(experiment, _parse_sets(sets), cores=machine_cores(), memory_bytes=machine_memory_bytes())
    axes = [parse_grid(g) for g in grids]
    return exp, axes, grid_points(exp, axes)


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a value of the experiment file, e.g. hosts.edge.cpus=0.5.")
@click.option("--grid", "grids", multiple=True, metavar="PATH=VALUES", help=GRID_HELP + " Profiles the host "
              "values the grid sets.")
@click.option("--requests", type=click.IntRange(5, 10000), default=30, show_default=True,
              help="Requests per part and host.")
@click.option("--again", is_flag=True, help="Measure every part again, replacing its stored profile.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profile(experiment: str, sets: tuple[str, ...], grids: tuple[str, ...], requests: int, again: bool,
            as_json: bool) -> None:
    """Measure each part EXPERIMENT's strategies compute, on its emulated host under its limits.

    One request at a time inside the host's cgroup, with its server's ONNX Runtime threads and
    pacing; every request's compute is kept (p10/p50/p90 shown). Also, once per machine, what
    one pass through a link's emulation costs (pings on a two-host network). Profiles are
    stored in the cache by artifact, host limits and machine, and reused: `testbed plan`
    predicts from them."""
    from emulation.probe import capabilities
    from testbed.profile import profile_experiment, profile_links

    exp, _axes, points = _load_for_plan(experiment, sets, grids)
    _require_emulation(capabilities())
    say = (lambda m: None) if as_json else (lambda m: click.echo(f"  {m}", err=True))
    links = profile_links(again=again, progress=say)
    rows = profile_experiment(exp, points, requests=requests, again=again, progress=say)
    if as_json:
        click.echo(json.dumps({"experiment": exp.name, "profiles": rows, "links": links}, indent=2))
    else:
        output.print_profiles(exp.name, rows, links)


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override a value of the experiment file, e.g. links.edge-cloud.delay=20ms.")
@click.option("--grid", "grids", multiple=True, metavar="PATH=VALUES", help=GRID_HELP)
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Accuracy loss a winner may have, as a fraction of the metric (0.01 = 1 point), by its 95 % interval.")
@click.option("--verify", "verify_n", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="Then measure the N grid points where the winner is least sure (nearest a crossover), one "
                   "`testbed run` each, and report how often the predicted winner was right (root).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="With --verify: the output folder of the measured points (default results/<name>-verify-<time>).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: every prediction and its parts.")
def plan(experiment: str, sets: tuple[str, ...], grids: tuple[str, ...], tolerance: float, verify_n: int | None,
         out: str | None, as_json: bool) -> None:
    """Predict every strategy's latency at every grid point, from the stored profiles, in seconds.

    Prints the winner per point (fastest within the quality tolerance), the bandwidths where
    the winner changes and, for a two-axis grid, the map of winners. Needs `testbed profile`
    first (same experiment, same host values); runs nothing and needs no root, unless
    --verify N measures the N least sure points to check the predicted winners."""
    from pathlib import Path

    from testbed.plan import make_plan

    if out and verify_n is None:
        raise click.ClickException("--out is where --verify N stores what it measures: add --verify N")
    exp, axes, _points = _load_for_plan(experiment, sets, grids)
    made = make_plan(exp, axes, tolerance)
    checked = None
    if verify_n is not None:
        from emulation.probe import capabilities
        from testbed.runner import cells_done
        from testbed.verify import verify_plan

        folder = Path(out) if out else Path("results") / f"{exp.name}-verify-{time.strftime('%Y%m%d-%H%M%S')}"
        cells_done(folder, exp.name, False)         # a folder holding cells is refused, as `testbed run` does
        _require_emulation(capabilities())
        try:
            checked = verify_plan(exp, made, verify_n, folder, progress=lambda m: click.echo(f"  {m}", err=True))
        except (KeyboardInterrupt, _Terminated) as e:
            click.echo(f"interrupted: the points measured so far are kept in {folder} (`testbed report {folder}` "
                       "sets them beside the plan)", err=True)
            sys.exit(e.code if isinstance(e, _Terminated) else 130)
    if as_json:
        click.echo(json.dumps({**made.to_dict(), **({"verify": checked} if checked else {})}, indent=2, default=str))
    else:
        output.print_plan(made)
        if checked:
            output.print_verify(checked)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except _Terminated as e:
        sys.exit(e.code)
    except TestbedError as e:  # raised outside a command (the group's own callback): the same one line
        click.echo(f"Error: {one_line(e)}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("TESTBED_DEBUG"):
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {one_line(e)} "
                   "(set TESTBED_DEBUG=1 for the traceback; run `testbed clean` if a run was cut short)", err=True)
        sys.exit(3)
    finally:
        _ignore_stop_signals_once_stopped()


if __name__ == "__main__":
    main()
