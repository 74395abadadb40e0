"""Corpus survey: where the model decides, over every position of a corpus -- documents -> windows -> padded batches
-> capture -> engine (top-1 and the next token, exact ranks) -> mergeable aggregates; no stage is ever stored.

This module runs it (:mod:`lenskit.survey_aggregates` holds the statistics, :mod:`lenskit.survey_document` writes
them out). :func:`run_survey`: documents are cut into blocks of ``block_docs`` consecutive documents; block b goes to
  process ``b % world``; inside a block, windows are batched in document order. A window's batch companions
  therefore depend only on the corpus and the options, never on the number of processes or on a resume, so every
  per-position value is bit-identical however the work is spread. After each block a process writes its checkpoint
  (completed blocks + aggregates) atomically; ``resume`` starts from it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import torch

from .errors import OutputError
from .survey_aggregates import Aggregates, SurveyError, Window, add_group, array_shapes
from .survey_document import layer_count
from .survey_schema import (
    CHECKPOINT_FORMAT,
    CLASSES,
    SURVEY_VERSION,
)
from .tokens import is_int

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


MAX_STAGES = 1 << 16  # far past any model's 2L+1 stages: a checkpoint claiming more is damaged


def _example_ok(r, S: int, max_tokens: int | None, vocab_size: int | None) -> bool:
    """Whether ``r`` is an example record as :func:`lenskit.survey_aggregates._example` makes it: the survey document
    formats its key as hex and traces its ``prompt_ids`` again, so a string key or an id past the vocabulary would
    fail there, after the whole corpus."""
    if not isinstance(r, dict):
        return False
    ids = r.get("prompt_ids")
    return (is_int(r.get("key")) and 0 <= r["key"] < 1 << 64
            and all(is_int(r.get(k)) and r[k] >= 0 for k in ("doc", "pos", "prompt_pos", "decision"))
            and all(isinstance(r.get(k), str) for k in ("source", "token", "next", "top1", "before", "after"))
            and isinstance(r.get("right"), bool)
            and (r.get("p_top1") is None  # a NaN probability is saved as null
                 or isinstance(r.get("p_top1"), (int, float)) and not isinstance(r.get("p_top1"), bool))
            and all(isinstance(r.get(k), list) and len(r[k]) == S and all(is_int(x) for x in r[k])
                    for k in ("top1_rank", "next_rank"))
            and isinstance(ids, list) and 0 < len(ids) <= (max_tokens or len(ids))
            and all(is_int(t) and 0 <= t < (vocab_size or t + 1) for t in ids))


def load_checkpoint(path: Path, recipe: dict, n_stages: int | None = None,
                    vocab_size: int | None = None) -> tuple[set, Aggregates | None]:
    """The completed blocks and aggregates saved in ``path`` for ``recipe``; SurveyError for a checkpoint of another
    survey or a damaged one (each part is checked: a resumed survey never starts from a half-read state)."""
    if not path.is_file():
        return set(), None
    try:
        ck = orjson.loads(path.read_bytes())
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("unknown format")
    except (OSError, ValueError) as e:
        raise SurveyError(f"cannot read the checkpoint {path}: {e}; remove its folder to start over") from None
    if ck.get("recipe_key") != _recipe_key(recipe):
        raise SurveyError(f"the checkpoint {path} was made with another model, corpus or options; rerun with those, "
                          f"or remove {path.parent} to start over")
    damaged = f"the checkpoint {path} is damaged ({{}}); remove {path.parent} to start over"
    done = ck.get("completed_blocks")
    if not (isinstance(done, list) and all(is_int(b) and b >= 0 for b in done)):
        raise SurveyError(damaged.format("completed_blocks is not a list of block numbers"))
    st = ck.get("aggregates")
    S = st.get("n_stages") if isinstance(st, dict) else None
    ok = is_int(S) and 0 < S <= MAX_STAGES and S == (n_stages or S)
    try:
        agg = Aggregates.from_state(st) if ok else None
        shapes = {k: tuple(v) for k, v in array_shapes(S).items()} if ok else {}
        ok = (ok and set(st["arrays"]) == set(shapes)
              and {k: v.shape for k, v in agg.arrays.items()} == shapes
              and is_int(agg.k_examples) and agg.k_examples == recipe.get("examples", agg.k_examples) >= 0
              and all(is_int(v) and v >= 0 for v in agg.counters.values())
              and set(agg.examples) == set(CLASSES)
              and all(len(v) <= agg.k_examples for v in agg.examples.values())
              and all(_example_ok(r, S, recipe.get("max_tokens"), vocab_size)
                      for v in agg.examples.values() for r in v))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        ok = False
    if not ok:
        raise SurveyError(damaged.format("its aggregates do not fit this survey"))
    return set(done), agg


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
    merge_group: object = None  # the process group of the final merge (made as the job starts, all ranks at once)

    @property
    def active(self) -> bool:
        return self.world > 1


MAX_WORLD = 1 << 16  # processes: far past any job; a WORLD_SIZE beyond it is a mistake, not a cluster
JOIN_SECONDS = 600  # every process joins the job as it starts (before loading the model): a peer missing this long
# is never coming (a WORLD_SIZE set by hand, a crashed launch)
MERGE_SECONDS = 7200  # rank 0 waits this long at the merge for the slowest shard


def _env_int(name: str, default: str | None, lo: int, hi: int) -> int:
    """Environment variable ``name`` as an integer in ``[lo, hi]`` (ASCII digits only); SurveyError, one line, for
    a missing, non-numeric or out-of-range value (a torchrun variable set by hand, or left over in a shell)."""
    raw = os.environ.get(name, default)
    if raw is None:
        raise SurveyError(f"{name} is not set, but WORLD_SIZE says this is a multi-process job; start it with "
                          "torchrun (or unset WORLD_SIZE)")
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12 and lo <= int(text) <= hi):
        raise SurveyError(f"the environment variable {name}={raw[:40]!r} is not a whole number from {lo} to {hi}; "
                          "start multi-process surveys with torchrun, or unset it")
    return int(text)


def read_dist_env() -> Dist:
    """This process's place as the torchrun environment names it, checked: WORLD_SIZE 1..MAX_WORLD, RANK and
    LOCAL_RANK below it, MASTER_ADDR / MASTER_PORT present and a port number (torch would raise a traceback, or wait
    for ever for a rank that can never exist)."""
    world = _env_int("WORLD_SIZE", "1", 1, MAX_WORLD)
    if world == 1:
        return Dist()
    rank = _env_int("RANK", None, 0, world - 1)
    local = _env_int("LOCAL_RANK", "0", 0, world - 1)
    import torch.distributed as dist

    if not dist.is_initialized():
        if not os.environ.get("MASTER_ADDR", "").strip():
            raise SurveyError("MASTER_ADDR is not set, but WORLD_SIZE says this is a multi-process job; start it "
                              "with torchrun (or unset WORLD_SIZE)")
        _env_int("MASTER_PORT", None, 1, 65535)
    return Dist(rank, world, local)


def init_distributed(device: str, log=None) -> Dist:
    """Join the ``torchrun`` / ``accelerate launch`` job named by the environment (gloo on CPU, NCCL on CUDA),
    waiting at most JOIN_SECONDS for the other processes (the merge's own group waits MERGE_SECONDS)."""
    d = read_dist_env()
    if not d.active:
        return d
    import datetime

    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if d.local_rank >= torch.cuda.device_count():
            raise SurveyError(f"LOCAL_RANK {d.local_rank} names a GPU this machine does not have "
                              f"({torch.cuda.device_count()} visible); use --nproc-per-node <= the GPU count")
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        if log:
            log(f"joining the torchrun job of {d.world} processes at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} (waiting up to {JOIN_SECONDS // 60} min for the others)")
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=JOIN_SECONDS))
        except (RuntimeError, ValueError) as e:  # DistNetworkError / DistStoreError: a bad address, a port in use
            msg = " ".join(str(e).split())[:300]
            raise SurveyError(f"cannot join the torchrun job (MASTER_ADDR {os.environ.get('MASTER_ADDR')!r}, "
                              f"MASTER_PORT {os.environ.get('MASTER_PORT')!r}): {msg}") from None
    d.merge_group = dist.new_group(timeout=datetime.timedelta(seconds=MERGE_SECONDS))  # shards finish unevenly
    return d


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

    The partial folder is held (:func:`lenskit.files.hold_folder`, by rank 0 of a ``torchrun`` job) while the
    shard runs: a second survey into the same ``-o`` meanwhile is refused, instead of both writing one checkpoint
    (or a ``--resume`` continuing a survey that is still running). ``on_checkpoint(n_blocks_done)`` is called after
    each checkpoint (tests inject failures there)."""
    from .files import hold_folder

    d = dist_info or Dist()
    args = (loaded, opts, target, resume, quiet, d, on_checkpoint, timing)
    if d.rank != 0:  # the job's other processes write beside rank 0's, into the folder it holds
        return _survey_shard(*args)
    folder = partial_dir(target)
    with hold_folder(folder, f"another lenskit survey into {target} is running now (its checkpoints are in {folder}); "
                     "wait for it to finish or name another -o"):
        return _survey_shard(*args)


def _survey_shard(loaded, opts: SurveyOptions, target: Path, resume: bool, quiet: bool, d: Dist, on_checkpoint,
                  timing: dict | None) -> Aggregates:
    """:func:`survey_shard` with the partial folder held."""
    from .capture import stage_names  # noqa: F401  (keeps the import graph: capture before survey)
    from .corpus import count_documents, iter_documents
    from .lens import lens_from_model
    from .models import resolve_device
    from .planning import auto_max_memory, useful_budget
    from .scoring import Scorer, resolve_precision

    n_layers = layer_count(loaded)
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
    lens = lens_from_model(loaded.model, loaded.adapter)
    done, agg = load_checkpoint(ck_path, recipe, S, lens.vocab_size) if resume else (set(), None)
    agg = agg or Aggregates(S, opts.examples)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write to {folder.parent}: {e.strerror or e}") from None
    device = resolve_device(opts.device)
    scorer = Scorer(lens, device, opts.norm, resolve_precision(opts.precision, device))
    budget = useful_budget(opts.max_memory or auto_max_memory(device), opts.max_tokens, S,
                           lens.vocab_size, scorer.set_block(S))
    if getattr(loaded, "inferred", ()):  # no registered adapter: verify a layout on a short probe first
        from .testing import capture_inferred

        capture_inferred(loaded, torch.tensor(loaded.tokenizer("The cat sat on the mat.")["input_ids"]))
    total = count_documents(opts.sources, opts.max_chars)  # the same line bounds as the reading
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
    dist.gather_object(agg.state(), states, dst=0, group=d.merge_group)
    if d.rank != 0:
        return None
    merged = Aggregates(agg.n_stages, opts.examples)
    for st in states:
        merged.merge(Aggregates.from_state(st))
    return merged


def _model_key(loaded) -> dict:
    from .lens import lens_from_model

    return {"id": loaded.source.get("id"), "fingerprint": lens_from_model(loaded.model, loaded.adapter).fingerprint(),
            "dtype": str(loaded.dtype).removeprefix("torch.")}


def remove_partial(target: Path) -> None:
    """Delete a run's partial checkpoints (after the finished run is in place): the checkpoint files and their
    temporary files only, then the folder if that left it empty -- a folder of that name holding anything else (a
    user's files, a link elsewhere) keeps it."""
    folder = partial_dir(target)
    if folder.is_symlink() or not folder.is_dir():
        return
    for f in [*folder.glob("shard-*-of-*.json"), *folder.glob(".shard-*-of-*.json.*.tmp")]:
        if f.is_file() and not f.is_symlink():
            f.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # not empty: not only ours
        pass
