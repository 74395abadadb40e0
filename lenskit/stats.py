"""Exact per-row statistics of lens scores: top-k, comparison-count ranks, z-histograms with samples, entropy, KL.

One chunk holds all S stages of ``c`` positions: scores ``[c, S, V]`` (rows = (position, stage)). Two
implementations compute the same :class:`ChunkStats`, never by sorting a vocabulary:

* **fused** (:mod:`lenskit.kernels`, numba): one pass per row reads the scores once from memory and computes
  everything while the row is cache-resident. Used for exact float32 scores on CPU (``bound`` None or all zero).
* **torch** (:func:`chunk_stats_torch`): a handful of vectorised passes over the chunk. Used on other devices, in
  fast mode (bfloat16 scores with an error bound and an ``exact`` re-check), when numba is missing, and when the
  environment sets ``LENSKIT_KERNELS=torch``; it is also the reference the fused kernel is tested against.

Shared definitions: the histogram bin of a score is ``floor((s - mean) * a)`` with ``a = BIN_SCALE / std``, both
float32 operations, clamped to the histogram, plus ``BIN_OFFSET`` (:func:`z_bins`; the kernel's ``z_bin`` is the
same formula), so the two agree bit for bit given the same mean and std. The torch path in detail:

* **fine bins.** Each score gets a sub-bin ``u = floor(y * FINE)`` of a fine grid (``FINE`` sub-bins per
  histogram bin; ``y * FINE`` is exact, so ``u // FINE`` is the histogram bin), clamped to the grid. One
  ``bincount`` gives the histogram (sum of ``FINE`` sub-bins) and, by suffix sums, how many scores lie above any
  sub-bin.
* **ranks.** rank(t) = 1 + #{score > t}. Scores whose sub-bin is more than one above t's are certainly greater
  (the binning is monotone); only the few in t's sub-bin and its two neighbours are compared exactly (wider windows
  in fast mode, from the bound). Ties therefore count exactly as in a brute-force sort.
* **samples.** A bin holding at most ``samples`` scores (the histogram's sparse tails) lists all of its columns, in
  column order (the document lists them by vocabulary id); denser bins list none. The gathered pass that marks the
  rank windows' columns marks the sparse bins' few members too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import InputError
from .schema import HIST_BINS, HIST_SAMPLES, HIST_Z_MAX, HIST_Z_MIN

FINE = 64  # sub-bins per histogram bin (a power of two: y * FINE is exact)
N_FINE = HIST_BINS * FINE
BIN_SCALE = HIST_BINS / (HIST_Z_MAX - HIST_Z_MIN)  # bins per unit of z (5)
BIN_OFFSET = int(round(-HIST_Z_MIN * BIN_SCALE))  # bin of z = 0 (40); z_min must lie on a bin edge from z = 0
assert BIN_OFFSET == -HIST_Z_MIN * BIN_SCALE
KERNELS_ENV = "LENSKIT_KERNELS"  # "torch": always use the torch implementation (debugging)


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
    sample_cols: torch.Tensor  # [n] column of each sample; sorted by (row, bin, column). Samples: every column of
    # each sparse bin (counts <= samples), none of the denser bins (the export lists only those: the histogram's tails)
    stage_top_cols: torch.Tensor  # [R, N] columns of the row's own N highest scores (higher first, ties: smaller id)
    stage_top_score: torch.Tensor  # [R, N] their float32 scores


class Workspace:
    """Reusable buffers for one chunk size: big temporaries are written in place, not re-allocated (fresh multi-MB
    allocations page-fault on every op and cost more than the arithmetic). The ``[r, V]`` temporaries of the
    torch implementation are allocated on its first use only (the fused kernel needs none)."""

    def __init__(self, rows: int, stats_rows: int, vocab: int, device):
        self.scores = torch.empty(rows, vocab, device=device)  # [R, V] float32 scores of a chunk
        self.stats_rows, self.vocab, self.device = stats_rows, vocab, device
        self._tmp = None

    def _alloc(self):
        r, V, dev = self.stats_rows, self.vocab, self.device
        self._tmp = {
            "tmp": torch.empty(r, V, device=dev),  # [r, V] softmax, then fine-bin floats
            "bins": torch.empty(r, V, dtype=torch.int64, device=dev),  # [r, V] global sub-bin index
            "bins32": torch.empty(r, V, dtype=torch.int32, device=dev),  # [r, V] the same, int32
            "mask": torch.empty(r, V, dtype=torch.bool, device=dev),  # [r, V]
            "prod": torch.empty(r, V, device=dev),  # [r, V] elementwise products
        }

    def __getattr__(self, name):  # tmp, bins, bins32, mask, prod: allocated on first access
        if name in ("tmp", "bins", "bins32", "mask", "prod"):
            if self._tmp is None:
                self._alloc()
            return self._tmp[name]
        raise AttributeError(name)

    def fits(self, rows: int, stats_rows: int, vocab: int) -> bool:
        return self.scores.shape[0] >= rows and self.stats_rows >= stats_rows and self.scores.shape[1] == vocab


def bin_scale(std: torch.Tensor) -> torch.Tensor:
    """``a = BIN_SCALE / std`` per row, rounded once to float32 (the kernel computes the same)."""
    return (BIN_SCALE / std.double()).float()


def z_bins(s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fine: int = 1, out: torch.Tensor | None = None):
    """Histogram bin of every score of ``s [R, V]``, times ``fine`` sub-bins: ``floor((s - mean) * a * fine)``
    clamped to the histogram, plus ``BIN_OFFSET * fine``, as floats (into ``out`` if given).

    The one definition of a score's bin (``lenskit.kernels.z_bin`` is the same float32 formula): ``s - mean`` and
    ``* a`` are correctly rounded float32 operations, so the bin is monotone in the score, identical in both
    implementations, and ``z_bins(.., fine) // fine == z_bins(..)`` (fine is a power of two: ``* fine`` is exact).
    """
    y = torch.sub(s, mean[:, None], out=out)  # [R, V]
    y.mul_(bin_scale(std)[:, None])
    if fine != 1:
        y.mul_(fine)
    return y.floor_().clamp_(-BIN_OFFSET * fine, (HIST_BINS - BIN_OFFSET) * fine - 1).add_(BIN_OFFSET * fine)


def fine_bins(s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, out_f: torch.Tensor, out_u: torch.Tensor):
    """Global sub-bin of every score, ``row * N_FINE + z_bins(s, mean, std, FINE)``.

    Writes floats to ``out_f`` and the int64 result to ``out_u`` ([R, V] each); returns ``out_u``.
    """
    R = s.shape[0]
    z_bins(s, mean, std, FINE, out=out_f)  # [R, V]
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


def _col_ids(col_ids: torch.Tensor | None, V: int) -> torch.Tensor:
    return torch.arange(V) if col_ids is None else col_ids


def _check_top(n: int, V: int) -> int:
    if not 0 <= n <= V:
        raise ValueError(f"stage top-{n} of a vocabulary of {V}")
    return n


@torch.inference_mode()
def rows_top(s: torch.Tensor, rows: torch.Tensor, n: int, col_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Columns ``[len(rows), n]`` of the n highest scores of each row ``s[rows]``, in :func:`stage_top_torch`'s order
    (higher score first, equal scores by smaller vocabulary id): the numba kernel ``kernels.rows_top`` for exact
    float32 CPU scores (one pass per row, no gather or sorts: 2.4-2.8 -> 0.34 ms for the 16 final rows of a block
    of the default model), else :func:`stage_top_torch`."""
    V = s.shape[1]
    _check_top(n, V)
    if not (use_fused(s, None) and s.is_contiguous() and n > 0):
        return stage_top_torch(s[rows], n, col_ids)[0]
    ids = _col_ids(col_ids, V).cpu().to(torch.int64).contiguous()  # [V]
    out = torch.empty(len(rows), n, dtype=torch.int64)
    with _numba_threads_for(len(rows) * V):
        _kernels.rows_top(s.detach().numpy(), rows.cpu().to(torch.int64).contiguous().numpy(), n, ids.numpy(),
                          out.numpy())
    return out


