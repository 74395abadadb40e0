"""The fused numba statistics (lenskit.kernels) against the torch implementation and brute force: ties, an
all-equal row, scores of +-1e4, softcapped scores, vocabularies of no convenient size, duplicate tracked columns."""

import math

import numpy as np
import pytest
import torch
from kernel_cases import CLOSE, EXACT, block

from lenskit import stats
from lenskit.schema import HIST_BINS
from lenskit.stats import (
    Workspace,
    chunk_stats,
    chunk_stats_fused,
    chunk_stats_torch,
    z_bins,
)

pytest.importorskip("numba")



def brute(s: torch.Tensor, S: int, trk: torch.Tensor, samples: int, mean, std):
    """Float64 / exhaustive reference of everything (bins from the shared z_bins with the given moments)."""
    R, V = s.shape
    d = s.double()
    logp = torch.log_softmax(d, -1)
    lse = torch.logsumexp(d, -1)
    ent = -(logp.exp() * logp).sum(-1)
    lpf = logp.view(-1, S, V)[:, -1:]  # [c, 1, V]
    kl = (lpf.exp() * (lpf - logp.view(-1, S, V))).sum(-1).reshape(R)
    bins = z_bins(s, mean, std).long()  # [R, V]
    counts = torch.stack([torch.bincount(b, minlength=HIST_BINS) for b in bins])
    cols = trk.repeat_interleave(S, 0)  # [R, K]
    t = s.gather(1, cols)
    rank = 1 + (s[:, None, :] > t[:, :, None]).sum(-1)
    tbin = bins.gather(1, cols)
    sr, sb, sc = [], [], []
    for r in range(R):
        for b in range(HIST_BINS):
            members = torch.nonzero(bins[r] == b).flatten()  # the bin's columns, in column order
            if len(members) > samples:  # only sparse bins list their samples (all of them)
                members = members[:0]
            sr += [r] * len(members)
            sb += [b] * len(members)
            sc += members.tolist()
    return dict(lse=lse, entropy=ent, kl=kl, counts=counts, tracked_score=t, rank=rank, tracked_bin=tbin,
                sample_rows=torch.tensor(sr, dtype=torch.int64), sample_bins=torch.tensor(sb, dtype=torch.int64),
                sample_cols=torch.tensor(sc, dtype=torch.int64),
                mean=d.mean(-1), std=d.std(-1))


def torch_ref(s, S, trk, samples, moments=None):
    R, V = s.shape
    return chunk_stats_torch(s, S, trk, Workspace(R, R, V, "cpu"), samples=samples, moments=moments)


@pytest.mark.parametrize("c,S,V,K,samples", [(3, 6, 997, 7, 3), (2, 5, 50257, 13, 3), (2, 5, 997, 4, 0),
                                             (1, 5, 997, 4, 100)])
def test_fused_equals_torch_and_brute_force(c, S, V, K, samples):
    s, trk = block(c, S, V, K)
    f = chunk_stats_fused(s, S, trk, samples)
    for key in CLOSE + EXACT:
        assert not torch.isnan(getattr(f, key).double()).any(), key
    # given the same moments, the torch implementation is identical wherever results are integers or copies
    ref = torch_ref(s, S, trk, samples, moments=(f.mean, f.std))
    for key in EXACT:
        a, b = getattr(f, key), getattr(ref, key)
        assert a.dtype == b.dtype and torch.equal(a, b), key
    # float results: as the torch implementation (float32 softmax: up to 1e-3 off on the row of scores of +-1e4)
    # and, closer, as float64 brute force
    own = torch_ref(s, S, trk, samples)
    # with its own moments too (float64 sums, the kernel's definition): the same mean and std, bins and counts
    assert torch.equal(own.mean, f.mean) and torch.equal(own.std, f.std)
    for key in EXACT:
        assert torch.equal(getattr(f, key), getattr(own, key)), key
    wide = s.abs().amax(1) > 1e3  # [R]
    for key in CLOSE:
        a, b = getattr(f, key), getattr(own, key)
        torch.testing.assert_close(a[~wide], b[~wide], atol=2e-4, rtol=1e-5, msg=key)
        torch.testing.assert_close(a[wide], b[wide], atol=5e-3, rtol=1e-5, msg=key)
    b = brute(s, S, trk, samples, f.mean, f.std)
    for key in EXACT:
        assert torch.equal(getattr(f, key), b[key]), key
    for key in CLOSE:
        torch.testing.assert_close(getattr(f, key).double(), b[key], atol=1e-5, rtol=1e-6, msg=key)
    assert (f.counts.sum(1) == V).all()
    assert (f.counts[1] == torch.eye(HIST_BINS, dtype=torch.int64)[40] * V).all()  # all-equal row: z = 0


