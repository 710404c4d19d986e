"""The result store: one SQLite file, ``results.sqlite``, in a run's output folder.

Everything a run measures goes here, one transaction per cell, so the file is always
consistent: a crash (or Ctrl-C, or ``kill -9``) mid-run loses at most the cell being written,
never leaves half of one, and a resumed run sees exactly the cells that finished. The file is
in WAL mode, so ``sqlite3 results.sqlite`` (or any SQLite client) can read it while a run is
still writing; ``testbed results export`` turns it into CSV or Parquet files that stand alone.

Schema
------
Four tables: ``runs`` (one row per ``testbed run`` invocation), ``cells`` (one row per cell:
one sweep point x one model x one strategy), ``requests`` (one row per measured request) and
``hops`` (where one request's time went, step by step). Their columns are defined once, in
:data:`TABLES` (name, SQL type, constraint, meaning); the DDL, the inserts, the value checks and
the export are made from it, and :func:`schema_markdown` renders it for the docs. To add a
column: append it to its table (last: ``ALTER TABLE`` adds a column at the end), add its field
to the record dataclass, and append a :data:`MIGRATIONS` step that adds it to existing stores.

``requests`` and ``hops`` rows are deleted with their cell (``ON DELETE CASCADE``); writing a
cell that exists replaces it and all its rows. Example::

    SELECT c.strategy, c.point_json, avg(r.e2e_ms), avg(r.transmission_ms)
      FROM requests r JOIN cells c USING (cell)
     WHERE r.status = 'ok' GROUP BY c.cell;

Booleans are 0/1, NaN is stored as NULL (SQLite has no NaN), JSON columns are UTF-8 text.

Versions
--------
A store's schema version is its ``PRAGMA user_version``. Opening a store of an older version
upgrades it in place, through each :data:`MIGRATIONS` step after its version, in one
transaction: a step that fails leaves the file as it was. A store of a newer version than this
testbed's is refused. Version 1 kept its version only in a ``meta`` table (``user_version``
0); every version keeps ``meta.schema_version`` equal to ``user_version``, so a testbed of
version 1 refuses a newer store with its own clear line rather than misreading it.
"""
from __future__ import annotations

import csv
import importlib
import json
import math
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from emulation import signals
from topologies.errors import TestbedError, no_space, no_space_line

STORE_FILE = "results.sqlite"

RUN_STATUSES = ("running", "done", "interrupted", "failed")
CELL_STATUSES = ("done", "interrupted", "failed")
REQUEST_STATUSES = ("ok", "timeout", "oom", "error")
HOP_KINDS = ("compute", "link", "queue")
HOP_DIRECTIONS = ("request", "response")
EXPORT_FORMATS = ("csv", "parquet")
_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(TestbedError):
    """Anything wrong with the result store, as one line: what, where, what to do."""


@dataclass(frozen=True)
class CellRecord:
    cell: str
    run_id: str
    model: str
    weights: str
    strategy: str
    operators: list             # JSON-serialisable (stored as JSON text)
    placement: tuple[str, ...]  # stored as "mobile>edge"
    source: str
    codec: str
    connection: str
    point: dict                 # the sweep point, stored as JSON text
    artifact: str | None
    metric: str | None
    metric_value: float | None
    baseline_value: float | None
    status: str
    error: str | None
    started: float
    ended: float
    network: dict = field(default_factory=dict)
    hosts: dict = field(default_factory=dict)
    load: dict | None = None
    metric_ci_low: float | None = None      # 95 % intervals of the metric, the baseline's and the loss
    metric_ci_high: float | None = None
    baseline_ci_low: float | None = None
    baseline_ci_high: float | None = None
    loss_ci_low: float | None = None
    loss_ci_high: float | None = None
    quality_samples: int | None = None
    trace: dict | None = None               # the link traces replayed during the cell (testbed.runner)
    choice: dict | None = None              # a cut: fastest cell's chosen cut and why (testbed.fastest)


@dataclass(frozen=True)
class RequestRow:
    seq: int
    input_index: int
    status: str
    e2e_ms: float | None = None
    compute_ms: float | None = None
    transmission_ms: float | None = None
    serialization_ms: float | None = None
    overhead_ms: float | None = None
    bytes_sent: int | None = None
    exit_segment: int | None = None
    output_match: bool | None = None
    output_max_diff: float | None = None
    error: str | None = None
    source: str | None = None
    due_ms: float | None = None
    queue_ms: float | None = None
    late_ms: float | None = None


