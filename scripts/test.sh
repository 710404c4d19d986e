#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run unit and integration tests.
# Integration tests need root (real namespaces, qdiscs, cgroups); as non-root they are skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ "$(id -u)" = 0 ]; then
  bash scripts/setup.sh
fi
exec .venv/bin/python -m pytest "$@"