@torch.inference_mode()
def stage_top_torch(s: torch.Tensor, n: int, col_ids: torch.Tensor | None = None, bound: torch.Tensor | None = None,
                    exact=None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own n highest scores: ``[R, n]`` columns and float32 scores, higher score first, equal scores by
    smaller vocabulary id (``col_ids[column]``; None: the column) -- the order of :meth:`Scorer.top_k`.

    ``torch.topk`` gives the n-th highest score t of each row; every score >= t (>= t - 2 bound in fast mode, where
    ``exact`` then gives the float32-mode scores of those few candidates) is a candidate, so ties at the boundary are
    all seen, and the candidates are ordered by (row, -score, id) with stable sorts. ``mask``: an ``[R, V]`` bool
    buffer to reuse."""
    R, V = s.shape
    dev = s.device
    _check_top(n, V)
    if n == 0:
        return torch.zeros(R, 0, dtype=torch.int64, device=dev), torch.zeros(R, 0, device=dev)
    thr = torch.topk(s, n, dim=1, sorted=False).values.amin(1)  # [R] n-th highest
    if bound is not None:
        thr = thr - 2 * bound
    m = torch.ge(s, thr[:, None], out=mask) if mask is not None else s >= thr[:, None]  # [R, V]
    rows, cols = torch.nonzero(m, as_tuple=True)  # [m] candidates, row-major (n per row, more with ties)
    sc = s[rows, cols] if exact is None or bound is None or not bool(bound.any()) else exact(rows, cols, s)  # [m]
    ids = _col_ids(col_ids, V).to(dev)[cols]  # [m]
    o = torch.argsort(ids, stable=True)  # least significant key first: id, then -score, then row
    o = o[torch.argsort(-sc[o], stable=True)]
    o = o[torch.argsort(rows[o], stable=True)]
    keep = o[_first_per_group(rows[o], n)]  # [R * n]
    return cols[keep].view(R, n), sc[keep].float().view(R, n)


_kernels = None  # lenskit.kernels once imported; False when numba is not importable


def kernels_setting() -> str:
    """``LENSKIT_KERNELS``, checked: ``torch`` (always the torch implementation) or empty (the fastest available);
    InputError for another value (``LENSKIT_KERNELS=tourch`` silently used the fused kernels)."""
    raw = os.environ.get(KERNELS_ENV, "").strip().lower()
    if raw not in ("", "torch"):
        raise InputError(f"the environment variable {KERNELS_ENV}={raw[:40]!r} is not 'torch' (the reference "
                         "kernels); unset it for the fastest available")
    return raw


def fused_available() -> bool:
    """Whether the numba kernels can run (imported on first call: numba's import costs ~0.5 s); not under
    ``NUMBA_DISABLE_JIT=1``, where they cannot run as plain Python."""
    global _kernels
    if _kernels is None:
        try:
            import numba

            if numba.config.DISABLE_JIT:
                _kernels = False
            else:
                from . import kernels
                _kernels = kernels
        except ImportError:
            _kernels = False
    return _kernels is not False


def use_fused(s: torch.Tensor, bound: torch.Tensor | None) -> bool:
    """The fused kernel applies to exact float32 scores on CPU: ``bound`` None or all zero (float32 mode, where
    ``exact`` only reads ``s``), unless ``LENSKIT_KERNELS=torch`` or numba is missing."""
    if s.device.type != "cpu" or s.dtype != torch.float32:
        return False
    if bound is not None and bool(bound.any()):
        return False
    return fused_enabled()


def fused_enabled() -> bool:
    """Whether exact CPU scores go to the fused kernel: numba importable and ``LENSKIT_KERNELS`` is not ``torch``."""
    return kernels_setting() != "torch" and fused_available()


@torch.inference_mode()
def chunk_stats(s: torch.Tensor, n_stages: int, tracked_cols: torch.Tensor, ws: Workspace,
                bound: torch.Tensor | None = None, exact=None, samples: int = HIST_SAMPLES, stage_top: int = 0,
                col_ids: torch.Tensor | None = None) -> ChunkStats:
    """All statistics of one chunk.

    Args:
        s: ``[R, V]`` float32 scores, R = c * n_stages, rows ordered (position, stage); the last stage of each
            position is its final distribution. May be a view of ``ws.scores``.
        n_stages: S.
        tracked_cols: ``[c, K]`` columns to rank and follow, per position.
        ws: buffers with at least R rows.
        bound: ``[R]`` bound on |s - float32 score| per row (fast mode), or None when ``s`` is exact. All zero
            means ``s`` is exact too (then ``exact`` would only read ``s``).
        exact: ``exact(rows, cols, s)`` -> float32-mode scores at those entries (None: read ``s``).
        samples: a bin holding at most this many scores lists all of their columns; denser bins none (0: none).
        stage_top: N, each row's own top-N tokens to find (0 for none; at most V).
        col_ids: ``[V]`` vocabulary id of each column (ties among the top-N go to the smaller id); None: column = id.
    """
    if use_fused(s, bound):
        return chunk_stats_fused(s, n_stages, tracked_cols, samples, stage_top, col_ids)
    if use_triton(s, bound):
        from .kernels_triton import chunk_stats_triton

        return chunk_stats_triton(s, n_stages, tracked_cols, samples, stage_top=stage_top, col_ids=col_ids)
    return chunk_stats_torch(s, n_stages, tracked_cols, ws, bound, exact, samples, stage_top=stage_top, col_ids=col_ids)


def use_triton(s: torch.Tensor, bound: torch.Tensor | None) -> bool:
    """The Triton kernels apply to exact float32 scores on CUDA (same conditions as :func:`use_fused`), when triton
    is importable (it ships with CUDA builds of torch)."""
    if kernels_setting() == "torch" or s.device.type != "cuda" or s.dtype != torch.float32:
        return False
    if bound is not None and bool(bound.any()):
        return False
    return triton_available()


def triton_available() -> bool:
    """Whether triton is importable (it ships with CUDA builds of torch)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _numba_threads(work: int) -> int:
    """Threads for a kernel call: torch's intra-op setting (one thread for tiny blocks: waking threads costs more)."""
    import numba

    return 1 if work < (1 << 18) else max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


@contextmanager
def _numba_threads_for(work: int):
    """Run a kernel call with :func:`_numba_threads` threads, restoring numba's setting after; yields the count."""
    import numba

    n, saved = _numba_threads(work), numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(saved)


@torch.inference_mode()
def chunk_stats_fused(s: torch.Tensor, n_stages: int, tracked_cols: torch.Tensor,
                      samples: int = HIST_SAMPLES, stage_top: int = 0,
                      col_ids: torch.Tensor | None = None) -> ChunkStats:
    """:func:`chunk_stats` of exact float32 CPU scores with the numba kernels (:mod:`lenskit.kernels`)."""
    fused_available()
    k = _kernels
    R, V = s.shape
    K = tracked_cols.shape[1]
    sn = s.detach().contiguous().numpy()  # [R, V] no copy when contiguous
    trk = tracked_cols.detach().cpu().to(torch.int64).contiguous().numpy()  # [c, K]
    mean = torch.empty(R)
    std = torch.empty(R)
    mx = torch.empty(R, dtype=torch.float64)
    lse = torch.empty(R, dtype=torch.float64)
    entropy = torch.empty(R, dtype=torch.float64)
    kl = torch.empty(R, dtype=torch.float64)
    tscore = torch.empty(R, K)
    rank = torch.empty(R, K, dtype=torch.int64)
    tbin = torch.empty(R, K, dtype=torch.int64)
    counts = torch.empty(R, HIST_BINS, dtype=torch.int64)
    samp = torch.empty(R, HIST_BINS, samples, dtype=torch.int64)  # [R, BINS, samples] column or unused
    ids = _col_ids(col_ids, V).cpu().to(torch.int64).contiguous()  # [V] vocabulary id of each column
    top_cols = torch.empty(R, _check_top(stage_top, V), dtype=torch.int64)  # [R, N]
    top_score = torch.empty(R, stage_top)  # [R, N]
    with _numba_threads_for(R * V) as n_threads:
        k.block_stats(sn, n_stages, trk, n_threads, mean.numpy(), std.numpy(), mx.numpy(), lse.numpy(),
                      entropy.numpy(), kl.numpy(), tscore.numpy(), rank.numpy(), tbin.numpy(), counts.numpy(),
                      samp.numpy(), ids.numpy(), top_cols.numpy(), top_score.numpy())
    rows, bins, cols = (torch.from_numpy(a) for a in k.flat_samples(counts.numpy(), samp.numpy(), samples))
    return ChunkStats(mean=mean, std=std, lse=lse.float(), entropy=entropy.float(), kl=kl.float(), tracked_score=tscore,
                      rank=rank, tracked_bin=tbin, counts=counts, sample_rows=rows, sample_bins=bins, sample_cols=cols,
                      stage_top_cols=top_cols, stage_top_score=top_score)


def sample_lists(counts: torch.Tensor, samp: torch.Tensor, samples: int):
    """A kernel's table of sample columns, ``samp [R, BINS, >= samples]`` (valid up to the bin's count, at least in
    every sparse bin, ``counts <= samples``) -> (rows, bins, cols) of the sparse bins' samples, sorted by (row, bin,
    column), as :class:`ChunkStats` holds them."""
    listed = torch.where(counts <= samples, counts, 0)  # [R, BINS] every member of a sparse bin; none of the others
    keep = torch.arange(samples, device=counts.device)[None, None, :] < listed[:, :, None]
    rb = torch.nonzero(keep)  # [n, 3] (row, bin, j), row-major: sorted by (row, bin, column)
    return rb[:, 0], rb[:, 1], samp[:, :, :samples][keep]


MOMENT_ROWS = 64  # rows per float64 slice of row_moments ([64, V] float64 temporaries)


def row_moments(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean and standard deviation (ddof=1) of ``s [R, V]`` -> float32 ``[R]`` each, from float64 sums of
    ``s - s[:, 0]`` and its square -- the fused kernel's definition (``lenskit.kernels.row_moments``), so both
    implementations give the same float32 mean and std, hence the same bins (float32 sums differ in the last bit,
    and a score at a bin edge then lands in the neighbouring bin). std is at least 1e-12."""
    R, V = s.shape
    mean = torch.empty(R, dtype=torch.float64, device=s.device)
    var = torch.empty(R, dtype=torch.float64, device=s.device)
    for r0 in range(0, R, MOMENT_ROWS):
        x = s[r0: r0 + MOMENT_ROWS]  # [r, V]
        s0 = x[:, :1].double()  # [r, 1]
        d = x.double() - s0  # [r, V] exact in float64
        t1 = d.sum(-1)  # [r]
        t2 = d.mul_(d).sum(-1)  # [r]
        mean[r0: r0 + MOMENT_ROWS] = s0[:, 0] + t1 / V
        var[r0: r0 + MOMENT_ROWS] = ((t2 - t1 * t1 / V) / max(V - 1, 1)).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-12)


@torch.inference_mode()
def chunk_stats_torch(s: torch.Tensor, n_stages: int, tracked_cols: torch.Tensor, ws: Workspace,
                      bound: torch.Tensor | None = None, exact=None, samples: int = HIST_SAMPLES,
                      moments: tuple[torch.Tensor, torch.Tensor] | None = None, stage_top: int = 0,
                      col_ids: torch.Tensor | None = None) -> ChunkStats:
    """:func:`chunk_stats` with torch ops (any device, fast mode). ``moments``: (mean, std) ``[R]`` to use instead
    of computing them (:func:`row_moments`)."""
    R, V = s.shape
    c = R // n_stages
    dev = s.device
    prod = ws.prod[:R]  # [R, V] products land in a reused buffer (a fresh 12 MB temporary page-faults)
    mean, std = row_moments(s) if moments is None else moments
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
    sparse = counts <= samples  # [R, BINS] bins that list their samples (all of them); denser bins list none
    # one gathered pass marks the few columns needing exact treatment: rank windows and sparse bins' members
    edges = torch.zeros(R, N_FINE + 1, dtype=torch.int32, device=dev)  # difference array of window coverage
    ones = torch.ones_like(tu, dtype=torch.int32)
    edges.scatter_add_(1, (tu - w[:, None]).clamp(min=0), ones)
    edges.scatter_add_(1, (tu + w[:, None] + 1).clamp(max=N_FINE), -ones)
    mark = (edges.cumsum(1)[:, :N_FINE] > 0) | sparse.repeat_interleave(FINE, 1)  # [R, N_FINE]
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
    scan = sparse[rows, sb]  # every member of a sparse bin is a sample
    rows2, cols2, sb2 = rows[scan], cols[scan], sb[scan]
    final_order = torch.argsort(rows2 * (HIST_BINS * V) + sb2 * V + cols2)
    top_cols, top_score = stage_top_torch(s, stage_top, col_ids, bound, exact, mask=ws.mask[:R])
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
        sample_rows=rows2[final_order],
        sample_bins=sb2[final_order],
        sample_cols=cols2[final_order],
        stage_top_cols=top_cols,
        stage_top_score=top_score,
    )
