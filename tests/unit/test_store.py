"""The result store: real SQLite files, one transaction per cell, schema checks, export."""
from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testbed.store import (SCHEMA_VERSION, STORE_FILE, CellRecord, HopRow, RequestRow, ResultStore, StoreError,
                           export)

ROOT = Path(__file__).resolve().parents[2]
REQUEST_HEADER = ["cell", "model", "strategy", "placement", "status", "e2e_ms", "compute_ms", "transmission_ms",
                  "bytes_sent", "seq", "input_index", "serialization_ms", "overhead_ms", "exit_segment",
                  "output_match", "output_max_diff", "error", "source", "due_ms", "queue_ms", "late_ms", "point"]
HOP_HEADER = ["cell", "model", "strategy", "placement", "seq", "idx", "kind", "src", "dst", "direction", "part",
              "bytes", "ms", "decode_ms", "encode_ms", "trace_at_ms", "trace_link", "trace_bandwidth_bps",
              "trace_delay_ms"]


def cell_record(key: str = "p0/efficientnet_lite0/me-partition", **kw) -> CellRecord:
    base = dict(cell=key, run_id="r1", model="efficientnet_lite0", weights="pretrained", strategy="me-partition",
                operators=[{"partition": {"cut": "auto"}}], placement=("mobile", "edge"), source="mobile",
                codec="binary", connection="persistent", point={"links.mobile-edge.bandwidth": "10Mbit"},
                artifact="/cache/abc.onnx", metric="accuracy", metric_value=0.75, baseline_value=0.78,
                status="done", error=None, started=100.0, ended=105.5,
                network={"mobile-edge": {"bandwidth": "10Mbit"}}, hosts={"mobile": {"cpus": 0.25}})
    base.update(kw)
    return CellRecord(**base)


def request_rows(n: int = 3) -> list[RequestRow]:
    rows = [RequestRow(seq=i, input_index=i % 2, status="ok", e2e_ms=10.0 + i, compute_ms=6.0, transmission_ms=3.0,
                       serialization_ms=0.5, overhead_ms=0.5 + i, bytes_sent=1000 + i, exit_segment=None,
                       output_match=True, output_max_diff=1e-6) for i in range(n)]
    return rows + [RequestRow(seq=n, input_index=0, status="timeout", error="no answer in 120 s"),
                   RequestRow(seq=n + 1, input_index=1, status="oom", output_match=False),
                   RequestRow(seq=n + 2, input_index=0, status="error", error="boom")]


def hop_rows(seqs=range(3)) -> list[HopRow]:
    out = []
    for s in seqs:
        out += [HopRow(seq=s, idx=0, kind="compute", src="mobile", dst="mobile", direction="request", ms=4.0,
                       part=0, decode_ms=0.1, encode_ms=0.2),
                HopRow(seq=s, idx=1, kind="link", src="mobile", dst="edge", direction="request", ms=3.0, part=1,
                       bytes=1000),
                HopRow(seq=s, idx=2, kind="compute", src="edge", dst="edge", direction="request", ms=2.0, part=1),
                HopRow(seq=s, idx=3, kind="link", src="edge", dst="mobile", direction="response", ms=0.5,
                       bytes=40)]
    return out


@pytest.fixture
def store(tmp_path):
    s = ResultStore.in_folder(tmp_path / "out")
    s.begin_run("r1", "demo", {"name": "demo", "models": ["efficientnet_lite0"]}, {"cores": 2})
    yield s
    s.close()


def one_line(info) -> str:
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# --- opening ---------------------------------------------------------------------------------

def test_new_store_is_wal_with_schema_version_and_pragmas(tmp_path):
    with ResultStore.in_folder(tmp_path / "a" / "b") as s:
        assert s.path == tmp_path / "a" / "b" / STORE_FILE
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1   # NORMAL
    raw = sqlite3.connect(tmp_path / "a" / "b" / STORE_FILE)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"   # persistent, for every reader
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # kept in meta too, where a version-1 testbed looks for it (and refuses a newer store)
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")} >= {
        "requests_cell", "hops_cell"}
    cols = [r[1] for r in raw.execute("PRAGMA table_info(requests)")]
    assert cols == ["cell", "seq", "input_index", "status", "e2e_ms", "compute_ms", "transmission_ms",
                    "serialization_ms", "overhead_ms", "bytes_sent", "exit_segment", "output_match",
                    "output_max_diff", "error", "source", "due_ms", "queue_ms", "late_ms"]
    raw.close()
    with ResultStore.in_folder(tmp_path / "a" / "b", create=False) as s:    # reopening is fine
        assert s.cells() == [] and s.runs() == []


