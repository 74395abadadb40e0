"""Planning: how the engine cuts a prompt into chunks and statistics groups, from a working-memory budget.

A chunk is a whole number of matmul blocks (``scorer.block`` rows = a fixed number of positions x all S stages):
its ``[rows, V]`` float32 scores are computed at once. Statistics then run on cache-sized groups of positions inside
the chunk. Neither size changes any result (the matmul block shape is fixed); they only bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

WORK_BYTES = 21  # statistics workspace bytes per (row, vocab) entry: softmax/bins, products (f32), bins (i64, i32), mask
STATS_ROWS = 64  # rows per statistics pass of the torch statistics: one position of a 30-layer model, cache-sized
FUSED_ROWS = 256  # rows per call of the fused CPU kernel (it needs no [rows, V] workspace): a few positions, so that
# each thread has a final row to start with and per-call costs are shared
CPU_BUDGET = 256 << 20  # default working memory on CPU


def auto_max_memory(device: torch.device) -> int:
    """Default working-memory budget: 1/8 of free GPU memory (at least CPU_BUDGET); CPU_BUDGET on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(CPU_BUDGET, free // 8)
    return CPU_BUDGET


@dataclass(frozen=True)
class Plan:
    """Positions per matmul block, per statistics group and per chunk (a multiple of ``block``)."""

    block: int
    stats: int
    chunk: int


def plan_chunks(n_stages: int, vocab: int, block_positions: int, budget: int, gpu: bool = False,
                fused: bool = False) -> Plan:
    """The largest chunk of whole matmul blocks that fits ``budget`` bytes beside one statistics group's workspace.

    With ``gpu`` (CUDA with the Triton kernels, which need no ``[rows, V]`` workspace) a statistics group is the whole
    chunk: each group costs a dozen kernel launches and small host syncs, so one-position groups left an H200 idle
    (3.4 s for 1,024 positions of the default model's shapes where the GEMMs take 0.08 s), and a group 4x as tall
    costs 20-31% less per row than one GEMM block (measured on an H200). With ``fused`` (the numba kernel on CPU,
    which also needs no workspace) a group is FUSED_ROWS rows of whole positions; for the torch statistics a group
    stays cache-sized."""
    small = max(1, (FUSED_ROWS if fused else STATS_ROWS) // n_stages)
    work = 0 if gpu or fused else small * n_stages * vocab * WORK_BYTES  # the torch statistics' [rows, V] buffers
    per_block = block_positions * n_stages * vocab * 4
    chunk = block_positions * max(1, (budget - work) // per_block)
    return Plan(block=block_positions, stats=chunk if gpu else min(small, chunk), chunk=chunk)


def useful_budget(budget: int, n_positions: int, n_stages: int, vocab: int, block_positions: int) -> int:
    """``budget`` capped at what one chunk of all ``n_positions`` needs: :func:`plan_chunks` sizes the chunk, and
    its buffers, from the budget alone, so ``--max-memory 1T`` for a 20-token prompt would allocate a terabyte of
    rows it never fills. The cap leaves the chunk holding every position, so no result changes."""
    work = max(STATS_ROWS, n_stages) * vocab * WORK_BYTES  # at least the torch statistics' workspace
    blocks = -(-max(1, n_positions) // block_positions)  # whole matmul blocks covering every position
    return min(budget, work + blocks * block_positions * n_stages * vocab * 4)


def contiguous_groups(positions: list[int], size: int) -> list[list[int]]:
    """Split sorted ``positions`` into chunks of at most ``size``, each spanning fewer than ``4 * size`` positions
    (a chunk's stage slice is read from the trace in one piece)."""
    groups, cur = [], []
    for p in positions:
        if cur and (len(cur) == size or p - cur[0] >= 4 * size):
            groups.append(cur)
            cur = []
        cur.append(p)
    if cur:
        groups.append(cur)
    return groups
