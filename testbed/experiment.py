"""The experiment file: one YAML file that describes a study, loaded into a frozen, validated
:class:`Experiment`.

The format
----------

.. code-block:: yaml

    name: blackbox-demo             # required: 1-64 letters, digits, '_', '.', '-'
    topology: three_tier            # a built-in (three_tier, star:mobiles=N, multi_edge:...),
                                    # a .yaml/.yml/.py file relative to this file's folder
                                    # (file.py:function too), or an inline mapping in the
                                    # topology YAML shape; default three_tier
    hosts:                          # overrides of the topology's hosts (cpus, memory, cpuset)
      mobile: {cpus: 0.25, memory: 1GiB}
    links:                          # overrides of its links (bandwidth, delay, jitter, loss,
      edge-cloud:                   # queue; forward/reverse for one direction)
        bandwidth: 1Mbit
        delay: 20ms
        reverse: {bandwidth: 10Mbit}
      mobile-edge: {trace: traces/walk.csv, trace_mode: loop}   # a link trace (both directions)
    models:                         # required, non-empty: names, or mappings
      - efficientnet_lite0
      - {name: minilm_sentiment, weights: random, data: data/reviews}
    strategies:                     # required, non-empty
      - {name: mobile, placement: mobile}
      - {name: edge-qee, operators: [quantize, {early_exit: {threshold: 0.8}}], placement: edge}
      - {name: me-partition, operators: [{partition: {cut: auto}}], placement: [mobile, edge]}
    source: mobile                  # where inputs are produced: a host, or client
    requests: {warmup: 3, repeat: 30, inputs: 10, timeout: 120s}
    load: {scenario: single-stream} # or server / multi-stream / offline: many requests in flight
    codec: binary                   # or json-base64
    serving: {connection: persistent, threads: auto, pace: true, max_connections: auto}
    sweep:                          # optional: every combination of values is one point
      links.mobile-edge.bandwidth: [1Mbit, 10Mbit, 100Mbit]
      links.edge-cloud.bandwidth:  [1Mbit, 10Mbit]

Top-level keys: ``name``, ``topology``, ``hosts``, ``links``, ``models``, ``strategies``,
``source``, ``requests``, ``load``, ``codec``, ``serving``, ``sweep``; nothing else.

- ``hosts`` / ``links``: the same keys and units as a topology file (see
  :mod:`topologies.loader`); they change hosts and links the topology has, and cannot add
  or remove any (write a topology file for that). A link may be named either way round.
  A link, or one direction under ``forward`` / ``reverse`` (a direction's own keys win), may
  take ``trace`` (a CSV or Mahimahi file relative to this file's folder, read and checked
  here: :mod:`topologies.traces`), ``trace_mode`` (``once``, default, or ``loop``) and
  ``trace_window`` (Mahimahi only, 10ms to 10s, default 100ms): replayed on that direction
  during every cell from its first measured request (:class:`LinkTrace`, ``traces``).
- ``models``: an entry is a model name (see ``workloads.models``: a built-in name, an
  ``.onnx`` path relative to this file's folder, or a factory, ``path/to/file.py:factory``
  relative to this file's folder or ``package.module:factory``: trusted code, checked here
  by ``workloads.user.check_factory`` but neither imported nor called) or a mapping
  ``{name: NAME, weights: pretrained|random, data: PATH}``. ``weights`` defaults to the first
  the model offers (``pretrained`` for the built-ins) and must be one it offers; ``data`` is
  an existing file or folder relative to this file's folder (default: the model's own data).
  The same (name, weights, data) may be listed once.
- ``strategies``: each is ``{name, operators, placement}``. ``name`` is unique and matches
  ``^[a-z0-9][a-z0-9_.-]{0,47}$``. ``operators`` (default none) is a chain applied in order,
  written as names or one-key mappings of parameters (``workloads.operators``: partition,
  quantize, early_exit; qat, prune, distill). ``placement`` is a host or a list of hosts,
  each host once, consecutive hosts joined by a link of the topology; two or more hosts need
  a partition into as many parts (``cut: auto`` fits any count). ``source`` as the first
  host (unless a host has that name) runs part 0 on each request's source host: with many
  sources (``load.sources``) every one of them computes its own part 0, as phones would, and
  each must be linked to the next host.
- ``source``: where requests start. A host name: the input is produced on that host, travels
  over the emulated links to the strategy's first host, and the answer travels back, so every
  strategy pays for moving the data from where it is produced. ``client``: the request loop
  hands inputs straight to the first host of the placement (no emulated hop before it; it
  measures the deployment alone). Default: the topology's first host as written (``mobile``
  in the built-ins), as in the studies, where the mobile device produces the input. A host
  named ``client`` takes precedence over the keyword.
- ``requests`` (each key optional): ``warmup`` unmeasured requests before measuring, 0..10000
  (default 3); ``repeat`` measured requests per cell, 1..1000000 (default 30); ``inputs``
  distinct samples of the model's evaluation data that the requests cycle through, 1..100000
  and at most as many as that data has (`testbed run` says so in one line; default 10);
  ``timeout`` per request, a duration with a unit (``us``, ``ms``, ``s``), above 0 and at
  most 3600s (default 120s); ``duration`` (single-stream; a load scenario has
  ``load.duration``) instead of ``repeat``: send measured requests until that long has passed
  (the two refused together).
- ``load``: how requests arrive, MLPerf LoadGen's scenarios (``workloads.loadgen``).
  ``scenario: single-stream`` (default) sends one request at a time from ``source`` and the
  next when the answer is back. ``server`` is an open loop: Poisson arrivals at ``qps``
  requests per second in all (above 0, at most 100000), each source sending ``qps / N``,
  seeded by ``seed`` (0 to 2^32-1, default 0: the same seed, the same arrival times).
  Without ``qps`` but with ``slo``, each cell *searches* for the highest rate that meets
  every target, as LoadGen's server mode does: short runs (``duration``, or
  ``requests.repeat`` requests each) at rates doubled or halved from 1000 / the tightest
  target in ms until one meets and one misses, then bisected to within 5% (12 runs at most);
  each run is stored as a cell of its own at the point ``load.qps=<rate>``, and the summary
  names the answer per strategy with the rate above it that missed.
  ``multi-stream`` is a closed loop: ``concurrency`` requests outstanding in all (1 to 4096,
  at least one per source), each sent as soon as an answer is back. ``offline`` makes every
  request due at once, ``concurrency`` (default 64) of them in flight: its figure is
  throughput. ``sources``: the hosts requests start from, a list of hosts or a count N (the
  topology's first N hosts as written: ``mobile1..mobileN`` in ``star:mobiles=N``); it
  replaces ``source`` (the two are refused together). ``duration`` (server and
  multi-stream): measure for that long instead of ``requests.repeat`` requests (the two are
  refused together). ``slo``: latency targets, ``{p50|p90|p99|p99.9: duration}``. Every
  request's latency counts from the time its scenario scheduled it, not from when the
  generator got to send it (no coordinated omission), and every host queues the requests it
  gets in arrival order, computing one at a time: the wait is the request's ``queue_ms``.
  A scenario takes only its own keys (``server``: qps, sources, duration, seed, slo;
  ``multi-stream``: concurrency, sources, duration, slo; ``offline``: concurrency, sources);
  ``load.qps``, ``load.concurrency`` and ``load.sources`` are sweep axes like any other path.
- ``codec``: the wire format, ``binary`` (default: length-prefixed raw tensors) or
  ``json-base64`` (the studies' transport, to compare with).
- ``serving``: ``connection`` to the next hop, ``persistent`` (default: opened once and
  kept) or ``per-request`` (a new TCP connection for every request at every hop, as the
  studies' HTTP clients did); ``threads``, ONNX Runtime's intra-op threads: ``auto``
  (default: each host's core budget rounded up, at least 1; the machine's cores for an
  unlimited host), a number for every host, or a mapping ``{host: number}`` (other hosts auto);
  ``pace``: ``true`` (default) makes every inference on a host with fewer cores than threads
  take its CPU time / cores (``workloads.pacing``: a slow host is slow on every
  request, not only once its quota is spent), ``false`` leaves the CPU quota alone to shape it
  (the studies' Docker ``--cpus``, whose 100 ms period lets short inferences run at full
  speed: set ``hosts.<h>.cpu_period: 100ms`` as well to reproduce them); ``max_connections``:
  the open connections each host server takes before it refuses more (an error frame, then
  close; counted in the cell's ``hosts``), ``auto`` (default: twice what the cell's load may
  hold open to one server, at least 1024; see :meth:`Experiment.connections_needed`) or a
  whole number from that need up to 1048576.
- ``sweep``: a mapping of a dotted path to a non-empty list of distinct values. Paths are
  those of ``--set`` (below) except ``name``, ``sweep``, and what makes a cell's model or
  strategy (``models``, ``models.<i>``, ``models.<i>.name``, ``strategies``,
  ``strategies.<i>``, ``strategies.<i>.name``): e.g. ``links.<a-b>.<field>``,
  ``hosts.<h>.<field>``, ``requests.<field>``, ``codec``, ``source``, ``topology``,
  ``strategies.<i>.placement``, ``strategies.<i>.operators.<j>.early_exit.threshold``,
  ``models.<i>.weights``. A point is one value per path; the points are the cartesian
  product, the first path varying slowest. Every value, and every combination, is validated
  at load time. A *cell* is one point x one model x one strategy.

Values are checked when the file is loaded; every problem is an :class:`ExperimentError`
of one line, ``<file>:<line>: <field path>: <problem>; allowed: <what is allowed>``. Paths
are written as in the file, lists by index: ``strategies[3].operators[0]``.

``--set PATH=VALUE`` (the ``sets`` argument of :func:`load_experiment`) changes the file's
data before it is validated. ``PATH`` is a dotted path into the file; list items are numbered
from 0 (``strategies.0.placement`` or ``strategies[0].placement``); missing mappings are
created (``links.edge-cloud.delay=20ms`` works without a ``links`` key); a model written as a
name becomes ``{name: ...}`` when a key under it is set (``models.0.weights=random``), an
operator written as a name likewise (``strategies.1.operators.0.quantize.mode=dynamic``).
Everything after ``sweep.`` is one axis (``sweep.links.edge-cloud.delay=[5ms, 50ms]``).
``VALUE`` is read as YAML (``5``, ``10Mbit``, ``[mobile, edge]``, ``{cut: auto}``). Setting a
path that is also a sweep axis pins it: that axis is dropped. Problems with a set value are
reported with the source ``--set``.

In Python
---------

``load_experiment(path, sets, *, cores, memory_bytes)`` reads a file;
``load_experiment_dict(data, sets, *, cores, memory_bytes, source, base_dir)`` takes the same
shape as data (e.g. ``Experiment.to_dict()``, whose topology is inline). ``cores`` and
``memory_bytes`` are the machine's budget that built-in topologies scale to. The result is an
:class:`Experiment`: ``name``, ``topology`` (a ``TopologySpec``, overrides applied),
``models`` (:class:`ModelRef`), ``strategies`` (:class:`Strategy`), ``source``, ``requests``
(:class:`Requests`, the timeout in ``timeout_ms``), ``codec``, ``sweep``; ``cells_grid()``
lists the points, ``at(point)`` is the experiment at one of them, ``artifacts_needed()`` lists
the (model, operator chain, parts) that ``testbed prepare`` builds, and ``to_dict()`` is a
JSON-serialisable form.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from topologies import TopologyError, TopologySpec, apply_overrides, load_topology, load_topology_dict
from topologies.builtin import BUILTINS
from topologies.errors import LocatedError, kind_of, name_list
from topologies.fields import DIRECTIONS, TRACE_ALLOWED, TRACE_FIELDS
from topologies.traces import MAHIMAHI_WINDOW_MS, MODES as TRACE_MODES, Trace, TraceError, load_trace
from topologies.reader import DocumentReader, line_of, read_text
from topologies.units import format_duration_ms, parse_duration_ms
from workloads.errors import WorkloadError
from workloads.models import check_offered, get_model
from workloads.operators import OperatorCall, check_placement, parse_chain
from workloads.wire import CODECS, CONNECTIONS, GENERATOR_CONNECTIONS

TOP_KEYS = ("name", "topology", "hosts", "links", "models", "strategies", "source", "requests", "load", "codec",
            "serving", "sweep")
REQUIRED = ("name", "models", "strategies")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_ALLOWED = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
STRATEGY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
STRATEGY_NAME_ALLOWED = "1 to 48 lowercase letters, digits, '_', '.' or '-', starting with a letter or digit"
DEFAULT_TOPOLOGY = "three_tier"
CLIENT = "client"
SOURCE = "source"    # in a placement, first: each request's source host runs part 0
DEFAULT_CODEC = next(iter(CODECS))
SERVING_KEYS = ("connection", "threads", "pace", "max_connections")
MAX_THREADS = 256
# serving.max_connections: auto is twice the need (a per-request connection's server thread may
# outlive its close for a moment beside the next one), at least AUTO_MIN_CONNECTIONS
AUTO_MIN_CONNECTIONS, MAX_CONNECTIONS = 1024, 1 << 20
MODEL_KEYS = ("name", "weights", "data")
STRATEGY_KEYS = ("name", "operators", "placement")
# requests key -> (lowest, highest, default)
REQUEST_COUNTS = {"warmup": (0, 10_000, 3), "repeat": (1, 1_000_000, 30), "inputs": (1, 100_000, 10)}
REQUEST_KEYS = (*REQUEST_COUNTS, "timeout", "duration")
TRACE_WINDOW_MS = (10.0, 10_000.0)   # trace_window (Mahimahi): the shortest and longest window
TIMEOUT_DEFAULT_MS, TIMEOUT_MAX_MS = 120_000.0, 3_600_000.0
# load: LoadGen's scenario names; single-stream is one request at a time from one source
SCENARIOS = ("single-stream", "server", "multi-stream", "offline")
LOAD_KEYS = ("scenario", "qps", "concurrency", "sources", "duration", "seed", "slo")
# which keys each scenario takes besides scenario (the rest are refused, never ignored)
SCENARIO_KEYS = {"single-stream": (), "server": ("qps", "sources", "duration", "seed", "slo"),
                 "multi-stream": ("concurrency", "sources", "duration", "slo"),
                 "offline": ("concurrency", "sources")}
MAX_QPS, MAX_CONCURRENCY = 100_000.0, 4096
OFFLINE_CONCURRENCY = 64      # offline: requests in flight at once when concurrency is not set
DURATION_MAX_MS = 3_600_000.0
SLO_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
MAX_POINTS = 10_000  # a bigger grid is a typo more often than a plan, and each point is validated

_SYNTAX_ALLOWED = "valid YAML: a mapping with name, topology, models and strategies"
_TOP_ALLOWED = ", ".join(TOP_KEYS)
_MODELS_ALLOWED = "a list of model names or {name, weights, data} mappings, e.g. [efficientnet_lite0]"
_STRATEGIES_ALLOWED = "a list of {name, operators, placement}, e.g. [{name: edge, placement: edge}]"
_STRATEGY_EXAMPLE = "{name: edge, operators: [...], placement: edge}"
_PLACEMENT_ALLOWED = "a host name or a list of host names, e.g. edge or [mobile, edge]"
_UNSWEEPABLE = "a path of --set other than name, sweep, models[.<i>[.name]] and strategies[.<i>[.name]]"


class ExperimentError(LocatedError):
    """An experiment file (or a ``--set`` value) is not acceptable. ``str()`` is one line:
    ``<source>:<line>: <path>: <problem>; allowed: <allowed>``, unknown parts left out with
    their separator. The parts are attributes too."""


# ---- the validated data -------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A model as the experiment uses it: registry name, weights, and an optional data path."""

    name: str
    weights: str = "pretrained"
    data: str | None = None     # an existing file or folder (absolute, or as written if absolute)

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights, "data": self.data}


