"""The docs are checked against the code: their generated parts (the store's tables, the trace
record, the operators' parameters) equal what the code renders now, every relative link from
README.md and docs/*.md reaches a file (and a heading, where it names one), and the example
files they show load. A doc that drifts from the code fails here, not in a reader's hands."""
from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


@pytest.mark.parametrize("name", sorted(gen_docs.SECTIONS))
def test_generated_part_matches_the_code(name):
    doc, _ = gen_docs.SECTIONS[name]
    assert gen_docs.current(name) == gen_docs.wanted(name), \
        f"{doc}: the generated part {name!r} differs from the code; run .venv/bin/python scripts/gen_docs.py"


def test_store_schema_part_is_schema_markdown():
    """The store's doc holds schema_markdown() itself, every table and column of TABLES."""
    from testbed.store import TABLES, schema_markdown
    part = gen_docs.current("store-schema")
    assert part == schema_markdown()
    for table in TABLES:
        assert f"### `{table.name}`" in part
        for column in table.columns:
            assert f"| `{column.name}` |" in part


def test_trace_part_names_every_field():
    from workloads.trace import FIELDS, STAGES
    part = gen_docs.current("trace-record")
    assert all(f"| `{f.name}` | {f.meaning} | {f.unit} |" in part for f in FIELDS)
    assert all(f"| `{s}` |" in part for s in STAGES)


def test_check_finds_a_stale_part_and_write_repairs_it(tmp_path, monkeypatch, capsys):
    """--check exits 1 naming a part that differs; a plain run rewrites only between the markers."""
    doc = tmp_path / "docs" / "store.md"
    doc.parent.mkdir()
    before, after = "# hand-written\n\n<!-- BEGIN GENERATED store-schema: x -->\n", \
        "<!-- END GENERATED store-schema -->\n\nhand-written too\n"
    doc.write_text(before + "| an old column |\n" + after, encoding="utf-8")
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "SECTIONS", {"store-schema": gen_docs.SECTIONS["store-schema"]})
    assert gen_docs.main(["--check"]) == 1
    assert "docs/store.md: store-schema" in capsys.readouterr().out
    assert gen_docs.main([]) == 0
    assert doc.read_text(encoding="utf-8") == before + gen_docs.wanted("store-schema") + after
    assert gen_docs.main(["--check"]) == 0


def test_missing_markers_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "store.md").write_text("# no markers\n", encoding="utf-8")
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "SECTIONS", {"store-schema": gen_docs.SECTIONS["store-schema"]})
    assert gen_docs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: docs/store.md: no generated part 'store-schema'") and err.count("\n") == 1


# ---- links ---------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)
_CODE = re.compile(_FENCE.pattern + r"|`[^`\n]*`", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _links(path: Path) -> list[str]:
    return _LINK.findall(_CODE.sub("", path.read_text(encoding="utf-8")))


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"README.md", "experiment-file.md", "store.md", "wire.md", "emulation.md", "benchmarks.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_local_links_resolve(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_check_sees_a_broken_link(tmp_path):
    """The checker itself: a missing file and a missing heading are found, code is skipped."""
    (tmp_path / "a.md").write_text("# Top\n\n## A slow host (and more)\n\n## Sweeps and `--set`\n\n"
                                   "```sh\n# not a heading\n```\n", encoding="utf-8")
    doc = tmp_path / "b.md"
    doc.write_text("[ok](a.md#a-slow-host-and-more) [gone](c.md) `[code](d.md)` [bad](a.md#nope)\n",
                   encoding="utf-8")
    assert _links(doc) == ["a.md#a-slow-host-and-more", "c.md", "a.md#nope"]
    assert _anchors(tmp_path / "a.md") == {"top", "a-slow-host-and-more", "sweeps-and---set"}


# ---- examples --------------------------------------------------------------------------------

def _yaml_blocks(path: Path) -> list[dict]:
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", path.read_text(encoding="utf-8"), re.S | re.M)
    return [yaml.safe_load(textwrap.dedent(body)) for _, body in blocks]


def test_example_files_in_the_docs_load():
    """Every experiment and topology example the README and docs show is valid as written."""
    from testbed.experiment import load_experiment_dict
    from topologies import load_topology_dict
    seen = {"experiment": 0, "topology": 0}
    for doc in DOCS:
        for data in _yaml_blocks(doc):
            if "strategies" in data:
                exp = load_experiment_dict(data, cores=2, memory_bytes=8 << 30, source=doc.name, base_dir=ROOT)
                assert exp.cells_grid()
                seen["experiment"] += 1
            elif "hosts" in data:
                assert load_topology_dict(data, source=doc.name).hosts
                seen["topology"] += 1
    assert seen["experiment"] >= 2 and seen["topology"] >= 1, seen
