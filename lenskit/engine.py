"""The engine: stage states -> lens scores (:mod:`lenskit.scoring`) -> exact per-row statistics (:mod:`lenskit.stats`,
compiled kernels) for chosen positions of one prompt, chunk by chunk (:mod:`lenskit.planning`).

Never holds ``[S, T, V]``: a chunk is ``c`` positions x all S stages of scores, reused buffer by buffer; only the small
per-row results leave the device. Yields one :class:`Group` of results per statistics group, in position order;
:mod:`lenskit.export` turns them into the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .planning import contiguous_groups, plan_chunks
from .schema import HIST_SAMPLES
from .scoring import Scorer
from .stats import ChunkStats, chunk_stats, fused_enabled, triton_available


@dataclass
class Group:
    """Statistics of consecutive chosen positions: rows ordered (position, stage)."""

    positions: list[int]
    tracked: list[list[int]]  # per position: vocabulary ids of the final top-k, then the next token and --track tokens
    stats: ChunkStats


def tracked_tokens(scorer: Scorer, top_cols: torch.Tensor, group: list[int], token_ids: list[int],
                   track_ids: list[int]) -> list[list[int]]:
    """Per position: final top-k ids, then the actual next token and the user's tokens when not already there."""
    out = []
    top_ids = scorer.col_ids[top_cols].tolist()  # [c][k] (one device -> host copy per chunk)
    for i, p in enumerate(group):
        ids = top_ids[i]
        nxt = token_ids[p + 1] if p + 1 < len(token_ids) else None
        for tid in ([nxt] if nxt is not None else []) + track_ids:
            if tid not in ids:
                ids.append(tid)
        out.append(ids)
    return out


@torch.inference_mode()
def prompt_stats(scorer: Scorer, stages_of, n_stages: int, token_ids: list[int], positions: list[int], top_k: int,
                 track_ids: list[int], budget: int, samples: int = HIST_SAMPLES, progress=None,
                 tracked_of: dict | None = None, stage_top: int = 0) -> Iterator[Group]:
    """Statistics for the chosen ``positions`` of one prompt; ``stages_of(p0, p1)`` returns stages ``[S, p1-p0, D]``.

    ``progress(n)``, if given, is called as each chunk of n positions is done. ``tracked_of``: ``{position: tracked
    ids}`` to follow instead of this lens's own final top-k (the second lens of an export follows the first's).
    ``stage_top``: N, each (position, stage) row's own top-N tokens (``stats.stage_top_cols``; 0 for none)."""
    # the Triton kernels (CUDA) and the numba kernel (CPU) need no [rows, V] workspace: a statistics group can be a
    # whole GEMM block on CUDA, a few positions on CPU
    wide = scorer.device.type == "cuda" and not scorer.fast and triton_available()
    fused = scorer.device.type == "cpu" and not scorer.fast and fused_enabled()
    plan = plan_chunks(n_stages, scorer.lens.vocab_size, scorer.set_block(n_stages), budget, gpu=wide, fused=fused)
    for chunk in contiguous_groups(positions, plan.chunk):
        h = stages_of(chunk[0], chunk[-1] + 1)  # [S, c', D]
        h = h[:, [p - chunk[0] for p in chunk]]  # [S, c, D]
        c = len(chunk)
        rows = h.permute(1, 0, 2).reshape(c * n_stages, -1)  # [c*S, D] (position, stage)
        ws = scorer.workspace(plan.chunk * n_stages, plan.stats * n_stages)
        s = scorer.scores(rows, out=ws.scores)  # [R, V]
        if tracked_of is not None:
            tracked = [tracked_of[p] for p in chunk]
        else:
            final_rows = torch.arange(c, device=s.device) * n_stages + n_stages - 1
            tracked = tracked_tokens(scorer, scorer.top_k(s, top_k, final_rows), chunk, token_ids, track_ids)
        K = max(len(x) for x in tracked)
        padded = torch.tensor([x + [x[0]] * (K - len(x)) for x in tracked], device=scorer.device)  # [c, K]
        for g0 in range(0, c, plan.stats):
            g1 = min(c, g0 + plan.stats)
            r0, r1 = g0 * n_stages, g1 * n_stages

            def exact(rr, cc, ss, r0=r0, s=s):  # rows of this group -> rows of the chunk
                return scorer.exact(rr + r0, cc, s)

            st = chunk_stats(s[r0:r1], n_stages, scorer.inv[padded[g0:g1]], ws, bound=scorer.bound[r0:r1], exact=exact,
                             samples=samples, stage_top=stage_top, col_ids=scorer.col_ids)
            yield Group(positions=chunk[g0:g1], tracked=tracked[g0:g1], stats=st)
        if progress is not None:
            progress(c)
