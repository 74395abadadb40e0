"""GPU benchmark: exact statistics with the Triton kernels against a bare bf16 GEMM of the same shapes, same run.

Shapes (random weights; rows ordered (position, stage) as in the export):

* ``llama3-8b``: 65 stages x 2,048 positions x D = 4,096 x V = 128,256 (1.40e14 FLOP per pass over all positions),
* ``smollm2-135m`` (the default model): 61 stages x 1,024 positions x D = 576 x V = 49,152.

Per shape, median of ``LENSKIT_GPU_REPEATS`` (3) timed passes over all positions in chunks of ``c`` positions:

* ``gemm_bf16``: the baseline, ``[c*S, D] @ [D, V]`` bf16 in, bf16 out (cuBLAS);
* ``gemm_f32out``: the same GEMM with float32 output (``torch.mm(..., out_dtype=torch.float32)`` where torch has it,
  else bf16 output upcast): the scores the statistics need;
* ``gemm_stats``: float32-output GEMM + :func:`lenskit.kernels_triton.chunk_stats_triton` (K = 12 tracked tokens,
  3 samples per bin), results left on the GPU.

Then the engine itself (:func:`lenskit.engine.prompt_stats`: scoring blocks, the final top-k, every statistic, each
stage's top-5, results left on the GPU) on the same shapes with a random logit lens (LayerNorm + head), per
``--precision`` mode, against bare GEMMs timed in the same run: ``float32`` vs a strict float32 GEMM (no TF32) and vs
the bf16 GEMM; ``bf16`` vs the bf16 GEMM; ``fast`` (bf16 screen + exact float32 re-checks) on the first
``LENSKIT_GPU_FAST_POSITIONS`` (128) positions only, checked identical to ``float32``. Also reported: how often
``bf16`` mode's integers agree with ``float32`` mode's (top-10 sets, ranks), for users choosing between them, and
the engine's own per-kernel profile. ``LENSKIT_GPU_ENGINE_POSITIONS`` caps the engine's positions (time).

Before the engine, :func:`kernel_ablation` times one chunk's statistics with parts of pass B switched off, other
warp counts and tile sizes, the stage top-N by ``torch.topk`` and by pass D, and a chunk 4x as tall: where the time
goes, so that each kernel change is chosen by measurement (``LENSKIT_GPU_ABLATION=0`` skips it).

Reports achieved TFLOP/s (GEMM FLOPs / time) and each time as a ratio to ``gemm_bf16``; summary lines on stdout
and JSON in ``$OUT/bench_gpu.json`` when ``OUT`` is set. Also checks the first chunk's integer results against the
torch implementation on the GPU (given the same moments). Without CUDA it is skipped, unless
``LENSKIT_GPU_BENCH_DEVICE=cpu`` (with ``TRITON_INTERPRET=1`` and ``LENSKIT_GPU_BENCH_TINY=1``: tiny shapes, to
check the script itself on a CPU).

Run: ``python bench/test_bench_gpu.py`` or ``pytest bench/test_bench_gpu.py -s``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import pytest
import torch

SHAPES = {  # name: (stages S, positions T, hidden D, vocabulary V, positions per chunk c); the default model first
    "smollm2-135m": (61, 1024, 576, 49152, 64),
    "llama3-8b": (65, 2048, 4096, 128256, 32),
}
TINY = {"tiny": (3, 4, 64, 997, 2)}
K_TRACKED = 12
SAMPLES = 3


def _device() -> str | None:
    want = os.environ.get("LENSKIT_GPU_BENCH_DEVICE", "cuda")
    if want == "cuda" and not torch.cuda.is_available():
        return None
    return want


def _sync(dev: str):
    if dev == "cuda":
        torch.cuda.synchronize()


_OUT_DTYPE_OK: bool | None = None


def gemm_f32out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of bf16 matrices with float32 output (fp32 accumulation), bf16 output upcast where torch lacks it."""
    global _OUT_DTYPE_OK
    if _OUT_DTYPE_OK is not False:
        try:
            out = torch.mm(a, b, out_dtype=torch.float32)
            _OUT_DTYPE_OK = True
            return out
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK = False
    return torch.mm(a, b).float()


