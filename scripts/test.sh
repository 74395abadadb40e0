#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs (incl. Debian's Chromium), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
. .venv/bin/activate
exec python -m pytest "$@"