@dataclass(frozen=True)
class Strategy:
    """A deployment: an operator chain applied to the model, and the hosts its parts run on."""

    name: str
    operators: tuple[OperatorCall, ...]
    placement: tuple[str, ...]

    @property
    def parts(self) -> int:
        """How many parts the artifact has: one per placement host."""
        return len(self.placement)

    def to_dict(self) -> dict:
        return {"name": self.name, "operators": [c.as_dict() for c in self.operators],
                "placement": list(self.placement)}


@dataclass(frozen=True)
class Requests:
    """How a cell is measured: unmeasured warm-up requests, measured requests, the distinct
    inputs they cycle through, and the time one request may take."""

    warmup: int = REQUEST_COUNTS["warmup"][2]
    repeat: int = REQUEST_COUNTS["repeat"][2]
    inputs: int = REQUEST_COUNTS["inputs"][2]
    timeout_ms: float = TIMEOUT_DEFAULT_MS
    duration_ms: float | None = None    # send until this long has passed instead of ``repeat`` requests

    def to_dict(self) -> dict:
        out = {"warmup": self.warmup, "repeat": self.repeat, "inputs": self.inputs,
               "timeout": format_duration_ms(self.timeout_ms)}
        if self.duration_ms is not None:    # it replaces repeat (the two are refused together)
            del out["repeat"]
            out["duration"] = format_duration_ms(self.duration_ms)
        return out