@dataclass(frozen=True)
class HopRow:
    seq: int
    idx: int
    kind: str
    src: str
    dst: str
    direction: str
    ms: float
    part: int | None = None
    bytes: int | None = None
    decode_ms: float | None = None
    encode_ms: float | None = None
    trace_at_ms: float | None = None          # a link hop crossing a traced direction: its first byte, ms
    trace_link: str | None = None             # after the replay's start; the traced direction(s) it crossed;
    trace_bandwidth_bps: int | None = None    # the bandwidth and delay in force then
    trace_delay_ms: float | None = None


# --- value checks (a programming error caught before anything is written) --------------------

def _one_of(what: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise StoreError(f"{what} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _text(what: str, value) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return value


def _int(what: str, value) -> int:
    if isinstance(value, bool):
        raise StoreError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)        # int and numpy integers; not floats
    except TypeError:
        raise StoreError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None


def _float(what: str, value) -> float | None:
    if isinstance(value, (bool, str, bytes)):
        raise StoreError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)                    # int, float and numpy scalars
    except (TypeError, ValueError):
        raise StoreError(f"{what} must be a number, got {type(value).__name__} {value!r}") from None
    return None if math.isnan(v) else v


def _bool(what: str, value) -> int:
    if isinstance(value, (str, bytes, float)) or not hasattr(value, "__bool__"):
        raise StoreError(f"{what} must be a boolean, got {type(value).__name__} {value!r}")
    if value not in (0, 1):
        raise StoreError(f"{what} must be a boolean, got {value!r}")
    return int(bool(value))


def _json(what: str, value) -> str:
    if isinstance(value, Mapping):
        value = dict(value)
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} is not JSON-serialisable: {e}") from None


def _placement(what: str, value) -> str:
    hosts = (value,) if isinstance(value, str) else tuple(value)
    if not hosts:
        raise StoreError(f"{what} is empty: a placement names at least one host")
    for h in hosts:
        if not isinstance(h, str) or not h or (">" in h and len(hosts) > 1):
            raise StoreError(f"{what} has host {h!r}: hosts are non-empty strings without '>'")
    return ">".join(hosts)


# --- schema ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnType:
    """How a column's values are checked on the way in, stored, and exported."""

    sql: str                                # the SQLite column type
    doc: str                                # the type as the docs show it
    export: str                             # the type in exported files (Arrow's name)
    check: Callable[[str, object], object]  # (what, value) -> the value to store, or StoreError


TEXT = ColumnType("TEXT", "TEXT", "string", _text)
INTEGER = ColumnType("INTEGER", "INTEGER", "int64", _int)
REAL = ColumnType("REAL", "REAL", "float64", _float)
BOOLEAN = ColumnType("INTEGER", "INTEGER 0/1", "bool", _bool)
JSON = ColumnType("TEXT", "TEXT (JSON)", "string", _json)
PLACEMENT = ColumnType("TEXT", "TEXT (a>b)", "string", _placement)


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    meaning: str
    constraint: str = ""            # in the DDL, after the type: PRIMARY KEY, REFERENCES ...
    required: bool = False          # NULL is refused (by the checks: the tables have no NOT NULL)
    allowed: tuple[str, ...] = ()   # the only values the column takes

    @property
    def field(self) -> str:
        """Its name in Python: the record's attribute, the decoded row's key, the export's
        header (a JSON column's name without its ``_json`` suffix)."""
        return self.name.removesuffix("_json") if self.type is JSON else self.name

    def stored(self, what: str, value):
        """``value`` as it is stored; a StoreError naming ``what`` if the column cannot hold it."""
        if self.allowed:
            return _one_of(what, value, self.allowed)
        if value is None and not self.required:
            return None
        return self.type.check(what, value)


