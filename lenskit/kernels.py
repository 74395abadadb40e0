"""Fused per-row statistics of a float32 score block, compiled with numba (CPU).

One call handles a block ``s [R, V]`` of R = c positions x S stages (rows ordered (position, stage); the last stage
of each position is its final distribution). Each row is read from memory once, and that read is mostly hidden: the
histogram pass of the previous row prefetches it into L2 (:func:`prefetch_l2`); every other pass runs on the row
while it sits in the core's L2 cache (49,152 float32 scores = 192 KB). Columns are in the scorer's fixed order
(``lenskit.scoring.column_order``), which puts tokens that score low in most contexts side by side, so several
passes skip whole steps of columns by their bins:

1. **moments** -- row max and the float64 sums of ``d = s - s[0]`` and its square: mean and std (ddof=1); in the
   same loop KL's float64 sums ``sum pf d`` and ``sum pf`` (see 5).
2. **z-bins** -- the histogram bin of every score by :func:`z_bin` (the one definition: ``floor((s - mean) * a)``
   with ``a = BIN_SCALE / std``, both float32 operations, clamped, plus ``BIN_OFFSET``; ``lenskit.stats.z_bins``
   is the same formula in torch), one byte per score; each step's lowest and highest bin; histogram counts from
   those bytes by vector compares and popcounts over each step's few bins (:func:`count_ge`); tracked tokens' bins
   read from the same bytes, so they always agree with the counts.
3. **ranks** (:func:`row_ranks`) -- rank(t) = 1 + #{v : s_v > s_t} (exact, ties included) by vectorised comparison
   passes over the row, four tracked tokens per pass (counted as float32 sums of ones, which LLVM vectorises). A pass
   skips each step of 256 scores whose highest bin (a vectorised byte max) lies below its four tokens' bins: late
   stages put the final top tokens in sparse top bins, so such passes read a few percent of the row.
   **samples and the row's own top-N** (:func:`row_scan`) -- every column of each sparse bin (at most ``samples``
   scores: the histogram's tails; denser bins list none), from a scan of the bytes that stops once those bins and the
   highest bins (those holding the top N, known from the counts) have been seen whole, top scores inserted into a
   tiny sorted array. Tail bins keep the scan going to the end of the row, so it skips every step of ``SKIP``
   scores whose bins all lie in the run of bins it does not serve (a step's lowest and highest bin by a vectorised
   byte min / max).
4. **softmax sums** -- ``e_v = exp(s_v - max)`` by a vectorised float32 exp (:func:`row_exp_parts_at`, relative
   error < 2e-7), ``E = sum e`` and ``F = sum e (s - max)`` in float64: lse = max + log E, entropy = log E - F / E,
   over the **window**: the steps of SKIP scores holding a score within EXP_WINDOW (30) of the max
   (:func:`window_runs`; a step whose highest bin lies below the bin of max - 30 holds none). On the default model
   that is 2-9% of a row's steps from the middle stages on, 30-50% in the first blocks, all of them in final rows.
5. **KL(final || stage)** = lse - E_pf[s] - H(final) = log E - (sum pf d / sum pf + s[0] - max) - H(final), with
   pf the final row's softmax (final rows are done first, per position, and pf kept as ``[c, V]`` float32): a
   float64 dot product over every score, in the moments' loop (:func:`row_moments`; a final distribution is rarely
   negligible anywhere).

The window leaves out terms e^d with d < -30: E (>= 1, the max's own term) changes by < V e^-30 (5e-9 at V =
49,152) and F by < 30 V e^-30 (1.4e-7), below the float32 exp's own relative error and far below the export's 2
decimals. Exps inside the window are clamped at ``s - max >= -EXP_CLAMP`` (80): a clamped term is < e^-80 = 2e-35
where its true value is smaller still.

Exactness: ``fastmath=False`` everywhere except ``reassoc`` on the float64 sums of :func:`row_moments`,
:func:`row_softmax_sums_at` and :func:`row_kl_dot` (it lets LLVM vectorise those reductions) and ``contract``
(fused multiply-adds) in the exp polynomial of :func:`row_exp_parts` (2x faster).
Both only change float rounding far below the export's decimals; the compiled code fixes the order, so results
are deterministic and independent of the chunking. Bins, counts, ranks and samples
use no floating-point reduction at all and equal the torch implementation's bit for bit given the same mean/std.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .schema import HIST_BINS
from .stats import BIN_OFFSET, BIN_SCALE

assert HIST_BINS <= 256, "bins are stored as one byte per score"
EXP_CLAMP = np.float32(80.0)  # exp(d) for d = s - shift is evaluated at max(d, -EXP_CLAMP)
EXP_WINDOW = np.float32(30.0)  # softmax sums skip steps of SKIP scores that all lie more than this below the max
_LO = -BIN_OFFSET  # lowest z-bin before the offset
_HI = HIST_BINS - 1 - BIN_OFFSET  # highest
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO (Cody-Waite: k * _LN2_HI is exact for |k| < 2^11)
_LN2_LO = np.float32(-2.12194440e-4)
_REDUCE = {"reassoc"}  # fast-math flags of the float64 sums only (see the module docstring)
_POLY = {"contract"}  # and of the exp polynomial: fused multiply-adds
SKIP = 64  # scores per step of the histogram's counts and of the scan's skip test (one 64-bit mask: count_ge)
RANK_STEP = 4 * SKIP  # scores per step of a rank pass's skip test (a step wholly below its tokens' bins)
LINE = 16  # float32 scores per 64-byte cache line


@intrinsic
def prefetch_l2(typingctx, arr, idx):
    """Hint the CPU to bring the cache line holding ``arr[idx]`` (1-D) into L2 (LLVM's ``llvm.prefetch``: read,
    locality 2, data cache). No effect on results."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        # the unmangled name: LLVM's IR upgrade gives it the pointer mangling of its version (p0i8 with typed
        # pointers, LLVM <= 16 as numba 0.60 uses; p0 with opaque ones)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32]),
                                            "llvm.prefetch")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def count_ge(typingctx, arr, idx, e):
    """``#{j < SKIP : arr[idx + j] >= e}`` for a contiguous uint8 array and a uint8 ``e``: one 64-byte vector
    compare and a popcount of its mask (LLVM IR that every target lowers: on AVX-512 ``vpcmpub`` + ``kmovq`` +
    ``popcnt``; elsewhere a compare, a movemask and a popcount). The caller keeps ``idx + SKIP <= len(arr)``."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8 and arr.layout == "C"):
        return None
    sig = types.int64(arr, idx, e)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        vty = ir.VectorType(i8, SKIP)
        x = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=1)  # [SKIP] bytes
        e8 = context.cast(builder, args[2], signature.args[2], types.uint8)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vty, ir.Undefined), e8, ir.Constant(i32, 0)),
                                       ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(i32, SKIP), [0] * SKIP))
        mask = builder.bitcast(builder.icmp_unsigned(">=", x, splat), i64)  # [SKIP] i1 -> one 64-bit word
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(ctpop, [mask])

    return sig, codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the enclosing function with 512-bit registers where the CPU has them (the function
    attribute ``"prefer-vector-width"="512"``, as clang's ``-mprefer-vector-width=512`` sets it).

    LLVM defaults to 256-bit vectors on Intel CPUs with AVX-512 (to spare older ones a clock drop); here that left
    the comparison passes 34% slower (10.7 vs 7.1 us per pass). numba has no per-function setting and its global one
    (``NUMBA_CPU_FEATURES``) would recompile every numba function of the user's process, so each kernel calls this
    at its top. The unembedding GEMM running between the kernels already uses 512-bit FMAs. Elsewhere (AVX2, ARM)
    the attribute changes nothing. No effect on results: the same operations in wider vectors."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')  # llvmlite lists only keyword attributes
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _prefetch_share(nxt, lo, hi, c, n):
    """Prefetch the c-th of n equal shares of ``nxt[lo:hi]`` (whole cache lines) into L2."""
    per = ((hi - lo + n - 1) // n + LINE - 1) // LINE * LINE
    a = lo + c * per
    for j in range(a, min(a + per, hi), LINE):
        prefetch_l2(nxt, j)


@njit(inline="always")
def z_bin(x, mean, a):
    """Histogram bin of score ``x`` (float32) for a row with float32 ``mean`` and ``a = BIN_SCALE / std``.

    ``floor((x - mean) * a)`` in float32 (two correctly rounded operations: monotone in x), clamped to the
    histogram, plus ``BIN_OFFSET``. A NaN (only a broken lens gives one: traces are validated finite) goes to the
    lowest bin, so every bin indexes the histogram (the kernels index it unchecked).
    """
    y = np.floor((x - mean) * a)
    y = y if y >= np.float32(_LO) else np.float32(_LO)  # noqa: FURB136 -- NaN fails the test: the lowest bin
    y = y if y <= np.float32(_HI) else np.float32(_HI)  # noqa: FURB136 -- max() would keep a NaN
    return np.int32(y) + np.int32(BIN_OFFSET)


@njit(cache=True, fastmath=_REDUCE)
def row_moments(row, pf):
    """``row [V]`` float32 -> (max float32, mean float64, std float64 with ddof=1, A, P), with KL's sums
    (A, P) = (sum pf (row - row[0]), sum pf) in float64 from the same loop when ``pf [V]`` (a final distribution,
    float32) has V entries, else (0, 1).

    The max from the float bits as int32 (integer max and min vectorise; exact): a row with a non-negative score
    has its max at the highest int (non-negative floats order as their bits), an all-negative row at the lowest
    (negative floats' bits, sign bit set, grow with the magnitude). NaN-free rows; a NaN's bits order beyond inf.
    Mean, std and KL's sums share ``d = s - s[0]`` and one read of the row (a separate KL pass cost ~2 us more per
    row on the README's Xeon).
    """
    wide_vectors()
    V = row.shape[0]
    kl = pf.shape[0] == V
    iv = row.view(np.int32)  # [V] the same bytes as int32
    s0 = np.float64(row[0])
    t1, t2, acc, tot = 0.0, 0.0, 0.0, 0.0
    hi, lo = np.int32(-2147483648), np.int32(2147483647)
    for v in range(V):
        d = np.float64(row[v]) - s0
        t1 += d
        t2 += d * d
        hi = max(hi, iv[v])
        lo = min(lo, iv[v])
        if kl:  # loop-invariant: LLVM compiles the loop twice
            p = np.float64(pf[v])
            acc += p * d
            tot += p
    mx = np.empty(1, np.int32)
    mx[0] = hi if hi >= 0 else lo
    mean = s0 + t1 / V
    var = max((t2 - t1 * t1 / V) / max(V - 1, 1), 0.0)
    return mx.view(np.float32)[0], mean, math.sqrt(var), acc, (tot if kl else 1.0)


@njit(cache=True)
def row_bins(row, mean, a, bins, counts, cmin, cmax, nxt):
    """z-bin of every score of ``row [V]`` into ``bins [V]`` uint8; the lowest and highest bin of each whole step of
    SKIP scores into ``cmin, cmax [V // SKIP]`` uint8; the histogram into ``counts [HIST_BINS]``.

    Counts by step: a step with bins lo..hi counts #{bin >= e} for e = lo + 1 .. hi by :func:`count_ge` (one vector
    compare and a popcount each; ~10 per step on real rows), and the differences are its bins' counts -- no scalar
    scatter of every score. Meanwhile prefetches ``nxt`` (see :func:`row_stats`), a share per step."""
    wide_vectors()
    V, W = row.shape[0], nxt.shape[0]
    for v in range(V):
        bins[v] = z_bin(row[v], mean, a)
    n = V // SKIP
    h = np.zeros(HIST_BINS, np.int64)
    for c in range(n):
        _prefetch_share(nxt, 0, W, c, n)
        lo, hi = np.uint8(255), np.uint8(0)
        for j in range(c * SKIP, (c + 1) * SKIP):  # vectorised byte min / max
            lo = min(lo, bins[j])
            hi = max(hi, bins[j])
        cmin[c], cmax[c] = lo, hi
        above = np.int64(SKIP)  # scores of the step in bins >= e, for e = lo
        for e in range(np.int64(lo) + 1, np.int64(hi) + 1):
            ge = count_ge(bins, c * SKIP, np.uint8(e))
            h[e - 1] += above - ge
            above = ge
        h[hi] += above
    for v in range(n * SKIP, V):
        h[bins[v]] += 1
    for b in range(HIST_BINS):
        counts[b] = h[b]


@njit(cache=True, fastmath=_REDUCE)
def row_count_above(row, t, out, cmin, cmax, lo, hi):
    """``out[k] = #{v : row[v] > t[k]}`` for ``t, out [4]`` (four thresholds per vectorised pass), comparing only in
    the steps of RANK_STEP scores that hold bins from ``lo`` to ``hi``, the lowest and highest bin of the four
    thresholds' scores (a step's bins from ``cmin, cmax [V // SKIP]``, :func:`row_bins`). Bins are monotone in
    the score, so no score of a step wholly below ``lo`` exceeds a threshold, and every score of a step wholly above
    ``hi`` exceeds all four. Late stages put the tracked tokens in sparse top bins, where most steps lie below; the
    columns' order puts many steps of high scores above the bulk's tokens.

    Counted as float32 sums of ones: exact (every partial sum is an integer below 2^24 > V) and, with ``reassoc``, LLVM
    vectorises them (2.3x faster than integer counters here, which it did not)."""
    wide_vectors()
    t0, t1, t2, t3 = t[0], t[1], t[2], t[3]
    one, zero = np.float32(1.0), np.float32(0.0)
    n0, n1, n2, n3 = 0, 0, 0, 0
    V, per = row.shape[0], RANK_STEP // SKIP
    n = V // RANK_STEP
    for c in range(n):
        top, bottom = cmax[c * per], cmin[c * per]
        for j in range(1, per):
            top = max(top, cmax[c * per + j])
            bottom = min(bottom, cmin[c * per + j])
        if top < lo:
            continue
        if bottom > hi:
            n0, n1, n2, n3 = n0 + RANK_STEP, n1 + RANK_STEP, n2 + RANK_STEP, n3 + RANK_STEP
            continue
        c0, c1, c2, c3 = zero, zero, zero, zero
        for v in range(c * RANK_STEP, (c + 1) * RANK_STEP):  # a constant trip count: vectorised
            x = row[v]
            c0 += one if x > t0 else zero
            c1 += one if x > t1 else zero
            c2 += one if x > t2 else zero
            c3 += one if x > t3 else zero
        n0, n1, n2, n3 = n0 + np.int64(c0), n1 + np.int64(c1), n2 + np.int64(c2), n3 + np.int64(c3)
    for v in range(n * RANK_STEP, V):
        x = row[v]
        n0, n1, n2, n3 = n0 + (x > t0), n1 + (x > t1), n2 + (x > t2), n3 + (x > t3)
    out[0], out[1], out[2], out[3] = n0, n1, n2, n3


@njit(inline="always")
def _better(x, i, y, j):
    """Whether score x of vocabulary id i goes before score y of id j: higher score first, then smaller id."""
    return x > y or (x == y and i < j)


@njit(inline="always")
def _insert(x, v, i, ts, tc, ti):
    """Insert score x (column v, vocabulary id i) into the sorted top-N ``ts, tc, ti [N]`` if it belongs there."""
    n = ts.shape[0]
    if not _better(x, i, ts[n - 1], ti[n - 1]):
        return
    j = n - 1
    while j > 0 and _better(x, i, ts[j - 1], ti[j - 1]):
        ts[j], tc[j], ti[j] = ts[j - 1], tc[j - 1], ti[j - 1]
        j -= 1
    ts[j], tc[j], ti[j] = x, v, i


@njit(inline="always")
def _visit(v, b, x, active, need, got, left, samp, topb, ids, ts, tc, ti):
    """One score (column v, bin b, value x) of a bin the scan still serves; returns 1 when the bin is done."""
    if got[b] < need[b]:
        samp[b, got[b]] = v
        got[b] += 1
    if b >= topb:
        _insert(x, v, ids[v], ts, tc, ti)
        left[b] -= 1
    if got[b] == need[b] and left[b] == 0:
        active[b] = False
        return 1
    return 0


@njit(inline="always")
def _idle_run(active, mode):
    """The run of bins around ``mode`` that the scan no longer serves, as (lo, hi); (1, 0) when ``mode`` is served."""
    if active[mode]:
        return 1, 0
    lo, hi = mode, mode
    while lo > 0 and not active[lo - 1]:
        lo -= 1
    while hi < HIST_BINS - 1 and not active[hi + 1]:
        hi += 1
    return lo, hi


@njit(cache=True)
def row_ranks(row, cols, t, rank, bins, cmin, cmax):
    """rank[k] = 1 + #{v : row[v] > t[k]} for the tracked columns ``cols, t [K]`` (ties counted exactly as a sort
    would), by vectorised comparison passes over the row (:func:`row_count_above`), four tokens each, highest
    scores first so that a pass's four share close bins and skip most of the row (``bins [V]``, ``cmin, cmax``: see
    :func:`row_bins`). A repeated column is counted once."""
    wide_vectors()
    K = cols.shape[0]
    first = np.arange(K)  # [K] first k with the same column
    uniq = np.zeros(K, np.int64)  # [K] tracked tokens to count (first m entries)
    m = 0
    for k in range(K):
        for j in range(k):
            if cols[j] == cols[k]:
                first[k] = j
                break
        if first[k] == k:
            uniq[m] = k
            m += 1
    order = uniq[:m][np.argsort(-t[uniq[:m]])]  # [m] highest score first
    tq, cq = np.empty(4, np.float32), np.empty(4, np.int64)
    for i in range(0, m, 4):
        lo, hi = 255, 0
        for j in range(4):
            k = order[min(i + j, m - 1)]
            tq[j] = t[k]
            lo = min(lo, bins[cols[k]])
            hi = max(hi, bins[cols[k]])
        row_count_above(row, tq, cq, cmin, cmax, lo, hi)
        for j in range(min(4, m - i)):
            rank[order[i + j]] = 1 + cq[j]
    for k in range(K):
        rank[k] = rank[first[k]]


@njit(cache=True)
def row_scan(row, bins, counts, samp, ids, top_cols, top_score, cmin, cmax):
    """Samples and the row's own top-N (``row [V]`` float32, ``bins [V]`` uint8, ``counts [HIST_BINS]``, ``ids [V]``
    vocabulary id of each column, ``cmin, cmax`` from :func:`row_bins`; writes ``samp [HIST_BINS, n]``,
    ``top_cols, top_score [N]``).

    Samples: every column of each sparse bin b (``counts[b] <= n``, ``n = samp.shape[1]``), in column order (the
    histogram's tails; denser bins list none).
    Top-N: the highest bins holding N scores in all (from ``counts``) hold the top N; the scan serves them too,
    inserting each of their scores into a tiny sorted array (higher score first, equal scores by smaller id).
    The scan stops once every sparse bin and every top bin has been seen whole. Sparse tail bins keep it going
    through most of the row, so it skips every step of SKIP scores whose bins (from :func:`row_bins`) all lie in the
    run of bins around the fullest one that it no longer serves: it visits ~10% of the scores of a real row.
    """
    wide_vectors()
    n = samp.shape[1]
    N = top_cols.shape[0]
    topb = HIST_BINS  # [BINS] bins >= topb hold the top N (none when N = 0)
    if N > 0:
        acc = 0
        topb = HIST_BINS - 1
        while topb > 0:
            acc += counts[topb]
            if acc >= N:
                break
            topb -= 1
    ts = np.full(N, -np.inf, np.float32)  # [N] the top N so far: scores, columns, ids (empty slots lose to all)
    tc = np.full(N, -1, np.int64)
    ti = np.full(N, np.iinfo(np.int64).max, np.int64)
    need = np.where(counts <= n, counts, 0)  # [BINS] samples to take: every member of each sparse bin
    got = np.zeros(HIST_BINS, np.int64)
    left = np.zeros(HIST_BINS, np.int64)  # [BINS] members of a top bin not yet seen
    active = np.zeros(HIST_BINS, np.bool_)  # [BINS] bins the scan still serves
    n_active = 0
    for b in range(HIST_BINS):
        if b >= topb:
            left[b] = counts[b]
        active[b] = need[b] > 0 or left[b] > 0
        n_active += active[b]
    mode = np.argmax(counts)  # the fullest bin: the run of served-out bins around it can be skipped
    lo, hi = _idle_run(active, mode)
    n_steps = cmin.shape[0]
    v = 0
    while n_active > 0:
        if v % SKIP == 0:
            c = v // SKIP
            if c < n_steps and cmin[c] >= lo and cmax[c] <= hi:  # a step wholly in served-out bins: nothing to do
                v += SKIP
                continue
        b = bins[v]
        if active[b] and _visit(v, b, row[v], active, need, got, left, samp, topb, ids, ts, tc, ti):
            n_active -= 1
            lo, hi = _idle_run(active, mode)
        v += 1
    for j in range(N):
        top_cols[j] = tc[j]
        top_score[j] = ts[j]


@njit(inline="always")
def _exp_parts(row, shift, q, bits, v0, v1):
    """:func:`row_exp_parts` of columns ``v0 .. v1 - 1``."""
    for v in range(v0, v1):
        d = row[v] - shift
        if d < -EXP_CLAMP:
            d = -EXP_CLAMP
        k = np.floor(d * _LOG2E + np.float32(0.5))
        r = (d - k * _LN2_HI) - k * _LN2_LO
        p = np.float32(1 / 5040)
        p = p * r + np.float32(1 / 720)
        p = p * r + np.float32(1 / 120)
        p = p * r + np.float32(1 / 24)
        p = p * r + np.float32(1 / 6)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        q[v] = p * r + np.float32(1.0)
        bits[v] = (np.int32(k) + np.int32(127)) << np.int32(23)


@njit(cache=True, fastmath=_POLY)
def row_exp_parts(row, shift, q, bits):
    """exp(d), d = max(row - shift, -EXP_CLAMP), in two factors: ``q [V]`` float32 = exp(r) and ``bits [V]``
    int32 = the float32 bits of 2^k, where d = k ln2 + r, |r| <= ln2 / 2 (vectorised; exp(r) by its degree-7
    Taylor polynomial: relative error < 1e-8 before float32 rounding; k >= -116 keeps 2^k normal)."""
    wide_vectors()
    V = row.shape[0]
    n = V - V % SKIP
    for c in range(n // SKIP):
        _exp_parts(row, shift, q, bits, c * SKIP, c * SKIP + SKIP)  # constant trip count: vectorised
    _exp_parts(row, shift, q, bits, n, V)


@njit(cache=True)
def row_exp(row, shift, out, bits):
    """``out [V] = exp(max(row - shift, -EXP_CLAMP))`` float32 (``bits [V]`` int32 scratch)."""
    wide_vectors()
    row_exp_parts(row, shift, out, bits)
    scale = bits.view(np.float32)  # [V] 2^k
    for v in range(row.shape[0]):
        out[v] *= scale[v]


@njit(cache=True)
def window_runs(cmax, lo, runs, V):
    """The columns of a row of V scores that its softmax sums visit, as runs ``runs[2 i] .. runs[2 i + 1] - 1``
    (int64, room for ``V // SKIP + 1`` runs); returns how many. A whole step of SKIP scores is visited when its
    highest bin (``cmax``, from :func:`row_bins`) is at least ``lo``, the bin of max - EXP_WINDOW: a step wholly
    below that bin holds only scores below the window (bins are monotone in the score). The row's tail (``V % SKIP``
    scores) always is. Runs of consecutive steps keep the loops long (the columns' order puts most of a row's window
    together)."""
    n = cmax.shape[0]
    n_runs = 0
    c = 0
    while c < n:
        if cmax[c] >= lo:
            c1 = c + 1
            while c1 < n and cmax[c1] >= lo:
                c1 += 1
            runs[2 * n_runs], runs[2 * n_runs + 1] = c * SKIP, c1 * SKIP
            n_runs += 1
            c = c1
        else:
            c += 1
    if n_runs > 0 and runs[2 * n_runs - 1] == n * SKIP:
        runs[2 * n_runs - 1] = V  # the tail extends the last run
    elif V > n * SKIP:
        runs[2 * n_runs], runs[2 * n_runs + 1] = n * SKIP, V
        n_runs += 1
    return n_runs


@njit(cache=True, fastmath=_POLY)
def row_exp_parts_at(row, shift, q, bits, runs, n_runs):
    """:func:`row_exp_parts` of the columns in ``runs`` (see :func:`window_runs`).

    Each run is worked on through views that start at 0 (here and in the sums below): numba then knows the indices
    are not negative and emits no wrap-around select, which would keep LLVM from vectorising (4x slower)."""
    wide_vectors()
    for i in range(n_runs):
        v0, v1 = runs[2 * i], runs[2 * i + 1]
        r, qq, bb = row[v0:v1], q[v0:v1], bits[v0:v1]
        n = (v1 - v0) // SKIP
        for c in range(n):
            _exp_parts(r, shift, qq, bb, c * SKIP, c * SKIP + SKIP)  # constant trip count: vectorised
        _exp_parts(r, shift, qq, bb, n * SKIP, v1 - v0)


@njit(cache=True, fastmath=_REDUCE)
def row_softmax_sums_at(row, m, q, scale, runs, n_runs):
    """(E, F) = (sum e, sum e (row - m)) in float64 over the columns in ``runs`` (see :func:`window_runs`),
    ``e = q * scale = exp(row - m)`` (see row_exp_parts_at)."""
    wide_vectors()
    m64 = np.float64(m)
    e_sum, f_sum = 0.0, 0.0
    for i in range(n_runs):
        v0, v1 = runs[2 * i], runs[2 * i + 1]
        r, qq, sc = row[v0:v1], q[v0:v1], scale[v0:v1]
        for v in range(r.shape[0]):
            e = np.float64(qq[v] * sc[v])
            e_sum += e
            f_sum += e * (np.float64(r[v]) - m64)
    return e_sum, f_sum


@njit(cache=True, fastmath=_REDUCE)
def row_kl_dot(row, m, pf):
    """(A, P) = (sum pf (row - m), sum pf) in float64 for the final distribution ``pf [V]`` float32: a final row's own
    KL (after its pf exists); other rows get these sums from :func:`row_moments`."""
    wide_vectors()
    m64 = np.float64(m)
    acc, tot = 0.0, 0.0
    for v in range(row.shape[0]):
        p = np.float64(pf[v])
        acc += p * (np.float64(row[v]) - m64)
        tot += p
    return acc, tot


@njit(cache=True)
def row_stats(r, row, cols, pf, mean, std, mx, lse, entropy, kl, tscore, rank, tbin, counts, samp, bins, q, bits, ids,
              top_cols, top_score, nxt, runs, steps):
    """All statistics of row ``r`` (``row [V]``, tracked ``cols [K]``) into the block outputs (see
    :func:`block_stats`). KL too when ``pf [V]``, its position's final distribution, has V entries (final rows
    pass an empty one). ``bins [V]`` uint8, ``q [V]`` float32, ``bits [V]`` int32, ``runs [2 (V // SKIP + 1)]``
    int64 and ``steps [2, V // SKIP]`` uint8 are scratch; ``ids [V]``: the vocabulary id of each column (ties of the row's own top-N into ``top_cols,
    top_score [R, N]``).

    The exps and softmax sums visit only the steps of SKIP scores holding a score within EXP_WINDOW of the row's
    max (:func:`window_runs`); KL's dot product with ``pf`` visits every score, in the moments' loop (a final
    distribution is rarely negligible anywhere: real final rows lie within 30 nats of their max).

    ``nxt``: the next row this thread will read (empty for none), prefetched into L2 (:func:`prefetch_l2`) during
    the bins pass, a few cache lines per step of SKIP scores: the first pass over a row otherwise waits for it
    from L3 or memory (~8 GB/s per core here, ~20% of the statistics' time)."""
    wide_vectors()
    m, mu, sd, acc, tot = row_moments(row, pf)  # acc: sum pf (s - s[0]) (KL's; 0 for final rows)
    mean32 = np.float32(mu)
    std32 = max(np.float32(sd), np.float32(1e-12))
    a = np.float32(BIN_SCALE / np.float64(std32))  # = lenskit.stats.bin_scale(std)
    mean[r], std[r], mx[r] = mean32, std32, m
    cmin, cmax = steps[0], steps[1]  # [V // SKIP] lowest and highest bin in each whole step
    row_bins(row, mean32, a, bins, counts[r], cmin, cmax, nxt)
    for k in range(cols.shape[0]):
        tscore[r, k] = row[cols[k]]
        tbin[r, k] = bins[cols[k]]
    row_ranks(row, cols, tscore[r], rank[r], bins, cmin, cmax)
    row_scan(row, bins, counts[r], samp[r], ids, top_cols[r], top_score[r], cmin, cmax)
    lo = z_bin(m - EXP_WINDOW, mean32, a)  # steps wholly below this bin hold no score within the window
    n_runs = window_runs(cmax, lo, runs, row.shape[0])
    if n_runs == 0:  # only without a finite max (its own step is always visited): the whole row, as before the window
        runs[0], runs[1], n_runs = 0, row.shape[0], 1
    row_exp_parts_at(row, m, q, bits, runs, n_runs)
    e_sum, f_sum = row_softmax_sums_at(row, m, q, bits.view(np.float32), runs, n_runs)
    log_e = math.log(e_sum)
    lse[r] = np.float64(m) + log_e
    entropy[r] = log_e - f_sum / e_sum
    # KL = lse - E_pf[s] - H(final), E_pf[s] = s[0] + acc / tot (pf renormalised: its float32 rounding cancels);
    # needs H(final): the caller finishes it (kl holds lse - E_pf[s] until then)
    kl[r] = log_e - (acc / tot + (np.float64(row[0]) - np.float64(m)))


@njit(parallel=True, cache=True)
def block_stats(s, n_stages, tracked, n_threads, mean, std, mx, lse, entropy, kl, tscore, rank, tbin, counts, samp,
                ids, top_cols, top_score):
    """All statistics of ``s [R, V]`` (float32, C-contiguous), R = c * n_stages rows ordered (position, stage).

    tracked ``[c, K]`` int64 columns per position; ``n_threads`` row groups run in parallel. Outputs (written):
    mean, std ``[R]`` float32; mx, lse, entropy, kl ``[R]`` float64; tscore ``[R, K]`` float32; rank, tbin
    ``[R, K]`` int64; counts ``[R, HIST_BINS]`` int64; samp ``[R, HIST_BINS, samples]`` int64 sample columns (all
    ``counts`` of each bin with ``counts <= samples`` are set); top_cols ``[R, N]`` int64 and top_score ``[R, N]`` float32:
    each row's own N highest scores, ties by smaller vocabulary id ``ids [V]`` int64 (the id of each column).

    Final rows go first (their softmax pf ``[c, V]`` is needed by every stage row of the position); then every
    other row in one visit: statistics and its KL dot product while the row is in cache, and meanwhile the thread's
    next row is prefetched into L2 (:func:`prefetch_l2`). Thread g takes rows g, g + n_threads, ...: late stages
    cost less than early ones (their rank passes skip most of the row), so contiguous ranges would leave a thread
    idle.
    """
    wide_vectors()
    R, V = s.shape
    c = R // n_stages
    pf = np.empty((c, V), np.float32)  # [c, V] final distribution per position
    none = np.empty(0, np.float32)
    for p in prange(c):
        wide_vectors()  # each prange body becomes a function of its own
        rf = p * n_stages + n_stages - 1
        bins, q, bits = np.empty(V, np.uint8), np.empty(V, np.float32), np.empty(V, np.int32)
        runs = np.empty(2 * (V // SKIP + 1), np.int64)
        steps = np.empty((2, V // SKIP), np.uint8)
        row_stats(rf, s[rf], tracked[p], none, mean, std, mx, lse, entropy, kl, tscore, rank, tbin, counts, samp,
                  bins, q, bits, ids, top_cols, top_score, none, runs, steps)
        row_exp(s[rf], np.float32(lse[rf]), pf[p], bits)
        acc, tot = row_kl_dot(s[rf], mx[rf], pf[p])
        kl[rf] = lse[rf] - mx[rf] - acc / tot
    for g in prange(n_threads):
        wide_vectors()
        bins, q, bits = np.empty(V, np.uint8), np.empty(V, np.float32), np.empty(V, np.int32)
        runs = np.empty(2 * (V // SKIP + 1), np.int64)
        steps = np.empty((2, V // SKIP), np.uint8)
        for r in range(g, R, n_threads):  # every n_threads-th row: each thread gets early and late stages alike
            p = r // n_stages
            if r % n_stages != n_stages - 1:  # final rows are done
                n = r + n_threads  # the next row this thread reads
                if n % n_stages == n_stages - 1:
                    n += n_threads
                row_stats(r, s[r], tracked[p], pf[p], mean, std, mx, lse, entropy, kl, tscore, rank, tbin, counts,
                          samp, bins, q, bits, ids, top_cols, top_score, s[n] if n < R else none, runs, steps)
    for r in prange(R):
        kl[r] = max(kl[r] - entropy[(r // n_stages) * n_stages + n_stages - 1], 0.0)


@njit(cache=True)
def flat_samples(counts, samp, n):
    """The sample table ``samp [R, HIST_BINS, >= n]`` (all ``counts`` entries of each sparse bin, ``counts <= n``,
    are set) -> (rows, bins, cols) ``[m]`` int64 of every sample, sorted by (row, bin, column):
    ``lenskit.stats.sample_lists`` without its dozen tensor ops (which cost more than a block's scan)."""
    R, B = counts.shape
    m = 0
    for r in range(R):
        for b in range(B):
            m += counts[r, b] if counts[r, b] <= n else 0
    rows, bins, cols = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
    i = 0
    for r in range(R):
        for b in range(B):
            for j in range(counts[r, b] if counts[r, b] <= n else 0):
                rows[i], bins[i], cols[i] = r, b, samp[r, b, j]
                i += 1
    return rows, bins, cols


@njit(cache=True, fastmath=_REDUCE)
def _scores_at_least(row, lo, hi, t):
    """``#{v in [lo, hi) : row[v] >= t}`` as a float32 sum of ones (vectorised; exact below 2^24)."""
    one, zero = np.float32(1.0), np.float32(0.0)
    c = zero
    for v in range(lo, hi):
        c += one if row[v] >= t else zero
    return c


@njit(parallel=True, cache=True)
def rows_top(s, rows, k, ids, out):
    """``out [len(rows), k]``: the columns of the k highest scores of each row ``s[rows[i]]`` (float32, C-contiguous),
    higher score first, equal scores by smaller vocabulary id ``ids [V]`` -- :func:`lenskit.stats.stage_top_torch`'s
    order, for the final rows' top-k (the tracked tokens) without its [rows, V] gather and sorts.

    One pass per row: a step of RANK_STEP scores none of which reaches the current k-th score (a vectorised count)
    is skipped; the others go through the sorted insertion of the kernels' own top-N. ``k <= V``."""
    wide_vectors()
    V = s.shape[1]
    n = V // RANK_STEP * RANK_STEP
    for i in prange(rows.shape[0]):
        wide_vectors()
        row = s[rows[i]]
        ts = np.full(k, -np.inf, np.float32)
        tc = np.full(k, -1, np.int64)
        ti = np.full(k, np.iinfo(np.int64).max, np.int64)  # any real id beats an empty slot on a tie at -inf
        for c in range(0, n, RANK_STEP):
            if _scores_at_least(row, c, c + RANK_STEP, ts[k - 1]) == 0:
                continue
            for v in range(c, c + RANK_STEP):
                _insert(row[v], v, ids[v], ts, tc, ti)
        for v in range(n, V):
            _insert(row[v], v, ids[v], ts, tc, ti)
        out[i] = tc
