"""The Triton statistics (lenskit.kernels_triton) against the torch implementation and brute force.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors, with small blocks so
that rows span several tiles and a tile is cut by the end of the vocabulary (V = 997); with CUDA (``bench/gpu.sh``)
the same tests run compiled on the GPU, plus GPU-vs-CPU equality at Llama-3 vocabulary size.
Cases: ties (a column repeated every 7 columns, a third of a row duplicated, an all-equal row), scores of +-1e4,
softcapped scores, duplicate tracked columns, samples 0 / 3 / 100.
"""

import os
import subprocess
import sys

import pytest
import torch
from kernel_cases import CLOSE, EXACT, block

from lenskit.schema import HIST_BINS
from lenskit.stats import Workspace, chunk_stats_torch, z_bins

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    # Triton decides at decoration time (its own library's too, at its first import) whether kernels are
    # interpreted, and checks the setting again at launch: set it before triton is imported and leave it set.
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

if ON_GPU:
    IN_PROCESS = True
else:
    from triton.runtime.interpreter import InterpretedFunction

    IN_PROCESS = isinstance(triton.language.standard.max, InterpretedFunction)  # False: triton came in first
DEV = "cuda" if ON_GPU else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def kt():
    """lenskit.kernels_triton (interpreted without CUDA)."""
    if not IN_PROCESS:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: see test_in_a_fresh_process")
    import lenskit.kernels_triton as mod

    return mod