@dataclass(frozen=True)
class Table:
    name: str
    meaning: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()               # a key of several columns (one column: its constraint)
    indexes: tuple[tuple[str, str], ...] = ()       # (index name, column)

    @property
    def key(self) -> tuple[str, ...]:
        return self.primary_key or tuple(c.name for c in self.columns if "PRIMARY KEY" in c.constraint)

    def ddl(self) -> list[str]:
        parts = [" ".join(filter(None, (c.name, c.type.sql, c.constraint))) for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return ([f"CREATE TABLE {self.name} ({', '.join(parts)})"]
                + [f"CREATE INDEX {name} ON {self.name} ({column})" for name, column in self.indexes])

    def insert(self, upsert: bool = False) -> str:
        """INSERT of a whole row; ``upsert``: a row with the same key replaces the old one's values."""
        names = [c.name for c in self.columns]
        sql = f"INSERT INTO {self.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        if upsert:
            sql += (f" ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET "
                    + ", ".join(f"{n} = excluded.{n}" for n in names if n not in self.key))
        return sql

    def row(self, what: str, values: Mapping[str, object]) -> tuple:
        """A row from ``values`` (by field name), each checked and converted for SQLite."""
        return tuple(c.stored(f"{what} {c.field}", values[c.field]) for c in self.columns)

    def decoded(self, row: Mapping[str, object]) -> dict:
        """A row as read, its JSON columns decoded under their field names."""
        json_columns = {c.name: c.field for c in self.columns if c.type is JSON}
        return {json_columns.get(k, k): (json.loads(v) if k in json_columns and v is not None else v)
                for k, v in row.items()}


_CELL_KEY = Column("cell", TEXT, "the cell it belongs to", "REFERENCES cells ON DELETE CASCADE", required=True)
_SECONDS = "Unix seconds"

RUNS = Table("runs", "One row per `testbed run` invocation.", (
    Column("run_id", TEXT, "the run's id", "PRIMARY KEY", required=True),
    Column("experiment", TEXT, "the experiment's name", required=True),
    Column("config_json", JSON, "the experiment as loaded"),
    Column("machine_json", JSON, "the machine it ran on"),
    Column("started", REAL, _SECONDS, required=True),
    Column("ended", REAL, f"{_SECONDS}; NULL while running"),
    Column("status", TEXT, "a run still `running` after its process is gone crashed", allowed=RUN_STATUSES),
))

CELLS = Table("cells", "One row per cell: one sweep point x one model x one strategy.", (
    Column("cell", TEXT, "the cell's key", "PRIMARY KEY", required=True),
    Column("run_id", TEXT, "the run that wrote it last", "REFERENCES runs", required=True),
    Column("model", TEXT, "the model's name", required=True),
    Column("weights", TEXT, "the model's weights", required=True),
    Column("strategy", TEXT, "the strategy's name", required=True),
    Column("operators", JSON, "the strategy's operator chain"),
    Column("placement", PLACEMENT, "hosts in request order joined by `>`, e.g. `mobile>edge`", required=True),
    Column("source", TEXT, "where inputs are produced", required=True),
    Column("codec", TEXT, "the wire codec", required=True),
    Column("connection", TEXT, "persistent or per-request connections", required=True),
    Column("point_json", JSON, 'the sweep point: `{"links.mobile-edge.bandwidth": "10Mbit", ...}`'),
    Column("artifact", TEXT, "the deployed artifact, if any"),
    Column("metric", TEXT, "the model's quality metric"),
    Column("metric_value", REAL, "the metric on this deployment"),
    Column("baseline_value", REAL, "the same metric for the unmodified model"),
    Column("status", TEXT, "how the cell ended", allowed=CELL_STATUSES),
    Column("error", TEXT, "why, when failed"),
    Column("started", REAL, _SECONDS, required=True),
    Column("ended", REAL, _SECONDS, required=True),
    Column("requests", INTEGER, "its request rows (counted by the store)"),
    Column("ok", INTEGER, "its request rows with status `ok`"),
    Column("timeouts", INTEGER, "its request rows with status `timeout`"),
    Column("ooms", INTEGER, "its request rows with status `oom`"),
    Column("errors", INTEGER, "its request rows with status `error`"),
    Column("network_json", JSON, "the links as applied and read back"),
    Column("hosts_json", JSON, "the hosts' limits as applied"),
    Column("load_json", JSON, "a load scenario's figures: scenario, target and achieved QPS, throughput, "
                              "the generators' lateness (NULL for single-stream)"),
    Column("metric_ci_low", REAL, "lower bound of the metric's 95 % interval (a bootstrap over the evaluation "
                                  "samples); NULL: no interval"),
    Column("metric_ci_high", REAL, "its upper bound"),
    Column("baseline_ci_low", REAL, "lower bound of the unmodified model's 95 % interval, on the same samples"),
    Column("baseline_ci_high", REAL, "its upper bound"),
    Column("loss_ci_low", REAL, "lower bound of the 95 % interval of the loss, `baseline_value - metric_value` "
                                "(a paired bootstrap: both recomputed on the same resampled samples)"),
    Column("loss_ci_high", REAL, "its upper bound: the recommendations count a strategy within a loss "
                                 "tolerance only when this is at most the tolerance"),
    Column("quality_samples", INTEGER, "the evaluation samples behind the metric and its intervals"),
    Column("trace_json", JSON, "the link traces replayed during the cell, one entry per traced direction: the "
                               "file, its mode, the replay's steps due, applied, missed and late, apply lag "
                               "p50/p99/max (ms), read-backs and what differed, and the steps applied as "
                               "`[ms after the start, bit/s, delay ms]` (NULL: no trace)"),
    Column("choice_json", JSON, "a `partition: {cut: fastest}` cell's choice: the rule, the chosen `cut` (the tensor "
                                "`operators` names) and its predicted `p50_ms`, and each candidate's tensor, graph "
                                "index, bytes crossing it, FLOPs fraction before it, whether `auto` would choose "
                                "it, and its predicted p50, p90, compute, transmission and harness ms (NULL: "
                                "another strategy)"),
), indexes=(("cells_run", "run_id"),))

REQUESTS = Table("requests", "One row per measured request (warm-up requests are not stored). "
                 "Timings are NULL when not measured.", (
    _CELL_KEY,
    Column("seq", INTEGER, "0, 1, ... in the order sent", required=True),
    Column("input_index", INTEGER, "which input of the data set", required=True),
    Column("status", TEXT, "how the request ended", allowed=REQUEST_STATUSES),
    Column("e2e_ms", REAL, "source sends -> source has the answer"),
    Column("compute_ms", REAL, "sum of the compute hops"),
    Column("transmission_ms", REAL, "sum of the link hops"),
    Column("serialization_ms", REAL, "encoding + decoding tensors, quota stalls on receiving, and hops "
                                     "between two processes on one host"),
    Column("overhead_ms", REAL, "the rest of `e2e_ms`"),
    Column("bytes_sent", INTEGER, "the bytes of every frame sent, over all links"),
    Column("exit_segment", INTEGER, "early exit: the segment that answered"),
    Column("output_match", BOOLEAN, "the output agrees with the reference"),
    Column("output_max_diff", REAL, "the largest absolute difference to the reference"),
    Column("error", TEXT, "why, when not ok"),
    Column("source", TEXT, "the host it started from (load scenarios; NULL: the cell's source)"),
    Column("due_ms", REAL, "when a load scenario scheduled it, ms after the cell's start; `e2e_ms` counts "
                           "from there (NULL: single-stream, which counts from the send)"),
    Column("queue_ms", REAL, "waiting in the hosts' queues: arrival to start of compute, summed over hosts"),
    Column("late_ms", REAL, "how late the load generator sent it after `due_ms` (part of `e2e_ms`)"),
), primary_key=("cell", "seq"), indexes=(("requests_cell", "cell"),))

HOPS = Table("hops", "Where one request's time went, step by step. A link with `src = dst` joins two "
             "processes on one host: its `ms` counts as that host's serialisation, not transmission.", (
    _CELL_KEY,
    Column("seq", INTEGER, "the request", required=True),
    Column("idx", INTEGER, "0, 1, ... along the path", required=True),
    Column("kind", TEXT, "`compute`: a host ran part `part` of the model; `link`: `bytes` crossed from "
                         "`src` to `dst`; `queue`: the request waited on `src` (= `dst`, direction "
                         "`request`) for the compute of requests ahead of it, before its `compute` hop",
           allowed=HOP_KINDS),
    Column("src", TEXT, "host", required=True),
    Column("dst", TEXT, "host (equal to `src` for compute)", required=True),
    Column("direction", TEXT, "compute hops are `request`", allowed=HOP_DIRECTIONS),
    Column("part", INTEGER, "the model part, for compute and for the link that carries its input"),
    Column("bytes", INTEGER, "the frame's size (links)"),
    Column("ms", REAL, "the hop's time", required=True),
    Column("decode_ms", REAL, "links: the receiver's decoding, with its quota stall on the frame's last bytes"),
    Column("encode_ms", REAL, "links: the sender's encoding"),
    Column("trace_at_ms", REAL, "a link hop that crossed a traced link direction: when its first byte was sent, "
                                "ms after the trace's start (the cell's first measured request)"),
    Column("trace_link", TEXT, "the traced direction(s) it crossed, e.g. `mobile-edge forward`"),
    Column("trace_bandwidth_bps", INTEGER, "the bandwidth in force on it when the first byte was sent (the "
                                           "lowest, over several traced directions)"),
    Column("trace_delay_ms", REAL, "the one-way delay in force then (summed over several traced directions)"),
), primary_key=("cell", "seq", "idx"), indexes=(("hops_cell", "cell"),))

TABLES = (RUNS, CELLS, REQUESTS, HOPS)

# The version's bookkeeping, and how a store is recognised as one (version 1 had nothing else).
_META = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)"


