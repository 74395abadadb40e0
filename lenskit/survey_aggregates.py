"""Survey aggregates: sufficient statistics per stage -- integer counts, fixed-bin histograms and fixed-point sums
(each value rounded to 2^-20 before it is added, so a sum is an exact integer) -- plus a reservoir of example
positions kept by hash priority (the K smallest keys of a class). Merging is integer addition and a union: the result
does not depend on the order of documents, shards or processes. :mod:`lenskit.survey` runs the survey and feeds
them; :mod:`lenskit.survey_document` turns them into ``survey.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import LenskitError
from .survey_schema import (
    BITS_BINS,
    BITS_WIDTH,
    CLASSES,
    DELTA_HALF,
    DELTA_STEP,
    FIXED,
    RANK_BINS,
)

LN2 = math.log(2.0)


class SurveyError(LenskitError):
    """A survey cannot start or resume (checkpoints, options, distributed setup)."""


# --------------------------------------------------------------------------------------------------------------------
# Aggregates


def array_shapes(S: int) -> dict[str, tuple]:
    """Name -> shape of every integer array of the aggregates of an S-stage model."""
    return {
        "ce_sum": (S,), "ce_hist": (S, BITS_BINS),
        "next_log2rank_sum": (S,), "next_rank_hist": (S, RANK_BINS),
        "next_at1": (S,), "next_le10": (S,), "next_le100": (S,),
        "top1_log2rank_sum": (S,), "top1_rank_hist": (S, RANK_BINS),
        "top1_at1": (S,), "top1_le10": (S,), "top1_le100": (S,),
        "kl_sum": (S,), "kl_hist": (S, BITS_BINS),
        "entropy_sum": (S,), "entropy_hist": (S, BITS_BINS),
        "decision": (2, S),  # [right, wrong] x decision stage
        "delta_sum": (S - 1,), "delta_hist": (S - 1, 2 * DELTA_HALF + 1), "delta_neg": (S - 1,), "delta_pos": (S - 1,),
    }


COUNTERS = ("documents", "empty", "unreadable", "too_long", "windows", "tokens", "positions", "right")


@dataclass
class Aggregates:
    """Mergeable sufficient statistics of a survey (see the module docstring)."""

    n_stages: int
    k_examples: int = 8
    arrays: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)  # class -> [record] sorted by key, at most k_examples

    def __post_init__(self):
        for name, shape in array_shapes(self.n_stages).items():
            self.arrays.setdefault(name, np.zeros(shape, dtype=np.int64))
        for name in COUNTERS:
            self.counters.setdefault(name, 0)
        for name in CLASSES:
            self.examples.setdefault(name, [])

    def merge(self, other: Aggregates) -> Aggregates:
        """Add ``other`` into this one (integer sums and a union of reservoirs: order does not matter)."""
        if other.n_stages != self.n_stages:
            raise SurveyError(f"cannot merge surveys of {other.n_stages} and {self.n_stages} stages")
        for k, v in other.arrays.items():
            self.arrays[k] += v
        for k, v in other.counters.items():
            self.counters[k] += v
        for c in CLASSES:
            self._keep(c, other.examples[c])
        return self

    def _keep(self, cls: str, records: list[dict]) -> None:
        merged = {r["key"]: r for r in self.examples[cls] + records}
        self.examples[cls] = [merged[k] for k in sorted(merged)][: self.k_examples]

    def threshold(self, cls: str) -> int:
        """Keys at or above this cannot enter the reservoir of ``cls``."""
        ex = self.examples[cls]
        if len(ex) < self.k_examples:
            return 1 << 64
        return ex[-1]["key"] if ex else 0  # --examples 0: keys are unsigned, none is below 0

    def state(self) -> dict:
        """A JSON-able copy (checkpoints, gathering across processes)."""
        return {"n_stages": self.n_stages, "k_examples": self.k_examples,
                "arrays": {k: v.tolist() for k, v in self.arrays.items()},
                "counters": dict(self.counters), "examples": {k: list(v) for k, v in self.examples.items()}}

    @classmethod
    def from_state(cls, st: dict) -> Aggregates:
        return cls(st["n_stages"], st["k_examples"],
                   {k: np.asarray(v, dtype=np.int64) for k, v in st["arrays"].items()},
                   dict(st["counters"]), {k: list(v) for k, v in st["examples"].items()})


def _fixed(x: torch.Tensor) -> np.ndarray:
    """Sum over dim 0 of values rounded to 2^-20 (float64 -> int64): exact, so any summation order agrees."""
    return torch.round(x * FIXED).to(torch.int64).sum(0).numpy()


def _hist(idx: torch.Tensor, bins: int) -> np.ndarray:
    """``idx`` [c, S'] bin per (position, stage) -> counts [S', bins]."""
    n = idx.shape[1]
    flat = (torch.arange(n).view(1, n) * bins + idx).flatten()
    return torch.bincount(flat, minlength=n * bins).view(n, bins).numpy().astype(np.int64)


def _bits_bins(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.floor(x / BITS_WIDTH), 0, BITS_BINS - 1).to(torch.int64)


def _rank_bins(rank: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.floor(torch.log2(rank)), 0, RANK_BINS - 1).to(torch.int64)


def example_keys(doc: int, positions: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random 64-bit key per (document, token position) (splitmix64): the reservoir's priorities."""
    with np.errstate(over="ignore"):
        z = (np.uint64(doc) << np.uint64(32)) + positions.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass
