"""The result store: one SQLite file, ``results.sqlite``, in a run's output folder.

Everything a run measures goes here, one transaction per cell, so the file is always
consistent: a crash (or Ctrl-C, or ``kill -9``) mid-run loses at most the cell being written,
never leaves half of one, and a resumed run sees exactly the cells that finished. The file is
in WAL mode, so ``sqlite3 results.sqlite`` (or any SQLite client) can read it while a run is
still writing; ``testbed export`` turns it into CSV or Parquet files that stand alone.

Schema (version 1)
------------------

``meta(key TEXT PRIMARY KEY, value TEXT)``
    ``schema_version`` = ``1``. A testbed refuses a file of another version.

``runs`` — one row per ``testbed run`` invocation
    ``run_id`` (primary key), ``experiment`` (its name), ``config_json`` (the experiment as
    loaded, JSON), ``machine_json`` (the machine it ran on, JSON), ``started`` / ``ended``
    (Unix seconds; ``ended`` is NULL while running), ``status``: ``running`` | ``done`` |
    ``interrupted`` | ``failed``. A run still ``running`` after its process is gone crashed.

``cells`` — one row per cell (one sweep point x one model x one strategy)
    ``cell`` (primary key: the cell's key), ``run_id`` (the run that wrote it last),
    ``model``, ``weights``, ``strategy``, ``operators`` (the strategy's operator chain, JSON),
    ``placement`` (hosts in request order joined by ``>``, e.g. ``mobile>edge``),
    ``source`` (where inputs are produced), ``codec``, ``connection``, ``point_json`` (the
    sweep point, JSON: ``{"links.mobile-edge.bandwidth": "10Mbit", ...}``), ``artifact`` (the
    deployed artifact, if any), ``metric`` / ``metric_value`` (the model's quality metric on
    this deployment) / ``baseline_value`` (the same metric for the unmodified model),
    ``status``: ``done`` | ``interrupted`` | ``failed``, ``error`` (why, when failed),
    ``started`` / ``ended`` (Unix seconds), ``requests`` / ``ok`` / ``timeouts`` / ``ooms`` /
    ``errors`` (counts of its request rows by status), ``network_json`` (the links as
    applied/read back, JSON), ``hosts_json`` (the hosts' limits as applied, JSON).

``requests`` — one row per measured request (warm-up requests are not stored)
    ``cell``, ``seq`` (0, 1, ... in the order sent; primary key with ``cell``),
    ``input_index`` (which input of the data set), ``status``: ``ok`` | ``timeout`` | ``oom``
    | ``error``, ``e2e_ms`` (source sends -> source has the answer), ``compute_ms`` (sum of
    the compute hops), ``transmission_ms`` (sum of the link hops), ``serialization_ms``
    (encoding + decoding tensors, quota stalls on receiving, and hops between two processes on
    one host), ``overhead_ms`` (the rest of ``e2e_ms``), ``bytes_sent``
    (payload bytes over all links), ``exit_segment`` (early exit: the segment that answered),
    ``output_match`` (0/1: the output agrees with the reference), ``output_max_diff`` (the
    largest absolute difference to it), ``error``. Timings are NULL when not measured.

``hops`` — where one request's time went, step by step
    ``cell``, ``seq`` (the request), ``idx`` (0, 1, ... along the path; primary key
    ``(cell, seq, idx)``), ``kind``: ``compute`` (a host ran part ``part`` of the model) |
    ``link`` (``bytes`` crossed from ``src`` to ``dst``), ``src``, ``dst`` (hosts; equal for
    compute), ``direction``: ``request`` | ``response`` (compute hops are ``request``),
    ``part`` (the model part, for compute and for the link that carries its input),
    ``bytes``, ``ms`` (the hop's time), ``decode_ms`` / ``encode_ms`` (links: the receiver's
    decoding, with its quota stall on the frame's last bytes, and the sender's encoding). A
    link with ``src = dst`` joins two processes on one host: its ``ms`` counts as that host's
    serialisation, not transmission.

``requests`` and ``hops`` rows are deleted with their cell (``ON DELETE CASCADE``); writing a
cell that exists replaces it and all its rows. Example::

    SELECT c.strategy, c.point_json, avg(r.e2e_ms), avg(r.transmission_ms)
      FROM requests r JOIN cells c USING (cell)
     WHERE r.status = 'ok' GROUP BY c.cell;

Booleans are 0/1, NaN is stored as NULL (SQLite has no NaN), JSON columns are UTF-8 text.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from topologies.errors import TestbedError

SCHEMA_VERSION = 1
STORE_FILE = "results.sqlite"

RUN_STATUSES = ("running", "done", "interrupted", "failed")
CELL_STATUSES = ("done", "interrupted", "failed")
REQUEST_STATUSES = ("ok", "timeout", "oom", "error")
HOP_KINDS = ("compute", "link")
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


# --- schema ---------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, experiment TEXT, config_json TEXT, machine_json TEXT,
        started REAL, ended REAL, status TEXT)""",
    """CREATE TABLE cells (
        cell TEXT PRIMARY KEY, run_id TEXT REFERENCES runs, model TEXT, weights TEXT,
        strategy TEXT, operators TEXT, placement TEXT, source TEXT, codec TEXT,
        connection TEXT, point_json TEXT, artifact TEXT, metric TEXT, metric_value REAL,
        baseline_value REAL, status TEXT, error TEXT, started REAL, ended REAL,
        requests INTEGER, ok INTEGER, timeouts INTEGER, ooms INTEGER, errors INTEGER,
        network_json TEXT, hosts_json TEXT)""",
    """CREATE TABLE requests (
        cell TEXT REFERENCES cells ON DELETE CASCADE, seq INTEGER, input_index INTEGER,
        status TEXT, e2e_ms REAL, compute_ms REAL, transmission_ms REAL,
        serialization_ms REAL, overhead_ms REAL, bytes_sent INTEGER, exit_segment INTEGER,
        output_match INTEGER, output_max_diff REAL, error TEXT, PRIMARY KEY (cell, seq))""",
    """CREATE TABLE hops (
        cell TEXT REFERENCES cells ON DELETE CASCADE, seq INTEGER, idx INTEGER, kind TEXT,
        src TEXT, dst TEXT, direction TEXT, part INTEGER, bytes INTEGER, ms REAL,
        decode_ms REAL, encode_ms REAL, PRIMARY KEY (cell, seq, idx))""",
    "CREATE INDEX requests_cell ON requests (cell)",
    "CREATE INDEX hops_cell ON hops (cell)",
    "CREATE INDEX cells_run ON cells (run_id)",
)

