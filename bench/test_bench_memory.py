"""Peak memory of the export step for a 4,096-token prompt, beyond the lens weights (goal <= 2 GiB).

Runs bench/memory_probe.py in a fresh process (so earlier tests' allocations do not count). Set
LENSKIT_BENCH_POSITIONS (e.g. "0-511") to export only part of the prompt when time is short: the working set is
per chunk, so the peak is reached within the first chunks; results held for the JSON grow with positions.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark(group="memory")
def test_export_peak_memory_4096_tokens(benchmark, tmp_path):
    probe = Path(__file__).with_name("memory_probe.py")
    args = [sys.executable, str(probe), str(tmp_path / "long"), "4096"]
    if os.environ.get("LENSKIT_BENCH_POSITIONS"):
        args.append(os.environ["LENSKIT_BENCH_POSITIONS"])
    result = {}

    def run():
        out = subprocess.run(args, check=True, capture_output=True, text=True)
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    benchmark.extra_info.update(result)
    print(result)
    assert result["beyond_weights_mb"] > 0
