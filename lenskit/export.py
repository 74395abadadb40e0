"""Export: the options a user gives, checked against a trace; the engine's statistics (:mod:`lenskit.engine`) turned
into the compact, versioned JSON document (:mod:`lenskit.schema`); and writing it (file, stdout).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
import torch

from . import __version__
from .engine import prompt_stats
from .errors import InputError
from .planning import auto_max_memory
from .progress import Progress
from .schema import (
    HIST_BINS,
    HIST_SAMPLES,
    HIST_Z_MAX,
    HIST_Z_MIN,
    PRECISIONS,
    ROUND_NATS,
    ROUND_SCORE,
    ROUND_STAT,
    SCHEMA_VERSION,
    STAGE_TOP,
    encode_counts,
    encode_samples,
    round_stage_top,
    sample_order,
    sparse_bins,
    z_bin,
)
from .scoring import Scorer, resolve_precision


@dataclass
class ExportOptions:
    """What to export and how."""

    top_k: int = 10
    track: list = field(default_factory=list)  # strings or ids
    positions: str | None = None  # "3,10-20"
    prompt: int | None = None
    norm: bool = True
    precision: str = "auto"  # schema.PRECISIONS (auto: scoring.resolve_precision)
    max_memory: int | None = None  # bytes for one chunk's working set
    samples: int = HIST_SAMPLES  # sample tokens per histogram bin
    stage_top: int = STAGE_TOP  # each stage's own top-N tokens per position (the overview grid); 0: none
    device: str = "auto"
    lenses: list = field(default_factory=lambda: ["logit"])  # --lens specs; the first is the document's main lens


POSITION_PART = re.compile(r"(-?[0-9]+)(?:-(-?[0-9]+))?", re.ASCII)
TOKEN_ID = re.compile(r"[0-9]+", re.ASCII)


def parse_positions(spec: str | None, n: int) -> list[int]:
    """``"3,10-20"`` -> sorted positions; negative numbers count from the end. All positions if ``spec`` is None."""
    if spec is None:
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        m = POSITION_PART.fullmatch(part.strip())
        if not m:
            raise InputError(f"bad --positions '{spec}': use e.g. 3,10-20 or -1 (ASCII digits)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        for v in (lo, hi):
            if not -n <= v < n:
                raise InputError(f"position {v} is out of range: the prompt has {n} tokens (0-{n - 1}, or -{n} to -1)")
        lo, hi = lo % n, hi % n
        if lo > hi:
            raise InputError(f"bad --positions '{spec}': range {m.group(0)} is empty")
        out.update(range(lo, hi + 1))
    return sorted(out)


def resolve_track(tokenizer, items: list, vocab_size: int) -> list[int]:
    """``--track`` values (token strings or ids) -> vocabulary ids; a string must be exactly one token.

    Only ASCII digits make an id (``"٣"`` is text, not token 3)."""
    ids = []
    for item in items:
        text = str(item)
        if isinstance(item, int) or TOKEN_ID.fullmatch(text):
            tid = int(text)
        else:
            enc = tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None and text else []
            if len(enc) != 1:
                raise InputError(
                    f"--track {text!r} is not a single token ({len(enc)} tokens); give a token id or one token's text"
                )
            tid = enc[0]
            unk = getattr(tokenizer, "unk_token_id", None)
            if unk is not None and tid == unk and text != tokenizer.unk_token:
                raise InputError(f"--track {text!r} is not in the vocabulary (the tokenizer reads it as "
                                 f"{tokenizer.unk_token!r}); give a token id or one token's text")
        if not 0 <= tid < vocab_size:
            raise InputError(f"--track {text!r}: token id {tid} is out of range (vocabulary has {vocab_size} entries)")
        ids.append(tid)
    return ids


def check_export_options(tokenizer, vocab_size: int, top_k: int, track: list, stage_top: int = 0) -> list[int]:
    """Validate ``--top-k``, ``--stage-top`` and ``--track`` against a vocabulary; return the tracked ids."""
    if top_k < 1 or top_k > vocab_size:
        raise InputError(f"--top-k {top_k} must be between 1 and the vocabulary size ({vocab_size})")
    if stage_top < 0 or stage_top > vocab_size:
        raise InputError(f"--stage-top {stage_top} must be between 0 and the vocabulary size ({vocab_size})")
    return resolve_track(tokenizer, track, vocab_size)


def _round(t: torch.Tensor, digits: int) -> np.ndarray:
    return np.ascontiguousarray(np.round(t.detach().cpu().double().numpy(), digits))


def _ints(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.int32)


def export_prompt(scorer: Scorer, stages_of, n_stages: int, token_ids: list[int], positions: list[int],
                  top_k: int, track_ids: list[int], budget: int, progress=None, samples: int = HIST_SAMPLES,
                  tracked_of: dict | None = None, stage_top: int = 0) -> list[dict]:
    """One record per chosen position of one prompt (vocabulary ids; string-table indices are assigned by
    :func:`build_document`), from the engine's statistics groups."""
    out = []
    for g in prompt_stats(scorer, stages_of, n_stages, token_ids, positions, top_k, track_ids, budget, samples, progress,
                          tracked_of, stage_top):
        row_samples = _samples_by_row(g.stats, len(g.positions) * n_stages, scorer.col_ids)
        top_ids = scorer.col_ids[g.stats.stage_top_cols].cpu().numpy().astype(np.int32)  # [R, N] vocabulary ids
        # [R, N] surprisal lse - score (>= 0: in fast mode lse comes from the bfloat16 scores and may fall below a top
        # score)
        top_surprisal = (g.stats.lse.double()[:, None] - g.stats.stage_top_score.double()).clamp(min=0).cpu().numpy()
        for i, p in enumerate(g.positions):
            rec = _position_record(g.stats, i, n_stages, p, g.tracked[i], token_ids, row_samples)
            if stage_top:
                rows = slice(i * n_stages, (i + 1) * n_stages)
                rec["stage_top_ids"], rec["stage_top_surprisal"] = top_ids[rows], top_surprisal[rows]
            out.append(rec)
    return out