_CELL_COLUMNS = ("cell", "run_id", "model", "weights", "strategy", "operators", "placement", "source",
                 "codec", "connection", "point_json", "artifact", "metric", "metric_value",
                 "baseline_value", "status", "error", "started", "ended", "requests", "ok", "timeouts",
                 "ooms", "errors", "network_json", "hosts_json")
_REQUEST_COLUMNS = ("cell", "seq", "input_index", "status", "e2e_ms", "compute_ms", "transmission_ms",
                    "serialization_ms", "overhead_ms", "bytes_sent", "exit_segment", "output_match",
                    "output_max_diff", "error")
_HOP_COLUMNS = ("cell", "seq", "idx", "kind", "src", "dst", "direction", "part", "bytes", "ms",
                "decode_ms", "encode_ms")
# JSON text columns of cells -> the key they are decoded into by ResultStore.cells()
_CELL_JSON = {"operators": "operators", "point_json": "point", "network_json": "network",
              "hosts_json": "hosts"}
_CELL_ORDER = "ORDER BY started, cell"


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


# --- value checks (a programming error caught before anything is written) --------------------

def _one_of(what: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise StoreError(f"{what} is {value!r}, not one of {', '.join(allowed)}")
    return value


def _text(what: str, value, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return value


def _int(what: str, value, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise StoreError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)        # int and numpy integers; not floats
    except TypeError:
        raise StoreError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None


def _float(what: str, value, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, (bool, str, bytes)):
        raise StoreError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)                    # int, float and numpy scalars
    except (TypeError, ValueError):
        raise StoreError(f"{what} must be a number, got {type(value).__name__} {value!r}") from None
    return None if math.isnan(v) else v


def _bool(what: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, float)) or not hasattr(value, "__bool__"):
        raise StoreError(f"{what} must be a boolean, got {type(value).__name__} {value!r}")
    if value not in (0, 1):
        raise StoreError(f"{what} must be a boolean, got {value!r}")
    return int(bool(value))


def _json(what: str, value) -> str:
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