@pytest.mark.skipif(IN_PROCESS, reason="runs in this process")
def test_in_a_fresh_process():
    """Where another module imported triton first (compiled mode), run this file in a process of its own."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


def torch_ref(s, S, trk, samples, moments=None):
    R, V = s.shape
    return chunk_stats_torch(s, S, trk, Workspace(R, R, V, s.device), samples=samples, moments=moments)


def brute(s: torch.Tensor, S: int, trk: torch.Tensor, samples: int, mean, std) -> dict:
    """Float64 / exhaustive reference (bins from the shared z_bins with the given moments)."""
    R, V = s.shape
    d = s.double()
    logp = torch.log_softmax(d, -1)
    lpf = logp.view(-1, S, V)[:, -1:]  # [c, 1, V]
    bins = z_bins(s, mean, std).long()  # [R, V]
    cols = trk.repeat_interleave(S, 0)  # [R, K]
    t = s.gather(1, cols)
    sr, sb, sc = [], [], []
    for r in range(R):
        for b in torch.unique(bins[r]).tolist():
            members = torch.nonzero(bins[r] == b).flatten().tolist()  # the bin's columns, in column order
            if len(members) > samples:  # only sparse bins list their samples (all of them)
                members = []
            sr += [r] * len(members)
            sb += [b] * len(members)
            sc += members
    as64 = lambda x: torch.tensor(x, dtype=torch.int64)
    return {"lse": torch.logsumexp(d, -1), "entropy": -(logp.exp() * logp).sum(-1),
            "kl": (lpf.exp() * (lpf - logp.view(-1, S, V))).sum(-1).reshape(R),
            "counts": torch.stack([torch.bincount(b, minlength=HIST_BINS) for b in bins]), "tracked_score": t,
            "rank": 1 + (s[:, None, :] > t[:, :, None]).sum(-1), "tracked_bin": bins.gather(1, cols),
            "sample_rows": as64(sr), "sample_bins": as64(sb), "sample_cols": as64(sc), "mean": d.mean(-1),
            "std": d.std(-1)}


def cpu(st):
    return {k: getattr(st, k).cpu() for k in CLOSE + EXACT}


# (c, S, V, K, samples, block_a, block_b): several tiles per row and a partial last tile, and the default blocks
CASES = [(2, 3, 997, 7, 3, 256, 128), (1, 4, 997, 4, 100, 512, 256), (1, 5, 997, 5, 0, 256, 128),
         (1, 3, 997, 4, 3, None, None)]


@pytest.mark.parametrize("c,S,V,K,samples,ba,bb", CASES)
def test_triton_equals_torch_and_brute_force(kt, c, S, V, K, samples, ba, bb):
    s, trk = block(c, S, V, K)
    blocks = {} if ba is None else {"block_a": ba, "block_b": bb, "sub_c": bb}
    g = cpu(kt.chunk_stats_triton(s.to(DEV), S, trk.to(DEV), samples, **blocks))
    for key in CLOSE + EXACT:
        assert not torch.isnan(g[key].double()).any(), key
    # given the same moments, the torch implementation is identical wherever results are integers or copies
    ref = torch_ref(s, S, trk, samples, moments=(g["mean"], g["std"]))
    for key in EXACT:
        assert g[key].dtype == getattr(ref, key).dtype and torch.equal(g[key], getattr(ref, key)), key
    own = torch_ref(s, S, trk, samples)  # its own float32 moments and softmax (float32 lse - E_p[s] loses
    small = s.abs().amax(1) < 1e3  # ~1e-3 of entropy on rows of +-1e4: those are checked against brute force only)
    for key in CLOSE:
        torch.testing.assert_close(g[key][small], getattr(own, key)[small], atol=2e-4, rtol=1e-5, msg=key)
    b = brute(s, S, trk, samples, g["mean"], g["std"])
    for key in EXACT:
        assert torch.equal(g[key], b[key]), key
    for key in CLOSE:  # float32 results: within a float32 rounding of the float64 values
        torch.testing.assert_close(g[key].double(), b[key], atol=1e-5, rtol=2e-7, msg=key)
    assert (g["counts"].sum(1) == V).all()
    assert torch.equal(g["counts"][1], torch.eye(HIST_BINS, dtype=torch.int64)[40] * V)  # all-equal row: z = 0
    assert g["std"][1] == torch.tensor(1e-12) and g["mean"][1] == 1.5 and g["kl"][S - 1] < 1e-6


def test_moments_as_the_numba_kernel(kt):
    """Float64 sums of s - s[0] (exact terms): mean and std as the fused CPU kernel's, to the last bit or so."""
    numba_stats = pytest.importorskip("lenskit.kernels")  # noqa: F841  (needs numba)
    from lenskit.stats import chunk_stats_fused

    s, trk = block(2, 3, 997, 4, seed=3)
    g = cpu(kt.chunk_stats_triton(s.to(DEV), 3, trk.to(DEV), 3, block_a=512, block_b=256, sub_c=256))
    f = chunk_stats_fused(s, 3, trk, 3)
    torch.testing.assert_close(g["mean"], f.mean, atol=0, rtol=2e-7)
    torch.testing.assert_close(g["std"], f.std, atol=0, rtol=2e-7)
    for key in ("lse", "entropy", "kl"):
        torch.testing.assert_close(g[key], getattr(f, key), atol=1e-5, rtol=2e-7, msg=key)