@dataclass(frozen=True)
class LinkTrace:
    """A trace replayed on one direction of a link during every cell (``links.<a-b>.trace``):
    ``file`` resolved from the experiment file's folder, ``trace`` as read and checked."""

    link: str           # the link's name as the topology defines it
    direction: str      # forward (a -> b) or reverse
    file: str
    mode: str
    window_ms: float | None     # Mahimahi's window (None: a CSV trace)
    trace: Trace = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.link} {self.direction}"

    def digest(self) -> str:
        """What the replay applies, as a short digest (a cell's key changes with the file's steps)."""
        steps = [(s.at_ms, s.rate_bps, s.delay_ms, s.jitter_ms, s.loss) for s in self.trace.steps]
        return hashlib.sha256(json.dumps([steps, self.trace.period_ms, self.mode]).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Load:
    """How requests arrive (MLPerf LoadGen's scenarios): ``single-stream`` (one request at a
    time from one source, the next when the answer is back: the default), ``server`` (open
    loop: Poisson arrivals at ``qps`` requests/s in all, each source sending ``qps / sources``),
    ``multi-stream`` (closed loop: ``concurrency`` requests outstanding in all, spread over the
    sources) and ``offline`` (every request due at once, ``concurrency`` of them in flight).
    ``sources``: the hosts requests start from (empty: the experiment's ``source``);
    ``duration_ms``: measure for this long instead of ``requests.repeat`` requests; ``seed``:
    the arrival times; ``slo``: latency targets ``((percentile, ms), ...)``."""

    scenario: str = SCENARIOS[0]
    qps: float | None = None
    concurrency: int | None = None
    sources: tuple[str, ...] = ()
    duration_ms: float | None = None
    seed: int = 0
    slo: tuple[tuple[str, float], ...] = ()

    @property
    def searching(self) -> bool:
        """A server scenario with targets and no rate: each cell searches for the highest
        rate that meets them (testbed.load.search_rate), one short run per rate tried."""
        return self.scenario == "server" and self.qps is None

    @property
    def concurrent(self) -> bool:
        """More than one request may be in flight (every scenario but single-stream)."""
        return self.scenario != SCENARIOS[0]

    def in_flight(self) -> int | None:
        """The cap on requests in flight over all sources (None: open loop, no cap)."""
        if self.scenario == "offline":
            return self.concurrency or OFFLINE_CONCURRENCY
        return self.concurrency if self.scenario == "multi-stream" else None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"scenario": self.scenario}
        if self.qps is not None:
            out["qps"] = self.qps
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.sources:
            out["sources"] = list(self.sources)
        if self.duration_ms is not None:
            out["duration"] = format_duration_ms(self.duration_ms)
        if self.scenario == "server":
            out["seed"] = self.seed
        if self.slo:
            out["slo"] = {k: format_duration_ms(v) for k, v in self.slo}
        return out


@dataclass(frozen=True)
class Serving:
    """How host servers run: the connection to the next hop (kept open, or one per request as
    in the studies) and ONNX Runtime's intra-op threads per host (None: the host's core budget,
    rounded up)."""

    connection: str = CONNECTIONS[0]
    threads: int | tuple[tuple[str, int], ...] | None = None
    pace: bool = True
    max_connections: int | None = None      # open connections per server (None: auto)

    def threads_for(self, host: str) -> int | None:
        if isinstance(self.threads, tuple):
            return dict(self.threads).get(host)
        return self.threads

    def to_dict(self) -> dict:
        threads = dict(self.threads) if isinstance(self.threads, tuple) else (self.threads or "auto")
        return {"connection": self.connection, "threads": threads, "pace": self.pace,
                "max_connections": self.max_connections or "auto"}


class ArtifactNeed(NamedTuple):
    """One artifact ``testbed prepare`` builds: a model through an operator chain, in parts."""

    model: ModelRef
    operators: tuple[OperatorCall, ...]
    parts: int


@dataclass
class _Context:
    """What loading needs besides the data; shared by the points of one experiment."""

    source: str                        # names the file in messages
    base_dir: Path                     # relative paths in the file start here
    cores: float
    memory_bytes: int
    lines: dict[str, int]              # key / list-item path -> line in the file
    topologies: dict[str, TopologySpec] = field(default_factory=dict)  # ref -> spec, loaded once