def _cell_row(c: CellRecord, requests: Sequence[RequestRow]) -> tuple:
    if not isinstance(c.cell, str) or not c.cell:
        raise StoreError(f"cell key must be a non-empty string, got {c.cell!r}")
    w = f"cell {c.cell}:"
    statuses = [r.status for r in requests]
    return (
        c.cell, _text(f"{w} run_id", c.run_id), _text(f"{w} model", c.model),
        _text(f"{w} weights", c.weights), _text(f"{w} strategy", c.strategy),
        _json(f"{w} operators", list(c.operators)), _placement(f"{w} placement", c.placement),
        _text(f"{w} source", c.source), _text(f"{w} codec", c.codec),
        _text(f"{w} connection", c.connection), _json(f"{w} point", dict(c.point)),
        _text(f"{w} artifact", c.artifact, optional=True), _text(f"{w} metric", c.metric, optional=True),
        _float(f"{w} metric_value", c.metric_value), _float(f"{w} baseline_value", c.baseline_value),
        _one_of(f"{w} status", c.status, CELL_STATUSES), _text(f"{w} error", c.error, optional=True),
        _float(f"{w} started", c.started, optional=False), _float(f"{w} ended", c.ended, optional=False),
        len(statuses), statuses.count("ok"), statuses.count("timeout"), statuses.count("oom"),
        statuses.count("error"), _json(f"{w} network", dict(c.network)), _json(f"{w} hosts", dict(c.hosts)),
    )


def _request_row(cell: str, r: RequestRow) -> tuple:
    w = f"cell {cell} request {r.seq!r}:"
    return (
        cell, _int(f"{w} seq", r.seq, optional=False), _int(f"{w} input_index", r.input_index, optional=False),
        _one_of(f"{w} status", r.status, REQUEST_STATUSES),
        _float(f"{w} e2e_ms", r.e2e_ms), _float(f"{w} compute_ms", r.compute_ms),
        _float(f"{w} transmission_ms", r.transmission_ms), _float(f"{w} serialization_ms", r.serialization_ms),
        _float(f"{w} overhead_ms", r.overhead_ms), _int(f"{w} bytes_sent", r.bytes_sent),
        _int(f"{w} exit_segment", r.exit_segment), _bool(f"{w} output_match", r.output_match),
        _float(f"{w} output_max_diff", r.output_max_diff), _text(f"{w} error", r.error, optional=True),
    )


def _hop_row(cell: str, h: HopRow) -> tuple:
    w = f"cell {cell} request {h.seq!r} hop {h.idx!r}:"
    kind = _one_of(f"{w} kind", h.kind, HOP_KINDS)
    direction = _one_of(f"{w} direction", h.direction, HOP_DIRECTIONS)
    if kind == "compute" and direction != "request":
        raise StoreError(f"{w} a compute hop has direction 'request', not {direction!r}")
    return (
        cell, _int(f"{w} seq", h.seq, optional=False), _int(f"{w} idx", h.idx, optional=False), kind,
        _text(f"{w} src", h.src), _text(f"{w} dst", h.dst), direction, _int(f"{w} part", h.part),
        _int(f"{w} bytes", h.bytes), _float(f"{w} ms", h.ms, optional=False),
        _float(f"{w} decode_ms", h.decode_ms), _float(f"{w} encode_ms", h.encode_ms),
    )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
            with self._tx():
                if not self._tables():      # another process may have created it meanwhile
                    for stmt in _SCHEMA:
                        conn.execute(stmt)
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
        self._check_version()

    def _tables(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_version(self) -> None:
        not_ours = (f"{self.path} is an SQLite file but not a testbed result store: "
                    "move it away or choose another output folder")
        if "meta" not in self._tables():
            raise StoreError(not_ours)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StoreError(not_ours) from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has result schema version {version}, newer than this testbed's "
                             f"{SCHEMA_VERSION}: read it with a newer testbed (upgrade this one)")
        if version < SCHEMA_VERSION:
            raise StoreError(f"{self.path} has result schema version {version}, older than this testbed's "
                             f"{SCHEMA_VERSION}, and there is no migration for it: read it with the testbed "
                             "that wrote it, or run again into a new output folder")

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
        try:
            with self._tx() as conn:
                fn(conn)
        except sqlite3.Error as e:
            raise StoreError(f"could not write {what} to {self.path}: {_one_line(e)}") from None

    # --- writing ---

    def begin_run(self, run_id: str, experiment: str, config: dict, machine: dict) -> None:
        """Record a run as ``running``. The same run_id again (a resumed run) updates it."""
        row = (_text("run_id", run_id), _text(f"run {run_id}: experiment", experiment),
               _json(f"run {run_id}: config", config), _json(f"run {run_id}: machine", machine), time.time())
        self._write(f"run {run_id}", lambda conn: conn.execute(
            "INSERT INTO runs (run_id, experiment, config_json, machine_json, started, ended, status) "
            "VALUES (?, ?, ?, ?, ?, NULL, 'running') ON CONFLICT (run_id) DO UPDATE SET "
            "experiment = excluded.experiment, config_json = excluded.config_json, "
            "machine_json = excluded.machine_json, started = excluded.started, ended = NULL, "
            "status = 'running'", row))

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
            conn.execute(_insert("cells", _CELL_COLUMNS), cell_row)
            conn.executemany(_insert("requests", _REQUEST_COLUMNS), request_rows)
            conn.executemany(_insert("hops", _HOP_COLUMNS), hop_rows)
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
        out = []
        for r in self._rows(f"SELECT * FROM cells {_CELL_ORDER}"):
            out.append({_CELL_JSON.get(k, k): (json.loads(v) if k in _CELL_JSON and v is not None else v)
                        for k, v in r.items()})
        return out

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

    def runs(self) -> list[dict]:
        """Every run, config and machine decoded from JSON (keys ``config``, ``machine``)."""
        out = []
        for r in self._rows("SELECT * FROM runs ORDER BY started, run_id"):
            r["config"] = json.loads(r.pop("config_json") or "null")
            r["machine"] = json.loads(r.pop("machine_json") or "null")
            out.append(r)
        return out

    def close(self) -> None:
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- export ---------------------------------------------------------------------------------