@dataclass(frozen=True)
class Migration:
    version: int                                # the version it upgrades a store to, from version - 1
    change: str                                 # what changes, in a line
    apply: Callable[[sqlite3.Connection], None]  # run inside the opening transaction


def _no_change(conn: sqlite3.Connection) -> None:
    """A step whose only change is the version bookkeeping (done for every step)."""


def _add_columns(table: Table, names: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    """A step that adds ``table``'s columns ``names`` (NULL in the rows already stored)."""
    def apply(conn: sqlite3.Connection) -> None:
        for c in table.columns:
            if c.name in names:
                conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {c.name} {c.type.sql}")
    return apply


def _load_columns(conn: sqlite3.Connection) -> None:
    _add_columns(CELLS, ("load_json",))(conn)
    _add_columns(REQUESTS, ("source", "due_ms", "queue_ms", "late_ms"))(conn)


def _trace_columns(conn: sqlite3.Connection) -> None:
    _add_columns(CELLS, ("trace_json",))(conn)
    _add_columns(HOPS, ("trace_at_ms", "trace_link", "trace_bandwidth_bps", "trace_delay_ms"))(conn)


_INTERVAL_COLUMNS = ("metric_ci_low", "metric_ci_high", "baseline_ci_low", "baseline_ci_high", "loss_ci_low",
                     "loss_ci_high", "quality_samples")


# Append a step for each change of the schema; never edit one that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "the version is kept in PRAGMA user_version (and still in meta)", _no_change),
    Migration(3, "load scenarios: cells.load_json; requests.source, due_ms, queue_ms, late_ms", _load_columns),
    Migration(4, "quality intervals: cells." + ", ".join(_INTERVAL_COLUMNS) + " (NULL in cells stored before)",
              _add_columns(CELLS, _INTERVAL_COLUMNS)),
    Migration(5, "link traces: cells.trace_json; hops.trace_at_ms, trace_link, trace_bandwidth_bps, trace_delay_ms",
              _trace_columns),
    Migration(6, "cut: fastest: cells.choice_json", _add_columns(CELLS, ("choice_json",))),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
_CELL_ORDER = "ORDER BY started, cell"


def schema_markdown() -> str:
    """The tables and their columns as Markdown, from :data:`TABLES` (for the docs)."""
    lines = [f"Schema version {SCHEMA_VERSION}."]
    for t in TABLES:
        lines += ["", f"### `{t.name}`", "", t.meaning + (f" Key: `({', '.join(t.key)})`." if t.primary_key else ""),
                  "", "| column | type | constraint | meaning |", "|---|---|---|---|"]
        for c in t.columns:
            meaning = c.meaning + (f"; one of {', '.join(f'`{a}`' for a in c.allowed)}" if c.allowed else "") \
                + ("; never NULL" if c.required and "PRIMARY KEY" not in c.constraint else "")
            lines.append(f"| `{c.name}` | {c.type.doc} | {c.constraint} | {meaning} |")
    return "\n".join(lines) + "\n"


def _values(record) -> dict:
    """A record dataclass's fields by name (not deep-copied, unlike dataclasses.asdict)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _cell_row(c: CellRecord, requests: Sequence[RequestRow]) -> tuple:
    if not isinstance(c.cell, str) or not c.cell:
        raise StoreError(f"cell key must be a non-empty string, got {c.cell!r}")
    statuses = [r.status for r in requests]
    counts = {"requests": len(statuses), "ok": statuses.count("ok"), "timeouts": statuses.count("timeout"),
              "ooms": statuses.count("oom"), "errors": statuses.count("error")}
    return CELLS.row(f"cell {c.cell}:", {**_values(c), **counts})


def _request_row(cell: str, r: RequestRow) -> tuple:
    return REQUESTS.row(f"cell {cell} request {r.seq!r}:", {**_values(r), "cell": cell})


def _hop_row(cell: str, h: HopRow) -> tuple:
    w = f"cell {cell} request {h.seq!r} hop {h.idx!r}:"
    row = HOPS.row(w, {**_values(h), "cell": cell})
    if h.kind == "compute" and h.direction != "request":
        raise StoreError(f"{w} a compute hop has direction 'request', not {h.direction!r}")
    return row


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(f"PRAGMA user_version = {int(version)}")
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _disk_full(e: sqlite3.Error) -> bool:
    """SQLITE_FULL (or one of its extended codes): the disk under the store is full."""
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL


# what to do when the store's disk fills up, after "free space on that disk or"
FULL_ADVICE = ("choose another --out (what was stored before stays readable here; "
                "--resume finishes the run once there is room)")


def check_rows(cell: str, request: RequestRow, hops: Sequence[HopRow]) -> None:
    """Raise the StoreError `ResultStore.write_cell` would raise for ``request`` and its
    ``hops`` (a value a column cannot hold), before the cell is written."""
    _request_row(cell, request)
    for h in hops:
        _hop_row(cell, h)


# --- the store ------------------------------------------------------------------------------

class ResultStore:
    """The result store of one output folder. One writer (the thread that opened it); any
    number of readers, in this process or others, at the same time."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no results at {self.path}: run `testbed run` with this output folder first")
        self._check_header()
        uri = self.path.resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the result store {self.path}: {_one_line(e)}: "
                             "check the path and its permissions") from None
        try:
            self._open(create)
        except BaseException:
            self._conn.close()
            raise

    def _check_header(self) -> None:
        """A non-empty file that is not SQLite is refused before SQLite sees it: SQLite would
        take a file of a few bytes for an empty database and write over it."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot read the result store {self.path}: {e.strerror or e}: "
                             "check the path and its permissions") from None
        if head and head != _SQLITE_HEADER:
            raise StoreError(f"{self.path} is not a testbed result store (not an SQLite file): "
                             "move it away or choose another output folder")

    def _open(self, create: bool) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            tables = self._tables()
        except sqlite3.DatabaseError as e:
            if _disk_full(e):
                raise StoreError(no_space_line(self.path, FULL_ADVICE)) from None
            raise StoreError(f"{self.path} is not a testbed result store ({_one_line(e)}): "
                             "move it away or choose another output folder") from None
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: SQLite would not switch to WAL journal mode (got {mode!r}): "
                             "put the output folder on a local filesystem")
        if not conn.execute("PRAGMA foreign_keys").fetchone()[0]:
            raise StoreError(f"{self.path}: this SQLite does not enforce foreign keys: "
                             "use a Python whose sqlite3 supports them")
        if not tables:
            if not create:
                raise StoreError(f"no results at {self.path} (the file is empty): "
                                 "run `testbed run` with this output folder first")
            self._write("the result tables", self._create)
        version = self._version()
        if version < SCHEMA_VERSION:
            self._upgrade(version)

    def _create(self, conn: sqlite3.Connection) -> None:
        if not self._tables():      # another process may have created it meanwhile
            conn.execute(_META)
            for t in TABLES:
                for stmt in t.ddl():
                    conn.execute(stmt)
            _set_version(conn, SCHEMA_VERSION)

    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _version(self) -> int:
        """The store's schema version: this testbed's, or an older one it can upgrade; anything
        else (not a store, a newer version, one older than every migration) is a StoreError."""
        not_ours = (f"{self.path} is an SQLite file but not a testbed result store: "
                    "move it away or choose another output folder")
        if "meta" not in self._tables():
            raise StoreError(not_ours)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:            # version 1 kept its version only in the meta table
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            try:
                version = int(row[0])
            except (TypeError, ValueError):
                raise StoreError(not_ours) from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has result schema version {version}, newer than this testbed's "
                             f"{SCHEMA_VERSION}: read it with a newer testbed (upgrade this one)")
        if version < MIGRATIONS[0].version - 1:
            raise StoreError(f"{self.path} has result schema version {version}, older than this testbed's "
                             f"{SCHEMA_VERSION}, and there is no migration for it: read it with the testbed "
                             "that wrote it, or run again into a new output folder")
        return version

    def _upgrade(self, version: int) -> None:
        """Upgrade the store from ``version`` to the current one, all steps in one transaction."""
        try:
            with self._tx() as conn:
                version = self._version()   # another process may have upgraded it meanwhile
                for step in MIGRATIONS:
                    if step.version > version:
                        step.apply(conn)
                _set_version(conn, SCHEMA_VERSION)
        except sqlite3.Error as e:
            raise StoreError(f"could not upgrade {self.path} from result schema version {version} to "
                             f"{SCHEMA_VERSION} ({_one_line(e)}); the file is as it was: make it writable and "
                             "close other testbeds using it, or read it with the testbed that wrote it") from None

    @staticmethod
    def in_folder(folder: str | Path, create: bool = True) -> ResultStore:
        folder = Path(folder)
        if create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the output folder {folder}: {e.strerror or e}") from None
        elif not folder.is_dir():
            raise StoreError(f"no results at {folder}: the folder does not exist; "
                             "run `testbed run` with this output folder first")
        return ResultStore(folder / STORE_FILE, create=create)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception
        (KeyboardInterrupt included), so nothing of it is left behind."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write(self, what: str, fn) -> None:
        """One transaction that a signal cannot cut short (it is held until the commit and
        acted on after it, :func:`emulation.signals.deferred`): a cell measured is a cell stored."""
        try:
            with signals.deferred(), self._tx() as conn:
                fn(conn)
        except sqlite3.Error as e:
            if _disk_full(e):
                raise StoreError(no_space_line(f"{what} to {self.path}", FULL_ADVICE)) from None
            raise StoreError(f"could not write {what} to {self.path}: {_one_line(e)}") from None

    # --- writing ---

    def begin_run(self, run_id: str, experiment: str, config: dict, machine: dict) -> None:
        """Record a run as ``running``. The same run_id again (a resumed run) updates it."""
        row = RUNS.row(f"run {run_id}:", {"run_id": run_id, "experiment": experiment, "config": config,
                                            "machine": machine, "started": time.time(), "ended": None,
                                            "status": "running"})
        self._write(f"run {run_id}", lambda conn: conn.execute(RUNS.insert(upsert=True), row))

    def end_run(self, run_id: str, status: str) -> None:
        _one_of(f"run {run_id}: status", status, RUN_STATUSES)
        ended = None if status == "running" else time.time()

        def fn(conn):
            if conn.execute("UPDATE runs SET ended = ?, status = ? WHERE run_id = ?",
                            (ended, status, run_id)).rowcount != 1:
                raise StoreError(f"run {run_id} is not in {self.path}: call begin_run first")
        self._write(f"run {run_id}", fn)

    def write_cell(self, cell: CellRecord, requests: Sequence[RequestRow], hops: Sequence[HopRow]) -> None:
        """Write one cell with all its request and hop rows in one transaction, replacing the
        cell (and all its rows) if it is there already. Either all of it is stored or none."""
        requests, hops = list(requests), list(hops)
        cell_row = _cell_row(cell, requests)
        request_rows = [_request_row(cell.cell, r) for r in requests]
        hop_rows = [_hop_row(cell.cell, h) for h in hops]

        def fn(conn):
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (cell.run_id,)).fetchone() is None:
                raise StoreError(f"cell {cell.cell}: run {cell.run_id} is not in {self.path}: "
                                 "call begin_run first")
            conn.execute("DELETE FROM hops WHERE cell = ?", (cell.cell,))
            conn.execute("DELETE FROM requests WHERE cell = ?", (cell.cell,))
            conn.execute("DELETE FROM cells WHERE cell = ?", (cell.cell,))
            conn.execute(CELLS.insert(), cell_row)
            conn.executemany(REQUESTS.insert(), request_rows)
            conn.executemany(HOPS.insert(), hop_rows)
        self._write(f"cell {cell.cell}", fn)

    # --- reading ---

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        try:
            return [dict(r) for r in self._conn.execute(sql, args)]
        except sqlite3.Error as e:
            raise StoreError(f"could not read {self.path}: {_one_line(e)}") from None

    def cell_status(self) -> dict[str, str]:
        return {r["cell"]: r["status"] for r in self._rows("SELECT cell, status FROM cells")}

    def cells(self) -> list[dict]:
        """Every cell, JSON columns decoded: operators, point, network, hosts (the ``_json``
        suffix dropped); placement as the ``mobile>edge`` string."""
        return [CELLS.decoded(r) for r in self._rows(f"SELECT * FROM cells {_CELL_ORDER}")]

    def requests(self, cell: str | None = None) -> list[dict]:
        """Request rows (of one cell, or all), by cell and seq; output_match as bool or None."""
        where, args = ("WHERE cell = ?", (cell,)) if cell is not None else ("", ())
        rows = self._rows(f"SELECT * FROM requests {where} ORDER BY cell, seq", args)
        for r in rows:
            if r["output_match"] is not None:
                r["output_match"] = bool(r["output_match"])
        return rows

    def hops(self, cell: str | None = None) -> list[dict]:
        where, args = ("WHERE cell = ?", (cell,)) if cell is not None else ("", ())
        return self._rows(f"SELECT * FROM hops {where} ORDER BY cell, seq, idx", args)

    def trace_times(self) -> dict[tuple[str, int], float]:
        """(cell, seq) -> when the request's first byte crossed a traced link direction, ms after
        the trace's start (its earliest ``hops.trace_at_ms``), for the requests that crossed one."""
        rows = self._rows("SELECT cell, seq, min(trace_at_ms) AS at_ms FROM hops WHERE trace_at_ms IS NOT NULL "
                          "GROUP BY cell, seq")
        return {(r["cell"], r["seq"]): r["at_ms"] for r in rows}

    def runs(self) -> list[dict]:
        """Every run, config and machine decoded from JSON (keys ``config``, ``machine``)."""
        json_fields = {c.field for c in RUNS.columns if c.type is JSON}
        # the decoded JSON last, as `testbed results show --json` has always printed a run
        return [dict(sorted(RUNS.decoded(r).items(), key=lambda kv: kv[0] in json_fields))
                for r in self._rows("SELECT * FROM runs ORDER BY started, run_id")]

    def close(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- export ---------------------------------------------------------------------------------

# the cell's columns that each exported request and hop row carries, so that each file stands alone
_CARRIED = ("model", "strategy", "placement")


def _export(table: Table, first: tuple[str, ...] = (), last: tuple[str, ...] = ()) -> tuple[list, str]:
    """``(columns, SELECT)`` of ``table``'s export file: [(header, type)] and the query giving
    its rows. Requests and hops carry their cell's :data:`_CARRIED` columns after ``cell``,
    then ``first`` of their own columns, the rest in table order, and ``last`` of the cell's."""
    if table is CELLS:
        return [(c.field, c.type.export) for c in CELLS.columns], \
            f"SELECT {', '.join(c.name for c in CELLS.columns)} FROM cells {_CELL_ORDER}"
    cells, own = {c.name: c for c in CELLS.columns}, {c.name: c for c in table.columns}
    rest = [c for c in table.columns if c.name != "cell" and c.name not in first]
    chosen = ([("t", own["cell"])] + [("c", cells[n]) for n in _CARRIED] + [("t", own[n]) for n in first]
              + [("t", c) for c in rest] + [("c", cells[n]) for n in last])
    return [(c.field, c.type.export) for _, c in chosen], (
        f"SELECT {', '.join(f'{alias}.{c.name}' for alias, c in chosen)} "
        f"FROM {table.name} t JOIN cells c USING (cell) "
        f"ORDER BY c.started, {', '.join(f't.{k}' for k in table.key)}")


_EXPORT = {
    "cells": _export(CELLS),
    # the request files' columns begin with the headline numbers, as they always have
    "requests": _export(REQUESTS, first=("status", "e2e_ms", "compute_ms", "transmission_ms", "bytes_sent"),
                        last=("point_json",)),
    "hops": _export(HOPS),
}


def _write_csv(path: Path, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    bools = [i for i, (_, t) in enumerate(columns) if t == BOOLEAN.export]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([name for name, _ in columns])
        for row in rows:
            row = list(row)
            for i in bools:
                if row[i] is not None:
                    row[i] = bool(row[i])
            w.writerow(["" if v is None else v for v in row])


def _write_parquet(path: Path, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([pa.field(name, types[t]) for name, t in columns])
    data = {}
    for i, (name, t) in enumerate(columns):
        values = [row[i] for row in rows]
        if t == BOOLEAN.export:
            values = [None if v is None else bool(v) for v in values]
        data[name] = values
    pq.write_table(pa.Table.from_pydict(data, schema=schema), path)


def export(folder: str | Path, fmt: str, dest: str | Path | None = None) -> list[Path]:
    """Write ``cells``, ``requests`` and ``hops`` of the store in ``folder`` as ``.csv`` or
    ``.parquet`` files into ``dest`` (default: ``folder``); requests and hops carry their cell's
    model, strategy and placement (requests also the sweep point as JSON text) so each file
    stands alone. Returns the paths written; each appears whole or not at all."""
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet":
        try:
            importlib.import_module("pyarrow.parquet")
        except ImportError:
            raise StoreError("parquet export needs pyarrow: pip install pyarrow==26.0.1, "
                             "or export csv") from None
    dest = Path(folder) if dest is None else Path(dest)
    with ResultStore.in_folder(folder, create=False) as store:
        tables = {}
        try:
            for name, (columns, sql) in _EXPORT.items():
                tables[name] = (columns, [tuple(r) for r in store._conn.execute(sql)])
        except sqlite3.Error as e:
            raise StoreError(f"could not read {store.path}: {_one_line(e)}") from None
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the export folder {dest}: {e.strerror or e}") from None
    written = []
    for name, (columns, rows) in tables.items():
        path = dest / f"{name}.{fmt}"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            (_write_csv if fmt == "csv" else _write_parquet)(tmp, columns, rows)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if no_space(e):
                raise StoreError(no_space_line(path, "export to a folder with room (--dest)")) from None
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        written.append(path)
    return written