def _timed(fn, dev: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def bench_shape(name: str, S: int, T: int, D: int, V: int, c: int, dev: str, repeats: int) -> dict:
    """Time the three variants over all T positions (chunks of c) and check the first chunk's integers."""
    from lenskit.kernels_triton import chunk_stats_triton
    from lenskit.stats import Workspace, chunk_stats_torch

    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(T * S, D, generator=g, device=dev).to(torch.bfloat16)  # [T*S, D] rows (position, stage)
    w = (torch.randn(V, D, generator=g, device=dev) * (3 / D**0.5)).to(torch.bfloat16)  # [V, D]: scores ~ N(0, 9)
    w[:16] *= 3  # a few columns with larger scores: a right tail as real logits have
    wt = w.t()  # [D, V] (column-major view: the GEMM reads w as stored)
    trk = torch.randint(0, V, (T, K_TRACKED), generator=g, device=dev)  # [T, K]
    chunks = [(p0, min(p0 + c, T)) for p0 in range(0, T, c)]
    rows = lambda p0, p1: slice(p0 * S, p1 * S)
    # results are dropped at once (the caching allocator reuses the memory in stream order); the timer syncs
    def gemm_bf16():
        for p0, p1 in chunks:
            torch.mm(h[rows(p0, p1)], wt)

    def gemm_f32():
        for p0, p1 in chunks:
            gemm_f32out(h[rows(p0, p1)], wt)

    def gemm_stats():
        for p0, p1 in chunks:
            chunk_stats_triton(gemm_f32out(h[rows(p0, p1)], wt), S, trk[p0:p1], SAMPLES)

    # warm-up (cuBLAS heuristics, Triton compilation) and the exactness check on the first chunk
    t0 = time.perf_counter()
    p0, p1 = chunks[0]
    s = gemm_f32out(h[rows(p0, p1)], wt)
    st = chunk_stats_triton(s, S, trk[p0:p1], SAMPLES)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    n_chk = min(2, p1 - p0) * S  # rows checked against the torch implementation (its temporaries are big)
    ref = chunk_stats_torch(s[:n_chk], S, trk[p0:p0 + n_chk // S], Workspace(n_chk, n_chk, V, dev), samples=SAMPLES,
                            moments=(st.mean[:n_chk], st.std[:n_chk]))
    keep = st.sample_rows < n_chk
    exact = all(torch.equal(getattr(st, k)[:n_chk].cpu(), getattr(ref, k).cpu())
                for k in ("counts", "rank", "tracked_bin", "tracked_score"))
    exact &= all(torch.equal(getattr(st, k)[keep].cpu(), getattr(ref, k).cpu())
                 for k in ("sample_rows", "sample_bins", "sample_cols"))
    close = all(torch.allclose(getattr(st, k)[:n_chk].cpu(), getattr(ref, k).cpu(), rtol=1e-4, atol=1e-3)
                for k in ("lse", "entropy", "kl"))
    del s, st, ref
    gemm_bf16(), gemm_f32()
    profile = _kernel_profile(lambda: [chunk_stats_triton(gemm_f32out(h[rows(p0, p1)], wt), S, trk[p0:p1], SAMPLES)
                                       for p0, p1 in chunks[:4]]) if dev == "cuda" else None
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    res = {}
    for key, fn in (("gemm_bf16", gemm_bf16), ("gemm_f32out", gemm_f32), ("gemm_stats", gemm_stats)):
        times = _timed(fn, dev, repeats)
        res[key] = statistics.median(times)
    flop = 2.0 * T * S * D * V
    out = {
        "shape": {"stages": S, "positions": T, "hidden": D, "vocab": V, "chunk_positions": c, "chunk_rows": c * S,
                  "tracked": K_TRACKED, "samples": SAMPLES},
        "gemm_flop": flop,
        "seconds": res,
        "tflops": {k: flop / v / 1e12 for k, v in res.items()},
        "ratio_to_gemm_bf16": {k: v / res["gemm_bf16"] for k, v in res.items()},
        "throughput_vs_bf16_gemm": res["gemm_bf16"] / res["gemm_stats"],
        "stats_seconds": res["gemm_stats"] - res["gemm_f32out"],
        "warmup_seconds": warm_s,
        "first_chunk_integers_equal_torch": bool(exact),
        "first_chunk_floats_close_torch": bool(close),
        "out_dtype_float32_gemm": bool(_OUT_DTYPE_OK),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None,
        "kernel_profile_4_chunks": profile,
    }
    return out


def _kernel_profile(fn, top: int = 12) -> list | None:
    """GPU time per kernel name over one call of ``fn`` (torch.profiler), the ``top`` largest: where the time goes."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        rows = []
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t:
                rows.append((ev.key[:90], ev.count, round(t / 1e3, 3)))  # name, calls, ms
        rows.sort(key=lambda r: -r[2])
        for name, n, ms in rows[:top]:
            print(f"  profile {ms:9.3f} ms {n:5d}x {name}", flush=True)
        return rows[:top]
    except Exception as e:  # the profiler is a nicety
        print(f"  profile unavailable: {e}", flush=True)
        return None


@torch.inference_mode()
def kernel_ablation(S: int, D: int, V: int, c: int, dev: str, reps: int = 7) -> dict:
    """Milliseconds (median of ``reps``, CUDA events) for one chunk of ``c`` positions: the GEMMs, the statistics
    in full, and with parts of pass B switched off, other tilings and warp counts, pass C's warps, the stage top-5 --
    where the statistics' time goes, so that the next change is chosen by measurement. Tracked tokens are each
    position's final top-K (as in the engine: ranks are small in late stages)."""
    from lenskit.kernels_triton import chunk_stats_triton
    from lenskit.stats import stage_top_torch

    g = torch.Generator(device=dev).manual_seed(3)
    h = torch.randn(c * S, D, generator=g, device=dev).to(torch.bfloat16)
    h *= torch.linspace(0.5, 3, S, device=dev).repeat(c)[:, None].to(torch.bfloat16)  # later stages sharper
    w = (torch.randn(V, D, generator=g, device=dev) * (3 / D**0.5)).to(torch.bfloat16)
    w[:16] *= 3
    wt = w.t()
    s = gemm_f32out(h, wt)  # [c*S, V]
    trk = s.view(c, S, V)[:, -1].topk(K_TRACKED, -1).indices  # [c, K] each position's final top-K
    ids = torch.arange(V, device=dev)

    def ms(fn) -> float:
        fn()
        _sync(dev)
        out = []
        for _ in range(reps):
            if dev != "cuda":  # (checking the script on a CPU)
                t0 = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - t0))
                continue
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b))
        return round(statistics.median(out), 4)

    res = {"rows": c * S, "vocab": V,
           "gemm_bf16": ms(lambda: torch.mm(h, wt)), "gemm_f32out": ms(lambda: gemm_f32out(h, wt)),
           "stats_samples3": ms(lambda: chunk_stats_triton(s, S, trk, 3)),
           "stats_samples0": ms(lambda: chunk_stats_triton(s, S, trk, 0)),
           "stage_top5": ms(lambda: stage_top_torch(s, 5, ids))}
    off = lambda **k: {("DO_" + n.upper()): v for n, v in k.items()}
    variants = {
        "no_hist": off(hist=False), "no_rank": off(rank=False), "no_kl": off(kl=False),
        "hist_only": off(rank=False, kl=False), "rank_only": off(hist=False, kl=False),
        "kl_only": off(hist=False, rank=False), "load_only": off(hist=False, rank=False, kl=False),
    }
    for name, flags in variants.items():
        res["samples0_" + name] = ms(lambda f=flags: chunk_stats_triton(s, S, trk, 0, ablate=f))
    for warps in (2, 8):
        res[f"samples0_warps_b{warps}"] = ms(lambda wb=warps: chunk_stats_triton(s, S, trk, 0, warps_b=wb))
    for bb in (512, 2048):
        res[f"samples0_block_b{bb}"] = ms(lambda b_=bb: chunk_stats_triton(s, S, trk, 0, block_b=b_))
    for warps in (2, 4):
        res[f"samples3_warps_c{warps}"] = ms(lambda wc=warps: chunk_stats_triton(s, S, trk, 3, warps_c=wc))
    res["samples3_top5"] = ms(lambda: chunk_stats_triton(s, S, trk, 3, stage_top=5, col_ids=ids))
    # per-call overhead: the same statistics on a chunk 4x as tall (per row: lower if launches and syncs dominate)
    s4 = s.repeat(4, 1)  # [4 c S, V]
    trk4 = trk.repeat(4, 1)
    res["x4_gemm_f32out"] = ms(lambda: gemm_f32out(h.repeat(4, 1), wt))
    res["x4_samples3_top5"] = ms(lambda: chunk_stats_triton(s4, S, trk4, 3, stage_top=5, col_ids=ids))
    for k, v in res.items():
        print(f"  ablation {k}: {v}", flush=True)
    return res


