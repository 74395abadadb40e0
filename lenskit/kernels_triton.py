"""Fused per-row statistics of a float32 score block on CUDA, as Triton kernels (the GPU twin of :mod:`lenskit.kernels`).

One call handles a block ``s [R, V]`` of R = c positions x S stages (rows ordered (position, stage); the last stage of
each position is its final distribution) and returns the same :class:`lenskit.stats.ChunkStats` as
:func:`lenskit.stats.chunk_stats`. Every kernel runs one program per (row, vocabulary tile) and writes only small
per-tile partials; torch combines those per row (float64) on the GPU. Each score is read twice from GPU memory
(passes A and B), plus once more for the tiles that hold histogram samples (pass C) or a row's top N (pass D):

A. :func:`_softmax_moments_kernel` -- per tile: max ``m_t``, ``E_t = sum exp(s - m_t)``, ``F_t = sum exp(s - m_t)
   (s - m_t)`` (float32), and the float64 sums of ``d = s - s[row, 0]`` and ``d^2`` (float64 is exact for ``d`` and
   ``d^2`` of float32 scores, so mean and std equal the numba kernel's formula up to summation order). Combined per
   row (online softmax): lse = max + log E, entropy = log E - F / E; mean = s0 + sum d / V, std with ddof=1.
B. :func:`_bins_ranks_kl_kernel` -- per tile: the z-bin of every score (``floor((s - mean) * a)`` with
   ``a = BIN_SCALE / std``, both float32 operations, clamped, plus ``BIN_OFFSET``: the same formula as
   :func:`lenskit.stats.z_bins` and :func:`lenskit.kernels.z_bin`, so bins agree bit for bit given the same mean and
   std), the tile's histogram (``tl.histogram``, no atomics), per tracked token the count of scores strictly greater
   (K compares per score), and the KL dot products ``sum pf (s - max)`` and ``sum pf`` with ``pf = exp(s_final -
   lse_final)`` read from the position's final row (the tile of the final row is shared by the S rows of a position
   and is served from L2). Per-tile histograms are kept (``[R, T, HIST_BINS]`` int32): their prefix sums over tiles
   say which tiles hold the members of each sparse bin (at most ``samples`` scores).
C. :func:`_samples_kernel` -- only for the (row, tile) pairs holding samples: walk the tile in steps of ``SUB_C``
   columns, in column order, recomputing the bins; a score's slot among its bin's members is the bin's count in
   earlier tiles and steps (a ``[NB]`` vector, read with ``tl.gather``, advanced by ``tl.histogram``) plus the number
   of earlier scores of its bin in the step (``[SUB_C, SUB_C]`` compares). A slot below ``samples`` is stored. Steps
   whose scores all fall in full bins (most steps but a row's first) stop after the gather.
   Dense bins (more than ``samples`` scores) count as full from the start, so only the sparse bins' tiles are read:
   samples are every column of each sparse bin, in column order, exactly as the other paths.
D. :func:`_top_members_kernel` -- each row's own top N (the overview grid): the highest bins holding N scores in all
   hold them (bins are monotone in the score); only the tiles holding members of those bins are read, and their
   members (a few per row) are ordered by score, then vocabulary id. ``torch.topk`` would read every score again
   (on an H200 it cost more than the bf16 GEMM itself).

Nothing depends on the chunking: a row's results depend only on the row, its final row and V (the tiling is fixed by
V and the block sizes). Integers (counts, ranks, bins, samples) involve no floating-point reduction.

Tested without a GPU by ``TRITON_INTERPRET=1`` (the interpreter runs the kernels on CPU tensors).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .schema import HIST_BINS, HIST_SAMPLES
from .stats import BIN_OFFSET, ChunkStats, bin_scale, sample_lists, stage_top_torch, z_bins

BLOCK_A = 2048  # scores per program in pass A
BLOCK_B = 1024  # scores per program in passes B, C and D
NB = 128  # histogram width inside the kernels (a power of two >= HIST_BINS + 1; bin NB - 1 collects padding)
SUB_C = 32  # columns per step of pass C ([SUB_C, SUB_C] compares)
KB = 4  # tracked tokens compared per inner step of pass B ([KB, BLOCK_B] comparisons)
WARPS_B = 4  # warps per program in pass B
WARPS_C = 1  # and in pass C (its steps are 32 columns wide: one warp)
TOP_CAP = 64  # stage top-N candidates per row kept by pass D
assert HIST_BINS < NB and NB * BLOCK_B < 2**31

_LO = tl.constexpr(float(-BIN_OFFSET))  # lowest z-bin before the offset
_HI = tl.constexpr(float(HIST_BINS - 1 - BIN_OFFSET))  # highest
_OFF = tl.constexpr(BIN_OFFSET)
_NBINS = tl.constexpr(HIST_BINS)


@triton.jit
def _z_bin(x, mean, a):
    """Bin of float32 scores ``x`` given the row's float32 ``mean`` and ``a``: ``floor((x - mean) * a)`` clamped,
    plus BIN_OFFSET (int32); the formula of ``lenskit.stats.z_bins``."""
    y = tl.floor((x - mean) * a)
    y = tl.minimum(tl.maximum(y, _LO), _HI)
    return y.to(tl.int32) + _OFF


@triton.jit
def _softmax_moments_kernel(s_ptr, stride, V, n_tiles, m_out, e_out, f_out, t1_out, t2_out,
                            MOMENTS: tl.constexpr, BLOCK: tl.constexpr):
    """Pass A. Grid (R, n_tiles). Writes at [row, tile] of m/e/f_out [R, T] float32 and t1/t2_out [R, T] float64."""
    row = tl.program_id(0)
    tile = tl.program_id(1)
    base = s_ptr + row.to(tl.int64) * stride
    cols = tile * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    valid = cols < V
    x = tl.load(base + cols, mask=valid, other=float("-inf"))  # [BLOCK] float32
    m = tl.max(x, 0)
    dm = tl.where(valid, x - m, 0.0)  # [BLOCK] s - m_t (0 on padding)
    e = tl.where(valid, tl.exp(dm), 0.0)  # [BLOCK]
    out = row * n_tiles + tile
    tl.store(m_out + out, m)
    tl.store(e_out + out, tl.sum(e, 0))
    tl.store(f_out + out, tl.sum(e * dm, 0))
    if MOMENTS:
        s0 = tl.load(base).to(tl.float64)
        d = tl.where(valid, x.to(tl.float64) - s0, 0.0)  # [BLOCK] float64, exact
        tl.store(t1_out + out, tl.sum(d, 0))
        tl.store(t2_out + out, tl.sum(d * d, 0))


@triton.jit
def _bins_ranks_kl_kernel(s_ptr, stride, V, n_tiles, n_stages, mean_ptr, a_ptr, t_ptr, K, mx_ptr, lse_ptr,
                          hist_out, rank_out, acc_out, tot_out,
                          BLOCK: tl.constexpr, NBK: tl.constexpr, KBK: tl.constexpr,
                          DO_HIST: tl.constexpr = True, DO_RANK: tl.constexpr = True, DO_KL: tl.constexpr = True):
    """Pass B. Grid (R, n_tiles). Inputs per row: mean, a, mx [R] float32, lse [R] float32, tracked scores
    t [R, K] float32. Writes hist_out [R, T, HIST_BINS] int32, rank_out [R, T, K] int32 (#scores > t),
    acc_out / tot_out [R, T] float32 (sum pf (s - mx), sum pf). DO_HIST / DO_RANK / DO_KL False skip that part
    (the GPU benchmark's ablations only: where the time goes)."""
    row = tl.program_id(0)
    tile = tl.program_id(1)
    row64 = row.to(tl.int64)
    cols = tile * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    valid = cols < V
    x = tl.load(s_ptr + row64 * stride + cols, mask=valid, other=0.0)  # [BLOCK] float32
    out = row64 * n_tiles + tile
    if DO_HIST:
        b = _z_bin(x, tl.load(mean_ptr + row), tl.load(a_ptr + row))  # [BLOCK] int32
        b = tl.where(valid, b, NBK - 1)  # padding counted in a bin past the histogram
        h = tl.histogram(b, NBK)  # [NBK] int32
        nb = tl.arange(0, NBK)
        tl.store(hist_out + out * _NBINS + nb, h, mask=nb < _NBINS)
    if DO_RANK:  # comparison counts: KBK tracked tokens per step, [KBK, BLOCK] compares
        for k0 in range(0, K, KBK):
            ks = k0 + tl.arange(0, KBK)  # [KBK]
            tk = tl.load(t_ptr + row64 * K + ks, mask=ks < K, other=float("inf"))  # [KBK]
            gt = (x[None, :] > tk[:, None]) & valid[None, :]  # [KBK, BLOCK]
            tl.store(rank_out + out * K + ks, tl.sum(gt.to(tl.int32), 1), mask=ks < K)
    if DO_KL:  # KL(final || this row): pf from the position's final row
        rf = (row // n_stages) * n_stages + n_stages - 1
        sf = tl.load(s_ptr + rf.to(tl.int64) * stride + cols, mask=valid, other=float("-inf"))  # [BLOCK]
        pf = tl.exp(sf - tl.load(lse_ptr + rf))  # [BLOCK] 0 on padding
        dx = tl.where(valid, x - tl.load(mx_ptr + row), 0.0)
        tl.store(acc_out + out, tl.sum(pf * dx, 0))
        tl.store(tot_out + out, tl.sum(pf, 0))
    else:
        tl.store(acc_out + out, tl.sum(x, 0))  # (keeps the load: ablations)


@triton.jit
def _samples_kernel(s_ptr, stride, V, sel_ptr, mean_ptr, a_ptr, prior_ptr, samp_out, n_samples,
                    BLOCK: tl.constexpr, SUB: tl.constexpr, NBK: tl.constexpr):
    """Pass C. Grid (n,), one program per selected (row, tile) pair ``sel [n, 2]`` int32; ``prior [n, HIST_BINS]``
    int32: scores of each bin in the row's earlier tiles. Walks the tile in SUB-column steps in column order; a
    score's slot among its bin's members is the bin's running count (``cnt``, gathered) plus the number of earlier
    scores of its bin in the step ([SUB, SUB] compares). Writes ``samp_out [R, HIST_BINS, n_samples]`` int64."""
    i = tl.program_id(0)
    row = tl.load(sel_ptr + 2 * i)
    tile = tl.load(sel_ptr + 2 * i + 1)
    row64 = row.to(tl.int64)
    mean = tl.load(mean_ptr + row)
    a = tl.load(a_ptr + row)
    nb = tl.arange(0, NBK)
    cnt = tl.load(prior_ptr + i.to(tl.int64) * _NBINS + nb, mask=nb < _NBINS, other=n_samples)  # [NBK] int32
    lanes = tl.arange(0, SUB)
    earlier = lanes[None, :] < lanes[:, None]  # [SUB, SUB] column j before column i (row i, column j)
    for j0 in range(0, BLOCK, SUB):
        cols = tile * BLOCK + j0 + lanes  # [SUB]
        valid = cols < V
        x = tl.load(s_ptr + row64 * stride + cols, mask=valid, other=0.0)
        b = _z_bin(x, mean, a)
        b = tl.where(valid, b, NBK - 1)  # padding: a bin past the histogram, already full
        cb = tl.gather(cnt, b, 0)  # [SUB] members of the score's bin already seen
        if tl.max((cb < n_samples).to(tl.int32), 0) > 0:  # else every bin in the step is full: nothing to do
            before = tl.sum(((b[:, None] == b[None, :]) & earlier).to(tl.int32), 1)  # [SUB]
            slot = cb + before  # [SUB]
            take = valid & (slot < n_samples)
            tl.store(samp_out + (row64 * _NBINS + b) * n_samples + slot, cols.to(tl.int64), mask=take)
            cnt += tl.histogram(b, NBK)  # (full bins need no count: a step without candidates is skipped)


@triton.jit
def _top_members_kernel(s_ptr, stride, V, sel_ptr, mean_ptr, a_ptr, topb_ptr, before_ptr, cand_col, cand_score, cap,
                        BLOCK: tl.constexpr):
    """The stage top-N's candidates. Grid (n,), one program per (row, tile) ``sel [n, 2]`` int32 holding members of
    the row's highest bins (bins >= ``topb [R]``, which hold its top N: bins are monotone in the score); ``before
    [n]`` int32: such members in the row's earlier tiles. Each member goes to ``cand_col`` int64 / ``cand_score``
    float32 ``[R, cap]`` at its index among them in column order (an exclusive prefix sum; indices >= cap are dropped:
    such rows are done by torch.topk). No atomics: the slots, and so the results, are deterministic."""
    i = tl.program_id(0)
    row = tl.load(sel_ptr + 2 * i)
    tile = tl.load(sel_ptr + 2 * i + 1)
    row64 = row.to(tl.int64)
    cols = tile * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    valid = cols < V
    x = tl.load(s_ptr + row64 * stride + cols, mask=valid, other=0.0)  # [BLOCK] float32
    b = _z_bin(x, tl.load(mean_ptr + row), tl.load(a_ptr + row))
    m = (valid & (b >= tl.load(topb_ptr + row))).to(tl.int32)  # [BLOCK] 1: a member of the top bins
    slot = tl.load(before_ptr + i) + tl.cumsum(m, 0) - m  # [BLOCK]
    take = (m > 0) & (slot < cap)
    tl.store(cand_col + row64 * cap + slot, cols.to(tl.int64), mask=take)
    tl.store(cand_score + row64 * cap + slot, x, mask=take)


def stage_top_candidates(cand_col: torch.Tensor, cand_score: torch.Tensor, n: int,
                         col_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top n from its candidates ``[R, cap]`` (empty slots: column -1, score -inf): higher score first,
    equal scores by smaller vocabulary id -- the order of :func:`lenskit.stats.stage_top_torch`."""
    R, cap = cand_col.shape
    ids = cand_col.clamp_min(0) if col_ids is None else col_ids[cand_col.clamp_min(0)]  # [R, cap]
    ids = torch.where(cand_col < 0, torch.iinfo(torch.int64).max, ids)
    o = torch.argsort(ids, dim=1, stable=True)  # least significant key first: id, then -score
    o = o.gather(1, torch.argsort(-cand_score.gather(1, o), dim=1, stable=True))[:, :n]  # [R, n]
    return cand_col.gather(1, o), cand_score.gather(1, o)


def stage_top_triton(s: torch.Tensor, n: int, col_ids: torch.Tensor | None, counts: torch.Tensor,
                     hist: torch.Tensor, mean: torch.Tensor, a: torch.Tensor, block_b: int = BLOCK_B,
                     cap: int = TOP_CAP) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own top n (``[R, n]`` columns and scores; the order of :func:`lenskit.stats.stage_top_torch`) from
    pass B's histograms: the members of the highest bins holding n scores in all are the candidates
    (:func:`_top_members_kernel`, only in the tiles that hold them), ordered by score then id; rows whose highest bins
    hold more than ``cap`` scores (many ties) by ``torch.topk``."""
    R, V = s.shape
    dev = s.device
    if n == 0:
        return stage_top_torch(s, 0, col_ids)
    cap = min(V, max(cap, n))
    above = counts.flip(1).cumsum(1).flip(1)  # [R, BINS] members of bins >= b
    topb = ((above >= n).sum(1) - 1).clamp_min(0)  # [R] lowest bin of the top n
    n_cand = above.gather(1, topb[:, None])[:, 0]  # [R] members of bins >= topb
    in_top = torch.arange(HIST_BINS, device=dev) >= topb[:, None]  # [R, BINS]
    per_tile = (hist * in_top[:, None, :]).sum(-1, dtype=torch.int32)  # [R, Tb] members of the top bins per tile
    before = per_tile.cumsum(1, dtype=torch.int32) - per_tile  # [R, Tb] in earlier tiles
    sel = torch.nonzero((per_tile > 0) & (n_cand <= cap)[:, None])  # [m, 2] (row, tile)
    cand_col = torch.full((R, cap), -1, dtype=torch.int64, device=dev)  # [R, cap]
    cand_score = torch.full((R, cap), float("-inf"), dtype=torch.float32, device=dev)
    if sel.shape[0]:
        _top_members_kernel[(sel.shape[0],)](s, s.stride(0), V, sel.to(torch.int32).contiguous(), mean, a,
                                             topb.to(torch.int32).contiguous(),
                                             before[sel[:, 0], sel[:, 1]].contiguous(), cand_col, cand_score, cap,
                                             BLOCK=block_b, num_warps=4)
    top_cols, top_score = stage_top_candidates(cand_col, cand_score, n, col_ids)  # [R, n] each
    over = torch.nonzero(n_cand > cap).flatten()  # rows whose top bins hold more than cap scores (rare)
    if over.numel():
        top_cols[over], top_score[over] = stage_top_torch(s[over], n, col_ids)
    return top_cols, top_score


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@torch.inference_mode()
def chunk_stats_triton(s: torch.Tensor, n_stages: int, tracked_cols: torch.Tensor, samples: int = HIST_SAMPLES,
                       moments: tuple[torch.Tensor, torch.Tensor] | None = None, block_a: int = BLOCK_A,
                       block_b: int = BLOCK_B, sub_c: int = SUB_C, stage_top: int = 0,
                       col_ids: torch.Tensor | None = None, warps_b: int = WARPS_B, warps_c: int = WARPS_C,
                       top_cap: int = TOP_CAP,
                       ablate: dict | None = None) -> ChunkStats:
    """:func:`lenskit.stats.chunk_stats` of exact float32 scores with the Triton kernels (CUDA tensors, or CPU
    tensors under ``TRITON_INTERPRET=1``).

    Args:
        s: ``[R, V]`` float32 scores, R = c * n_stages, rows ordered (position, stage); rows need unit column stride.
        n_stages: S.
        tracked_cols: ``[c, K]`` columns to rank and follow, per position (duplicates allowed).
        samples: sample columns kept per histogram bin (0 for none).
        moments: (mean, std) ``[R]`` float32 to use instead of computing them (tests).
        block_a, block_b, sub_c: scores per program in pass A and in passes B/C, columns per step of pass C (powers
            of two; the interpreter in the tests runs faster with small blocks and few steps).
        stage_top, col_ids: each row's own top-N and the vocabulary id of each column (ties: smaller id first), by
            :func:`stage_top_triton` from the histograms (pass D).
        warps_b, warps_c: warps per program in passes B and C (tuning).
        top_cap: stage top-N candidates kept per row (rows whose highest bins hold more go to ``torch.topk``).
        ablate: ``{"DO_HIST": False, ...}`` skips parts of pass B (the GPU benchmark's ablations; wrong results).
    """
    R, V = s.shape
    assert s.dtype == torch.float32 and R % n_stages == 0
    if s.stride(1) != 1:
        s = s.contiguous()
    dev = s.device
    c = R // n_stages
    stride = s.stride(0)
    f32, f64, i32, i64 = torch.float32, torch.float64, torch.int32, torch.int64

    # pass A: softmax sums and moments per (row, tile); combined per row in float64
    ta = _cdiv(V, block_a)
    m_t, e_t, f_t = (torch.empty(R, ta, dtype=f32, device=dev) for _ in range(3))  # [R, Ta]
    t1, t2 = (torch.empty(R, ta if moments is None else 1, dtype=f64, device=dev) for _ in range(2))  # [R, Ta]
    _softmax_moments_kernel[(R, ta)](s, stride, V, ta, m_t, e_t, f_t, t1, t2, MOMENTS=moments is None,
                                     BLOCK=block_a, num_warps=8)
    mx = m_t.amax(1)  # [R] float32
    shift = m_t.double() - mx.double()[:, None]  # [R, Ta] <= 0
    w = shift.exp()
    e64 = e_t.double()
    E = (w * e64).sum(1)  # [R] sum exp(s - max)
    F = (w * (f_t.double() + shift * e64)).sum(1)  # [R] sum exp(s - max) (s - max)
    log_e = E.log()
    lse = mx.double() + log_e
    entropy = log_e - F / E
    if moments is None:
        T1, T2 = t1.sum(1), t2.sum(1)  # [R] float64
        mean = (s[:, 0].double() + T1 / V).float()
        var = ((T2 - T1 * T1 / V) / max(V - 1, 1)).clamp_min(0)
        std = var.sqrt().float().clamp_min(1e-12)
    else:
        mean, std = (m.to(dev, f32).contiguous() for m in moments)
    a = bin_scale(std).contiguous()  # [R] float32

    # tracked tokens: scores and bins by torch (same formula), ranks by pass B
    K = tracked_cols.shape[1]
    trk = tracked_cols.to(dev, i64).repeat_interleave(n_stages, 0)  # [R, K]
    t = s.gather(1, trk).contiguous()  # [R, K]
    tbin = z_bins(t, mean, std).long()  # [R, K]

    # pass B: histogram per tile, comparison counts, KL dot products
    tb = _cdiv(V, block_b)
    hist = torch.empty(R, tb, HIST_BINS, dtype=i32, device=dev)  # [R, Tb, BINS]
    rank_t = torch.empty(R, tb, max(K, 1), dtype=i32, device=dev)  # [R, Tb, K]
    acc_t, tot_t = (torch.empty(R, tb, dtype=f32, device=dev) for _ in range(2))  # [R, Tb]
    t_arg = t if K else torch.zeros(R, 1, dtype=f32, device=dev)
    _bins_ranks_kl_kernel[(R, tb)](s, stride, V, tb, n_stages, mean, a, t_arg, K, mx, lse.float(), hist, rank_t,
                                   acc_t, tot_t, BLOCK=block_b, NBK=NB, KBK=KB, num_warps=warps_b, **(ablate or {}))
    counts = hist.sum(1, dtype=i64)  # [R, BINS]
    rank = 1 + rank_t[:, :, :K].sum(1, dtype=i64)  # [R, K]
    A = acc_t.double().sum(1)  # [R] sum pf (s - max)
    tot = tot_t.double().sum(1)  # [R] sum pf (renormalises pf: its float32 rounding cancels)
    ent_f = entropy.view(c, n_stages)[:, -1:]  # [c, 1] H(final)
    kl = (log_e - A / tot).view(c, n_stages).sub(ent_f).clamp_min(0).view(R)  # lse - E_pf[s] - H(final)

    # pass C: samples, only in the tiles that hold them
    samp = torch.full((R, HIST_BINS, max(samples, 1)), -1, dtype=i64, device=dev)  # [R, BINS, samples]
    if samples > 0:
        prior = hist.cumsum(1, dtype=i32) - hist  # [R, Tb, BINS] members in earlier tiles
        prior.masked_fill_((counts > samples)[:, None, :], samples)  # dense bins list no samples: full from the start
        need = ((prior < samples) & (hist > 0)).any(-1)  # [R, Tb]
        sel = torch.nonzero(need)  # [n, 2] (row, tile)
        if sel.shape[0]:
            p_sel = prior[sel[:, 0], sel[:, 1]].contiguous()  # [n, BINS]
            _samples_kernel[(sel.shape[0],)](s, stride, V, sel.to(i32).contiguous(), mean, a, p_sel, samp, samples,
                                             BLOCK=block_b, SUB=min(sub_c, block_b), NBK=NB, num_warps=warps_c)
    rows, bins, cols = sample_lists(counts, samp, samples)
    top_cols, top_score = stage_top_triton(s, stage_top, col_ids, counts, hist, mean, a, block_b, top_cap)
    return ChunkStats(mean=mean, std=std, lse=lse.float(), entropy=entropy.float(), kl=kl.float(), tracked_score=t,
                      rank=rank, tracked_bin=tbin, counts=counts, sample_rows=rows, sample_bins=bins, sample_cols=cols,
                      stage_top_cols=top_cols, stage_top_score=top_score)
