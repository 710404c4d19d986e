#!/usr/bin/env bash
# The README's main command: set up (idempotent), then run the main job.
# Until deployments exist the main job is calibrating the three-tier topology: bring it up,
# measure every link direction and host against its spec, tear it down.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
exec .venv/bin/testbed calibrate three_tier "$@"
