#!/usr/bin/env bash
# The README's main command: set up (idempotent), then run the main job.
# Until deployments exist the main job is (1) calibrating the three-tier topology: bring it
# up, measure every link direction and host against its spec, tear it down; and (2) preparing
# the offline demo study's artifacts: train / export the models, apply every strategy's
# operators, verify and evaluate each artifact (cached: a second run takes seconds).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
.venv/bin/testbed calibrate three_tier "$@"
exec .venv/bin/testbed prepare examples/offline-demo.yaml