# The schema of version 1 exactly as testbed/store.py created it at commit 774d66e (its
# _SCHEMA tuple and the meta row), kept here to build real old stores: never edit it.
V1_SCHEMA = (
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
V1_META = "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"


def v1_store(folder: Path) -> Path:
    """A results folder as the version-1 testbed left it: its DDL, its meta row, WAL mode,
    one run, a done cell with requests and hops, and a failed cell."""
    folder.mkdir(parents=True)
    raw = sqlite3.connect(folder / STORE_FILE, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("BEGIN")
    for stmt in V1_SCHEMA:
        raw.execute(stmt)
    raw.execute(V1_META, ("1",))
    raw.execute("INSERT INTO runs VALUES ('r1', 'demo', '{\"name\": \"demo\"}', '{\"cores\": 2}', 10.0, 20.0, 'done')")
    raw.execute("INSERT INTO cells VALUES ('a', 'r1', 'cnn', 'pretrained', 'split', '[{\"partition\": {}}]', "
                "'mobile>edge', 'mobile', 'binary', 'persistent', '{\"p\": \"5Mbit\"}', '/c/a.onnx', 'accuracy', "
                "0.75, 0.78, 'done', NULL, 11.0, 12.0, 2, 1, 1, 0, 0, '{\"mobile-edge\": {}}', '{\"edge\": {}}')")
    raw.execute("INSERT INTO cells VALUES ('b', 'r1', 'cnn', 'pretrained', 'edge', '[]', 'edge', 'mobile', 'binary', "
                "'persistent', '{}', NULL, NULL, NULL, NULL, 'failed', 'deploy failed', 13.0, 14.0, 0, 0, 0, 0, 0, "
                "'{}', '{}')")
    raw.execute("INSERT INTO requests VALUES ('a', 0, 0, 'ok', 10.5, 6.0, 3.0, 0.5, 1.0, 1028, NULL, 1, 1e-06, NULL)")
    raw.execute("INSERT INTO requests VALUES ('a', 1, 1, 'timeout', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
                "NULL, 'no answer in 120 s')")
    raw.execute("INSERT INTO hops VALUES ('a', 0, 0, 'compute', 'mobile', 'mobile', 'request', 0, NULL, 4.0, "
                "NULL, NULL)")
    raw.execute("INSERT INTO hops VALUES ('a', 0, 1, 'link', 'mobile', 'edge', 'request', 1, 1028, 3.0, 0.1, 0.2)")
    raw.execute("COMMIT")
    raw.close()
    return folder


def raw_state(path: Path) -> tuple:
    """What a plain SQLite reader sees: user_version, meta, every table's rows and the schema."""
    raw = sqlite3.connect(path)
    try:
        return (raw.execute("PRAGMA user_version").fetchone()[0], raw.execute("SELECT * FROM meta").fetchall(),
                list(raw.iterdump()))
    finally:
        raw.close()


def columns(path: Path) -> dict:
    """Each table's columns (name, type, pk), foreign keys and indexes, as SQLite reports them."""
    raw = sqlite3.connect(path)
    try:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: ([r[1:] for r in raw.execute(f"PRAGMA table_info({t})")],
                    [r[2:] for r in raw.execute(f"PRAGMA foreign_key_list({t})")],
                    sorted((r[1], r[2]) for r in raw.execute(f"PRAGMA index_list({t})")
                           if not r[1].startswith("sqlite_autoindex")))
                for t in tables}
    finally:
        raw.close()


def test_an_upgraded_version_1_store_has_the_same_tables_columns_and_keys_as_a_new_one(tmp_path):
    ResultStore.in_folder(tmp_path / "new").close()
    old = v1_store(tmp_path / "old")
    ResultStore.in_folder(old, create=False).close()
    assert columns(tmp_path / "new" / STORE_FILE) == columns(old / STORE_FILE)


def test_a_version_1_store_is_upgraded_in_place_and_keeps_all_its_data(tmp_path):
    folder = v1_store(tmp_path / "old")
    assert raw_state(folder / STORE_FILE)[:2] == (0, [("schema_version", "1")])
    with ResultStore.in_folder(folder, create=False) as s:
        [run] = s.runs()
        assert run == {"run_id": "r1", "experiment": "demo", "started": 10.0, "ended": 20.0, "status": "done",
                       "config": {"name": "demo"}, "machine": {"cores": 2}}
        assert list(run)[-2:] == ["config", "machine"]       # where `results show --json` has always put them
        a, b = s.cells()
        assert (a["cell"], a["placement"], a["operators"], a["point"], a["network"], a["hosts"]) == (
            "a", "mobile>edge", [{"partition": {}}], {"p": "5Mbit"}, {"mobile-edge": {}}, {"edge": {}})
        assert (a["metric_value"], a["requests"], a["ok"], a["timeouts"]) == (0.75, 2, 1, 1)
        assert (b["cell"], b["status"], b["error"], b["artifact"]) == ("b", "failed", "deploy failed", None)
        assert s.requests("a") == [
            {"cell": "a", "seq": 0, "input_index": 0, "status": "ok", "e2e_ms": 10.5, "compute_ms": 6.0,
             "transmission_ms": 3.0, "serialization_ms": 0.5, "overhead_ms": 1.0, "bytes_sent": 1028,
             "exit_segment": None, "output_match": True, "output_max_diff": 1e-6, "error": None,
             "source": None, "due_ms": None, "queue_ms": None, "late_ms": None},
            {"cell": "a", "seq": 1, "input_index": 1, "status": "timeout", "e2e_ms": None, "compute_ms": None,
             "transmission_ms": None, "serialization_ms": None, "overhead_ms": None, "bytes_sent": None,
             "exit_segment": None, "output_match": None, "output_max_diff": None, "error": "no answer in 120 s",
             "source": None, "due_ms": None, "queue_ms": None, "late_ms": None}]
        assert [(h["idx"], h["kind"], h["bytes"], h["encode_ms"]) for h in s.hops("a")] == [
            (0, "compute", None, None), (1, "link", 1028, 0.2)]
        assert a["trace"] is None and {(h["trace_at_ms"], h["trace_link"], h["trace_bandwidth_bps"],
                                        h["trace_delay_ms"]) for h in s.hops("a")} == {(None,) * 4}   # version 5
        s.write_cell(cell_record("c", run_id="r1"), request_rows(1), hop_rows(range(1)))   # and it takes writes
        assert s.cell_status() == {"a": "done", "b": "failed", "c": "done"}
    assert raw_state(folder / STORE_FILE)[:2] == (SCHEMA_VERSION, [("schema_version", str(SCHEMA_VERSION))])
    with ResultStore.in_folder(folder, create=False) as s:     # and opens as a current store from now on
        assert len(s.cells()) == 3
    assert [p.name for p in export(folder, "csv")] == ["cells.csv", "requests.csv", "hops.csv"]


def test_an_old_store_opens_and_says_plainly_that_its_cells_have_no_quality_interval(tmp_path):
    """Cells stored before intervals (here by version 1) get NULL intervals; the summary, its
    JSON, the report's quality table and the recommendations say there is no interval, and a
    strategy without one is not counted within the loss tolerance."""
    from click.testing import CliRunner

    from testbed.cli import cli
    from testbed.report import write_report
    folder = v1_store(tmp_path / "old")
    with ResultStore.in_folder(folder, create=False) as s:
        a = s.cells()[0]
    assert [a[k] for k in ("metric_ci_low", "metric_ci_high", "baseline_ci_low", "baseline_ci_high", "loss_ci_low",
                           "loss_ci_high", "quality_samples")] == [None] * 7
    assert a["metric_value"] == 0.75
    shown = CliRunner().invoke(cli, ["results", "show", str(folder), "--json"])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)["cells"][0]
    assert (row["value"], row["value_ci"], row["baseline_ci"], row["loss_ci"]) == (0.75, None, None, None)
    text = subprocess.run([sys.executable, "-m", "testbed.cli", "results", "show", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert "acc 75.00% (-3.0, no interval)" in text.stdout, text.stdout + text.stderr
    report = write_report(folder)
    html = report.index.read_text(encoding="utf-8")
    assert "no interval (stored before intervals, or too few evaluation samples)" in html
    (within,) = [r for r in report.recommendations if r["kind"] == "within_tolerance"]
    assert within["strategy"] is None and within["cannot_tell"] == ["split"]
    assert "split (loss 3.00 %, no interval" in within["text"]
    assert "cannot tell whether it is within 1 %" in within["text"]


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import testbed.store as store_module

    def add_a_column_then_fail(conn):
        conn.execute("ALTER TABLE requests ADD COLUMN later_ms REAL")
        conn.execute("UPDATE requests SET later_ms = 1.0")
        conn.execute("SELECT no_such_column FROM requests")

    folder = v1_store(tmp_path / "old")
    before, state = (folder / STORE_FILE).read_bytes(), raw_state(folder / STORE_FILE)
    steps = store_module.MIGRATIONS + (store_module.Migration(SCHEMA_VERSION + 1, "fails", add_a_column_then_fail),)
    monkeypatch.setattr(store_module, "MIGRATIONS", steps)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError) as info:
        ResultStore.in_folder(folder, create=False)
    msg = one_line(info)
    assert str(folder / STORE_FILE) in msg and "no such column: no_such_column" in msg and "as it was" in msg
    assert f"version 1 to {SCHEMA_VERSION + 1}" in msg
    assert (folder / STORE_FILE).read_bytes() == before and raw_state(folder / STORE_FILE) == state
    monkeypatch.undo()                                          # this testbed's steps alone still upgrade it
    with ResultStore.in_folder(folder, create=False) as s:
        assert len(s.requests()) == 2
    assert raw_state(folder / STORE_FILE)[0] == SCHEMA_VERSION


@pytest.mark.parametrize("store_path", ["new", "v1"])
def test_a_newer_store_is_refused_in_one_line_and_left_alone(tmp_path, store_path):
    folder = tmp_path / "out"
    if store_path == "new":
        ResultStore.in_folder(folder).close()
    else:
        v1_store(folder)
    raw = sqlite3.connect(folder / STORE_FILE)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    before = (folder / STORE_FILE).read_bytes()
    with pytest.raises(StoreError) as info:
        ResultStore.in_folder(folder, create=False)
    msg = one_line(info)
    assert str(folder / STORE_FILE) in msg and f"version {SCHEMA_VERSION + 1}, newer" in msg
    assert "read it with a newer testbed" in msg
    assert (folder / STORE_FILE).read_bytes() == before


def test_a_version_older_than_every_migration_is_refused(tmp_path):
    folder = v1_store(tmp_path / "old")
    raw = sqlite3.connect(folder / STORE_FILE)
    with raw:
        raw.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError) as info:
        ResultStore(folder / STORE_FILE)
    msg = one_line(info)
    assert str(folder / STORE_FILE) in msg and "version 0, older" in msg and "no migration" in msg


