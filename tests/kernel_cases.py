"""Score blocks with the hard cases of the statistics kernels, shared by the numba (test_kernels.py) and Triton
(test_kernels_triton.py) tests: ties, an all-equal row, scores of +-1e4, softcapped scores, a duplicated third of a
row, a peaked final distribution, duplicate tracked columns."""

import torch

EXACT = ("counts", "rank", "tracked_bin", "tracked_score", "sample_rows", "sample_bins", "sample_cols")  # bit for bit
CLOSE = ("mean", "std", "lse", "entropy", "kl")  # floats: equal up to summation order


def block(c: int, S: int, V: int, K: int, seed: int = 0):
    """Scores ``[c*S, V]`` with hard cases mixed in, and tracked columns ``[c, K]`` with duplicates (K >= 4)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(c * S, V, generator=g) * 3
    s[:, 1::7] = s[:, :1]  # ties with column 0 everywhere
    s[1, :] = 1.5  # an all-equal row
    s[2] = (torch.rand(V, generator=g) * 2 - 1) * 1e4  # scores of +-1e4
    s[2, V // 2] = 1e4
    if c * S > 3:
        s[3] = 30 * torch.tanh(s[3] * 10 / 30)  # softcapped: many scores pressed against +-30
    if c * S > 4:
        s[4, : V // 3] = s[4, V // 3: 2 * (V // 3)]  # a third of the row duplicated
    s[S - 1] *= 4  # a peaked final distribution
    trk = torch.randint(0, V, (c, K), generator=g)
    trk[:, 1] = trk[:, 0]  # duplicate tracked column
    trk[:, 2] = 0  # a column with many exact ties
    trk[:, 3] = 1
    return s, trk
