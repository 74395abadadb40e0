#!/usr/bin/env bash
# Quickstart: set up, trace the standard test paragraph on the default model, and open the viewer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
lenskit trace -o runs/demo --force
exec lenskit serve runs/demo --open "$@"