def test_every_command_that_reads_results_opens_them_the_same_way(tmp_path):
    """results show / export and report upgrade a version-1 folder, and refuse a newer one in
    one line; (run --resume reads through the same ResultStore.in_folder)."""
    from click.testing import CliRunner

    from testbed.cli import cli
    old = v1_store(tmp_path / "old")
    shown = CliRunner().invoke(cli, ["results", "show", str(old), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [r["run_id"] for r in json.loads(shown.output)["runs"]] == ["r1"]
    assert raw_state(old / STORE_FILE)[0] == SCHEMA_VERSION
    newer = v1_store(tmp_path / "newer")
    raw = sqlite3.connect(newer / STORE_FILE)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    for args in (["results", "show", str(newer)], ["results", "export", str(newer)], ["report", str(newer)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code != 0 and isinstance(r.exception, SystemExit), (args, r.output)   # not a traceback
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert len(lines) == 1 and f"version {SCHEMA_VERSION + 1}, newer" in lines[0], (args, r.output)


def test_record_dataclasses_hold_exactly_the_columns_they_fill():
    from dataclasses import fields

    from testbed.store import CELLS, HOPS, REQUESTS
    counted = {"requests", "ok", "timeouts", "ooms", "errors"}      # cells' counts of their request rows
    assert {f.name for f in fields(CellRecord)} == {c.field for c in CELLS.columns} - counted
    assert {f.name for f in fields(RequestRow)} == {c.field for c in REQUESTS.columns} - {"cell"}
    assert {f.name for f in fields(HopRow)} == {c.field for c in HOPS.columns} - {"cell"}


def test_schema_markdown_lists_every_column_of_every_table():
    from testbed.store import TABLES, schema_markdown
    md = schema_markdown()
    for t in TABLES:
        assert f"### `{t.name}`" in md
        for c in t.columns:
            assert f"| `{c.name}` | {c.type.doc} |" in md


@pytest.mark.parametrize("content", [b"", b"hello, not a database\n" * 200, b"x",
                                     b"SQLite format 3\x00" + b"\xff" * 600],
                         ids=["empty", "text", "one-byte", "corrupt-sqlite"])
def test_not_sqlite_is_refused_in_one_line(tmp_path, content):
    path = tmp_path / STORE_FILE
    path.write_bytes(content)
    if not content:   # an empty file is an empty SQLite database: not results, but fine to start in
        with pytest.raises(StoreError, match="no results at"):
            ResultStore(path, create=False)
        ResultStore(path).close()
        return
    with pytest.raises(StoreError) as info:
        ResultStore(path)
    msg = one_line(info)
    assert "not a testbed result store" in msg and str(path) in msg
    assert path.read_bytes() == content           # left untouched


def test_foreign_sqlite_file_is_refused(tmp_path):
    raw = sqlite3.connect(tmp_path / "x.db")
    raw.execute("CREATE TABLE t (a)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / "x.db")
    assert "not a testbed result store" in one_line(info)


def test_missing_store_with_create_false(tmp_path):
    with pytest.raises(StoreError) as info:
        ResultStore(tmp_path / STORE_FILE, create=False)
    assert "no results at" in one_line(info) and "testbed run" in str(info.value)
    assert not (tmp_path / STORE_FILE).exists()
    with pytest.raises(StoreError, match="no results at"):
        ResultStore.in_folder(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


# --- writing and reading ---------------------------------------------------------------------

def test_round_trip(store):
    c = cell_record()
    store.write_cell(c, request_rows(), hop_rows())
    store.end_run("r1", "done")

    [run] = store.runs()
    assert run["run_id"] == "r1" and run["experiment"] == "demo" and run["status"] == "done"
    assert run["config"] == {"name": "demo", "models": ["efficientnet_lite0"]} and run["machine"] == {"cores": 2}
    assert run["ended"] >= run["started"] > 0

    [got] = store.cells()
    assert got["cell"] == c.cell and got["placement"] == "mobile>edge"
    assert got["operators"] == [{"partition": {"cut": "auto"}}]
    assert got["point"] == {"links.mobile-edge.bandwidth": "10Mbit"}
    assert got["network"] == c.network and got["hosts"] == c.hosts
    assert (got["metric"], got["metric_value"], got["baseline_value"]) == ("accuracy", 0.75, 0.78)
    assert (got["started"], got["ended"], got["status"], got["error"]) == (100.0, 105.5, "done", None)
    # counts come from the request rows
    assert (got["requests"], got["ok"], got["timeouts"], got["ooms"], got["errors"]) == (6, 3, 1, 1, 1)
    assert store.cell_status() == {c.cell: "done"}

    reqs = store.requests(c.cell)
    assert [r["seq"] for r in reqs] == list(range(6))
    assert reqs[0] == {"cell": c.cell, "seq": 0, "input_index": 0, "status": "ok", "e2e_ms": 10.0,
                       "compute_ms": 6.0, "transmission_ms": 3.0, "serialization_ms": 0.5, "overhead_ms": 0.5,
                       "bytes_sent": 1000, "exit_segment": None, "output_match": True, "output_max_diff": 1e-6,
                       "error": None, "source": None, "due_ms": None, "queue_ms": None, "late_ms": None}
    assert reqs[3]["e2e_ms"] is None and reqs[3]["error"] == "no answer in 120 s"
    assert reqs[4]["output_match"] is False
    assert store.requests() == reqs and store.requests("other") == []

    hops = store.hops(c.cell)
    assert len(hops) == 12 and [(h["seq"], h["idx"]) for h in hops[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert hops[0] == {"cell": c.cell, "seq": 0, "idx": 0, "kind": "compute", "src": "mobile", "dst": "mobile",
                       "direction": "request", "part": 0, "bytes": None, "ms": 4.0, "decode_ms": 0.1,
                       "encode_ms": 0.2, "trace_at_ms": None, "trace_link": None, "trace_bandwidth_bps": None,
                       "trace_delay_ms": None}
    assert store.hops() == hops and store.hops("other") == []


def test_numpy_scalars_and_nan_are_stored_as_plain_values(store):
    np = pytest.importorskip("numpy")
    c = cell_record(metric_value=np.float32(0.5), baseline_value=float("nan"))
    store.write_cell(c, [RequestRow(seq=np.int64(0), input_index=np.int32(3), status="ok", e2e_ms=np.float64(1.5),
                                    bytes_sent=np.int64(7), output_match=np.bool_(True))],
                     [HopRow(seq=0, idx=0, kind="link", src="a", dst="b", direction="request", ms=np.float32(2))])
    [got] = store.cells()
    assert got["metric_value"] == 0.5 and got["baseline_value"] is None
    [r] = store.requests()
    assert (r["seq"], r["input_index"], r["e2e_ms"], r["bytes_sent"], r["output_match"]) == (0, 3, 1.5, 7, True)


def test_rewriting_a_cell_replaces_it_and_all_its_rows(store):
    store.begin_run("r2", "demo", {}, {})
    a, b = cell_record("a"), cell_record("b", started=200.0)
    store.write_cell(a, request_rows(3), hop_rows(range(3)))
    store.write_cell(b, request_rows(3), hop_rows(range(3)))
    store.write_cell(replace(a, run_id="r2", status="failed", error="OOM on edge"),
                     [RequestRow(seq=0, input_index=0, status="oom")], [])
    cells = {c["cell"]: c for c in store.cells()}
    assert cells["a"]["run_id"] == "r2" and cells["a"]["status"] == "failed" and cells["a"]["error"] == "OOM on edge"
    assert (cells["a"]["requests"], cells["a"]["ok"], cells["a"]["ooms"]) == (1, 0, 1)
    assert [r["status"] for r in store.requests("a")] == ["oom"] and store.hops("a") == []
    assert len(store.requests("b")) == 6 and len(store.hops("b")) == 12     # the other cell untouched
    assert store.cell_status() == {"a": "failed", "b": "done"}


def test_failure_mid_cell_rolls_back_everything_and_keeps_the_old_cell(store):
    old = cell_record()
    store.write_cell(old, request_rows(2), hop_rows(range(2)))
    before = (store.cells(), store.requests(), store.hops())
    bad_hops = hop_rows(range(3)) + [hop_rows(range(1))[0]]       # (seq 0, idx 0) twice: fails at the last insert
    with pytest.raises(StoreError) as info:
        store.write_cell(replace(old, status="interrupted", ended=999.0), request_rows(3), bad_hops)
    assert old.cell in one_line(info)
    assert (store.cells(), store.requests(), store.hops()) == before
    assert not store._conn.in_transaction
    # a new cell that fails leaves no trace at all
    with pytest.raises(StoreError):
        store.write_cell(cell_record("new"), request_rows(3), bad_hops)
    assert "new" not in store.cell_status() and store.requests("new") == [] and store.hops("new") == []
    # and the store still takes writes afterwards
    store.write_cell(cell_record("new"), request_rows(1), hop_rows(range(1)))
    assert store.cell_status()["new"] == "done"


def test_process_killed_mid_cell_leaves_no_half_cell(tmp_path):
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as s:
        s.begin_run("r1", "demo", {}, {})
        s.write_cell(cell_record("a"), request_rows(2), hop_rows(range(2)))
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import cell_record, request_rows, hop_rows
        from dataclasses import replace
        from testbed.store import ResultStore
        s = ResultStore.in_folder({str(folder)!r})
        def die(sql):
            if sql.startswith("INSERT INTO hops"):   # the requests are in, the hops are not
                os.kill(os.getpid(), signal.SIGKILL)
        s._conn.set_trace_callback(die)
        s.write_cell(replace(cell_record("a"), status="interrupted"), request_rows(5), hop_rows(range(5)))
        s.write_cell(cell_record("b"), request_rows(5), hop_rows(range(5)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    with ResultStore.in_folder(folder, create=False) as s:
        assert s.cell_status() == {"a": "done"}
        assert len(s.requests()) == 5 and len(s.hops()) == 8


@pytest.mark.parametrize("change,match", [
    (lambda c, r, h: (replace(c, status="ok"), r, h), "status is 'ok', not one of done, interrupted, failed"),
    (lambda c, r, h: (c, r + [RequestRow(seq=99, input_index=0, status="done")], h), "request 99: status"),
    (lambda c, r, h: (c, r, h + [replace(h[0], idx=9, kind="disk")]), "kind is 'disk'"),
    (lambda c, r, h: (c, r, h + [replace(h[1], idx=9, direction="up")]), "direction is 'up'"),
    (lambda c, r, h: (c, r, h + [replace(h[0], idx=9, direction="response")]), "compute hop"),
    (lambda c, r, h: (replace(c, point={"x": object()}), r, h), "point is not JSON-serialisable"),
    (lambda c, r, h: (c, [replace(r[0], e2e_ms="fast")], h), "e2e_ms must be a number"),
    (lambda c, r, h: (c, [replace(r[0], bytes_sent=1.5)], h), "bytes_sent must be an integer"),
    (lambda c, r, h: (replace(c, run_id="nope"), r, h), "run nope is not in"),
    (lambda c, r, h: (replace(c, placement=()), r, h), "placement is empty"),
], ids=["cell-status", "request-status", "hop-kind", "hop-direction", "compute-response", "json", "float", "int",
        "no-run", "placement"])
def test_invalid_values_are_refused_in_one_line_and_nothing_is_written(store, change, match):
    c, r, h = change(cell_record(), request_rows(2), hop_rows(range(2)))
    with pytest.raises(StoreError) as info:
        store.write_cell(c, r, h)
    assert match in one_line(info)
    assert store.cells() == [] and store.requests() == [] and store.hops() == []


def test_runs_begin_again_and_end(store):
    store.end_run("r1", "interrupted")
    store.begin_run("r1", "demo", {"v": 2}, {})        # resumed: the same run again
    [run] = store.runs()
    assert (run["status"], run["ended"], run["config"]) == ("running", None, {"v": 2})
    with pytest.raises(StoreError, match="status is 'finished'"):
        store.end_run("r1", "finished")
    with pytest.raises(StoreError, match="run r9 is not in"):
        store.end_run("r9", "done")
    store.write_cell(cell_record(), [], [])
    store.begin_run("r1", "demo", {}, {})               # a run with cells can begin again too
    assert store.cells()[0]["requests"] == 0


def test_readers_in_other_connections_and_processes_while_open(store):
    store.write_cell(cell_record("a"), request_rows(1), hop_rows(range(1)))
    # another process reads the open store
    script = (f"import sqlite3; c = sqlite3.connect({str(store.path)!r}, timeout=0); "
              "print(c.execute('SELECT count(*) FROM requests').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "4", out.stderr
    # a reader is not blocked by a write transaction in progress, and sees the last commit
    store._conn.execute("BEGIN IMMEDIATE")
    store._conn.execute("DELETE FROM hops")
    reader = sqlite3.connect(store.path, timeout=0)
    assert reader.execute("SELECT count(*) FROM hops").fetchone()[0] == 4
    with ResultStore(store.path, create=False) as second:         # opening a second store is a read too
        assert second.cell_status() == {"a": "done"}
    store._conn.execute("ROLLBACK")
    reader.close()


# --- export ----------------------------------------------------------------------------------

def filled(tmp_path) -> Path:
    folder = tmp_path / "out"
    with ResultStore.in_folder(folder) as s:
        s.begin_run("r1", "demo", {}, {})
        s.write_cell(cell_record("a"), request_rows(2), hop_rows(range(2)))
        s.write_cell(cell_record("b", model="minilm", strategy="edge", placement=("edge",), started=200.0,
                                 point={"p": 1}), [RequestRow(seq=0, input_index=0, status="error", error="x")], [])
    return folder


def test_export_csv(tmp_path):
    folder = filled(tmp_path)
    paths = export(folder, "csv")
    assert paths == [folder / "cells.csv", folder / "requests.csv", folder / "hops.csv"]
    with open(folder / "requests.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == REQUEST_HEADER
    assert len(rows) == 1 + 5 + 1
    first = dict(zip(rows[0], rows[1]))
    assert (first["cell"], first["model"], first["strategy"], first["placement"]) == (
        "a", "efficientnet_lite0", "me-partition", "mobile>edge")
    assert first["e2e_ms"] == "10.0" and first["bytes_sent"] == "1000" and first["output_match"] == "True"
    assert first["exit_segment"] == "" and first["error"] == ""                  # None -> empty field
    assert json.loads(first["point"]) == {"links.mobile-edge.bandwidth": "10Mbit"}
    last = dict(zip(rows[0], rows[-1]))
    assert (last["cell"], last["model"], last["placement"], last["e2e_ms"], last["error"]) == (
        "b", "minilm", "edge", "", "x")
    with open(folder / "hops.csv", newline="") as f:
        hops = list(csv.reader(f))
    assert hops[0] == HOP_HEADER and len(hops) == 1 + 8
    assert dict(zip(hops[0], hops[2]))["bytes"] == "1000" and dict(zip(hops[0], hops[1]))["bytes"] == ""
    with open(folder / "cells.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert [c["cell"] for c in cells] == ["a", "b"] and cells[0]["requests"] == "5" and cells[1]["errors"] == "1"
    assert json.loads(cells[0]["operators"]) == [{"partition": {"cut": "auto"}}] and "point" in cells[0]


def test_export_parquet_typed_to_another_folder(tmp_path):
    folder = filled(tmp_path)
    paths = export(folder, "parquet", tmp_path / "exp" / "here")
    assert [p.name for p in paths] == ["cells.parquet", "requests.parquet", "hops.parquet"]
    reqs = pq.read_table(tmp_path / "exp" / "here" / "requests.parquet")
    assert reqs.column_names == REQUEST_HEADER
    types = dict(zip(reqs.schema.names, reqs.schema.types))
    assert types["e2e_ms"] == pa.float64() and types["bytes_sent"] == pa.int64() and types["seq"] == pa.int64()
    assert types["output_match"] == pa.bool_() and types["cell"] == pa.string() and types["point"] == pa.string()
    d = reqs.to_pydict()
    assert d["model"] == ["efficientnet_lite0"] * 5 + ["minilm"] and d["strategy"][-1] == "edge"
    assert d["output_match"] == [True, True, None, False, None, None]
    assert d["e2e_ms"][:2] == [10.0, 11.0] and d["e2e_ms"][-1] is None
    hops = pq.read_table(tmp_path / "exp" / "here" / "hops.parquet")
    assert hops.column_names == HOP_HEADER and hops.num_rows == 8
    assert hops.schema.field("ms").type == pa.float64() and hops.schema.field("part").type == pa.int64()
    cells = pq.read_table(tmp_path / "exp" / "here" / "cells.parquet")
    assert cells.column("requests").to_pylist() == [5, 1] and cells.schema.field("started").type == pa.float64()
    assert not (folder / "requests.parquet").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_empty_store_has_all_columns(tmp_path, fmt):
    ResultStore.in_folder(tmp_path).close()
    export(tmp_path, fmt)
    if fmt == "csv":
        with open(tmp_path / "requests.csv", newline="") as f:
            assert list(csv.reader(f)) == [REQUEST_HEADER]
    else:
        t = pq.read_table(tmp_path / "hops.parquet")
        assert t.num_rows == 0 and t.column_names == HOP_HEADER and t.schema.field("bytes").type == pa.int64()
        t = pq.read_table(tmp_path / "requests.parquet")
        assert t.schema.field("output_match").type == pa.bool_()


def test_export_errors(tmp_path):
    with pytest.raises(StoreError) as info:
        export(tmp_path, "xlsx")
    assert "csv, parquet" in one_line(info)
    with pytest.raises(StoreError, match="no results at"):
        export(tmp_path / "empty", "csv")
    assert not (tmp_path / "empty").exists()


def test_a_traced_cell_keeps_its_replay_figures_and_each_hops_link_state(store, tmp_path):
    """Version 5: cells.trace_json holds the replays' figures; a link hop that crossed a traced
    direction keeps when it was sent and the bandwidth and delay in force; both are exported."""
    trace = {"t0_ns": 5, "directions": [{"link": "mobile-edge", "direction": "forward", "steps": 3, "applied": 2,
                                         "missed": 1, "late": 0, "lag_ms": {"p50": 0.4, "p99": 0.9, "max": 0.9},
                                         "applied_steps": [[0.4, 50000000, None], [1000.5, 5000000, None]]}]}
    hops = [replace(h, trace_at_ms=12.5, trace_link="mobile-edge forward", trace_bandwidth_bps=5_000_000,
                    trace_delay_ms=10.0) if h.kind == "link" and h.src == "mobile" else h for h in hop_rows(range(1))]
    store.write_cell(cell_record("t", trace=trace), request_rows(1), hops)
    [cell] = [c for c in store.cells() if c["cell"] == "t"]
    assert cell["trace"] == trace
    link = [h for h in store.hops("t") if h["kind"] == "link"]
    assert [(h["trace_at_ms"], h["trace_link"], h["trace_bandwidth_bps"], h["trace_delay_ms"]) for h in link] == [
        (12.5, "mobile-edge forward", 5_000_000, 10.0), (None, None, None, None)]
    folder = store.path.parent
    export(folder, "csv", tmp_path / "out")
    with open(tmp_path / "out" / "hops.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trace_bandwidth_bps"] for r in rows if r["kind"] == "link"] == ["5000000", ""]


def test_a_fastest_cell_keeps_its_choice(store, tmp_path):
    """Version 6: cells.choice_json holds a cut: fastest cell's chosen cut and every candidate's
    prediction; other cells have NULL there; both are exported."""
    choice = {"rule": "least predicted p50", "cut": "t2", "p50_ms": 1.5,
              "candidates": [{"tensor": "t1", "bytes": 100, "p50_ms": 2.0}, {"tensor": "t2", "bytes": 10, "p50_ms": 1.5}]}
    store.write_cell(cell_record("f", operators=[{"partition": {"cut": "t2"}}], choice=choice), request_rows(1), [])
    store.write_cell(cell_record("a"), request_rows(1), [])
    got = {c["cell"]: c["choice"] for c in store.cells()}
    assert got["f"] == choice and got["a"] is None
    export(store.path.parent, "csv", tmp_path / "out")
    with open(tmp_path / "out" / "cells.csv", newline="") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert json.loads(rows["f"]["choice"]) == choice and rows["a"]["choice"] == ""