_S, _I, _F, _B = "string", "int64", "float64", "bool"
_EXPORT = {
    "cells": (
        [("cell", _S), ("run_id", _S), ("model", _S), ("weights", _S), ("strategy", _S), ("operators", _S),
         ("placement", _S), ("source", _S), ("codec", _S), ("connection", _S), ("point", _S),
         ("artifact", _S), ("metric", _S), ("metric_value", _F), ("baseline_value", _F), ("status", _S),
         ("error", _S), ("started", _F), ("ended", _F), ("requests", _I), ("ok", _I), ("timeouts", _I),
         ("ooms", _I), ("errors", _I), ("network", _S), ("hosts", _S)],
        "SELECT cell, run_id, model, weights, strategy, operators, placement, source, codec, connection, "
        "point_json AS point, artifact, metric, metric_value, baseline_value, status, error, started, "
        "ended, requests, ok, timeouts, ooms, errors, network_json AS network, hosts_json AS hosts "
        f"FROM cells {_CELL_ORDER}"),
    "requests": (
        [("cell", _S), ("model", _S), ("strategy", _S), ("placement", _S), ("status", _S), ("e2e_ms", _F),
         ("compute_ms", _F), ("transmission_ms", _F), ("bytes_sent", _I), ("seq", _I), ("input_index", _I),
         ("serialization_ms", _F), ("overhead_ms", _F), ("exit_segment", _I), ("output_match", _B),
         ("output_max_diff", _F), ("error", _S), ("point", _S)],
        "SELECT r.cell, c.model, c.strategy, c.placement, r.status, r.e2e_ms, r.compute_ms, "
        "r.transmission_ms, r.bytes_sent, r.seq, r.input_index, r.serialization_ms, r.overhead_ms, "
        "r.exit_segment, r.output_match, r.output_max_diff, r.error, c.point_json AS point "
        "FROM requests r JOIN cells c USING (cell) ORDER BY c.started, r.cell, r.seq"),
    "hops": (
        [("cell", _S), ("model", _S), ("strategy", _S), ("placement", _S), ("seq", _I), ("idx", _I),
         ("kind", _S), ("src", _S), ("dst", _S), ("direction", _S), ("part", _I), ("bytes", _I), ("ms", _F),
         ("decode_ms", _F), ("encode_ms", _F)],
        "SELECT h.cell, c.model, c.strategy, c.placement, h.seq, h.idx, h.kind, h.src, h.dst, h.direction, "
        "h.part, h.bytes, h.ms, h.decode_ms, h.encode_ms "
        "FROM hops h JOIN cells c USING (cell) ORDER BY c.started, h.cell, h.seq, h.idx"),
}


def _write_csv(path: Path, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    bools = [i for i, (_, t) in enumerate(columns) if t == _B]
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
    types = {_S: pa.string(), _I: pa.int64(), _F: pa.float64(), _B: pa.bool_()}
    schema = pa.schema([pa.field(name, types[t]) for name, t in columns])
    data = {}
    for i, (name, t) in enumerate(columns):
        values = [row[i] for row in rows]
        if t == _B:
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
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        written.append(path)
    return written