def test_tracked_bin_is_the_bin_the_histogram_counted():
    """Every element's bin (as counted) and a tracked token's reported bin are the same function of its score."""
    s, trk = block(2, 4, 997, 9, seed=5)
    f = chunk_stats_fused(s, 4, trk, 3)
    bins = z_bins(s, f.mean, f.std).long()
    assert torch.equal(f.tracked_bin, bins.gather(1, trk.repeat_interleave(4, 0)))
    assert torch.equal(f.counts, torch.stack([torch.bincount(b, minlength=HIST_BINS) for b in bins]))
    # fine sub-bins (torch implementation) refine the same bins exactly
    fine = z_bins(s, f.mean, f.std, stats.FINE).long()
    assert torch.equal(torch.div(fine, stats.FINE, rounding_mode="floor"), bins)


def test_results_do_not_depend_on_the_block():
    """Each position's results are bit-identical whether it is computed alone or with others."""
    c, S, V, K = 4, 5, 997, 6
    s, trk = block(c, S, V, K, seed=2)
    whole = chunk_stats_fused(s, S, trk, 3)
    for p in range(c):
        one = chunk_stats_fused(s[p * S:(p + 1) * S].clone(), S, trk[p: p + 1], 3)
        rows = slice(p * S, (p + 1) * S)
        for key in CLOSE + ("counts", "rank", "tracked_bin", "tracked_score"):
            assert torch.equal(getattr(one, key), getattr(whole, key)[rows]), key
        keep = whole.sample_rows // S == p
        assert torch.equal(one.sample_cols, whole.sample_cols[keep])
        assert torch.equal(one.sample_bins, whole.sample_bins[keep])


def test_exp_is_accurate():
    from lenskit.kernels import EXP_CLAMP, row_exp

    x = np.linspace(-float(EXP_CLAMP), 0, 200_001).astype(np.float32)
    out, bits = np.empty_like(x), np.empty(len(x), np.int32)
    row_exp(x, np.float32(0), out, bits)
    ref = np.exp(x.astype(np.float64))
    assert np.abs(out / ref - 1).max() < 2e-7
    row_exp(np.array([-1e4, -200.0], np.float32), np.float32(0), out[:2], bits[:2])  # clamped: tiny, finite
    assert 0 < out[0] == out[1] < 1e-34 and math.isfinite(out[0])


def test_dispatch(monkeypatch):
    """Fused for exact float32 CPU scores; torch for fast mode (a non-zero bound), LENSKIT_KERNELS=torch, no numba."""
    s, trk = block(1, 5, 997, 4)
    ws = Workspace(5, 5, 997, "cpu")
    calls = []
    monkeypatch.setattr(stats, "chunk_stats_fused", lambda *a, **k: calls.append("fused"))
    monkeypatch.setattr(stats, "chunk_stats_torch", lambda *a, **k: calls.append("torch"))
    chunk_stats(s, 5, trk, ws)
    chunk_stats(s, 5, trk, ws, bound=torch.zeros(5), exact=lambda r, c, x: x[r, c])  # float32 mode
    chunk_stats(s, 5, trk, ws, bound=torch.full((5,), 1e-3), exact=lambda r, c, x: x[r, c])  # fast mode
    chunk_stats(s.double(), 5, trk, ws)
    monkeypatch.setenv("LENSKIT_KERNELS", "torch")
    chunk_stats(s, 5, trk, ws)
    monkeypatch.delenv("LENSKIT_KERNELS")
    monkeypatch.setattr(stats, "_kernels", False)  # numba not importable
    chunk_stats(s, 5, trk, ws)
    assert calls == ["fused", "fused", "torch", "torch", "torch", "torch"]


