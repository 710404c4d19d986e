#!/usr/bin/env bash
# The README's main command: set up (idempotent), then run the demo study
# (examples/demo.yaml): prepare its artifacts (trained / exported / transformed once, then
# cached), bring the three-tier network up, deploy each strategy's parts onto its hosts, send
# real requests, store every request's per-hop trace in results/demo-<time>/results.sqlite,
# tear everything down and print the summary table. Extra arguments go to `testbed run`
# (e.g. --out DIR, --set requests.repeat=50).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
exec .venv/bin/testbed run examples/demo.yaml "$@"
