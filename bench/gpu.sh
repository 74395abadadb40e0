#!/usr/bin/env bash
# One prepared GPU run (no network needed): the Triton kernels' tests compiled on the GPU, then the benchmark
# (bench/test_bench_gpu.py: Llama-3-8B and default-model shapes, statistics vs a bare bf16 GEMM, same run).
# Usage: bash bench/gpu.sh   (from anywhere; writes $OUT/bench_gpu.json and $OUT/gpu.log when OUT is set)
# Env: PYTHON (interpreter to use), LENSKIT_GPU_SHAPES, LENSKIT_GPU_MAX_POSITIONS, LENSKIT_GPU_ENGINE_POSITIONS,
# LENSKIT_GPU_REPEATS, LENSKIT_GPU_ABLATION (see the bench).
# Budget: ~2-3 minutes on an H200 (tests ~40 s incl. Triton compilation, bench ~60 s, machine start ~40 s: this
# session's runs); each step has a timeout.
# Wheels the device lacks (orjson, gguf) travel in .whl/ (git-ignored): see the README's "GPU" section.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
echo "== lenskit gpu.sh $(date -u +%FT%TZ) in $PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

# 1. an interpreter whose torch sees CUDA (this repo's .venv may be a CPU build: tried last)
PY=""
for cand in ${PYTHON:-} python3 python .venv/bin/python; do
  command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
  if timeout 120 "$cand" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=$cand; break
  fi
done
if [ -z "$PY" ]; then
  echo "no python with a CUDA torch found (tried: ${PYTHON:-} python3 python .venv/bin/python); nothing run"
  exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

# 2. light dependencies, only where missing: wheels carried in .whl/ first (the device has no network), then pip
if ls .whl/*.whl >/dev/null 2>&1; then
  for whl in .whl/*.whl; do
    mod=$(basename "$whl" | cut -d- -f1)
    "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl"
  done
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
need() { "$PY" -c "import $1" 2>/dev/null || { echo "installing $2"; timeout 180 "$PY" -m pip install -q "$2" || echo "could not install $2"; }; }
need triton triton
need numpy numpy
need pytest pytest
need orjson orjson
"$PY" -c 'import triton; print("triton", triton.__version__)' || { echo "triton missing: cannot run"; exit 3; }
# lenskit itself from this tree (PYTHONPATH; an editable install without dependencies only if that fails)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import lenskit.kernels_triton' || timeout 180 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
  || echo "lenskit not importable"
unset TRITON_INTERPRET
# the engine at 1,024 positions per shape unless told otherwise: all 2,048 Llama-3 positions overran a 300 s bench
export LENSKIT_GPU_ENGINE_POSITIONS=${LENSKIT_GPU_ENGINE_POSITIONS:-1024}
export LENSKIT_LOAD_PLUGINS=0 HF_HUB_OFFLINE=1

# 3. tests compiled on the GPU (CUDA-vs-CPU equality at Llama-3 vocabulary included)
echo "== tests (GPU)"
timeout ${LENSKIT_GPU_TEST_TIMEOUT:-200} "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_triton.py tests/test_cuda.py
tests_rc=$?
echo "tests rc=$tests_rc"

# 4. the benchmark
echo "== bench"
OUT="$OUT" PYTHONUNBUFFERED=1 timeout ${LENSKIT_GPU_BENCH_TIMEOUT:-300} "$PY" bench/test_bench_gpu.py
bench_rc=$?
echo "bench rc=$bench_rc; json: $OUT/bench_gpu.json"
exit $(( tests_rc != 0 || bench_rc != 0 ))