# ---- each row's own top-N (the overview grid)


def brute_top(s: torch.Tensor, n: int, ids: torch.Tensor):
    """``[R, n]`` columns and scores by sorting every row: higher score first, equal scores by smaller vocabulary id."""
    cols = []
    for r in range(s.shape[0]):
        key = sorted(range(s.shape[1]), key=lambda v: (-float(s[r, v]), int(ids[v])))
        cols.append(key[:n])
    cols = torch.tensor(cols, dtype=torch.int64)
    return cols, s.gather(1, cols)


def top_block(c, S, V, seed=0):
    """block()'s hard rows plus a row whose top scores tie across many columns and a row tied at the N-th place."""
    s, trk = block(c, S, V, 5, seed)
    s[0, :40] = s[0].max() + 1  # 40 columns tied for first: the order is by vocabulary id only
    top4 = torch.topk(s[S], 4).values[-1]
    s[S, ::50] = top4  # a tie at the 4th/5th place across many columns
    return s, trk


@pytest.mark.parametrize("V,n", [(997, 5), (997, 1), (50257, 5), (997, 20), (7, 7)])
def test_stage_top_fused_torch_and_brute_force_agree(V, n):
    c, S = 2, 5
    s, trk = top_block(c, S, V) if V > 100 else (torch.randint(0, 3, (c * S, V)).float(), torch.zeros(c, 1, dtype=torch.int64))
    ids = torch.randperm(V, generator=torch.Generator().manual_seed(7))  # columns are a permutation of the vocabulary
    f = chunk_stats_fused(s, S, trk, 3, n, ids)
    t = chunk_stats_torch(s, S, trk, Workspace(c * S, c * S, V, "cpu"), samples=3, stage_top=n, col_ids=ids)
    assert f.stage_top_cols.shape == (c * S, n) and f.stage_top_cols.dtype == torch.int64
    assert torch.equal(f.stage_top_cols, t.stage_top_cols) and torch.equal(f.stage_top_score, t.stage_top_score)
    if V < 5000:
        bc, bs = brute_top(s, n, ids)
        assert torch.equal(f.stage_top_cols, bc) and torch.equal(f.stage_top_score, bs)
    else:  # brute force by a stable sort on (score desc, id asc)
        key = torch.argsort(ids[None, :].expand(c * S, V), dim=1, stable=True)
        key = key.gather(1, torch.argsort(-s.gather(1, key), dim=1, stable=True))[:, :n]
        assert torch.equal(f.stage_top_cols, key)
    # the final row's own top-N is the final top-k's first N (same tie rule as Scorer.top_k)
    assert (f.stage_top_score[:, :-1] >= f.stage_top_score[:, 1:]).all()
    # the all-equal row: the n smallest vocabulary ids
    assert torch.equal(ids[f.stage_top_cols[1]], torch.sort(ids).values[:n]) if V > 100 else True


def test_stage_top_in_fast_mode_uses_exact_scores():
    """Fast mode: approximate scores within a bound; candidates within 2 bounds of the N-th are re-scored exactly."""
    s, trk = top_block(2, 5, 997, seed=3)
    ids = torch.randperm(997, generator=torch.Generator().manual_seed(1))
    noise = (torch.rand(s.shape, generator=torch.Generator().manual_seed(2)) - 0.5) * 1e-2  # |noise| <= 5e-3
    approx = s + noise
    bound = torch.full((s.shape[0],), 5e-3)

    def exact(r, c, _x):  # the float32-mode scores
        return s[r, c]

    t = chunk_stats_torch(approx, 5, trk, Workspace(10, 10, 997, "cpu"), bound=bound, exact=exact, samples=3,
                          stage_top=5, col_ids=ids)
    bc, bs = brute_top(s, 5, ids)
    assert torch.equal(t.stage_top_cols, bc) and torch.equal(t.stage_top_score, bs)