@dataclass(frozen=True)
class Experiment:
    """A validated experiment. Callers may rely on:

    - every field is checked and normalised: ``topology`` has the file's host/link overrides
      applied; ``strategies`` have full operator calls (defaults filled in) and placements
      on existing, linked hosts that match their partitions; ``models`` exist in the registry;
    - ``sweep`` is ``((path, (value, ...)), ...)`` in file order with paths written dotted
      (``strategies.0.placement``); values are as written (lists as tuples), each of them
      and every combination already validated;
    - ``cells_grid()`` / ``at(point)`` give the points and the experiment at one point;
    - ``to_dict()`` is JSON-serialisable and loads back (:func:`load_experiment_dict`) into
      an equal experiment, the topology inline.
    """

    name: str
    topology: TopologySpec
    models: tuple[ModelRef, ...]
    strategies: tuple[Strategy, ...]
    source: str
    requests: Requests
    codec: str
    serving: Serving = field(default_factory=Serving)
    load: Load = field(default_factory=Load)
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    traces: tuple[LinkTrace, ...] = ()
    source_path: Path | None = field(default=None, compare=False)
    _raw: dict | None = field(default=None, compare=False, repr=False)          # after --set
    _context: _Context | None = field(default=None, compare=False, repr=False)

    @property
    def sources(self) -> tuple[str, ...]:
        """The hosts requests start from: ``load.sources``, else ``(source,)``."""
        return self.load.sources or (self.source,)

    def connections_needed(self) -> tuple[int, str]:
        """The most connections this experiment's requests may hold open to one server at once,
        and why: one at a time (single-stream); the requests in flight (multi-stream,
        offline: a connection each); as many as every source's generator may open (server,
        an open loop). A server with a next hop opens as many to it as it has upstream."""
        load = self.load
        if not load.concurrent:
            return 1, "one request at a time"
        if load.scenario == "server":
            n = len(self.sources)
            return GENERATOR_CONNECTIONS * n, f"{n} source{'s' * (n > 1)} x {GENERATOR_CONNECTIONS} in the server scenario"
        return load.in_flight(), f"{load.in_flight()} requests in flight ({load.scenario})"

    def max_connections(self) -> int:
        """``serving.max_connections`` for this experiment's servers (auto resolved)."""
        return self.serving.max_connections or max(AUTO_MIN_CONNECTIONS, 2 * self.connections_needed()[0])

    def per_source(self, strategy: Strategy) -> bool:
        """The strategy's first part runs on each source host (``source`` first in its placement)."""
        return strategy.placement[0] == SOURCE and SOURCE not in self.topology.host_names

    def deployment(self, strategy: Strategy) -> list[tuple[str, int]]:
        """(host, part) of every server a cell of ``strategy`` starts, in part order: with
        ``source`` first in the placement, part 0 on each source host."""
        out = [(h, 0) for h in self.sources] if self.per_source(strategy) else [(strategy.placement[0], 0)]
        return out + [(h, i) for i, h in enumerate(strategy.placement) if i]

    def strategy(self, name: str) -> Strategy:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def points(self) -> list[tuple[dict[str, Any], Experiment]]:
        """Each sweep point with the experiment at it (`at`), in `cells_grid` order."""
        return [(p, self.at(p) if p else self) for p in self.cells_grid()]

    def cells_grid(self) -> list[dict[str, Any]]:
        """The sweep points as ``{path: value}`` dicts, the cartesian product in file order
        (the first path varies slowest); ``[{}]`` without a sweep."""
        paths = [p for p, _ in self.sweep]
        return [dict(zip(paths, combo)) for combo in itertools.product(*(v for _, v in self.sweep))]

    def at(self, point: Mapping[str, Any]) -> Experiment:
        """This experiment at one point: the point's values applied as ``--set`` values
        (already parsed), validated, with an empty sweep."""
        if self._raw is None or self._context is None:
            raise ExperimentError("this Experiment was not loaded by load_experiment", "a loaded experiment")
        return _at(self._raw, self._context, point)

    def _workload_points(self) -> list[Experiment]:
        """The experiment at every sweep point when the sweep changes models or strategies
        (each point may need other artifacts), else just this one."""
        sweeps_workload = any(p.split(".", 1)[0] in ("models", "strategies") for p, _ in self.sweep)
        return [self.at(p) for p in self.cells_grid()] if sweeps_workload else [self]

    def artifacts_needed(self, *, cache=None, build: bool = True, only=None,
                         progress=lambda message: None) -> list[ArtifactNeed]:
        """The distinct (model, operator chain, parts) that the cells use, in model-then-
        strategy order: strategies with the same chain and as many hosts share one artifact,
        whatever the hosts. Sweep points that change models or operators add theirs.

        A ``partition: {cut: fastest}`` strategy needs each of its candidate cuts
        (:func:`testbed.fastest.expand`): finding them prepares the model through the
        operators before the partition (cached in ``cache``); with ``build`` false nothing is
        built, and a model whose candidates are not known yet is listed with ``cut: fastest``
        (not prepared). ``only(model, strategy)``: the cells to count (default: all)."""
        out: dict[ArtifactNeed, None] = {}
        for exp, model, s in self._cells_workload(only):
            for need in _expand(ArtifactNeed(model, s.operators, s.parts), cache, build, progress):
                out.setdefault(need)
        return list(out)

    def parts_by_host(self, *, cache=None, build: bool = True, only=None,
                      progress=lambda message: None) -> dict[str, list[tuple[ArtifactNeed, int, str]]]:
        """What each host computes in this experiment's cells: host -> [(artifact, part index,
        strategy name)], each (artifact, part) once per host, in model-then-strategy order
        (``testbed calibrate EXPERIMENT`` checks each host's compute on exactly these). Sweep
        points that change models or strategies add theirs, and a ``cut: fastest`` strategy
        every candidate's parts, as in :meth:`artifacts_needed`."""
        out: dict[str, dict[tuple[ArtifactNeed, int], str]] = {}
        for exp, model, s in self._cells_workload(only):
            declared = ArtifactNeed(model, s.operators, s.parts)
            for need in _expand(declared, cache, build, progress):
                # a candidate of cut: fastest is named with its cut
                name = s.name if need == declared else f"{s.name}, cut {_cut_of(need)}"
                for host, i in exp.deployment(s):
                    out.setdefault(host, {}).setdefault((need, i), name)
        return {h: [(need, i, name) for (need, i), name in parts.items()] for h, parts in out.items()}

    def _cells_workload(self, only=None) -> Iterator[tuple[Experiment, ModelRef, Strategy]]:
        """(experiment at a workload point, model, strategy) of every cell, ``only`` those it keeps."""
        for exp in self._workload_points():
            for model in exp.models:
                for s in exp.strategies:
                    if only is None or only(model, s):
                        yield exp, model, s

    def to_dict(self) -> dict:
        """A normalised, JSON-serialisable form: every default written out, the topology
        inline with its overrides applied, operators with all their parameters."""
        out = {
            "name": self.name,
            "topology": self.topology.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "strategies": [s.to_dict() for s in self.strategies],
            "source": self.source,
            "requests": self.requests.to_dict(),
            "load": self.load.to_dict(),
            "codec": self.codec,
            "serving": self.serving.to_dict(),
            "sweep": {path: [self._portable(path, _thaw(v)) for v in values] for path, values in self.sweep},
        }
        if self.load.sources:             # they replace source (the two are refused together)
            del out["source"]
        if self.load.duration_ms is not None:   # it replaces requests.repeat (likewise)
            del out["requests"]["repeat"]
        if self.traces:                         # beside the inline topology, which has no traces
            links: dict[str, dict] = {}
            for t in self.traces:
                body = {"trace": t.file, "trace_mode": t.mode}
                if t.window_ms is not None:
                    body["trace_window"] = format_duration_ms(t.window_ms)
                links.setdefault(t.link, {})[t.direction] = body
            out["links"] = links
        return out

    def _portable(self, path: str, value: object) -> object:
        """A sweep value that names a trace file, resolved from the file's folder (``to_dict``
        has no folder to resolve it from)."""
        if path.rsplit(".", 1)[-1] == "trace" and isinstance(value, str) and self._context is not None \
                and not Path(value).is_absolute():
            return str(self._context.base_dir / value)
        return value

    def duration_ms(self) -> float | None:
        """How long a cell measures, when it measures for a time rather than a number of
        requests (``requests.duration``, or ``load.duration`` in a load scenario)."""
        return self.load.duration_ms if self.load.duration_ms is not None else self.requests.duration_ms


def _cut_of(need: ArtifactNeed) -> object:
    return next(c.get("cut") for c in need.operators if c.name == "partition")


def _expand(need: ArtifactNeed, cache, build: bool, progress) -> list[ArtifactNeed]:
    """``need`` itself, or the candidates of a ``cut: fastest`` need (:mod:`testbed.fastest`)."""
    from .fastest import expand

    return expand(need, cache=cache, build=build, progress=progress)


# ---- public entry points ------------------------------------------------------------------

def load_experiment(path: str | Path, sets: Iterable[tuple[str, str]] = (), *, cores: float,
                    memory_bytes: int) -> Experiment:
    """The validated experiment in the YAML file ``path``, with ``sets`` (``(PATH, VALUE)``
    pairs as ``--set`` gives them) applied first. ``cores`` and ``memory_bytes`` are the
    machine's budget that built-in (and Python) topologies scale to. Every problem is one
    :class:`ExperimentError`."""
    source = str(path)
    path = Path(path)
    data, lines = _read_yaml(read_text(path, source, ExperimentError, "a readable YAML file"), source)
    ctx = _Context(source, path.parent, cores, memory_bytes, lines)
    return _load(data, sets, ctx, path)


def load_experiment_dict(data: Mapping, sets: Iterable[tuple[str, str]] = (), *, cores: float,
                         memory_bytes: int, source: str = "<memory>",
                         base_dir: str | Path = ".") -> Experiment:
    """The validated experiment from data in the file's shape (e.g. ``Experiment.to_dict()``),
    relative paths taken from ``base_dir``. Errors carry ``source`` and no line."""
    ctx = _Context(source, Path(base_dir), cores, memory_bytes, {})
    return _load(data, sets, ctx, None)


# ---- reading the file and applying --set ---------------------------------------------------

