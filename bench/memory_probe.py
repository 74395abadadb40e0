"""Peak memory of `lenskit export` on a long synthetic prompt (run by bench/test_bench_memory.py in a subprocess).

Usage: python bench/memory_probe.py RUN_DIR TOKENS [POSITIONS]
Writes a trace of TOKENS random-stream positions for the default model's shapes into RUN_DIR, then exports it in this
process and prints JSON: resident memory after loading the lens weights, peak resident memory, and timings.
"""

import json
import resource
import sys
import time
from pathlib import Path


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def main() -> None:
    import torch

    from lenskit.capture import stage_names
    from lenskit.export import ExportOptions, export_run_dir, write_document
    from lenskit.weights import lens_for_trace
    from lenskit.models import load_model
    from lenskit.store import TRACE_FILE, build_metadata, write_trace

    run, T = Path(sys.argv[1]), int(sys.argv[2])
    positions = sys.argv[3] if len(sys.argv) > 3 else None
    run.mkdir(parents=True, exist_ok=True)
    if not (run / TRACE_FILE).exists():
        loaded = load_model(None)
        from lenskit.capture import fingerprint_info

        info = fingerprint_info(loaded)
        g = torch.Generator().manual_seed(0)
        S, D = 2 * info["n_layers"] + 1, loaded.model.config.hidden_size
        stages = torch.randn(S, T, D, generator=g)  # [S, T, D]
        ids = torch.randint(0, info["vocab_size"], (T,), generator=g).tolist()
        meta = build_metadata(info, stage_names(info["n_layers"]), [{"text": "synthetic", "token_ids": ids, "tokens": [""] * T}])
        write_trace(run / TRACE_FILE, [stages], meta)
        del loaded, stages
    import gc

    gc.collect()
    from lenskit.store import read_trace

    lens_for_trace(read_trace(run).meta)  # warm: load what the export step loads, then measure beyond it
    gc.collect()
    base = rss_mb("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    write_document(export_run_dir(run, ExportOptions(positions=positions)), run / "export.json")
    took = time.perf_counter() - t0
    print(json.dumps({
        "tokens": T, "positions": positions or "all", "rss_before_mb": round(base), "peak_mb": round(rss_mb("VmHWM")),
        "beyond_weights_mb": round(rss_mb("VmHWM") - base), "seconds": round(took, 1),
        "json_mb": round((run / "export.json").stat().st_size / 2**20, 1),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
