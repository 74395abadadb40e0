"""Scoring: the lens applied to stage rows in fixed-shape GEMM blocks, vocabulary columns in a fixed order,
at a precision mode -- the first step of the engine (scoring -> kernels -> planning -> :mod:`lenskit.engine`).

* Every matmul call has the same shape (a whole number of positions x all stages, ~256 rows), so each row's float32
  scores -- and therefore every rank, tie and histogram -- are identical however positions are chunked.
* Columns are in a fixed order from the lens weight (:func:`column_order`): tokens that score low in most contexts
  sit together, so the kernels skip whole steps of columns.
* ``precision="fast"``: a bfloat16 GEMM, a provable per-row bound on its error, and an exact float32 re-computation
  of the few entries that matter, so top-k and ranks equal float32 mode's.
* ``precision="bf16"``: the scores are *defined* as the GEMM of bfloat16-rounded inputs (the normed stream and the
  lens weight, as a bf16 model holds them) with float32 accumulation and float32 output -- what a GPU's tensor cores
  compute at full speed (``torch.mm(..., out_dtype=float32)``). Every statistic is exact for these scores (no bound,
  no re-check); they may order near-ties differently from float32 mode. On devices without a float32-output bf16
  GEMM (CPUs) the same scores come from a float32 GEMM of the rounded inputs (exact products, not faster).
"""

from __future__ import annotations

import torch

from .lens import Lens