def _position_record(st, i: int, n_stages: int, p: int, ids: list[int], token_ids: list[int], samples) -> dict:
    """One position's results (vocabulary ids, rounded numbers) from a statistics group.

    Arrays stay numpy (serialised by orjson directly): Python lists of Python numbers would cost ~10x the memory
    for long prompts."""
    r0, r1 = i * n_stages, (i + 1) * n_stages
    k = len(ids)
    nxt = token_ids[p + 1] if p + 1 < len(token_ids) else None
    counts = _ints(st.counts[r0:r1])  # [S, BINS]
    nz = counts > 0
    lo = nz.argmax(-1)  # first non-empty bin
    hi = HIST_BINS - 1 - nz[:, ::-1].argmax(-1)
    score = _round(st.tracked_score[r0:r1, :k].t(), ROUND_SCORE)
    mean, std = _round(st.mean[r0:r1], ROUND_STAT), _round(st.std[r0:r1], ROUND_STAT)
    return {
        "pos": p,
        "tracked_ids": ids,
        "next": ids.index(nxt) if nxt is not None else None,
        "score": score,
        "rank": _ints(st.rank[r0:r1, :k].t()),
        "mean": mean,
        "std": std,
        "lse": _round(st.lse[r0:r1], ROUND_NATS),
        "entropy": _round(st.entropy[r0:r1], ROUND_NATS),
        "kl": _round(st.kl[r0:r1], ROUND_NATS),
        "bin_edge": _bin_edge(_ints(st.tracked_bin[r0:r1, :k].t()), score, mean, std),
        "hist_lo": lo.astype(np.int32),
        "hist_hi": hi.astype(np.int32),
        "hist_counts": counts,
        "sample_ids": samples[r0:r1],
    }