def gemm_variants(S: int, T: int, D: int, V: int, dev: str, repeats: int) -> dict:
    """Seconds for one pass over all rows in the engine's block shape: strict float32, TF32, bf16 (bf16 out), bf16 with
    float32 output."""
    from lenskit.scoring import block_rows

    rows = block_rows(V, torch.device("cuda")) // S * S  # the engine's CUDA block shape
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(rows, D, generator=g, device=dev)  # [B, D]
    w = torch.randn(D, V, generator=g, device=dev) / D**0.5  # [D, V]
    x16, w16 = x.bfloat16(), w.bfloat16()
    out = torch.empty(rows, V, device=dev)
    n = -(-T * S // rows)  # blocks per pass

    def f32():
        for _ in range(n):
            torch.matmul(x, w, out=out)

    def tf32():
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            for _ in range(n):
                torch.matmul(x, w, out=out)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    def bf16():
        for _ in range(n):
            torch.matmul(x16, w16)

    def bf16_f32out():
        for _ in range(n):
            torch.mm(x16, w16, out_dtype=torch.float32, out=out)

    res = {"block_rows": rows, "blocks": n}
    for key, fn in (("f32", f32), ("tf32", tf32), ("bf16", bf16), ("bf16_f32out", bf16_f32out)):
        try:
            fn()
            res[key] = statistics.median(_timed(fn, dev, repeats))
        except (TypeError, RuntimeError, NotImplementedError) as e:
            res[key] = None
            res[key + "_error"] = str(e)[:200]
    return res


@torch.inference_mode()
def bench_engine(S: int, T: int, D: int, V: int, dev: str, repeats: int, fast_positions: int) -> dict:
    """The engine (scoring + statistics) per precision mode on random stages; see the module docstring."""
    from lenskit.engine import prompt_stats
    from lenskit.lens import Lens
    from lenskit.planning import auto_max_memory
    from lenskit.scoring import Scorer

    g = torch.Generator(device=dev).manual_seed(2)
    stages = torch.randn(S, T, D, generator=g, device=dev)  # [S, T, D]
    stages *= torch.linspace(0.5, 4, S, device=dev)[:, None, None]  # later stages: larger stream, sharper rows
    w = torch.randn(V, D, generator=g, device=dev) * (3 / D**0.5)
    w[:16] *= 3
    lens = Lens(norm=torch.nn.LayerNorm(D).to(dev), pre=None, weight=w, bias=None)
    token_ids = torch.randint(0, V, (T,), generator=g, device=dev).tolist()
    budget = auto_max_memory(torch.device(dev))

    def engine(precision: str, n_pos: int):
        scorer = Scorer(lens, torch.device(dev), True, precision)
        groups = list(prompt_stats(scorer, lambda p0, p1: stages[:, p0:p1], S, token_ids[:n_pos], list(range(n_pos)),
                                   10, [], budget, samples=3, stage_top=5))
        _sync(dev)
        return groups

    out = {"positions": T, "fast_positions": fast_positions}
    secs = {}
    for prec in ("float32", "bf16"):
        engine(prec, min(T, 64))  # warm-up: Triton compilation, cuBLAS heuristics
        secs[prec] = statistics.median(_timed(lambda: engine(prec, T), dev, repeats))
    out["seconds"] = secs
    if dev == "cuda":  # where the engine's GPU time goes (its wall time minus this sum: host-side work and syncs)
        n_prof = min(T, 256)
        t0 = time.perf_counter()
        engine("float32", n_prof)
        out["profile_positions"], out["profile_wall_s"] = n_prof, time.perf_counter() - t0
        out["profile_float32"] = _kernel_profile(lambda: engine("float32", n_prof), top=16)
    # agreement of bf16 mode with float32 mode, and fast == float32, on the first positions
    n = min(T, fast_positions)
    ref = engine("float32", n)
    b16 = engine("bf16", n)
    top_same = rank_same = rank_total = 0
    for a, b in zip(ref, b16):
        for i, (ta, tb) in enumerate(zip(a.tracked, b.tracked)):
            top_same += set(ta[:10]) == set(tb[:10])
        rank_same += int((a.stats.rank == b.stats.rank).sum())
        rank_total += a.stats.rank.numel()
    out["bf16_vs_float32"] = {"positions": n, "top10_set_equal_share": top_same / n,
                              "ranks_equal_share": rank_same / max(1, rank_total)}
    t0 = time.perf_counter()
    fast = engine("fast", n)
    out["fast_seconds"] = time.perf_counter() - t0
    out["float32_seconds_same_positions"] = statistics.median(_timed(lambda: engine("float32", n), dev, 1))
    a, b = _per_position(ref, S), _per_position(fast, S)  # (the modes group positions differently)
    out["fast_equals_float32"] = a.keys() == b.keys() and all(  # (histograms use fast mode's moments)
        a[p][0] == b[p][0] and all(torch.equal(x, y) for x, y in zip(a[p][1:], b[p][1:])) for p in a)
    return out


def _per_position(groups, S: int) -> dict:
    """``{position: (tracked ids, rank, tracked_score, stage_top_cols)}`` from the engine's groups."""
    out = {}
    for g in groups:
        st = g.stats
        for i, p in enumerate(g.positions):
            rows = slice(i * S, (i + 1) * S)
            out[p] = (g.tracked[i], st.rank[rows].cpu(), st.tracked_score[rows].cpu(), st.stage_top_cols[rows].cpu())
    return out


def run(out_dir: str | None = None) -> dict | None:
    dev = _device()
    if dev is None:
        print("bench_gpu: skipped (no CUDA)")
        return None
    tiny = os.environ.get("LENSKIT_GPU_BENCH_TINY", "0") == "1"
    shapes = TINY if tiny else SHAPES
    only = os.environ.get("LENSKIT_GPU_SHAPES")  # e.g. "llama3-8b"
    if only:
        shapes = {k: v for k, v in shapes.items() if k in only.split(",")}
    repeats = int(os.environ.get("LENSKIT_GPU_REPEATS", "1" if tiny else "3"))
    max_pos = os.environ.get("LENSKIT_GPU_MAX_POSITIONS")  # fewer positions where time or memory requires
    report = {"device": torch.cuda.get_device_name() if dev == "cuda" else dev, "torch": torch.__version__,
              "shapes": {}}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    for name, (S, T, D, V, c) in shapes.items():
        if name == "llama3-8b" and dev == "cuda" and torch.cuda.get_device_properties(0).total_memory < 60 * 2**30:
            T = min(T, 512)  # the [T*S, D] stages and [V, D] head of the big shape need room
        if max_pos:
            T = min(T, int(max_pos))
        r = bench_shape(name, S, T, D, V, c, dev, repeats)
        report["shapes"][name] = r
        sec, tf = r["seconds"], r["tflops"]
        print(f"bench_gpu {name}: S={S} T={T} D={D} V={V} chunk={c} pos | "
              f"gemm_bf16 {sec['gemm_bf16']:.3f}s {tf['gemm_bf16']:.0f} TFLOP/s | "
              f"gemm_f32out {sec['gemm_f32out']:.3f}s {tf['gemm_f32out']:.0f} TFLOP/s | "
              f"gemm+stats {sec['gemm_stats']:.3f}s {tf['gemm_stats']:.0f} TFLOP/s | "
              f"throughput vs bf16 GEMM {r['throughput_vs_bf16_gemm']:.2f}x | stats {r['stats_seconds']:.3f}s | "
              f"exact {r['first_chunk_integers_equal_torch']} close {r['first_chunk_floats_close_torch']} | "
              f"warm-up {r['warmup_seconds']:.1f}s peak {r['peak_gib'] or 0:.1f} GiB", flush=True)
        _dump(report, out_dir)
        if dev == "cuda" and os.environ.get("LENSKIT_GPU_ABLATION", "1") == "1":
            try:
                r["ablation_ms"] = kernel_ablation(S, D, V, c, dev)
            except Exception as e:
                r["ablation_error"] = f"{type(e).__name__}: {e}"
                print(f"bench_gpu {name} ablation: {r['ablation_error']}", flush=True)
            _dump(report, out_dir)
        if os.environ.get("LENSKIT_GPU_ENGINE", "1") == "1":
            try:
                T_e = min(T, int(os.environ.get("LENSKIT_GPU_ENGINE_POSITIONS", T)))  # the engine's positions
                gv = gemm_variants(S, T_e, D, V, dev, repeats)
                r["gemm_block"] = gv
                flop = 2.0 * T_e * S * D * V
                print(f"bench_gpu {name} GEMM in the engine's {gv['block_rows']}-row blocks: " + " | ".join(
                    f"{k} {gv[k]:.3f}s {flop / gv[k] / 1e12:.0f} TFLOP/s" for k in ("f32", "tf32", "bf16", "bf16_f32out")
                    if gv.get(k)), flush=True)
                eng = bench_engine(S, T_e, D, V, dev, repeats, int(os.environ.get("LENSKIT_GPU_FAST_POSITIONS", "128")))
                r["engine"] = eng
                es = eng["seconds"]
                print(f"bench_gpu {name} engine: float32 {es['float32']:.3f}s ({es['float32'] / gv['f32']:.2f}x strict "
                      f"f32 GEMM, {es['float32'] / gv['bf16']:.2f}x bf16 GEMM) | bf16 {es['bf16']:.3f}s "
                      f"({es['bf16'] / gv['bf16']:.2f}x bf16 GEMM, {flop / es['bf16'] / 1e12:.0f} TFLOP/s) | "
                      f"fast {eng['fast_seconds']:.2f}s vs float32 {eng['float32_seconds_same_positions']:.2f}s on "
                      f"{eng['bf16_vs_float32']['positions']} positions, identical {eng['fast_equals_float32']} | "
                      f"bf16 vs float32: top-10 sets equal {eng['bf16_vs_float32']['top10_set_equal_share']:.3f}, "
                      f"ranks equal {eng['bf16_vs_float32']['ranks_equal_share']:.4f}", flush=True)
            except Exception as e:  # keep the kernel figures above; say what broke
                r["engine_error"] = f"{type(e).__name__}: {e}"
                print(f"bench_gpu {name} engine: {r['engine_error']}", flush=True)
            _dump(report, out_dir)
    return report


def _dump(report: dict, out_dir: str | None) -> None:
    """Write what is measured so far (a later step may run out of time)."""
    out_dir = out_dir if out_dir is not None else os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench_gpu.json"), "w") as f:
            json.dump(report, f, indent=1)


def test_gpu_stats_against_bf16_gemm():
    if _device() is None:
        pytest.skip("needs CUDA")
    pytest.importorskip("triton")
    report = run()
    for name, r in report["shapes"].items():
        assert r["first_chunk_integers_equal_torch"], name
        assert r["first_chunk_floats_close_torch"], name


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    rep = run()
    if rep is not None:
        sys.exit(0 if all(r["first_chunk_integers_equal_torch"] for r in rep["shapes"].values()) else 1)