BLOCK_BYTES = 192 << 20  # target size of one matmul block's float32 output (3/4 of the default CPU budget)
BLOCK_ROWS = (256, 1024)  # rows per matmul call, within these bounds: larger blocks run the GEMM faster (244 rows:
# 2.74 s, 976 rows: 2.32 s for the test paragraph's 11,590 x 576 x 49,152 on the README's Xeon)
GPU_BLOCK_BYTES, GPU_BLOCK_ROWS = 1 << 30, (1024, 8192)  # on CUDA: bigger GEMMs keep the tensor cores busy (a
# 195-row block of Llama-3-8B's 128,256 x 4,096 head is too small a GEMM for an H100/H200)
MIN_COLS = 16  # narrower column gathers take another BLAS path (different rounding); pad up to this
DENSE_FRACTION = 0.05  # above this share of the vocabulary, an exact re-check computes the whole float32 block
BF16_U = 2.0**-8  # unit roundoff of bfloat16
F32_U = 2.0**-24


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> the fastest mode whose results are identical to float32's, measured per device: ``float32``.

    On CPUs, torch's bfloat16 GEMM rounds its output to bfloat16 (``out_dtype=float32`` is CUDA-only), so the bound
    the fast mode must prove is wide and its exact re-check costs more than the float32 GEMM saves (35-45x the float32
    floor on the README's Xeon). An fp16 screen (0.67x the float32 GEMM there, with AVX-512 FP16) would not pay
    either: the re-check of the tracked tokens' uncertain entries covers 92-98% of a block's columns. On an H200 the
    fast mode took 3.3 s where float32 took 0.20 s (128 positions at Llama-3-8B shapes; its re-checks must recompute
    whole float32 blocks there). ``bf16`` is the GPU's full-speed
    mode, but its scores are a different definition (bf16-rounded inputs), so ``auto`` never picks it.
    """
    return "float32" if precision == "auto" else precision


@torch.no_grad()  # not inference_mode: the ids index the (maybe grad-requiring) weight later
def column_order(weight: torch.Tensor) -> torch.Tensor:
    """The order of the score columns: vocabulary ids by their logit along the head's mean row, ``w_v . mean_u
    w_u``, highest first (ties by id). ``weight [V, D]`` -> ``[V]`` int64.

    Logits share a large common component, so this puts the tokens that score low in most contexts next to each
    other, and most of a row's scores far below its max fill whole steps of columns. The fused kernels skip such
    steps (exps below their window, rank passes below their tokens' bins, the samples scan outside the sparse
    bins): over the rows of the README's test paragraph, 37% of the steps of 64 columns hold a score within 30 of
    their row's max in this order, 74% in a random one. Only speed depends on it: every statistic is a function of
    the set of scores (samples are listed by vocabulary id), up to the rounding of float64 sums."""
    w = weight.float()  # [V, D]
    return torch.argsort(w @ w.mean(0), descending=True, stable=True)


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows of one matmul block before rounding to whole positions: ~BLOCK_BYTES of float32 scores within BLOCK_ROWS
    (GPU_BLOCK_* on CUDA) -- from the vocabulary and the device kind only."""
    cuda = torch.device(device).type == "cuda"
    size, (lo, hi) = (GPU_BLOCK_BYTES, GPU_BLOCK_ROWS) if cuda else (BLOCK_BYTES, BLOCK_ROWS)
    return min(hi, max(lo, size // (4 * vocab)))


_F32OUT: dict = {}  # device type -> whether torch.mm(bf16, bf16, out_dtype=float32) works there


def bf16_f32out(device: torch.device) -> bool:
    """Whether ``device`` has a bfloat16 GEMM with float32 output (CUDA in recent torch; not CPUs), tried once."""
    dev = torch.device(device)
    if dev.type not in _F32OUT:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=dev)
            _F32OUT[dev.type] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _F32OUT[dev.type] = False
    return _F32OUT[dev.type]


def mm_bf16(x: torch.Tensor, scorer: Scorer, out: torch.Tensor) -> None:
    """bf16 mode's scores of one block: ``bf16(x) @ bf16(W)`` accumulated and returned in float32, into ``out``."""
    if bf16_f32out(x.device):
        torch.mm(x.to(torch.bfloat16), scorer.w_t16, out_dtype=torch.float32, out=out)  # [B, V] written in place
    else:  # float32 GEMM of the rounded inputs: each product exact, float32 accumulation
        torch.matmul(x.to(torch.bfloat16).float(), scorer.w_t, out=out)  # [B, V]


class Scorer:
    """The lens prepared for batched scoring on ``device``, columns in a fixed order (:func:`column_order`).

    ``precision="float32"``: scores are float32 GEMM results. ``precision="fast"``: scores come from a bfloat16
    GEMM and ``bound[r]`` bounds ``|fast - float32|`` for every score of row r; :meth:`exact` recomputes chosen
    entries bit-identically to the float32 mode (same GEMM block shape), and :meth:`top_k` uses it, so top-k and
    ranks equal float32 mode's.
    """

    def __init__(self, lens: Lens, device: torch.device, norm: bool, precision: str):
        # a lens of lenskit.lenses (an affine per-stage translator before the model's head) or a bare head (Lens)
        tr = getattr(lens, "translator", None)
        self.translator = tr.to(device=device) if tr is not None else None  # None: the logit lens
        lens = getattr(lens, "head", lens)
        self.lens = lens.to(device=device, dtype=torch.float32)
        self.device = device = torch.device(device)
        self.norm = norm
        self.fast = precision == "fast"
        self.dense_recheck = self.device.type != "cpu"  # fast mode's re-checks by whole blocks (see exact())
        self.bf16 = precision == "bf16"
        V = lens.vocab_size
        self.col_ids = column_order(self.lens.weight).to(device)  # column -> vocab id
        self.inv = torch.empty_like(self.col_ids)
        self.inv[self.col_ids] = torch.arange(V, device=device)  # vocab id -> column
        w = self.lens.weight[self.col_ids]  # [V, D] rows in column order
        # [D, V]: on CPUs a transposed view (BLAS reads it as is: same speed and bit-identical scores, and no 113 MB
        # transpose per export for the default model); on CUDA a contiguous copy (cheap there; the layout measured)
        self.w_t = w.t().contiguous() if self.device.type == "cuda" else w.t()
        self.bias = self.lens.bias[self.col_ids] if self.lens.bias is not None else None
        if self.fast or self.bf16:
            self.w_t16 = self.w_t.to(torch.bfloat16)  # [D, V]
        if self.fast:
            self.w_norm_max = w.norm(dim=1).max().item()
        if self.bf16 and not bf16_f32out(device):
            self.w_t = self.w_t16.float()  # [D, V] the rounded weight, multiplied exactly in float32
        self.ws = None
        self.block = BLOCK_ROWS[0]
        self.x = None  # [N', D] normed rows of the last scored chunk
        self._full: dict = {}
        self.bound = None  # [N] error bound per row (zeros in float32 mode)

    def set_block(self, n_stages: int) -> int:
        """Fix the matmul block to a whole number of positions (~BLOCK_BYTES of scores, BLOCK_ROWS bounds); returns
        positions per block.

        Every matmul call has this same shape, so each row's float32 scores are independent of how positions are
        chunked (the memory budget, ``--positions``); it depends only on the model's stage count and vocabulary (and
        on the device kind: CUDA takes bigger blocks).
        """
        per = max(1, block_rows(self.w_t.shape[1], self.device) // n_stages)
        self.block = per * n_stages
        self.n_stages = n_stages
        return per

    def workspace(self, rows: int, stats_rows: int):
        """Buffers for ``rows`` score rows (whole blocks) and ``stats_rows`` statistics rows, reused by every chunk."""
        from .stats import Workspace

        rows = -(-rows // self.block) * self.block
        if self.ws is None or not self.ws.fits(rows, stats_rows, self.lens.vocab_size):
            self.ws = None
            self.ws = Workspace(rows, stats_rows, self.lens.vocab_size, self.device)
        return self.ws

    def _finish(self, out: torch.Tensor, cols=None) -> torch.Tensor:
        if self.bias is not None:
            out += self.bias if cols is None else self.bias[cols]
        return self.lens.finish(out)

    @torch.inference_mode()
    def scores(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, D]`` stream -> ``[N, V]`` float32 scores in column order (into ``out`` if given).

        With a translator, rows are ordered (position, stage) over whole positions (stage = row % n_stages)."""
        h = h.to(self.device, torch.float32)
        if self.translator is not None:
            h = self._translate(h)
        x = self.lens.normed(h, self.norm)  # [N, D]
        n = x.shape[0]
        B = self.block
        padded = -(-n // B) * B
        if padded != n:
            x = torch.cat([x, x.new_zeros(padded - n, x.shape[1])])  # [N', D]
        self.x = x
        self._full = {}  # block -> its float32 scores, computed on demand by exact()
        if out is None:
            out = torch.empty(padded, self.w_t.shape[1], device=self.device)
        for i in range(0, padded, B):  # same GEMM shape every call
            if self.fast:
                out[i: i + B].copy_(torch.matmul(x[i: i + B].to(torch.bfloat16), self.w_t16))  # [B, V]
            elif self.bf16:
                mm_bf16(x[i: i + B], self, out[i: i + B])  # [B, V]
            else:
                torch.matmul(x[i: i + B], self.w_t, out=out[i: i + B])  # [B, V]
        out = out[:n]
        if self.fast:
            self.bound = self._bound(x[:n], out)
        out = self._finish(out)
        if not self.fast:
            self.bound = torch.zeros(n, device=self.device)
        return out

    def _translate(self, h: torch.Tensor) -> torch.Tensor:
        """Each row through its stage's affine map, one fixed-shape batched matmul per GEMM block (so a row's result
        never depends on the chunk): ``[N, D]`` rows ordered (position, stage) -> ``[N, D]``."""
        S, B = self.n_stages, self.block
        n, D = h.shape
        if n % S:
            raise ValueError(f"{n} rows are not whole positions of {S} stages")
        padded = -(-n // B) * B
        if padded != n:
            h = torch.cat([h, h.new_zeros(padded - n, D)])  # [N', D]
        out = torch.empty_like(h)
        per = B // S
        for i in range(0, padded, B):
            out[i: i + B] = self.translator.blocks(h[i: i + B].view(per, S, D)).reshape(B, D)  # [B, D]
        return out[:n]

    def _bound(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Per-row bound on |bfloat16 GEMM - float32 GEMM| (after bias and logit transforms).

        |x.w - bf16(x).bf16(w)| <= (2u + u^2) sum|x_i w_i| (input rounding) + u |result| (output rounding), plus
        float32 accumulation error of both GEMMs (<= 2 D u32 sum|x_i w_i|); sum|x_i w_i| <= |x| max|w_v| (Cauchy-
        Schwarz). Logit transforms: a scale multiplies the bound; a softcap is 1-Lipschitz.
        """
        D = x.shape[1]
        absdot = x.norm(dim=1) * self.w_norm_max  # [N]
        top = raw.abs().amax(dim=1)  # [N]
        e = (2 * BF16_U + BF16_U**2 + 2 * D * F32_U) * absdot + BF16_U * top
        if self.bias is not None:
            e = e + 4 * F32_U * (top + self.bias.abs().max())
        if self.lens.scale is not None:
            e = e * abs(self.lens.scale)
        if self.lens.divide is not None:
            e = e / abs(self.lens.divide)
        return e * 1.01 + 1e-6 * (1 + top)  # margin for the bound's own rounding

    @torch.inference_mode()
    def exact(self, rows: torch.Tensor, cols: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """Float32-mode scores at (rows, cols) of the last chunk, bit-identical to a float32-mode run.

        Narrow requests gather just those columns; once a block needs more than DENSE_FRACTION of the vocabulary
        its full float32 block is computed once and kept for the rest of the chunk (so the worst case costs one
        float32 GEMM on top of the bfloat16 one, never several).
        """
        if not self.fast:
            return s[rows, cols]
        out = torch.empty(rows.shape[0], device=self.device)
        dense = self.dense_recheck  # cuBLAS may pick another kernel (split-K) for a narrow gather: on GPUs
        # only a whole block of the same shape reproduces float32 mode's scores bit for bit (seen on an H200)
        B, V = self.block, self.w_t.shape[1]
        blocks = rows // B
        for b in torch.unique(blocks).tolist():
            sel = torch.nonzero(blocks == b).flatten()
            local = rows[sel] - b * B
            full = self._full.get(b)
            ucols = None if full is not None else torch.unique(cols[sel])
            if full is None and (dense or ucols.numel() > DENSE_FRACTION * V):
                full = self._full[b] = self._finish(torch.matmul(self.x[b * B: (b + 1) * B], self.w_t))  # [B, V]
            if full is not None:
                out[sel] = full[local, cols[sel]]
                continue
            if ucols.numel() < MIN_COLS:  # keep the GEMM on the same kernel as the full-width one
                ucols = torch.unique(torch.cat([ucols, torch.arange(MIN_COLS * 2, device=self.device)]))
            part = self._finish(torch.matmul(self.x[b * B: (b + 1) * B], self.w_t[:, ucols]), ucols)  # [B, n]
            out[sel] = part[local, torch.searchsorted(ucols, cols[sel])]
        return out

    @torch.inference_mode()
    def top_k(self, s: torch.Tensor, k: int, final_rows: torch.Tensor) -> torch.Tensor:
        """Columns of the k highest float32 scores of each final row, ties broken by smaller vocabulary id. [c, k]

        Exact scores: :func:`lenskit.stats.rows_top` (one pass per row on CPU). Fast mode: vectorised (no per-row
        loop or device sync per row) :func:`lenskit.stats.stage_top_torch` on the final rows, whose candidates
        (scores >= k-th - 2 bound) are re-checked with :meth:`exact`."""
        from .stats import rows_top, stage_top_torch

        rows = final_rows
        if not self.fast:  # exact float32 scores: one pass per row (the numba kernel on CPU)
            return rows_top(s, rows, k, self.col_ids)

        def exact(rr, cc, _s):  # rows of the final-row view -> rows of the chunk
            return self.exact(rows[rr], cc, s)

        cols, _ = stage_top_torch(s[rows], k, self.col_ids, self.bound[rows], exact)
        return cols