def _bin_edge(true_bins: np.ndarray, score: np.ndarray, mean: np.ndarray, std: np.ndarray) -> list[list[int]]:
    """``[j, s, bin]`` where the bin recomputed from the rounded numbers (as readers do) is not the true one."""
    wrong = np.argwhere(z_bin(score, mean[None, :], std[None, :]) != true_bins)
    return [[int(j), int(s), int(true_bins[j, s])] for j, s in wrong]


def _sparse_samples(row: dict, samples: int) -> list[np.ndarray]:
    """Per stage, the sample ids of the sparse bins only (all their tokens): the statistics give min(samples, count)
    ids per bin, bin after bin; denser bins' ids are dropped."""
    c = row["hist_counts"]  # [S, BINS]
    per_bin = np.minimum(c, samples)  # [S, BINS] ids given per bin
    got = np.array([len(x) for x in row["sample_ids"]])  # [S]
    bad = np.nonzero(got != per_bin.sum(1))[0]
    if bad.size:
        s = int(bad[0])
        raise RuntimeError(f"stage {s}: {got[s]} sample tokens for {int(per_bin[s].sum())} expected")
    sparse = sparse_bins(c, samples)  # [S, BINS]
    flat = np.concatenate(row["sample_ids"]) if len(got) else np.zeros(0, np.int32)  # stage after stage, bin after bin
    kept = flat[np.repeat(sparse.ravel(), per_bin.ravel())]
    return np.split(kept, np.cumsum((per_bin * sparse).sum(1))[:-1])  # per stage


def _samples_by_row(st, n_rows: int, col_ids: torch.Tensor) -> list[np.ndarray]:
    """Sample vocabulary ids per row, bin after bin (already sorted by row, bin, column)."""
    rows = st.sample_rows.cpu().numpy()
    ids = col_ids[st.sample_cols].cpu().numpy()
    bounds = np.searchsorted(rows, np.arange(n_rows + 1))
    return [ids[bounds[r]: bounds[r + 1]].astype(np.int32) for r in range(n_rows)]