def _read_yaml(text: str, source: str) -> tuple[object, dict[str, int]]:
    """The document and the line of every key and list item, duplicate keys refused."""
    import yaml

    from topologies.yamlsrc import SYNTAX_ALLOWED, read_yaml

    try:
        data, lines = read_yaml(text, source)
    except TopologyError as e:
        allowed = _SYNTAX_ALLOWED if e.allowed == SYNTAX_ALLOWED else e.allowed
        raise ExperimentError(e.problem, allowed, source=e.source, line=e.line, path=e.path) from None
    # read_yaml records keys only; list items get their lines here (the text already passed
    # read_yaml's size and depth limits, so this walk is bounded)
    stack = [(yaml.compose(text, Loader=yaml.SafeLoader), "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, f"{path}.{k.value}" if path else k.value) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{path}[{i}]"] = item.start_mark.line + 1
                stack.append((item, f"{path}[{i}]"))
    return data, lines


def _split_path(text: str) -> list[str]:
    """'strategies.0.placement' / 'strategies[0].placement' -> ['strategies', '0', 'placement'];
    after 'sweep.' the rest is one key (an axis path)."""
    text = text.strip()
    if text.startswith("sweep."):
        return ["sweep", text[len("sweep."):]]
    return re.sub(r"\[(\d+)\]", r".\1", text).split(".")


def _shown(parts: list[str]) -> str:
    """The path as errors and the line table write it: list indexes in brackets."""
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _widen(value: object, at: str, next_key: str) -> object:
    """A value that a key is about to be set under, as a mapping where the file's short
    forms allow it: nothing -> {}, a model name -> {name: ...}, an operator name -> {op: {}}."""
    if value is None:
        return {}
    if isinstance(value, str) and re.fullmatch(r"models\[\d+\]", at):
        return {"name": value}
    if isinstance(value, str) and value == next_key and re.fullmatch(r"strategies\[\d+\]\.operators\[\d+\]", at):
        return {value: {}}
    return value


def _assign(raw: dict, text: str, value: object, source: str) -> str:
    """Set ``value`` at the dotted path ``text`` in ``raw``; the path as shown in errors."""
    parts = _split_path(text)
    if parts[0] not in TOP_KEYS:
        raise ExperimentError("unknown path", f"a path starting with a top-level key: {_TOP_ALLOWED}",
                              source=source, path=text)
    if not all(parts):
        raise ExperimentError("an empty part in the path", "names joined by '.', e.g. links.edge-cloud.delay",
                              source=source, path=text)
    node: Any = raw
    for i, part in enumerate(parts):
        key: str | int = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ExperimentError(f"no item {part} in {_shown(parts[:i])}, which has {len(node)}",
                                      f"an index 0 to {len(node) - 1}" if node else "an existing item",
                                      source=source, path=text)
            key = int(part)
        elif not isinstance(node, dict):
            raise ExperimentError(f"{_shown(parts[:i])} is {kind_of(node)}, not a mapping or a list",
                                  "a path through mappings and lists", source=source, path=text)
        if i == len(parts) - 1:
            node[key] = value
        else:
            node[key] = _widen(node.get(key) if isinstance(node, dict) else node[key],
                               _shown(parts[: i + 1]), parts[i + 1])
            node = node[key]
    return _shown(parts)


def _parse_value(text: str, path: str) -> object:
    from topologies.yamlsrc import read_yaml

    try:
        return read_yaml(text, "--set")[0]
    except TopologyError as e:
        raise ExperimentError(f"'{text}' is not a YAML value ({e.problem})",
                              "a YAML value, e.g. 5, 10Mbit, [mobile, edge] or {cut: auto}",
                              source="--set", path=path) from None


def _freeze(value: object) -> object:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: object) -> object:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _load(data: object, sets: Iterable[tuple[str, str]], ctx: _Context, source_path: Path | None) -> Experiment:
    if isinstance(data, Mapping) and not isinstance(data, dict):
        data = dict(data)
    if not isinstance(data, dict):
        raise ExperimentError(f"expected a mapping, got {kind_of(data)}",
                              f"a mapping with the keys {_TOP_ALLOWED}", source=ctx.source,
                              line=min(ctx.lines.values(), default=None))
    raw = copy.deepcopy(data)
    origins: dict[str, str] = {}  # path set by --set -> the source errors under it name
    pinned = []
    for text, value_text in sets:
        shown = _assign(raw, text, _parse_value(value_text, text), "--set")
        origins[shown] = "--set"
        if _split_path(text)[0] != "sweep":
            pinned.append(_split_path(text))
    if pinned and isinstance(raw.get("sweep"), dict):
        raw["sweep"] = {k: v for k, v in raw["sweep"].items() if _split_path(k) not in pinned}
    base = _Validator(ctx, origins).experiment(raw, source_path)
    _check_sweep(base, raw, ctx)
    return base


def _at(raw: dict, ctx: _Context, point: Mapping[str, Any]) -> Experiment:
    """The experiment with the point's values set and no sweep (errors as raised)."""
    here = copy.deepcopy(raw)
    here.pop("sweep", None)
    origins = {}
    for path, value in point.items():
        origins[_assign(here, path, _thaw(copy.deepcopy(value)), "sweep")] = "sweep"
    return _Validator(ctx, origins).experiment(here, None)


def point_label(point: Mapping[str, Any]) -> str:
    """``"links.edge-cloud.bandwidth=5Mbit, ..."``, or ``"(no sweep)"``."""
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "(no sweep)"


def _check_sweep(base: Experiment, raw: dict, ctx: _Context) -> None:
    """Every sweep value alone (errors at its line), then every combination."""
    written = list(raw.get("sweep") or {})  # the axis keys as written, for lines
    for (axis, values), key in zip(base.sweep, written):
        axis_shown = _shown(_split_path(axis))
        for j, value in enumerate(values):
            item = f"sweep.{key}[{j}]"
            try:
                _at(raw, ctx, {axis: value})
            except ExperimentError as e:
                if e.path and (e.path == axis_shown or e.path.startswith((axis_shown + ".", axis_shown + "["))):
                    path, problem = item + e.path[len(axis_shown):], e.problem
                else:
                    path, problem = item, f"with this value, {e.path or 'the experiment'}: {e.problem}"
                raise ExperimentError(problem, e.allowed, source=ctx.source, line=line_of(ctx.lines, item),
                                      path=path) from None
    if len(base.sweep) < 2:
        return
    for point in base.cells_grid():
        try:
            _at(raw, ctx, point)
        except ExperimentError as e:
            combo = ", ".join(f"{p}={_thaw(v)}" for p, v in point.items())
            raise ExperimentError(f"the combination {combo} fails: {e.path or 'the experiment'}: {e.problem}",
                                  e.allowed, source=ctx.source, line=line_of(ctx.lines, "sweep"),
                                  path="sweep") from None


# ---- validation ---------------------------------------------------------------------------

