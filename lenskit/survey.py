"""Corpus survey: where the model decides, over every position of a corpus -- documents -> windows -> padded batches
-> capture -> engine (top-1 and the next token, exact ranks) -> mergeable aggregates; no stage is ever stored.

Two parts:

* :class:`Aggregates`: sufficient statistics per stage -- integer counts, fixed-bin histograms and fixed-point sums
  (each value rounded to 2^-20 before it is added, so a sum is an exact integer) -- plus a reservoir of example
  positions kept by hash priority (the K smallest keys of a class). Merging is integer addition and a union: the
  result does not depend on the order of documents, shards or processes.
* :func:`run_survey`: documents are cut into blocks of ``block_docs`` consecutive documents; block b goes to
  process ``b % world``; inside a block, windows are batched in document order. A window's batch companions
  therefore depend only on the corpus and the options, never on the number of processes or on a resume, so every
  per-position value is bit-identical however the work is spread. After each block a process writes its checkpoint
  (completed blocks + aggregates) atomically; ``resume`` starts from it.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import torch

from . import __version__
from .errors import LenskitError, OutputError
from .survey_schema import (
    BITS_BINS,
    BITS_WIDTH,
    CHECKPOINT_FORMAT,
    CLASSES,
    DELTA_HALF,
    DELTA_STEP,
    FIXED,
    RANK_BINS,
    SURVEY_FILE,
    SURVEY_VERSION,
)

LN2 = math.log(2.0)


class SurveyError(LenskitError):
    """A survey cannot start or resume (checkpoints, options, distributed setup)."""


# --------------------------------------------------------------------------------------------------------------------
# Aggregates


def _per_stage(S: int) -> dict[str, tuple]:
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
        for name, shape in _per_stage(self.n_stages).items():
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
        return ex[-1]["key"] if len(ex) >= self.k_examples else 1 << 64

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


# --------------------------------------------------------------------------------------------------------------------
# Running a survey


@dataclass
class SurveyOptions:
    """What a survey reads and how; everything that can change a result is part of :meth:`recipe`."""

    sources: list  # expanded corpus sources (:func:`lenskit.corpus.expand_sources`)
    max_tokens: int = 1024
    batch_size: int = 4  # windows per forward pass
    block_docs: int = 16  # documents per block (the unit of sharding and checkpoints)
    examples: int = 8  # examples kept per class
    max_docs: int | None = None
    max_chars: int = 10_000_000
    norm: bool = True
    precision: str = "float32"
    max_memory: int | None = None
    device: str = "auto"

    def recipe(self) -> dict:
        d = asdict(self)
        d.pop("device")
        d.pop("max_memory")  # the engine's chunking never changes a value
        d["sources"] = [_source_id(s) for s in self.sources]
        return d


def _source_id(s: str) -> dict:
    if s == "-" or s.startswith("<"):
        return {"path": s}
    p = Path(s)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size if p.is_file() else None, "mtime_ns": st.st_mtime_ns}


def windows_of(doc, tokenizer, max_tokens: int) -> list[Window]:
    """Token windows of one document (the tokenizer's special tokens included; no window overlaps another)."""
    from .models import quiet_transformers

    with quiet_transformers():
        ids = list(tokenizer(doc.text, add_special_tokens=True)["input_ids"])
    out = []
    for s in range(0, len(ids), max_tokens):
        w = ids[s: s + max_tokens]
        out.append(Window(doc.index, doc.source, s, w, ids[s + max_tokens] if s + max_tokens < len(ids) else None))
    return out


def blocks(docs, block_docs: int, max_docs: int | None):
    """``(block index, [docs])`` of consecutive documents, in corpus order."""
    cur, b = [], 0
    for d in docs:
        if max_docs is not None and d.index >= max_docs:
            break
        cur.append(d)
        if len(cur) == block_docs:
            yield b, cur
            cur, b = [], b + 1
    if cur:
        yield b, cur


def partial_dir(target: Path) -> Path:
    """Where an unfinished survey into ``target`` keeps its checkpoints (beside it, hidden)."""
    return target.parent / f".{target.name}.survey-partial"


def checkpoint_path(folder: Path, rank: int, world: int) -> Path:
    return folder / f"shard-{rank:03d}-of-{world:03d}.json"


def _recipe_key(recipe: dict) -> str:
    return hashlib.sha256(orjson.dumps(recipe, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def load_checkpoint(path: Path, recipe: dict) -> tuple[set, Aggregates | None]:
    if not path.is_file():
        return set(), None
    try:
        ck = orjson.loads(path.read_bytes())
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("unknown format")
    except (OSError, ValueError) as e:
        raise SurveyError(f"cannot read the checkpoint {path}: {e}; remove its folder to start over") from None
    if ck["recipe_key"] != _recipe_key(recipe):
        raise SurveyError(f"the checkpoint {path} was made with another model, corpus or options; rerun with those, "
                          f"or remove {path.parent} to start over")
    return set(ck["completed_blocks"]), Aggregates.from_state(ck["aggregates"])


def save_checkpoint(path: Path, recipe: dict, done: set, agg: Aggregates) -> None:
    from .files import atomic_write

    data = orjson.dumps({"format": CHECKPOINT_FORMAT, "recipe_key": _recipe_key(recipe), "recipe": recipe,
                         "completed_blocks": sorted(done), "aggregates": agg.state()})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Join the ``torchrun`` / ``accelerate launch`` job named by the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import datetime

    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    return Dist(rank, world, local)


def process_device(device: str, d: Dist) -> str:
    """``auto`` on a multi-process CUDA job: this process's own GPU."""
    if d.active and device == "auto" and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return device


class SurveyProgress:
    """:class:`lenskit.progress.Progress` over documents (a bar with ETA on a terminal, 10% lines elsewhere), with the
    token rate beside it; silent when quiet or not rank 0."""

    def __init__(self, total: int | None, initial: int, log):
        from .progress import Progress

        self.p = Progress(total, "survey", "doc", log)
        self.tokens, self.started = 0, time.perf_counter()
        if initial:
            self.p.update(initial)  # resumed: blocks done before

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        self.p.note(f"{self.tokens / max(1e-9, time.perf_counter() - self.started):,.0f} tok/s")

    def add_docs(self, n: int) -> None:
        self.p.update(n)

    def close(self) -> None:
        self.p.close()


def survey_block(loaded, scorer, budget: int, docs, opts: SurveyOptions, agg: Aggregates, progress=None,
                 timing: dict | None = None) -> None:
    """Every document of one block into ``agg``: bad ones counted, windows batched, each batch captured once."""
    from .capture import capture_batch
    from .engine import prompt_stats

    S = agg.n_stages
    wins: list[Window] = []
    for d in docs:
        if d.problem:
            agg.counters[d.problem] += 1
            continue
        agg.counters["documents"] += 1
        wins.extend(w for w in windows_of(d, loaded.tokenizer, opts.max_tokens) if w.n_positions > 0)
    for b0 in range(0, len(wins), opts.batch_size):
        batch = wins[b0: b0 + opts.batch_size]
        t0 = time.perf_counter()
        h = capture_batch(loaded.model, loaded.adapter, [w.ids for w in batch])  # [S, B, T, D]
        t1 = time.perf_counter()
        for b, w in enumerate(batch):
            ids = w.ids + ([w.next_id] if w.next_id is not None else [])

            def stages_of(p0, p1, b=b):
                return h[:, b, p0:p1]  # [S, c, D]

            for g in prompt_stats(scorer, stages_of, S, ids, list(range(w.n_positions)), 1, [], budget, samples=0):
                add_group(agg, w, g.positions, g.tracked, g.stats, loaded.tokenizer)
            agg.counters["windows"] += 1
            agg.counters["tokens"] += w.n_positions
            if progress is not None:
                progress.add_tokens(w.n_positions)
        if timing is not None:
            timing["forward"] = timing.get("forward", 0.0) + t1 - t0
            timing["engine"] = timing.get("engine", 0.0) + time.perf_counter() - t1
        del h


def survey_shard(loaded, opts: SurveyOptions, target: Path, resume: bool = False, quiet: bool = False,
                 dist_info: Dist | None = None, on_checkpoint=None, timing: dict | None = None) -> Aggregates:
    """Survey the blocks of process ``dist_info.rank`` of ``dist_info.world``, checkpointing into ``target``'s
    partial folder after each block; return this shard's aggregates.

    ``on_checkpoint(n_blocks_done)`` is called after each checkpoint (tests inject failures there)."""
    from .capture import stage_names  # noqa: F401  (keeps the import graph: capture before survey)
    from .corpus import count_documents, iter_documents
    from .lens import lens_from_model
    from .models import resolve_device
    from .planning import auto_max_memory
    from .scoring import Scorer, resolve_precision

    d = dist_info or Dist()
    n_layers = _n_layers(loaded)
    S = 2 * n_layers + 1
    recipe = dict(opts.recipe(), model=_model_key(loaded), world=d.world, version=SURVEY_VERSION)
    folder = partial_dir(target)
    ck_path = checkpoint_path(folder, d.rank, d.world)
    # only this process's file and other process counts' files count: the other ranks of this job write theirs now
    existing = [f for f in (sorted(folder.glob("shard-*.json")) if folder.is_dir() else [])
                if f == ck_path or not f.name.endswith(f"-of-{d.world:03d}.json")]
    if existing and not resume:
        raise SurveyError(f"an interrupted survey into {target} left checkpoints in {folder}: --resume continues it "
                          "(same corpus, model and options); remove that folder to start over")
    if resume and existing and not ck_path.is_file():
        raise SurveyError(f"--resume: {folder} holds checkpoints of a run with another number of processes "
                          f"({existing[0].name}); resume with the same number, or remove the folder")
    done, agg = load_checkpoint(ck_path, recipe) if resume else (set(), None)
    agg = agg or Aggregates(S, opts.examples)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {folder.parent}: {e.strerror or e}") from None
    device = resolve_device(opts.device)
    lens = lens_from_model(loaded.model, loaded.adapter)
    scorer = Scorer(lens, device, opts.norm, resolve_precision(opts.precision, device))
    budget = opts.max_memory or auto_max_memory(device)
    if getattr(loaded, "inferred", ()):  # no registered adapter: verify a layout on a short probe first
        from .testing import capture_inferred

        capture_inferred(loaded, torch.tensor(loaded.tokenizer("The cat sat on the mat.")["input_ids"]))
    total = count_documents(opts.sources)
    if total is not None and opts.max_docs is not None:
        total = min(total, opts.max_docs)
    mine = None
    if total is not None:
        n_blocks = -(-total // opts.block_docs)
        mine = sum(min(opts.block_docs, total - b * opts.block_docs) for b in range(n_blocks) if b % d.world == d.rank)
    initial = sum(min(opts.block_docs, (total or 0) - b * opts.block_docs) for b in done) if total else 0
    from .progress import progress_logger

    progress = SurveyProgress(mine, initial, progress_logger(quiet or d.rank != 0))
    try:
        for b, docs in blocks(iter_documents(opts.sources, opts.max_chars), opts.block_docs, opts.max_docs):
            if b % d.world != d.rank or b in done:
                continue
            survey_block(loaded, scorer, budget, docs, opts, agg, progress, timing)
            done.add(b)
            save_checkpoint(ck_path, recipe, done, agg)
            progress.add_docs(len(docs))
            if on_checkpoint is not None:
                on_checkpoint(len(done))
    finally:
        progress.close()
    return agg


def run_survey(loaded, opts: SurveyOptions, target: Path, resume: bool = False, quiet: bool = False,
               dist_info: Dist | None = None, on_checkpoint=None, timing: dict | None = None) -> Aggregates | None:
    """Survey this process's shard (:func:`survey_shard`), then merge every process's aggregates on rank 0 (gloo or
    NCCL ``gather_object``); return them on rank 0, None elsewhere."""
    d = dist_info or Dist()
    agg = survey_shard(loaded, opts, target, resume, quiet, d, on_checkpoint, timing)
    if not d.active:
        return agg
    import torch.distributed as dist

    states = [None] * d.world if d.rank == 0 else None
    dist.gather_object(agg.state(), states, dst=0)
    if d.rank != 0:
        return None
    merged = Aggregates(agg.n_stages, opts.examples)
    for st in states:
        merged.merge(Aggregates.from_state(st))
    return merged


def _n_layers(loaded) -> int:
    from .adapters import get_module

    return len(get_module(loaded.model, loaded.adapter.layers))


def _model_key(loaded) -> dict:
    from .lens import lens_from_model

    return {"id": loaded.source.get("id"), "fingerprint": lens_from_model(loaded.model, loaded.adapter).fingerprint(),
            "dtype": str(loaded.dtype).removeprefix("torch.")}


# --------------------------------------------------------------------------------------------------------------------
# The survey document


def _r(x, digits: int = 6):
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def hist_quantiles(counts: np.ndarray, lo: float, width: float, qs=(0.1, 0.5, 0.9)) -> list:
    """Quantiles of each row of ``counts`` (bins ``[lo + i*width, lo + (i+1)*width)``), linear inside a bin."""
    out = []
    for q in qs:
        row = []
        for c in counts:
            n = c.sum()
            if n == 0:
                row.append(None)
                continue
            cum = np.cumsum(c)
            i = int(np.searchsorted(cum, q * n))
            prev = cum[i - 1] if i else 0
            row.append(_r(lo + width * (i + (q * n - prev) / max(1, c[i]))))
        out.append(row)
    return out


def _mean(s: np.ndarray, n: int) -> list:
    return [_r(int(v) / FIXED / n) if n else None for v in s]


def _share(c: np.ndarray, n: int) -> list:
    return [_r(int(v) / n) if n else None for v in c]


def build_survey_document(agg: Aggregates, loaded, opts: SurveyOptions, examples_prompts: list[int] | None = None,
                          elapsed: float | None = None, world: int = 1) -> dict:
    """The ``survey.json`` document (:mod:`lenskit.survey_schema`) from merged aggregates."""
    from .capture import stage_names
    from .lens import lens_from_model

    stages = stage_names(_n_layers(loaded))
    a, n = agg.arrays, agg.counters["positions"]
    lens = lens_from_model(loaded.model, loaded.adapter)
    qs = ("p10", "p50", "p90")

    def bits(name):
        q = hist_quantiles(a[f"{name}_hist"], 0.0, BITS_WIDTH)
        return {"mean": _mean(a[f"{name}_sum"], n), **dict(zip(qs, q)), "hist": a[f"{name}_hist"].tolist()}

    def ranks(pre):
        return {"mean_log2": _mean(a[f"{pre}_log2rank_sum"], n), "at1": _share(a[f"{pre}_at1"], n),
                "le10": _share(a[f"{pre}_le10"], n), "le100": _share(a[f"{pre}_le100"], n),
                "hist": a[f"{pre}_rank_hist"].tolist()}

    dq = hist_quantiles(a["delta_hist"], -DELTA_HALF * DELTA_STEP - DELTA_STEP / 2, DELTA_STEP, (0.05, 0.5, 0.95))
    examples = {}
    k = 0
    for cls in CLASSES:
        examples[cls] = []
        for r in agg.examples[cls]:
            rec = {key: v for key, v in r.items() if key not in ("prompt_ids",)}
            rec["key"] = f"{r['key']:016x}"
            rec["prompt"] = examples_prompts[k] if examples_prompts is not None else None
            examples[cls].append(rec)
            k += 1
    c = agg.counters
    return {
        "schema": SURVEY_VERSION,
        "lenskit_version": __version__,
        "model": {"id": loaded.source.get("id"), "fingerprint": lens.fingerprint(), "architecture": loaded.architecture,
                  "adapter": loaded.adapter.name, "dtype": str(loaded.dtype).removeprefix("torch."),
                  "n_layers": _n_layers(loaded), "vocab_size": lens.vocab_size},
        "lens": {"norm": opts.norm, "precision": opts.precision},
        "stages": {key: [s[key] for s in stages] for key in ("name", "kind", "layer")},
        "corpus": {"sources": [s if s.startswith("<") or s == "-" else str(Path(s)) for s in opts.sources],
                   "documents": c["documents"], "bad": {p: c[p] for p in ("empty", "unreadable", "too_long")},
                   "windows": c["windows"], "positions": n, "model_accuracy": _r(c["right"] / n) if n else None},
        "options": {"max_tokens": opts.max_tokens, "batch_size": opts.batch_size, "block_docs": opts.block_docs,
                    "max_docs": opts.max_docs, "examples": opts.examples, "processes": world},
        "run": {"seconds": _r(elapsed, 4) if elapsed is not None else None,
                "tokens_per_s": _r(n / elapsed, 4) if elapsed else None},
        "bins": {"bits_width": BITS_WIDTH, "bits_bins": BITS_BINS, "rank_bins": RANK_BINS, "delta_step": DELTA_STEP,
                 "delta_half": DELTA_HALF, "fixed_point": FIXED},
        "per_stage": {
            "ce_bits": bits("ce"),
            "next_rank": ranks("next"),
            "top1_rank": ranks("top1"),
            "agreement": _share(a["top1_at1"], n),
            "kl_bits": bits("kl"),
            "entropy_bits": bits("entropy"),
        },
        "decision": {"right": a["decision"][0].tolist(), "wrong": a["decision"][1].tolist()},
        "blocks": {
            "stage": list(range(1, len(stages))),
            "mean_delta_log2_rank": _mean(a["delta_sum"], n),
            "share_down": _share(a["delta_neg"], n),
            "share_up": _share(a["delta_pos"], n),
            "p05": dq[0], "p50": dq[1], "p95": dq[2],
            "hist": a["delta_hist"].tolist(),
        },
        "examples": examples,
        "sums": {key: a[key].tolist() for key in ("ce_sum", "next_log2rank_sum", "top1_log2rank_sum", "kl_sum",
                                                  "entropy_sum", "delta_sum")},
    }


def example_prompts(agg: Aggregates) -> list[list[int]]:
    """The token ids of every example, class after class (prompt i of the examples' export)."""
    return [r["prompt_ids"] for cls in CLASSES for r in agg.examples[cls]]


def export_examples(loaded, agg: Aggregates, opts: SurveyOptions, log=None) -> dict:
    """The single-prompt export (``export.json``) of the examples: each example's window up to its position, traced
    again one at a time, its last position exported (top 10) -- so the viewer opens any example without the model."""
    from .capture import capture_stages, fingerprint_info, stage_names
    from .export import ExportOptions, export_document
    from .lens import lens_from_model
    from .store import build_metadata
    from .tokens import token_texts

    tok = loaded.tokenizer
    prompts = [{"text": tok.decode(ids, clean_up_tokenization_spaces=False), "token_ids": list(ids),
                "tokens": token_texts(tok, ids)} for ids in example_prompts(agg)]
    meta = build_metadata(fingerprint_info(loaded), stage_names(_n_layers(loaded)), prompts)
    cache: dict = {}

    def stages_for_prompt(i):
        def read(p0, p1):
            if i not in cache:
                cache.clear()
                cache[i] = capture_stages(loaded.model, loaded.adapter, torch.tensor(prompts[i]["token_ids"]))
            return cache[i][:, p0:p1]

        return read

    options = ExportOptions(positions="-1", norm=opts.norm, precision=opts.precision, device=opts.device,
                            max_memory=opts.max_memory)
    return export_document(meta, lens_from_model(loaded.model, loaded.adapter), tok, stages_for_prompt, options)


def is_survey_run(folder: Path) -> bool:
    """Is ``folder`` a finished survey run (its survey.json starts like lenskit's)?"""
    from .files import file_head

    return (file_head(Path(folder) / SURVEY_FILE, 64) or b"").startswith(b'{"schema":"lenskit.survey/')


def write_survey_run(tmp: Path, doc: dict, export_doc: dict | None) -> None:
    """Write survey.json (and the examples' export.json) into the run folder being built."""
    from .export import write_document
    from .files import atomic_write
    from .schema import EXPORT_FILE

    data = orjson.dumps(doc)
    atomic_write(tmp / SURVEY_FILE, lambda p: Path(p).write_bytes(data))
    if export_doc is not None:
        write_document(export_doc, tmp / EXPORT_FILE)


def remove_partial(target: Path) -> None:
    shutil.rmtree(partial_dir(target), ignore_errors=True)