def build_document(meta: dict, prompts_out: list[tuple[int, list[dict]]], tokenizer, options: ExportOptions,
                   vocab_size: int, lenses: list[dict] | None = None) -> dict:
    """Assemble the export document (see :mod:`lenskit.schema`): string table (most referenced first) + columnar
    per-position arrays referring to it."""
    from .tokens import token_texts

    referenced = [np.asarray(meta["prompts"][pi]["token_ids"], dtype=np.int64) for pi, _ in prompts_out]
    kept = {}  # id(row) -> per-stage sample ids of its sparse bins
    for _, positions in prompts_out:
        for row in positions:
            for r in [row] + row.get("lenses", []):
                kept[id(r)] = _sparse_samples(r, options.samples)
                referenced.extend(kept[id(r)])
                if "stage_top_ids" in r:
                    referenced.append(r["stage_top_ids"].ravel().astype(np.int64))
            referenced.append(np.asarray(row["tracked_ids"], dtype=np.int64))
    # string table ordered by how often a token is referenced (ties: by id), so common references are short numbers
    ids_all, freq = np.unique(np.concatenate(referenced), return_counts=True) if referenced else (np.zeros(0, np.int64),) * 2
    table = ids_all[np.lexsort((ids_all, -freq))]
    lut = np.full(vocab_size, -1, dtype=np.int32)
    lut[table] = np.arange(len(table), dtype=np.int32)

    def refs(ids) -> np.ndarray:
        return lut[np.asarray(ids, dtype=np.int64)]

    kept = {key: [refs(x) for x in per_stage] for key, per_stage in kept.items()}  # now string-table indices
    order = sample_order(np.concatenate([x for v in kept.values() for x in v])) if kept else 0  # one per document

    prompts = []
    for pi, positions in prompts_out:
        p_meta = meta["prompts"][pi]
        entry = {"index": pi, "text": p_meta["text"], "tokens": refs(p_meta["token_ids"]).tolist(), "positions": []}
        def lens_fields(row):  # what each lens has of its own at a position
            top = {}
            if "stage_top_ids" in row:  # the overview grid: each stage's own top-N
                top["stage_top"] = {"tokens": refs(row["stage_top_ids"]),
                                    "surprisal": round_stage_top(row["stage_top_surprisal"])}
            return {
                "score": row["score"],
                "rank": row["rank"],
                "bin_edge": row["bin_edge"],
                "mean": row["mean"],
                "std": row["std"],
                "lse": row["lse"],
                "entropy": row["entropy"],
                "kl": row["kl"],
                "hist": {
                    "lo": row["hist_lo"],
                    "counts": encode_counts(row["hist_counts"], row["hist_lo"], row["hist_hi"]),
                    "samples": encode_samples(kept[id(row)], order),
                },
                **top,
            }

        for row in positions:
            record = {"pos": row["pos"], "tracked": refs(row["tracked_ids"]).tolist(), "next": row["next"],
                      **lens_fields(row)}
            if row.get("lenses"):  # lenses 1.. of lens.lenses, same tracked tokens
                record["lenses"] = [lens_fields(r) for r in row["lenses"]]
            entry["positions"].append(record)
        prompts.append(entry)
    ids = table.tolist()
    model = {k: v for k, v in meta["model"].items() if k != "source"}
    return {
        "schema": SCHEMA_VERSION,
        "lenskit_version": __version__,
        "model": model,
        "lens": {"norm": options.norm, "precision": options.precision, "top_k": options.top_k,
                 "stage_top": options.stage_top,
                 "lenses": lenses or [{"kind": "logit", "source": None, "fingerprint": model.get("fingerprint")}]},
        "vocab_size": vocab_size,
        "stages": {k: [s[k] for s in meta["stages"]] for k in ("name", "kind", "layer")},
        "histogram": {"bins": HIST_BINS, "z_min": HIST_Z_MIN, "z_max": HIST_Z_MAX, "samples": options.samples,
                      "sample_order": order},
        "tokens": token_texts(tokenizer, ids) if ids else [],
        "token_ids": ids,
        "prompts": prompts,
    }