def test_results_do_not_depend_on_the_chunk_or_the_tiles(kt):
    """Each position's results are bit-identical alone or with others; integers do not depend on the block sizes."""
    c, S, V, K = 3, 2, 997, 4
    s, trk = block(c, S, V, K, seed=2)
    s, trk = s.to(DEV), trk.to(DEV)
    whole = cpu(kt.chunk_stats_triton(s, S, trk, 3, block_a=256, block_b=128, sub_c=128))
    for p in (2,):
        one = cpu(kt.chunk_stats_triton(s[p * S:(p + 1) * S].clone(), S, trk[p: p + 1], 3, block_a=256,
                                        block_b=128, sub_c=128))
        rows = slice(p * S, (p + 1) * S)
        for key in CLOSE + ("counts", "rank", "tracked_bin", "tracked_score"):
            assert torch.equal(one[key], whole[key][rows]), key
        keep = whole["sample_rows"] // S == p
        assert torch.equal(one["sample_cols"], whole["sample_cols"][keep])
        assert torch.equal(one["sample_bins"], whole["sample_bins"][keep])
    other = cpu(kt.chunk_stats_triton(s, S, trk, 3, block_a=512, block_b=256, sub_c=64,
                                      moments=(whole["mean"].to(DEV), whole["std"].to(DEV))))
    for key in EXACT:
        assert torch.equal(other[key], whole[key]), key
    for key in CLOSE:
        torch.testing.assert_close(other[key], whole[key], atol=1e-5, rtol=2e-7, msg=key)
    warps = cpu(kt.chunk_stats_triton(s, S, trk, 3, block_a=256, block_b=128, sub_c=128, warps_b=2, warps_c=4))
    for key in EXACT:
        assert torch.equal(warps[key], whole[key]), key
    for key in CLOSE:  # (float sums: the warp count may change their order)
        torch.testing.assert_close(warps[key], whole[key], atol=1e-5, rtol=2e-7, msg=key)


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA (compiled kernels at Llama-3 vocabulary size)")
def test_cuda_equals_cpu_at_llama_vocabulary(kt):
    """GPU kernels (default blocks) against the CPU torch implementation, and the numba kernel where present."""
    c, S, V, K = 2, 65, 128256, 12
    s, trk = block(c, S, V, K, seed=7)
    g = cpu(kt.chunk_stats_triton(s.cuda(), S, trk.cuda(), 3))
    ref = torch_ref(s, S, trk, 3, moments=(g["mean"], g["std"]))
    for key in EXACT:
        assert torch.equal(g[key], getattr(ref, key)), key
    own = torch_ref(s, S, trk, 3)
    for key in CLOSE:  # float32 sums of 128,256 exponentials in another order (seen on an H200: entropy off > 2e-4)
        torch.testing.assert_close(g[key], getattr(own, key), atol=1e-3, rtol=1e-4,
                                   msg=lambda m, key=key: f"{key}: {m}")
    gpu_ref = torch_ref(s.cuda(), S, trk.cuda(), 3, moments=(g["mean"].cuda(), g["std"].cuda()))
    for key in EXACT:  # the torch implementation on the GPU agrees too
        assert torch.equal(g[key], getattr(gpu_ref, key).cpu()), key
    try:
        from lenskit.stats import chunk_stats_fused, fused_available
    except ImportError:
        return
    if fused_available():
        f = chunk_stats_fused(s, S, trk, 3)
        torch.testing.assert_close(g["mean"], f.mean, atol=0, rtol=2e-7)
        torch.testing.assert_close(g["std"], f.std, atol=0, rtol=2e-7)
        if torch.equal(g["mean"], f.mean) and torch.equal(g["std"], f.std):
            for key in EXACT:
                assert torch.equal(g[key], getattr(f, key)), key


def test_triton_stage_top_equals_the_fused_kernel(kt):
    """Each row's own top-N (candidates from pass C, ordered by score then id; torch.topk for rows with too many)
    equals the numba kernel's."""
    s, trk = block(2, 3, 997, 4)
    s[0, :40] = s[0].max() + 1  # 40 columns tied for first
    ids = torch.randperm(997, generator=torch.Generator().manual_seed(7))
    g = kt.chunk_stats_triton(s.to(DEV), 3, trk.to(DEV), 3, block_a=512, block_b=256, sub_c=256, stage_top=5,
                              col_ids=ids.to(DEV))
    ref = torch_ref(s, 3, trk, 3)
    from lenskit.stats import stage_top_torch

    cols, score = stage_top_torch(s, 5, ids)
    assert torch.equal(g.stage_top_cols.cpu(), cols) and torch.equal(g.stage_top_score.cpu(), score)
    # rows whose highest bins hold more candidates than kept (row 0: 40 ties) go to torch.topk
    few = kt.chunk_stats_triton(s.to(DEV), 3, trk.to(DEV), 0, block_a=512, block_b=256, stage_top=5, top_cap=8,
                                col_ids=ids.to(DEV))
    assert torch.equal(few.stage_top_cols.cpu(), cols) and torch.equal(few.stage_top_score.cpu(), score)
    assert ref.stage_top_cols.shape == (6, 0)
    try:
        from lenskit.stats import chunk_stats_fused, fused_available
    except ImportError:
        return
    if fused_available():
        f = chunk_stats_fused(s, 3, trk, 3, 5, ids)
        assert torch.equal(f.stage_top_cols, cols) and torch.equal(f.stage_top_score, score)