def test_stage_top_zero_and_dispatch_defaults():
    s, trk = block(1, 5, 997, 4)
    f = chunk_stats_fused(s, 5, trk, 3)
    assert f.stage_top_cols.shape == (5, 0) and f.stage_top_score.shape == (5, 0)
    with pytest.raises(ValueError):
        chunk_stats_fused(s, 5, trk, 3, 998)


@pytest.mark.parametrize("n", [0, 1, 4])
def test_flat_samples_equals_sample_lists(n):
    """The kernel's flattening of the sample table equals the torch one (order: row, bin, column)."""
    from lenskit.kernels import flat_samples
    from lenskit.stats import sample_lists

    g = torch.Generator().manual_seed(n)
    counts = torch.randint(0, 7, (5, HIST_BINS), generator=g) * torch.randint(0, 2, (5, HIST_BINS), generator=g)
    samp = torch.randint(0, 1000, (5, HIST_BINS, max(n, 1)), generator=g)
    ref = sample_lists(counts, samp, n)
    got = flat_samples(counts.numpy(), samp.numpy(), n)
    for a, b in zip(ref, got):
        assert torch.equal(a, torch.from_numpy(b))


def _row_bins(row, mu, sd):
    """:func:`lenskit.kernels.row_bins` of a row with moments ``mu, sd`` -> (bins, counts, cmin, cmax)."""
    from lenskit.kernels import SKIP, row_bins
    from lenskit.stats import BIN_SCALE

    V = row.shape[0]
    bins, counts = np.empty(V, np.uint8), np.zeros(HIST_BINS, np.int64)
    cmin, cmax = np.empty(V // SKIP, np.uint8), np.empty(V // SKIP, np.uint8)
    row_bins(row, np.float32(mu), np.float32(BIN_SCALE / np.float64(np.float32(sd))), bins, counts, cmin, cmax, row[:0])
    return bins, counts, cmin, cmax


@pytest.mark.parametrize("case", ["normal", "ties", "extremes", "one bin", "wide steps", "nan"])
def test_row_bins_counts_and_step_ranges_equal_brute_force(case):
    """The histogram counted by vector compares over each step's bins equals a bincount of the bins, and each
    step's range their min / max: ties, clamped extremes (every bin in one step), a row in one bin, steps spanning
    the whole histogram, NaN scores (the lowest bin), a tail past the last step."""
    from lenskit.kernels import SKIP, z_bin
    from lenskit.stats import BIN_SCALE

    g = np.random.default_rng(5)
    V = 37 * SKIP + 29
    row = g.normal(0, 1, V).astype(np.float32)
    if case == "ties":
        row = np.round(row * 2) / 2  # a handful of distinct values
    elif case == "extremes":
        row[::7] = np.float32(1e4)
        row[3::7] = np.float32(-1e4)
    elif case == "one bin":
        row[:] = np.float32(0.5)
        row[-1] = np.float32(0.75)
    elif case == "wide steps":
        row = np.linspace(-6, 6, V).astype(np.float32).reshape(-1)[g.permutation(V)]
    elif case == "nan":
        row[::11] = np.float32("nan")
    mu, sd = np.float64(np.nanmean(row)), np.float64(np.nanstd(row, ddof=1) or 1.0)
    bins, counts, cmin, cmax = _row_bins(row, mu, sd)
    a = np.float32(BIN_SCALE / np.float64(np.float32(sd)))
    ref = np.array([z_bin(x, np.float32(mu), a) for x in row], np.int64)
    assert np.array_equal(bins, ref) and 0 <= ref.min() and ref.max() < HIST_BINS
    assert case != "nan" or (ref[::11] == 0).all()  # NaN: the lowest bin
    assert np.array_equal(counts, np.bincount(ref, minlength=HIST_BINS)) and counts.sum() == V
    steps = bins[: V // SKIP * SKIP].reshape(-1, SKIP)
    assert np.array_equal(cmin, steps.min(1)) and np.array_equal(cmax, steps.max(1))


def test_rank_passes_skip_steps_exactly():
    """Tracked tokens in sparse top bins: the rank passes skip the steps below their bins, and still count every
    higher score and no tie (equal top scores spread over several steps, a vocabulary not divisible by the step)."""
    from lenskit.kernels import RANK_STEP, row_moments, row_ranks

    g = np.random.default_rng(7)
    V = 5 * RANK_STEP + 37
    row = g.normal(0, 1, V).astype(np.float32)
    top = g.choice(V, 12, replace=False)
    row[top] = np.float32(9.0)  # a 12-way tie in a top bin
    row[top[:3]] = np.float32(11.0)
    row[-1] = np.float32(10.0)  # in the tail past the last whole step
    m, mu, sd, _, _ = row_moments(row, np.empty(0, np.float32))
    bins, _, cmin, cmax = _row_bins(row, mu, sd)
    cols = np.concatenate([top[[0, 5, 5, 11]], [V - 1, int(np.argmin(row)), int(np.argsort(row)[V // 2])]]).astype(np.int64)
    rank = np.zeros(len(cols), np.int64)
    row_ranks(row, cols, row[cols].copy(), rank, bins, cmin, cmax)
    assert rank.tolist() == [1 + int((row > row[c]).sum()) for c in cols]


def test_rank_passes_count_steps_above_their_tokens_whole():
    """Tracked tokens in the bulk, with whole steps of higher scores (as the column order puts them first): those
    steps are counted whole without comparing, and ranks still equal brute force, ties included."""
    from lenskit.kernels import RANK_STEP, row_moments, row_ranks

    g = np.random.default_rng(11)
    V = 6 * RANK_STEP + 21
    row = g.normal(0, 1, V).astype(np.float32)
    row[: 2 * RANK_STEP] = g.normal(6, 0.5, 2 * RANK_STEP).astype(np.float32)  # two steps wholly above the bulk
    row[3 * RANK_STEP: 3 * RANK_STEP + 9] = np.float32(0.25)  # a 9-way tie in the bulk
    _, mu, sd, _, _ = row_moments(row, np.empty(0, np.float32))
    bins, _, cmin, cmax = _row_bins(row, mu, sd)
    cols = np.array([3 * RANK_STEP, 3 * RANK_STEP + 4, int(np.argmin(row)), V - 1, 5 * RANK_STEP + 7], np.int64)
    assert bins[: 2 * RANK_STEP].min() > bins[cols].max()  # the skip applies
    rank = np.zeros(len(cols), np.int64)
    row_ranks(row, cols, row[cols].copy(), rank, bins, cmin, cmax)
    assert rank.tolist() == [1 + int((row > row[c]).sum()) for c in cols]


def test_softmax_window_skips_steps_and_keeps_the_sums():
    """Steps of scores all more than EXP_WINDOW below the max are left out of the exps and softmax sums (the row's
    tail never is); lse, entropy and KL still equal float64 brute force to 1e-6, as the module's bound says."""
    from lenskit.kernels import EXP_WINDOW, SKIP, row_moments, window_runs, z_bin
    from lenskit.stats import BIN_SCALE

    g = torch.Generator().manual_seed(3)
    S, V = 3, 40 * SKIP + 13
    s = torch.randn(S, V, generator=g) * 2 - 70  # far below the window ...
    s[:, SKIP: 3 * SKIP] = torch.randn(S, 2 * SKIP, generator=g) * 3  # ... but for two whole steps
    s[:, 20 * SKIP + 5] = 1.0  # one score inside it in a step of its own
    s[:, -1] = 2.0  # and the tail
    s[0, 30 * SKIP: 31 * SKIP] = -float(EXP_WINDOW) + 8  # a step just inside the window of row 0
    trk = torch.tensor([[0, 1, SKIP, V - 1]])
    f = chunk_stats_fused(s, S, trk, 3)
    b = brute(s, S, trk, 3, f.mean, f.std)
    for key in ("lse", "entropy", "kl"):
        torch.testing.assert_close(getattr(f, key).double(), b[key], atol=1e-6, rtol=0, msg=key)
    row = s[0].numpy()
    m, mu, sd, _, _ = row_moments(row, np.empty(0, np.float32))
    a = np.float32(BIN_SCALE / np.float64(np.float32(sd)))
    _, _, _, cmax = _row_bins(row, mu, sd)
    runs = np.empty(2 * (V // SKIP + 1), np.int64)
    n = window_runs(cmax, z_bin(m - EXP_WINDOW, np.float32(mu), a), runs, V)
    got = [(int(runs[2 * i]), int(runs[2 * i + 1])) for i in range(n)]
    # every score within the window is visited; the steps wholly below it are not
    assert got[0] == (SKIP, 3 * SKIP) and got[-1][1] == V and (20 * SKIP, 21 * SKIP) in got
    assert (30 * SKIP, 31 * SKIP) in got
    inside = np.zeros(V, bool)
    for lo_, hi_ in got:
        inside[lo_:hi_] = True
    assert inside[row >= m - EXP_WINDOW].all() and inside.sum() < V // 4


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return set()


def test_intrinsics_reach_the_machine_code():
    """``wide_vectors`` gives a function 512-bit vectors where the CPU has AVX-512, and ``prefetch_l2`` becomes a
    prefetch instruction on x86: a numba or llvmlite upgrade that dropped either would only show as a slowdown."""
    import platform

    from numba import njit

    from lenskit.kernels import prefetch_l2, wide_vectors

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 instruction names")

    @njit(fastmath={"reassoc"})  # the sum vectorises
    def count_and_prefetch(row, t, nxt):
        wide_vectors()
        c = np.float32(0.0)
        for v in range(row.shape[0]):
            c += np.float32(1.0) if row[v] > t else np.float32(0.0)
        for j in range(0, nxt.shape[0], 16):
            prefetch_l2(nxt, j)
        return c

    x = np.arange(4096, dtype=np.float32)
    assert count_and_prefetch(x, np.float32(100.5), x) == 3995
    asm = count_and_prefetch.inspect_asm(count_and_prefetch.signatures[0])
    assert "prefetcht1" in asm
    if "avx512f" in _cpu_flags():
        assert "zmm" in asm


def test_non_finite_rows_give_nan_not_an_error():
    """A row with NaN or infinite scores (traces are validated, so only a broken lens could give one) has no finite
    max for the exps' window: its sums cover the whole row, as without the window, and come out NaN; no exception,
    and the other rows are unaffected."""
    s = torch.randn(6, 640, generator=torch.Generator().manual_seed(1))
    s[1, 5], s[2, 7], s[3] = float("nan"), float("inf"), float("-inf")
    f = chunk_stats_fused(s, 6, torch.tensor([[0, 1, 2, 3]]), 3)
    assert torch.isnan(f.lse[1:4]).all() and torch.isfinite(f.lse[[0, 4, 5]]).all()


@pytest.mark.parametrize("V", [997, 3 * 256, 5 * 256 + 3])
def test_rows_top_equals_stage_top_torch(V):
    """The final rows' top-k in one pass per row: the same columns in the same order as the torch reference, ties
    at the top and at the k-th place by vocabulary id, -0.0 == 0.0, rows of -inf, k up to V."""
    from lenskit.stats import rows_top, stage_top_torch

    g = torch.Generator().manual_seed(V)
    s = torch.randn(9, V, generator=g)
    s[1, ::7] = 5.0  # a wide tie at the top
    s[2] = 0.0
    s[3] = -float("inf")
    s[4] = torch.where(s[4] > 1.5, torch.tensor(0.0), s[4])
    s[4, ::11] = -0.0
    s[5, -1] = 9.0  # the maximum in the tail past the last whole step
    ids = torch.randperm(V, generator=g)
    rows = torch.arange(9)
    for k in (1, 10, 23, V):
        assert torch.equal(rows_top(s, rows, k, ids), stage_top_torch(s, k, ids)[0]), k
    assert torch.equal(rows_top(s, torch.tensor([5, 1]), 3, None), stage_top_torch(s[[5, 1]], 3)[0])