def plan_export(meta: dict, tokenizer, options: ExportOptions) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Check the options against a trace's metadata and tokenizer, before any lens weights load.

    Returns ``[(prompt, positions)]`` to export and the ``--track`` token ids."""
    if not 0 <= options.samples <= 100:
        raise InputError(f"--samples {options.samples} must be between 0 and 100")
    if options.precision not in PRECISIONS:
        raise InputError(f"unknown precision '{options.precision}'; use {', '.join(PRECISIONS)}")
    n_prompts = len(meta["prompts"])
    if options.prompt is not None and not 0 <= options.prompt < n_prompts:
        raise InputError(f"--prompt {options.prompt} is out of range: the trace has {n_prompts} prompt(s) (0-{n_prompts - 1})")
    track_ids = check_export_options(tokenizer, meta["model"]["vocab_size"], options.top_k, options.track,
                                     options.stage_top)
    chosen = [options.prompt] if options.prompt is not None else list(range(n_prompts))
    return [(i, parse_positions(options.positions, len(meta["prompts"][i]["token_ids"]))) for i in chosen], track_ids


def export_document(meta: dict, lens, tokenizer, stages_for_prompt, options: ExportOptions, log=None,
                    plan=None) -> dict:
    """Compute the whole export document for a trace's metadata and a way to read each prompt's stages.

    ``lens``: a :class:`lenskit.lenses.StageLens`, a list of them (the first is the document's main lens; the others
    follow its tracked tokens), or a bare :class:`lenskit.lens.Lens` (the logit lens).
    ``stages_for_prompt(i)`` returns a callable ``(p0, p1) -> [S, p1 - p0, D]`` for prompt ``i``; ``plan`` is
    :func:`plan_export`'s result when the caller checked the options already.
    """
    from .lenses import logit_lens
    from .models import resolve_device

    device = resolve_device(options.device)
    options = replace(options, precision=resolve_precision(options.precision, device))  # the document records the mode
    lenses = list(lens) if isinstance(lens, (list, tuple)) else [lens if hasattr(lens, "head") else logit_lens(lens)]
    V = lenses[0].head.vocab_size
    plans, track_ids = plan or plan_export(dict(meta, model=dict(meta["model"], vocab_size=V)), tokenizer, options)
    scorers = [Scorer(x, device, options.norm, options.precision) for x in lenses]
    budget = options.max_memory or auto_max_memory(device)
    n_stages = len(meta["stages"])
    results = []
    started = time.perf_counter()
    with Progress(len(lenses) * sum(len(p) for _, p in plans), "export", "positions", log) as progress:
        for i, positions in plans:
            ids = meta["prompts"][i]["token_ids"]
            rows = export_prompt(scorers[0], stages_for_prompt(i), n_stages, ids, positions, options.top_k, track_ids,
                                 budget, progress.update, samples=options.samples, stage_top=options.stage_top)
            tracked_of = {r["pos"]: r["tracked_ids"] for r in rows}  # every lens follows the first lens's tokens
            for scorer in scorers[1:]:
                more = export_prompt(scorer, stages_for_prompt(i), n_stages, ids, positions, options.top_k, track_ids,
                                     budget, progress.update, samples=options.samples, tracked_of=tracked_of,
                                 stage_top=options.stage_top)
                for r, m in zip(rows, more):
                    r.setdefault("lenses", []).append(m)
            results.append((i, rows))
    if log:
        log(f"lens statistics for {sum(len(p) for _, p in plans)} positions x {n_stages} stages x {V} tokens x "
            f"{len(lenses)} lens(es) in {time.perf_counter() - started:.2f}s")
    return build_document(meta, results, tokenizer, options, V, [x.info() for x in lenses])


def dumps(doc: dict) -> bytes:
    """Compact JSON bytes (orjson; the document's numeric arrays are numpy)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def plain(doc: dict) -> dict:
    """The document with plain Python lists instead of numpy arrays (what a JSON reader would see)."""
    return orjson.loads(dumps(doc))


def write_document(doc: dict, output: str | Path) -> None:
    """Write ``doc`` to ``output`` atomically, or to stdout when ``output`` is ``-``."""
    from .files import atomic_write

    data = dumps(doc)
    if str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return
    atomic_write(Path(output), lambda tmp: Path(tmp).write_bytes(data))


def export_run_dir(run_dir: Path, options: ExportOptions, loaded=None, states=None, log=None,
                   allow_download: bool = False) -> dict:
    """The export document of a run folder's trace (the caller writes it).

    Everything that depends only on the trace and the tokenizer (prompt, positions, tracked tokens) is checked
    before the lens weights load. Right after tracing, pass the loaded model and the in-memory ``states``.
    """
    from .lens import lens_from_model
    from .lenses import open_lenses
    from .store import check_finite, read_trace
    from .weights import model_folder, trace_lens, trace_tokenizer

    trace = read_trace(run_dir)
    meta = trace.meta
    lenses = open_lenses(options.lenses, meta["model"], meta["stages"])  # checked before any model weights load
    if loaded is not None:
        tok = loaded.tokenizer
        plan = plan_export(meta, tok, options)
        lens = lens_from_model(loaded.model, loaded.adapter)
    else:
        folder = model_folder(meta["model"], allow_download)
        tok = trace_tokenizer(folder, meta["model"])
        plan = plan_export(meta, tok, options)
        lens = trace_lens(folder, meta["model"])
    trace.check_lens(lens.hidden_size, lens.vocab_size)
    lenses = [x.bind(lens) for x in lenses]

    def stages_for_prompt(i):
        if states is None:
            return trace.reader(i)

        def read(p0, p1):
            h = states[i][:, p0:p1]  # [S, c, D]
            check_finite(h, meta, i, p0, "the traced model")
            return h

        return read

    return export_document(meta, lenses, tok, stages_for_prompt, options, log, plan=plan)