class _Validator(DocumentReader):
    """Turns the data of one experiment (``--set`` already applied) into an Experiment."""

    def __init__(self, ctx: _Context, origins: Mapping[str, str]) -> None:
        super().__init__(ctx.source, ctx.lines, ExperimentError)
        self.ctx = ctx
        self.origins = origins

    def fail(self, path: str, problem: str, allowed: str | None = None) -> NoReturn:
        for origin, label in self.origins.items():
            # a value set by --set is blamed on --set, and so is a mapping that only --set wrote
            if (path == origin or path.startswith((origin + ".", origin + "["))
                    or (path and origin.startswith((path + ".", path + "[")) and path not in self.ctx.lines)):
                raise ExperimentError(problem, allowed, source=label, path=path or None)
        super().fail(path, problem, allowed)

    def workload_fail(self, e: WorkloadError, path: str) -> NoReturn:
        """A WorkloadError (``<where>: <problem>``) located at its own path when it names one."""
        text = str(e)
        where, sep, problem = text.partition(": ")
        if sep and where.startswith(path):
            self.fail(where, problem)
        self.fail(path, text)

    def experiment(self, raw: dict, source_path: Path | None) -> Experiment:
        self.mapping(raw, "", TOP_KEYS, f"a mapping with the keys {_TOP_ALLOWED}")
        for key in REQUIRED:
            if raw.get(key) is None:
                self.fail(key, "missing", {"name": NAME_ALLOWED, "models": _MODELS_ALLOWED,
                                           "strategies": _STRATEGIES_ALLOWED}[key])
        name = self.string(raw["name"], "name", NAME_ALLOWED)
        if not NAME.match(name):
            self.fail("name", f"'{name}' is not a usable name", NAME_ALLOWED)
        topology, trace_items = self.overrides(raw, self.topology(raw.get("topology", DEFAULT_TOPOLOGY)))
        traces = self.traces(trace_items, topology)
        models = self.models(raw["models"])
        strategies = self.strategies(raw["strategies"], topology)
        source = self.source(raw.get("source"), topology)
        requests = self.requests(raw.get("requests"))
        load = self.load(raw, topology)
        self.source_placements(strategies, load.sources or (source,), topology)
        exp = Experiment(
            name=name,
            topology=topology,
            models=models,
            strategies=strategies,
            source=source,
            requests=requests,
            load=load,
            codec=self.codec(raw.get("codec", DEFAULT_CODEC)),
            serving=self.serving(raw.get("serving"), topology),
            sweep=self.sweep(raw.get("sweep")),
            traces=traces,
            source_path=source_path,
            _raw=raw,
            _context=self.ctx,
        )
        cap = exp.serving.max_connections
        need, why = exp.connections_needed()
        if cap is not None and cap < need:
            self.fail("serving.max_connections", f"{cap} is below the {need} connections this experiment's load "
                      f"may hold open to one server ({why})",
                      f"auto, or a whole number {need} to {MAX_CONNECTIONS}")
        return exp

    def topology(self, ref: object) -> TopologySpec:
        allowed = (f"a built-in ({', '.join(BUILTINS)}), a .yaml/.yml/.py file relative to the experiment "
                   "file, or a mapping in the topology YAML shape")
        if isinstance(ref, dict):  # inline, e.g. from Experiment.to_dict()
            prefix = "topology."
            lines = {k[len(prefix):]: v for k, v in self.ctx.lines.items() if k.startswith(prefix)}
            try:
                return load_topology_dict(ref, self.ctx.source, lines)
            except TopologyError as e:
                self.fail(f"topology.{e.path}" if e.path else "topology", e.problem, e.allowed)
        ref = self.string(ref, "topology", allowed)
        builtin = ref.partition(":")[0] in BUILTINS
        resolved = ref if builtin or Path(ref).is_absolute() else str(self.ctx.base_dir / ref)
        if resolved not in self.ctx.topologies:
            try:
                spec = load_topology(resolved, cores=self.ctx.cores, memory_bytes=self.ctx.memory_bytes)
            except TopologyError as e:
                self.fail("topology", str(e))
            self.ctx.topologies[resolved] = spec
        return self.ctx.topologies[resolved]

    def overrides(self, raw: dict, spec: TopologySpec) -> tuple[TopologySpec, list[tuple[str, object]]]:
        """The topology with the file's host and link values; the link trace keys apart, as
        (path, value) (:meth:`traces` reads them)."""
        items: list[tuple[str, object]] = []
        trace_items: list[tuple[str, object]] = []
        hosts = self.mapping(raw.get("hosts"), "hosts", None, "host -> limits, e.g. {mobile: {cpus: 0.5}}")
        for host, body in hosts.items():
            body = self.mapping(body, f"hosts.{host}", None, "e.g. {cpus: 0.5, memory: 1GiB}")
            items += [(f"hosts.{host}.{key}", value) for key, value in body.items()]
        links = self.mapping(raw.get("links"), "links", None, "link -> shaping, e.g. {edge-cloud: {bandwidth: 1Mbit}}")
        for link, body in links.items():
            body = self.mapping(body, f"links.{link}", None, "e.g. {bandwidth: 200Mbit, delay: 5ms}")
            for key, value in body.items():
                if key in DIRECTIONS:
                    value = self.mapping(value, f"links.{link}.{key}", None, "e.g. {bandwidth: 10Mbit}")
                    for k, v in value.items():
                        (trace_items if k in TRACE_FIELDS else items).append((f"links.{link}.{key}.{k}", v))
                else:
                    (trace_items if key in TRACE_FIELDS else items).append((f"links.{link}.{key}", value))
        if not items:
            return spec, trace_items
        try:
            return apply_overrides(spec, items, source=self.ctx.source), trace_items
        except TopologyError as e:
            written = [p for p, _ in items]
            path = e.path or ""
            parts = path.split(".")
            if path not in written and parts[0] == "links" and len(parts) > 2:  # the link written b-a
                a, _, b = parts[1].partition("-")
                flipped = ".".join(["links", f"{b}-{a}", *parts[2:]])
                path = flipped if flipped in written else path
            self.fail(path, e.problem, e.allowed)

    def traces(self, items: list[tuple[str, object]], spec: TopologySpec) -> tuple[LinkTrace, ...]:
        """``links.<a-b>[.forward|.reverse].trace|trace_mode|trace_window`` -> the traces, each
        file read and checked (a problem in it is one line naming the file's line), in the
        topology's link order, forward first."""
        found: dict[tuple[str, str], dict[str, tuple[str, object]]] = {}
        for path, value in items:
            parts = path.split(".")
            try:
                link = spec.link(parts[1])
            except TopologyError as e:
                self.fail(path, e.problem, e.allowed)
            if len(parts) == 4 and parts[1] != link.name:
                self.fail(path, f"forward/reverse are relative to the link as defined, {link.name}",
                          f"links.{link.name}.{parts[2]}.{parts[-1]}")
            for d in ((parts[2],) if len(parts) == 4 else DIRECTIONS):
                keys = found.setdefault((link.name, d), {})
                if len(parts) == 4 or parts[-1] not in keys:    # a direction's own value wins
                    keys[parts[-1]] = (path, value)
        out = []
        for link in spec.links:
            for d in DIRECTIONS:
                keys = found.get((link.name, d))
                if keys:
                    out.append(self.link_trace(link.name, d, keys, link.forward if d == "forward" else link.reverse))
        return tuple(out)

    def link_trace(self, link: str, direction: str, keys: dict[str, tuple[str, object]], spec) -> LinkTrace:
        if "trace" not in keys:
            path = next(iter(keys.values()))[0]
            self.fail(path, f"set without a trace for {link} {direction}", TRACE_ALLOWED)
        path, value = keys["trace"]
        file = self.string(value, path, TRACE_ALLOWED)
        mode = TRACE_MODES[0]
        if "trace_mode" in keys:
            mpath, mode = keys["trace_mode"]
            if mode not in TRACE_MODES:
                shown = f"'{mode}'" if isinstance(mode, str) else kind_of(mode)
                self.fail(mpath, f"{shown} is not a trace mode",
                          "once (the last step stays in force) | loop (the trace repeats; it needs an end line)")
        window = None
        if "trace_window" in keys:
            wpath, wvalue = keys["trace_window"]
            lo, hi = TRACE_WINDOW_MS
            allowed = f"a duration from {format_duration_ms(lo)} to {format_duration_ms(hi)}, e.g. 100ms"
            try:
                window = parse_duration_ms(wvalue)
            except TopologyError as e:
                self.fail(wpath, e.problem, allowed)
            if not lo <= window <= hi:
                self.fail(wpath, f"{format_duration_ms(window)} is out of range", allowed)
        resolved = file if Path(file).is_absolute() else str(self.ctx.base_dir / file)
        try:
            trace = load_trace(resolved, mode, window_ms=window or MAHIMAHI_WINDOW_MS)
        except TraceError as e:
            self.fail(path, str(e))
        if window is not None and trace.format != "mahimahi":
            self.fail(keys["trace_window"][0], f"{file} is a CSV trace: trace_window is for Mahimahi traces",
                      "trace_window only with a Mahimahi trace (one millisecond timestamp per line)")
        for step in trace.steps:        # a trace without delay keeps the link's: jitter must stay under it
            delay = spec.delay_ms if step.delay_ms is None else step.delay_ms
            jitter = spec.jitter_ms if step.jitter_ms is None else step.jitter_ms
            if jitter > delay:
                self.fail(path, f"{trace.source}:{step.line}: jitter {format_duration_ms(jitter)} above the delay "
                          f"{format_duration_ms(delay)} of {link} {direction}", "jitter at most the delay")
        return LinkTrace(link, direction, resolved, mode, window if trace.format == "mahimahi" else None, trace)

    def models(self, value: object) -> tuple[ModelRef, ...]:
        from workloads.user import USER_WEIGHTS, check_factory, is_factory_file, is_factory_ref  # numpy: lazily

        refs: list[ModelRef] = []
        for i, item in enumerate(self.nonempty_list(value, "models", _MODELS_ALLOWED)):
            path = f"models[{i}]"
            if isinstance(item, dict):
                self.mapping(item, path, MODEL_KEYS, "{name: efficientnet_lite0, weights: pretrained}")
                if item.get("name") is None:
                    self.fail(path, "missing name", "{name: MODEL, weights: WEIGHTS, data: PATH}")
                name_path, name = f"{path}.name", item["name"]
            elif isinstance(item, str):
                name_path, name, item = path, item, {}
            else:
                self.fail(path, f"expected a model name or a mapping, got {kind_of(item)}", _MODELS_ALLOWED)
            name = self.string(name, name_path, "a model name")
            if (name.endswith(".onnx") or is_factory_file(name)) and not Path(name).is_absolute():
                name = str(self.ctx.base_dir / name)
            try:
                if is_factory_ref(name):     # trusted code: checked here, imported and called only to prepare
                    check_factory(name)
                    label, offered = name, USER_WEIGHTS
                else:
                    entry = get_model(name)
                    label, offered = entry.name, entry.weights
            except WorkloadError as e:
                self.fail(name_path, str(e))
            weights = item.get("weights")
            if weights is None:
                weights = offered[0] if offered else "pretrained"
            else:
                weights = self.string(weights, f"{path}.weights", " | ".join(offered))
                try:
                    check_offered(label, offered, weights)
                except WorkloadError as e:
                    self.fail(f"{path}.weights", str(e))
            data = item.get("data")
            if data is not None:
                data_path = Path(self.string(data, f"{path}.data", "a file or folder of data"))
                data_path = data_path if data_path.is_absolute() else self.ctx.base_dir / data_path
                if not data_path.exists():
                    self.fail(f"{path}.data", f"no such file or folder: {data_path}",
                              "an existing path, relative to the experiment file's folder")
                data = str(data_path)
            ref = ModelRef(name, weights, data)
            if ref in refs:
                self.fail(path, f"listed twice (first as models[{refs.index(ref)}])",
                          "each model (name, weights, data) once")
            refs.append(ref)
        return tuple(refs)

    def strategies(self, value: object, spec: TopologySpec) -> tuple[Strategy, ...]:
        out: list[Strategy] = []
        for i, item in enumerate(self.nonempty_list(value, "strategies", _STRATEGIES_ALLOWED)):
            path = f"strategies[{i}]"
            if not isinstance(item, dict):
                self.fail(path, f"expected a mapping, got {kind_of(item)}", _STRATEGY_EXAMPLE)
            self.mapping(item, path, STRATEGY_KEYS, _STRATEGY_EXAMPLE)
            for key in ("name", "placement"):
                if item.get(key) is None:
                    self.fail(path, f"missing {key}", STRATEGY_NAME_ALLOWED if key == "name" else _PLACEMENT_ALLOWED)
            name = self.string(item["name"], f"{path}.name", STRATEGY_NAME_ALLOWED)
            if not STRATEGY_NAME.match(name):
                self.fail(f"{path}.name", f"'{name}' is not a usable strategy name", STRATEGY_NAME_ALLOWED)
            for j, other in enumerate(out):
                if other.name == name:
                    self.fail(f"{path}.name", f"duplicate strategy name '{name}' (first at strategies[{j}])",
                              "a different name for each strategy")
            try:
                chain = parse_chain(item.get("operators"), where=f"{path}.operators")
            except WorkloadError as e:
                self.workload_fail(e, f"{path}.operators")
            placement = self.placement(item["placement"], f"{path}.placement", spec)
            try:
                check_placement(chain, len(placement), where=f"{path}.placement")
            except WorkloadError as e:
                self.workload_fail(e, f"{path}.placement")
            out.append(Strategy(name, chain, placement))
        return tuple(out)

    def placement(self, value: object, path: str, spec: TopologySpec) -> tuple[str, ...]:
        hosts_allowed = f"hosts of topology {spec.name}: {name_list(spec.host_names)}"
        if isinstance(value, str):
            hosts, paths = [value], [path]
        else:
            hosts = self.nonempty_list(value, path, _PLACEMENT_ALLOWED)
            paths = [f"{path}[{k}]" for k in range(len(hosts))]
        each_source = SOURCE not in spec.host_names     # the keyword, unless a host has that name
        for k, (host, where) in enumerate(zip(hosts, paths)):
            if not isinstance(host, str):
                self.fail(where, f"expected a host name, got {kind_of(host)}", hosts_allowed)
            if host == SOURCE and each_source:
                if k:
                    self.fail(where, f"'{SOURCE}' (each request's source host) can only come first",
                              f"e.g. [{SOURCE}, edge]: part 0 on every source host, part 1 on edge")
                continue
            if host not in spec.host_names:
                self.fail(where, f"unknown host '{host}'", hosts_allowed + (
                    f", or {SOURCE} (each request's source host)" if k == 0 and each_source else ""))
            if host in hosts[:k]:
                self.fail(where, f"host '{host}' appears twice", "each host once (one part per host)")
            if k and hosts[k - 1] == SOURCE and each_source:
                continue                  # checked against every source once they are known
            if k and host not in spec.neighbours(hosts[k - 1]):
                self.fail(where, f"{hosts[k - 1]} and {host} are not linked in topology {spec.name}",
                          f"hosts linked to {hosts[k - 1]}: {name_list(spec.neighbours(hosts[k - 1]))}")
        return tuple(hosts)

    def source_placements(self, strategies: tuple[Strategy, ...], sources: tuple[str, ...],
                          spec: TopologySpec) -> None:
        """A placement starting with ``source`` runs its first part on every source host: each
        must be a host, not among the placement's other hosts, and linked to the next one."""
        if SOURCE in spec.host_names:
            return
        for i, s in enumerate(strategies):
            if s.placement[0] != SOURCE:
                continue
            path = f"strategies[{i}].placement"
            for host in sources:
                if host == CLIENT and CLIENT not in spec.host_names:
                    self.fail(path, f"'{SOURCE}' runs part 0 on the source host, but the source is {CLIENT} "
                                    "(no host)", "a source host (source: mobile, or load.sources)")
                if host in s.placement[1:]:
                    self.fail(path, f"the source {host} is also one of its hosts", "hosts other than the sources")
                if len(s.placement) > 1 and s.placement[1] not in spec.neighbours(host):
                    self.fail(path, f"the source {host} and {s.placement[1]} are not linked in topology {spec.name}",
                              f"hosts linked to {host}: {name_list(spec.neighbours(host))}")

    def source(self, value: object, spec: TopologySpec) -> str:
        if value is None:
            return spec.hosts[0].name
        allowed = f"{CLIENT}, or a host of topology {spec.name}: {name_list(spec.host_names)}"
        value = self.string(value, "source", allowed)
        if value != CLIENT and value not in spec.host_names:
            self.fail("source", f"unknown host '{value}'", allowed)
        return value

    def requests(self, value: object) -> Requests:
        body = self.mapping(value, "requests", REQUEST_KEYS, "{warmup: 3, repeat: 30, inputs: 10, timeout: 120s}")
        counts = {}
        for key, (lo, hi, default) in REQUEST_COUNTS.items():
            n = body.get(key, default)
            if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= hi:
                what = f"{n} is out of range" if isinstance(n, int) and not isinstance(n, bool) \
                    else f"expected a whole number, got {kind_of(n)}"
                self.fail(f"requests.{key}", what, f"a whole number {lo} to {hi}")
            counts[key] = n
        timeout = TIMEOUT_DEFAULT_MS
        if "timeout" in body:
            timeout = self.duration_ms(body["timeout"], "requests.timeout", TIMEOUT_MAX_MS, "120s")
        duration = None
        if "duration" in body:
            duration = self.duration_ms(body["duration"], "requests.duration", DURATION_MAX_MS, "30s")
            if "repeat" in body:
                self.fail("requests.duration", "set with requests.repeat: a cell measures either a number of "
                          "requests or a duration", "one of requests.duration and requests.repeat")
        return Requests(timeout_ms=timeout, duration_ms=duration, **counts)

    def duration_ms(self, value: object, path: str, max_ms: float, example: str) -> float:
        """A duration with a unit, above 0 and at most ``max_ms``, in ms."""
        allowed = f"a duration above 0 and at most {format_duration_ms(max_ms)}, e.g. {example}"
        try:
            ms = parse_duration_ms(value)
        except TopologyError as e:
            self.fail(path, e.problem, allowed)
        if not 0 < ms <= max_ms:
            self.fail(path, f"{format_duration_ms(ms)} is out of range", allowed)
        return ms

    def load(self, raw: dict, spec: TopologySpec) -> Load:
        example = "{scenario: server, qps: 20, sources: [mobile1, mobile2], duration: 10s, slo: {p99: 100ms}}"
        body = self.mapping(raw.get("load"), "load", LOAD_KEYS, example)
        scenario = body.get("scenario", SCENARIOS[0])
        if scenario not in SCENARIOS:
            shown = f"'{scenario}'" if isinstance(scenario, str) else kind_of(scenario)
            self.fail("load.scenario", f"{shown} is not a scenario", " | ".join(SCENARIOS))
        takes = SCENARIO_KEYS[scenario]
        for key in body:
            if key != "scenario" and key not in takes:
                self.fail(f"load.{key}", f"the {scenario} scenario does not take {key}",
                          f"for {scenario}: {', '.join(takes) or 'nothing besides scenario'}")
        qps = body.get("qps")
        if scenario == "server" and qps is None and not body.get("slo"):
            self.fail("load", "the server scenario needs qps, or slo to search for the highest qps that meets it",
                      "e.g. {scenario: server, qps: 20} or {scenario: server, slo: {p99: 100ms}}")
        if scenario == "server" and qps is not None:
            if isinstance(qps, bool) or not isinstance(qps, (int, float)) or not 0 < qps <= MAX_QPS:
                self.fail("load.qps", f"{qps!r} is not a request rate", f"requests per second above 0, at most {MAX_QPS:g}")
            qps = float(qps)
        concurrency = body.get("concurrency")
        if scenario == "multi-stream" and concurrency is None:
            self.fail("load", "the multi-stream scenario needs concurrency", "e.g. {scenario: multi-stream, concurrency: 4}")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or not 1 <= concurrency <= MAX_CONCURRENCY):
            self.fail("load.concurrency", f"{concurrency!r} is not a request count", f"a whole number 1 to {MAX_CONCURRENCY}")
        sources = self.load_sources(body.get("sources"), spec, raw)
        if concurrency is not None and concurrency < len(sources):
            self.fail("load.concurrency", f"{concurrency} requests in flight cannot keep {len(sources)} sources busy",
                      f"at least one per source: {len(sources)} or more")
        if scenario != SCENARIOS[0] and isinstance(raw.get("requests"), dict) and "duration" in raw["requests"]:
            self.fail("requests.duration", f"the {scenario} scenario measures for load.duration",
                      f"load.duration with the {scenario} scenario (requests.duration: single-stream)")
        duration = None
        if "duration" in body:
            duration = self.duration_ms(body["duration"], "load.duration", DURATION_MAX_MS, "10s")
            if isinstance(raw.get("requests"), dict) and "repeat" in raw["requests"]:
                self.fail("load.duration", "set with requests.repeat: a cell measures either a number of requests "
                          "or a duration", "one of load.duration and requests.repeat")
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            self.fail("load.seed", f"{seed!r} is not a seed", "a whole number 0 to 4294967295")
        slo: list[tuple[str, float]] = []
        targets = self.mapping(body.get("slo"), "load.slo", tuple(SLO_PERCENTILES), "{p99: 100ms}")
        for key in SLO_PERCENTILES:
            if key in targets:
                slo.append((key, self.duration_ms(targets[key], f"load.slo.{key}", TIMEOUT_MAX_MS, "100ms")))
        if "slo" in body and not slo:
            self.fail("load.slo", "no target", "e.g. {p99: 100ms}")
        return Load(scenario, qps, concurrency, sources, duration, seed, tuple(slo))

    def load_sources(self, value: object, spec: TopologySpec, raw: dict) -> tuple[str, ...]:
        """``load.sources``: hosts, or a count N (the topology's first N hosts as written)."""
        if value is None:
            return ()
        allowed = f"a list of hosts of topology {spec.name} ({name_list(spec.host_names)}) or a count 1 to {len(spec.hosts)}"
        if raw.get("source") is not None:
            self.fail("load.sources", "set with source: requests start either at source or at load.sources",
                      "one of source and load.sources")
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= len(spec.hosts):
                self.fail("load.sources", f"{value} is out of range", allowed)
            return tuple(spec.host_names[:value])
        hosts = self.nonempty_list(value, "load.sources", allowed)
        for k, host in enumerate(hosts):
            if not isinstance(host, str) or host not in spec.host_names:
                shown = f"unknown host '{host}'" if isinstance(host, str) else f"expected a host name, got {kind_of(host)}"
                self.fail(f"load.sources[{k}]", shown, allowed)
            if host in hosts[:k]:
                self.fail(f"load.sources[{k}]", f"host '{host}' appears twice", "each host once")
        return tuple(hosts)

    def codec(self, value: object) -> str:
        if not isinstance(value, str) or value not in CODECS:
            shown = f"'{value}'" if isinstance(value, str) else kind_of(value)
            self.fail("codec", f"{shown} is not a codec", " | ".join(CODECS))
        return value  # type: ignore[return-value]

    def serving(self, value: object, spec: TopologySpec) -> Serving:
        body = self.mapping(value, "serving", SERVING_KEYS,
                            "{connection: persistent, threads: auto, pace: true, max_connections: auto}")
        connection = body.get("connection", CONNECTIONS[0])
        if connection not in CONNECTIONS:
            shown = f"'{connection}'" if isinstance(connection, str) else kind_of(connection)
            self.fail("serving.connection", f"{shown} is not a connection mode", " | ".join(CONNECTIONS))
        threads = body.get("threads", "auto")
        allowed = (f"auto (each host's core budget, rounded up), a whole number 1 to {MAX_THREADS}, "
                   "or a mapping of host to number, e.g. {edge: 2}")

        def count(v: object, path: str) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_THREADS:
                self.fail(path, f"{v!r} is not a thread count", allowed)
            return v  # type: ignore[return-value]

        if threads == "auto" or threads is None:
            chosen: int | tuple[tuple[str, int], ...] | None = None
        elif isinstance(threads, dict):
            for host in threads:
                if host not in spec.host_names:
                    self.fail(f"serving.threads.{host}", f"unknown host '{host}'",
                              f"hosts of topology {spec.name}: {name_list(spec.host_names)}")
            chosen = tuple((str(h), count(v, f"serving.threads.{h}")) for h, v in threads.items())
        else:
            chosen = count(threads, "serving.threads")
        pace = body.get("pace", True)
        if not isinstance(pace, bool):
            self.fail("serving.pace", f"{pace!r} is not true or false",
                      "true (each inference takes its CPU time / the host's cores) or false (the CPU quota alone)")
        cap = body.get("max_connections", "auto")
        if cap == "auto" or cap is None:
            cap = None
        elif isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_CONNECTIONS:
            self.fail("serving.max_connections", f"{cap!r} is not a connection count",
                      f"auto (twice what the load may hold open, at least {AUTO_MIN_CONNECTIONS}), "
                      f"or a whole number 1 to {MAX_CONNECTIONS}")
        return Serving(connection, chosen, pace, cap)

    def sweep(self, value: object) -> tuple[tuple[str, tuple[Any, ...]], ...]:
        if value is not None and not isinstance(value, dict):
            self.fail("sweep", f"expected a mapping, got {kind_of(value)}",
                      "a mapping of paths to lists of values, e.g. {links.edge-cloud.bandwidth: [1Mbit, 10Mbit]}")
        body = value or {}
        axes: list[tuple[str, tuple[Any, ...]]] = []
        for key, values in body.items():
            path = f"sweep.{key}"
            parts = _split_path(str(key))
            if (not parts[0] or any(not p for p in parts) or parts[0] not in TOP_KEYS
                    or parts[0] in ("name", "sweep") or self._names_a_cell(parts)):
                self.fail(path, "not a path that can be swept", _UNSWEEPABLE)
            dotted = ".".join(parts)
            for other, _ in axes:
                if (dotted + ".").startswith(other + ".") or (other + ".").startswith(dotted + "."):
                    self.fail(path, f"overlaps the axis {other}", "paths that do not contain one another")
            values = self.nonempty_list(values, path, "a list of values, e.g. [1Mbit, 10Mbit, 100Mbit]")
            for j, v in enumerate(values):
                if v in values[:j]:
                    self.fail(f"{path}[{j}]", f"{v!r} is listed twice", "each value once")
            axes.append((dotted, tuple(_freeze(v) for v in values)))
        points = 1
        for _, values in axes:
            points *= len(values)
        if points > MAX_POINTS:
            self.fail("sweep", f"{points} points", f"at most {MAX_POINTS} combinations")
        return tuple(axes)

    @staticmethod
    def _names_a_cell(parts: list[str]) -> bool:
        """Paths that would change which models or strategies a cell is made of."""
        if parts[0] not in ("models", "strategies"):
            return False
        return len(parts) <= 2 or (len(parts) == 3 and parts[2] == "name")