class Window:
    """Consecutive tokens of one document; ``next_id`` is the token after the window (None at the document's end)."""

    doc: int
    source: str
    start: int  # token index of the window's first token in its document
    ids: list[int]
    next_id: int | None

    @property
    def n_positions(self) -> int:
        """Positions with a next token (the last one of the document has none)."""
        return len(self.ids) if self.next_id is not None else len(self.ids) - 1


def classify(rank1: torch.Tensor, right: torch.Tensor, p_top1: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Decision stage of each position and its example classes.

    ``rank1`` [c, S]: the final top-1's rank at each stage; ``right`` [c]: the model's top-1 is the next token;
    ``p_top1`` [c]: the model's probability of its top-1. The decision stage is the first stage from which the
    top-1 stays rank 1 (the last stage at the latest)."""
    S = rank1.shape[1]
    at1 = rank1 == 1  # [c, S]
    trailing = torch.cumprod(at1.flip(1).to(torch.int64), dim=1).sum(1)  # [c] stages at rank 1, counted from the end
    decision = S - trailing  # [c]
    before = torch.arange(S).view(1, S) < decision.view(-1, 1)
    lost = (at1 & before).any(1)  # was rank 1 before the decision stage, then lost it
    classes = {
        "decided_late": decision >= S - 2,  # only in the last layer
        "decided_then_lost": lost,
        "confident_wrong_early": (~right) & (p_top1 >= 0.5) & (decision <= (S - 1) // 2),
    }
    return decision, classes


def add_group(agg: Aggregates, window: Window, positions: list[int], tracked: list[list[int]], st,
              tokenizer=None) -> None:
    """Add one engine group (positions of ``window``, top-1 + next token tracked) to ``agg``."""
    S = agg.n_stages
    c = len(positions)
    ids = window.ids + ([window.next_id] if window.next_id is not None else [])
    nxt = [ids[p + 1] for p in positions]
    j = torch.tensor([t.index(n) for t, n in zip(tracked, nxt)])  # [c] column of the next token
    K = st.rank.shape[1]
    rank = st.rank[: c * S].view(c, S, K).to(torch.float64)  # [c, S, K]
    score = st.tracked_score[: c * S].view(c, S, K).to(torch.float64)
    lse = st.lse[: c * S].view(c, S).to(torch.float64)  # [c, S]
    jj = j.view(c, 1, 1).expand(c, S, 1)
    rank1, rankn = rank[:, :, 0], rank.gather(2, jj).squeeze(2)  # [c, S]
    ce = -(score.gather(2, jj).squeeze(2) - lse) / LN2  # [c, S] bits
    kl = torch.clamp(st.kl[: c * S].view(c, S).to(torch.float64), min=0) / LN2
    ent = torch.clamp(st.entropy[: c * S].view(c, S).to(torch.float64), min=0) / LN2
    right = j == 0
    p_top1 = torch.exp(score[:, S - 1, 0] - lse[:, S - 1])
    a = agg.arrays
    a["ce_sum"] += _fixed(ce)
    a["ce_hist"] += _hist(_bits_bins(ce), BITS_BINS)
    for pre, r in (("next", rankn), ("top1", rank1)):
        lr = torch.log2(r)
        a[f"{pre}_log2rank_sum"] += _fixed(lr)
        a[f"{pre}_rank_hist"] += _hist(_rank_bins(r), RANK_BINS)
        a[f"{pre}_at1"] += (r == 1).sum(0).numpy()
        a[f"{pre}_le10"] += (r <= 10).sum(0).numpy()
        a[f"{pre}_le100"] += (r <= 100).sum(0).numpy()
    a["kl_sum"] += _fixed(kl)
    a["kl_hist"] += _hist(_bits_bins(kl), BITS_BINS)
    a["entropy_sum"] += _fixed(ent)
    a["entropy_hist"] += _hist(_bits_bins(ent), BITS_BINS)
    decision, classes = classify(rank1, right, p_top1)
    for row, sel in ((0, right), (1, ~right)):
        a["decision"][row] += torch.bincount(decision[sel], minlength=S).numpy()
    delta = torch.log2(rank1[:, 1:]) - torch.log2(rank1[:, :-1])  # [c, S-1] change of log2-rank by each block
    a["delta_sum"] += _fixed(delta)
    a["delta_hist"] += _hist(torch.clamp(torch.round(delta / DELTA_STEP), -DELTA_HALF, DELTA_HALF).to(torch.int64)
                             + DELTA_HALF, 2 * DELTA_HALF + 1)
    a["delta_neg"] += (delta < 0).sum(0).numpy()
    a["delta_pos"] += (delta > 0).sum(0).numpy()
    agg.counters["positions"] += c
    agg.counters["right"] += int(right.sum())
    keys = example_keys(window.doc, window.start + np.asarray(positions))
    for cls, mask in classes.items():
        limit = agg.threshold(cls)
        new = []
        for i in torch.nonzero(mask).flatten().tolist():
            key = int(keys[i])
            if key < limit:
                new.append(_example(key, window, positions[i], tracked[i], rank1[i], rankn[i], decision[i],
                                    bool(right[i]), float(p_top1[i]), tokenizer))
        if new:
            agg._keep(cls, new)


CONTEXT_TOKENS = 40  # tokens of text shown before an example's position
AFTER_TOKENS = 8


def _example(key, window: Window, p: int, tracked, rank1, rankn, decision, right, p_top1, tokenizer) -> dict:
    from .tokens import token_texts

    ids = window.ids + ([window.next_id] if window.next_id is not None else [])
    texts = token_texts(tokenizer, [ids[p], ids[p + 1], tracked[0]]) if tokenizer is not None else ["", "", ""]
    dec = (lambda x: tokenizer.decode(x, clean_up_tokenization_spaces=False)) if tokenizer is not None else str
    return {
        "key": key,
        "doc": window.doc,
        "source": window.source,
        "pos": window.start + p,
        "prompt_pos": p,
        "token": texts[0],
        "next": texts[1],
        "top1": texts[2],
        "right": right,
        "p_top1": round(p_top1, 4),
        "decision": int(decision),
        "top1_rank": [int(x) for x in rank1.tolist()],
        "next_rank": [int(x) for x in rankn.tolist()],
        "before": dec(ids[max(0, p + 1 - CONTEXT_TOKENS): p]),
        "after": dec(ids[p + 1: p + 1 + AFTER_TOKENS]),
        "prompt_ids": window.ids[: p + 1],  # the window up to the position: traced again for the single-prompt view
    }


