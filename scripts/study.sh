#!/usr/bin/env bash
# Reproduce one of the ready-made studies from a fresh machine (as root):
#   sudo bash scripts/study.sh blackbox|whitebox|bandwidth|cpu_period|load|fastest [extra testbed run options]
# Sets up (idempotent), runs studies/NAME.yaml into results/study-NAME (an interrupted run is
# resumed by running this again), then writes the report to results/study-NAME/report/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
name=${1:-}
if [ -z "$name" ] || [ ! -f "studies/$name.yaml" ]; then
  echo "scripts/study.sh: which study? one of: $(cd studies && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
shift
bash scripts/setup.sh
out="results/study-$name"
.venv/bin/testbed run "studies/$name.yaml" --out "$out" --resume "$@"
.venv/bin/testbed report "$out"
