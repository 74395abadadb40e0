"""Exact per-row statistics of lens scores: top-k, comparison-count ranks, z-histograms with samples, entropy, KL.

One chunk holds all S stages of ``c`` positions: scores ``[c, S, V]`` (rows = (position, stage)). Everything is
computed with a handful of vectorised passes over the chunk, never by sorting a vocabulary:

* **fine bins.** Each score gets a sub-bin ``u = floor(score * a + b)`` of a fine grid (``FINE`` sub-bins per
  histogram bin, a and b from the row's mean and std), clamped to the grid. One ``bincount`` gives the histogram
  (sum of ``FINE`` sub-bins) and, by suffix sums, how many scores lie above any sub-bin.
* **ranks.** rank(t) = 1 + #{score > t}. Scores whose sub-bin is more than one above t's are certainly greater
  (the binning is monotone up to one sub-bin of rounding); only the few in t's sub-bin and its two neighbours are
  compared exactly. Ties therefore count exactly as in a brute-force sort.
* **samples.** Vocabulary columns are in a fixed pseudo-random order (the lens weight is permuted once); the
  samples of a bin are its first ``HIST_SAMPLES`` columns in that order, found in a short prefix of columns for
  dense bins and by one exact scan of the few sparse-bin members otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schema import HIST_BINS, HIST_SAMPLES, HIST_Z_MAX, HIST_Z_MIN

FINE = 64  # sub-bins per histogram bin
N_FINE = HIST_BINS * FINE
PREFIX = 2048  # columns scanned first for samples of dense bins


@dataclass
class ChunkStats:
    """Results for one chunk of ``c`` positions x ``S`` stages (R = c*S rows, K tracked tokens per position)."""

    mean: torch.Tensor  # [R]
    std: torch.Tensor  # [R]
    lse: torch.Tensor  # [R]
    entropy: torch.Tensor  # [R]
    kl: torch.Tensor  # [R]
    tracked_score: torch.Tensor  # [R, K]
    rank: torch.Tensor  # [R, K]
    tracked_bin: torch.Tensor  # [R, K]
    counts: torch.Tensor  # [R, HIST_BINS]
    sample_rows: torch.Tensor  # [n] row of each sample
    sample_bins: torch.Tensor  # [n] bin of each sample
    sample_cols: torch.Tensor  # [n] column of each sample; sorted by (row, bin, column)


class Workspace:
    """Reusable ``[R, V]`` buffers for one chunk size: big temporaries are written in place, not re-allocated
    (fresh multi-MB allocations page-fault on every op and cost more than the arithmetic)."""

    def __init__(self, rows: int, stats_rows: int, vocab: int, device):
        self.scores = torch.empty(rows, vocab, device=device)  # [R, V] float32 scores of a chunk
        self.tmp = torch.empty(stats_rows, vocab, device=device)  # [r, V] softmax, then fine-bin floats
        self.bins = torch.empty(stats_rows, vocab, dtype=torch.int64, device=device)  # [r, V] global sub-bin index
        self.bins32 = torch.empty(stats_rows, vocab, dtype=torch.int32, device=device)  # [r, V] the same, int32
        self.mask = torch.empty(stats_rows, vocab, dtype=torch.bool, device=device)  # [r, V]
        self.prod = torch.empty(stats_rows, vocab, device=device)  # [r, V] elementwise products

    def fits(self, rows: int, stats_rows: int, vocab: int) -> bool:
        return self.scores.shape[0] >= rows and self.tmp.shape[0] >= stats_rows and self.scores.shape[1] == vocab


def fine_bins(s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, out_f: torch.Tensor, out_u: torch.Tensor):
    """Global sub-bin of every score, ``row * N_FINE + clamp(floor(((s - mean)/std - z_min) * N_FINE / (z_max - z_min)))``.

    Writes floats to ``out_f`` and the int64 result to ``out_u`` ([R, V] each); returns ``out_u``.
    """
    R = s.shape[0]
    scale = N_FINE / (HIST_Z_MAX - HIST_Z_MIN)
    a = scale / std  # [R]
    b = -mean * a - HIST_Z_MIN * scale  # [R]
    torch.addcmul(b[:, None], s, a[:, None], out=out_f)  # [R, V]
    out_f.floor_().clamp_(0, N_FINE - 1)
    out_f += (torch.arange(R, device=s.device, dtype=s.dtype) * N_FINE)[:, None]  # exact: integers < 2**24
    out_u.copy_(out_f)
    return out_u


def _first_per_group(keys: torch.Tensor, limit: int) -> torch.Tensor:
    """Mask of the first ``limit`` entries of each run of equal ``keys`` (keys already grouped, order kept)."""
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=keys.device)
    start = torch.ones_like(keys, dtype=torch.bool)
    start[1:] = keys[1:] != keys[:-1]
    idx = torch.arange(keys.numel(), device=keys.device)
    group_start = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    return (idx - group_start) < limit


@torch.inference_mode()
def chunk_stats(s: torch.Tensor, n_stages: int, tracked_cols: torch.Tensor, ws: Workspace,
                bound: torch.Tensor | None = None, exact=None, samples: int = HIST_SAMPLES) -> ChunkStats:
    """All statistics of one chunk.

    Args:
        s: ``[R, V]`` float32 scores, R = c * n_stages, rows ordered (position, stage); the last stage of each
            position is its final distribution. May be a view of ``ws.scores``.
        n_stages: S.
        tracked_cols: ``[c, K]`` columns to rank and follow, per position.
        ws: buffers with at least R rows.
        bound: ``[R]`` bound on |s - float32 score| per row (fast mode), or None when ``s`` is exact.
        exact: ``exact(rows, cols, s)`` -> float32-mode scores at those entries (None: read ``s``).
        samples: sample tokens kept per histogram bin (0 for none).
    """
    R, V = s.shape
    c = R // n_stages
    dev = s.device
    # moments: sum and sum of squares (bmm and std_mean are several times slower on CPU)
    prod = ws.prod[:R]  # [R, V] products land in a reused buffer (a fresh 12 MB temporary page-faults)
    mean = s.sum(-1) / V  # [R]
    sq = torch.mul(s, s, out=prod).sum(-1)  # [R]
    var = ((sq - V * mean * mean) / max(V - 1, 1)).clamp_min(0)
    std = var.sqrt().clamp_min(1e-12)  # [R]
    # softmax statistics: lse = max - log(max softmax)
    mx = s.amax(-1)  # [R]
    p = torch.ops.aten._softmax.out(s, -1, False, out=ws.tmp[:R])  # [R, V]
    lse = mx - torch.log(p.amax(-1))  # [R]
    ps = torch.mul(p, s, out=prod).sum(-1)  # [R] E_p[s]
    entropy = lse - ps
    s3 = s.view(c, n_stages, V)
    pf = p.view(c, n_stages, V)[:, -1:]  # [c, 1, V] final distribution
    pfs = torch.mul(s3, pf, out=prod.view(c, n_stages, V)).sum(-1)  # [c, S] E_pf[s]
    ent3 = entropy.view(c, n_stages)
    kl = (lse.view(c, n_stages) - pfs - ent3[:, -1:]).clamp_min(0).view(R)  # KL(final || stage)
    # fine bins (global index: row * N_FINE + sub-bin), histogram, suffix counts
    ug = fine_bins(s, mean, std, ws.tmp[:R], ws.bins[:R])  # [R, V] int64 (for take)
    ug32 = ws.bins32[:R].copy_(ws.tmp[:R])  # [R, V] int32: bincount is ~2x faster on it
    row_off = torch.arange(R, device=dev)[:, None] * N_FINE  # [R, 1]
    fine = torch.bincount(ug32.view(-1), minlength=R * N_FINE).view(R, N_FINE)  # [R, N_FINE]
    counts = fine.view(R, HIST_BINS, FINE).sum(-1)  # [R, BINS]
    above = torch.zeros(R, N_FINE + 3, dtype=torch.int64, device=dev)
    above[:, :N_FINE] = fine.flip(-1).cumsum(-1).flip(-1)  # above[r, j] = #{u >= j}
    # tracked tokens: exact scores; sub-bin windows wide enough for the bound (1 sub-bin of rounding when exact)
    K = tracked_cols.shape[1]
    trk = tracked_cols.repeat_interleave(n_stages, 0)  # [R, K]
    if exact is None:
        t = s.gather(1, trk)  # [R, K]
    else:
        t = exact(torch.arange(R, device=dev).repeat_interleave(K), trk.reshape(-1), s).view(R, K)
    tu = ug.gather(1, trk) - row_off  # [R, K] local sub-bin of the (approximate) score
    a = N_FINE / ((HIST_Z_MAX - HIST_Z_MIN) * std)  # [R] sub-bins per unit score
    w = torch.ones(R, dtype=torch.int64, device=dev) if bound is None else (2 * bound * a).ceil().long() + 1  # [R]
    w = w.clamp(max=N_FINE)
    rank = 1 + above.gather(1, (tu + w[:, None] + 1).clamp(max=N_FINE))  # certainly greater: beyond the window
    # samples in a prefix of columns (dense bins fill here)
    P = min(PREFIX, V)
    pb = (ug[:, :P] - row_off) // FINE  # [R, P]
    keys = (torch.arange(R, device=dev)[:, None] * HIST_BINS + pb).view(-1).int()  # int32 sorts faster
    order = torch.sort(keys, stable=True).indices
    keep = _first_per_group(keys[order], samples)
    pre_idx = order[keep].long()
    pre_rows, pre_cols = pre_idx // P, pre_idx % P
    pre_bins = pb.view(-1)[pre_idx]
    found = torch.bincount(pre_rows * HIST_BINS + pre_bins, minlength=R * HIST_BINS).view(R, HIST_BINS)
    unfilled = found < counts.clamp(max=samples)  # [R, BINS] bins needing a full scan
    # one gathered pass marks the few columns needing exact treatment: rank windows and unfilled bins
    edges = torch.zeros(R, N_FINE + 1, dtype=torch.int32, device=dev)  # difference array of window coverage
    ones = torch.ones_like(tu, dtype=torch.int32)
    edges.scatter_add_(1, (tu - w[:, None]).clamp(min=0), ones)
    edges.scatter_add_(1, (tu + w[:, None] + 1).clamp(max=N_FINE), -ones)
    mark = (edges.cumsum(1)[:, :N_FINE] > 0) | unfilled.repeat_interleave(FINE, 1)  # [R, N_FINE]
    g = torch.take(mark, ug, out=ws.mask[:R])  # [R, V]
    sel = torch.nonzero(g)  # [n, 2] (row, col), row-major
    rows, cols = sel[:, 0], sel[:, 1]
    su = ug[rows, cols] - rows * N_FINE  # [n] local sub-bin
    in_win = (su[:, None] - tu[rows]).abs() <= w[rows, None]  # [n, K]
    near = torch.nonzero(in_win.any(1)).flatten()  # entries compared exactly
    r_near = rows[near]
    sv = s[r_near, cols[near]] if exact is None else exact(r_near, cols[near], s)  # [m]
    greater = in_win[near] & (sv[:, None] > t[r_near])  # [m, K]
    rank = rank.index_add_(0, r_near, greater.to(torch.int64))
    sb = su // FINE
    scan = unfilled[rows, sb]
    rows2, cols2, sb2 = rows[scan], cols[scan], sb[scan]
    keys2 = rows2 * HIST_BINS + sb2
    order2 = torch.sort(keys2, stable=True).indices  # stable: column order kept within a bin
    keep2 = order2[_first_per_group(keys2[order2], samples)]
    # merge: prefix samples of filled bins + scanned samples of unfilled bins
    pf_keep = ~unfilled[pre_rows, pre_bins]
    all_rows = torch.cat([pre_rows[pf_keep], rows2[keep2]])
    all_bins = torch.cat([pre_bins[pf_keep], sb2[keep2]])
    all_cols = torch.cat([pre_cols[pf_keep], cols2[keep2]])
    final_order = torch.argsort(all_rows * (HIST_BINS * V) + all_bins * V + all_cols)
    return ChunkStats(
        mean=mean,
        std=std,
        lse=lse,
        entropy=entropy,
        kl=kl,
        tracked_score=t,
        rank=rank,
        tracked_bin=tu // FINE,
        counts=counts,
        sample_rows=all_rows[final_order],
        sample_bins=all_bins[final_order],
        sample_cols=all_cols[final_order],
    )
