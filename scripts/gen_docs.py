"""Write the generated parts of docs/ from the code that defines them, or check them.

    .venv/bin/python scripts/gen_docs.py          # rewrite every generated part
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 and name each part that differs

A generated part of a document sits between two HTML comments (invisible once rendered)::

    <!-- BEGIN GENERATED name: ... -->
    ...
    <!-- END GENERATED name -->

and is the output of its renderer in :data:`SECTIONS`, so the store's columns, the trace
record's fields and the operators' parameters are written down once, in the code, and the docs
cannot drift from them: tests/unit/test_docs.py fails when a part differs from what its
renderer gives now. Everything outside the markers is written by hand and left alone.
Standard library only (and the modules it renders, none of which needs torch or numpy).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # run as a script, its own folder is first on the path
    sys.path.insert(0, str(ROOT))


def _store_schema() -> str:
    from testbed.store import schema_markdown
    return schema_markdown()


def _trace_record() -> str:
    from workloads.trace import markdown
    return markdown()


def _value(v: object) -> str:
    """A parameter's default as it is written in an experiment file."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _operator_parameters() -> str:
    """Every operator's kind and parameters (default, meaning), from workloads.operators."""
    from workloads.operators import OPERATORS
    lines = []
    for op in OPERATORS.values():
        lines += [f"#### `{op.name}` ({op.kind})", "", f"_{op.help}_", "",
                  "| parameter | default | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | `{_value(p.default)}` | {p.help} |" for name, p in op.params.items()]
        lines.append("")
    return "\n".join(lines)


# name -> (the document, relative to the repository root; its renderer)
SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "store-schema": ("docs/store.md", _store_schema),
    "trace-record": ("docs/wire.md", _trace_record),
    "operator-parameters": ("docs/experiment-file.md", _operator_parameters),
}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN GENERATED {re.escape(name)}\b[^\n]*-->\n)(.*?)(<!-- END GENERATED {re.escape(name)} -->)",
                      re.S)


def current(name: str) -> str:
    """The part ``name`` as its document holds it now (ValueError if its markers are missing)."""
    doc, _ = SECTIONS[name]
    try:
        text = (ROOT / doc).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"{doc}: cannot read it: {e.strerror or e}") from None
    m = _pattern(name).search(text)
    if not m:
        raise ValueError(f"{doc}: no generated part {name!r} (its BEGIN/END GENERATED markers are missing)")
    return m.group(2)


def wanted(name: str) -> str:
    """The part ``name`` as its renderer gives it, ending in exactly one newline."""
    return SECTIONS[name][1]().rstrip("\n") + "\n"


def stale() -> list[str]:
    """The parts whose document differs from their renderer, as ``doc: name``."""
    return [f"{SECTIONS[n][0]}: {n}" for n in SECTIONS if current(n) != wanted(n)]


def write() -> list[str]:
    """Rewrite every part that differs; return those rewritten, as ``doc: name``."""
    changed = stale()
    for name, (doc, _) in SECTIONS.items():
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        current(name)  # the markers must be there
        new = _pattern(name).sub(lambda m: m.group(1) + wanted(name) + m.group(3), text, count=1)
        if new != text:
            path.write_text(new, encoding="utf-8")
    return changed


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print("usage: gen_docs.py [--check]", file=sys.stderr)
        return 2
    try:
        if argv:
            parts = stale()
            for p in parts:
                print(f"out of date: {p} (run scripts/gen_docs.py)")
            return 1 if parts else 0
        for p in write():
            print(f"rewritten: {p}")
        return 0
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
