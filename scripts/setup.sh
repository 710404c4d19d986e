#!/usr/bin/env bash
# Install everything the testbed needs on a fresh Debian/Ubuntu machine. Run as root.
# Idempotent: a second run only checks. Creates .venv/ in the repository; after it, every
# offline model prepares without a network.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "$(id -u)" != 0 ]; then
  echo "scripts/setup.sh: needs root (apt-get, and the testbed itself needs root): run it with sudo" >&2
  exit 1
fi

# Debian packages: Mininet (for mnexec; the Python module comes pinned from PyPI), the tools
# that realise and measure links, python3-venv for the virtual environment, the full
# Fashion-MNIST data set (offline models are trained on it), and headless Chromium with its
# driver (the report's browser test).
debs=(mininet bridge-utils iproute2 iptables iperf3 iputils-ping util-linux procps python3 python3-venv python3-dev
      dataset-fashion-mnist chromium chromium-driver)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The photographs the ImageNet models are judged on (workloads/photos.py) come from the
# educational game GCompris's data package, at the version workloads/photos.json was made from
# (44 MB download); the SHA-256 of every file is checked below.
# (read with sed: python3 may not be installed yet)
photo_name=$(sed -n 's/^ "package": "\(.*\)",$/\1/p' workloads/photos.json)
photo_version=$(sed -n 's/^ "version": "\(.*\)",$/\1/p' workloads/photos.json)
if [ "$(dpkg-query -W -f='${Version}' "$photo_name" 2>/dev/null)" != "$photo_version" ]; then
  missing+=("$photo_name=$photo_version")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" >/dev/null; then
    # the archive no longer has the pinned version: take its own, and let the check below say
    # whether the photographs are still the listed ones
    echo "setup: $photo_name $photo_version unavailable from apt; installing the archive's version" >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]/%=$photo_version/}" >/dev/null
  fi
fi

# The venv uses the distribution's python3 (the one Mininet's mnexec is packaged for).
py=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
# The VADER human-rated sentences (minilm_sentiment's data set) come in the vaderSentiment 3.3.2
# sdist: fetched once into .venv/share/testbed and checked against its pinned SHA-256
# (workloads/datasets.py), so that the model prepares offline later, whatever TESTBED_CACHE says.
# Then every listed photograph is checked against its SHA-256 (one line naming a missing or
# changed file).
.venv/bin/python - <<'PY'
import sys

from workloads.datasets import install_vader
from workloads.errors import WorkloadError
from workloads.photos import check_photos

try:
    install_vader(progress=lambda message: print(f"setup: {message}", flush=True))
    check_photos()
except WorkloadError as e:
    sys.exit(f"setup: {e}")
PY
echo "setup: ready ($(.venv/bin/python --version), testbed at .venv/bin/testbed)"
