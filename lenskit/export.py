"""Export: the options a user gives, checked against a trace; the engine's statistics (:mod:`lenskit.engine`) turned
into the compact, versioned JSON document (:mod:`lenskit.schema`); and writing it (file, stdout).

The statistics come in groups of positions (often one position each on the CPU); every per-position step is
vectorised over blocks of positions instead (rounding, histogram spans, ``bin_edge``, sample selection:
:data:`RECORD_BLOCK`; the Base64 encodings: :data:`ENCODE_BLOCK`), as numpy calls on tiny arrays cost more than
their work.
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
from .planning import auto_max_memory, useful_budget
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
from .tokens import as_index, check_callback, one_line


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
FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # Lens.fingerprint's form
MAX_DIGITS = 18  # more (leading zeros aside) is beyond any vocabulary or prompt; Python's int() refuses > 4300


def _number(text: str) -> int | None:
    """``int(text)`` of ASCII digits (optionally ``-``), or None past MAX_DIGITS significant digits."""
    digits = text.lstrip("-").lstrip("0") or "0"  # int() counts leading zeros towards its limit too
    return (-1 if text.startswith("-") else 1) * int(digits) if len(digits) <= MAX_DIGITS else None


def _int_text(v: int) -> str:
    """``str(v)`` for a message; Python refuses ints past 4300 digits."""
    return str(v) if v.bit_length() <= 10_000 else ("-" if v < 0 else "") + "(a number of thousands of digits)"


def _shown(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}...({len(text)} characters)"


def parse_positions(spec: str | None, n: int, option: str = "--positions", item: str = "position",
                    has: str = "the prompt has {n} tokens") -> list[int]:
    """``"3,10-20"`` -> sorted positions; negative numbers count from the end. All positions if ``spec`` is None.
    ``option``, ``item`` and ``has`` word the errors (``fit-lens --stages`` parses stages with it)."""
    if spec is not None and not isinstance(spec, str):
        raise InputError(f"{option} must be a string such as '3,10-20' or '-1', not {type(spec).__name__}")
    n = as_index(n)
    if n is None or n < 0:
        raise InputError(f"{option}: the number of {item}s must be a whole number >= 0")
    if spec is None:
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        m = POSITION_PART.fullmatch(part.strip())
        if not m:
            raise InputError(f"bad {option} '{spec}': use e.g. 3,10-20 or -1 (ASCII digits)")
        lo = _number(m.group(1))
        hi = _number(m.group(2)) if m.group(2) is not None else lo
        for v, text in ((lo, m.group(1)), (hi, m.group(2) or m.group(1))):
            if v is None or not -n <= v < n:
                raise InputError(f"{item} {_shown(text)} is out of range: {has.format(n=n)} (0-{n - 1}, or -{n} to -1)")
        lo, hi = lo % n, hi % n
        if lo > hi:
            raise InputError(f"bad {option} '{spec}': range {m.group(0)} is empty")
        out.update(range(lo, hi + 1))
    return sorted(out)


def resolve_track(tokenizer, items: list, vocab_size: int) -> list[int]:
    """``--track`` values (token strings or ids) -> vocabulary ids; a string must be exactly one token.

    Only ASCII digits make an id (``"٣"`` is text, not token 3)."""
    if not isinstance(items, (list, tuple)):  # a string would be followed letter by letter
        raise InputError(f"--track wants a list of token texts or ids (e.g. [' Paris', 42]), not {type(items).__name__}")
    ids = []
    for item in items:
        if not isinstance(item, str):  # an id: an int or a numpy integer (not a bool, float or None)
            item = as_index(item)
            if item is None:
                raise InputError(f"--track wants token texts (strings) or ids (ints), not {type(items[len(ids)]).__name__}")
            if item.bit_length() > 10_000:  # str() refuses past 4300 digits
                raise InputError(f"--track: token id out of range (vocabulary has {vocab_size} entries)")
        text = str(item)
        if isinstance(item, int) or TOKEN_ID.fullmatch(text):
            tid = item if isinstance(item, int) else _number(text)
            if tid is None:
                raise InputError(f"--track {_shown(text)}: token id out of range (vocabulary has {vocab_size} entries)")
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
        raise InputError(f"--top-k {_int_text(top_k)} must be between 1 and the vocabulary size ({vocab_size})")
    if stage_top < 0 or stage_top > vocab_size:
        raise InputError(f"--stage-top {_int_text(stage_top)} must be between 0 and the vocabulary size ({vocab_size})")
    return resolve_track(tokenizer, track, vocab_size)


def _doubles(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _ints(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.int32)


RECORD_BLOCK = 64  # positions whose records are built in one vectorised pass (statistics groups may be single positions)


def export_prompt(scorer: Scorer, stages_of, n_stages: int, token_ids: list[int], positions: list[int],
                  top_k: int, track_ids: list[int], budget: int, progress=None, samples: int = HIST_SAMPLES,
                  tracked_of: dict | None = None, stage_top: int = 0) -> list[dict]:
    """One record per chosen position of one prompt (vocabulary ids; string-table indices are assigned by
    :func:`build_document`), from the engine's statistics groups, about RECORD_BLOCK positions at a time."""
    col_ids = scorer.col_ids.cpu().numpy()  # [V] vocabulary id of each score column
    out, block, in_block = [], [], 0
    for g in prompt_stats(scorer, stages_of, n_stages, token_ids, positions, top_k, track_ids, budget, samples, progress,
                          tracked_of, stage_top):
        block.append(_group_arrays(g, n_stages, col_ids, stage_top))
        in_block += len(g.positions)
        if in_block >= RECORD_BLOCK:
            out += _records(_join(block), n_stages, token_ids, samples)
            block, in_block = [], 0
    if block:
        out += _records(_join(block), n_stages, token_ids, samples)
    return out


def _group_arrays(g, n_stages: int, col_ids: np.ndarray, stage_top: int) -> dict:
    """A statistics group's results as numpy, rows ``R`` ordered (position, stage)."""
    st = g.stats
    rows = st.sample_rows.cpu().numpy()  # [n] sorted
    bounds = np.searchsorted(rows, np.arange(st.counts.shape[0] + 1))  # [R + 1] where each row's samples start
    out = {
        "positions": g.positions,
        "tracked": g.tracked,
        "counts": _ints(st.counts),  # [R, BINS]
        "score": _doubles(st.tracked_score),  # [R, K] (K: the group's longest tracked list; shorter ones padded)
        "rank": _ints(st.rank),  # [R, K]
        "true_bin": _ints(st.tracked_bin),  # [R, K]
        **{k: _doubles(getattr(st, k)) for k in ("mean", "std", "lse", "entropy", "kl")},  # [R] each
        "sample_ids": _sample_ids(st, col_ids),  # row after row, bin after bin, by id within a bin
        "sample_counts": np.diff(bounds),  # [R] how many of them each row has
    }
    if stage_top:
        out["top_ids"] = col_ids[st.stage_top_cols.cpu().numpy()].astype(np.int32)  # [R, N] vocabulary ids
        out["top_score"] = _doubles(st.stage_top_score)  # [R, N]
    return out


def _sample_ids(st, col_ids: np.ndarray) -> np.ndarray:
    """Vocabulary ids of a group's samples, sorted by (row, bin, id): a bin lists its tokens by id, whatever the
    engine's column order (the kernels give them by (row, bin, column))."""
    ids = col_ids[st.sample_cols.cpu().numpy()]  # [n]
    key = st.sample_rows.cpu().numpy() * HIST_BINS + st.sample_bins.cpu().numpy()  # [n] sorted
    return ids[np.lexsort((ids, key))]


def _join(groups: list[dict]) -> dict:
    """Consecutive groups' :func:`_group_arrays` as one (``[R, K]`` arrays padded with zeros to the widest K)."""
    if len(groups) == 1:
        return groups[0]
    out = {}
    for key, first in groups[0].items():
        parts = [g[key] for g in groups]
        if isinstance(first, list):
            out[key] = [x for part in parts for x in part]
        elif first.ndim == 2 and len({x.shape[1] for x in parts}) > 1:
            out[key] = np.zeros((sum(len(x) for x in parts), max(x.shape[1] for x in parts)), first.dtype)
            r = 0
            for x in parts:
                out[key][r: r + len(x), : x.shape[1]] = x
                r += len(x)
        else:
            out[key] = np.concatenate(parts)
    return out


def _records(a: dict, n_stages: int, token_ids: list[int], samples: int) -> list[dict]:
    """One record per position of :func:`_group_arrays` ``a`` (vocabulary ids, rounded numbers).

    Every statistic is rounded (and reshaped) once for all ``c`` positions x ``S`` stages; a position's arrays are
    views of those. Arrays stay numpy (serialised by orjson directly): Python lists of Python numbers would cost ~10x
    the memory for long prompts."""
    c, S = len(a["positions"]), n_stages
    ks = [len(ids) for ids in a["tracked"]]  # [c] tracked tokens of each position (K: the most)

    def per_position(x: np.ndarray) -> np.ndarray:  # [R, ...] -> [c, S, ...] (rows ordered position, stage)
        return x.reshape(c, S, *x.shape[1:])

    def per_tracked(x: np.ndarray) -> np.ndarray:  # [R, K] -> [c, K, S]
        return np.ascontiguousarray(per_position(x).transpose(0, 2, 1))

    counts = per_position(a["counts"])  # [c, S, BINS]
    nz = counts > 0
    lo = nz.argmax(-1).astype(np.int32)  # [c, S] first non-empty bin
    hi = (HIST_BINS - 1 - nz[..., ::-1].argmax(-1)).astype(np.int32)  # [c, S] last non-empty bin
    score = per_tracked(np.round(a["score"], ROUND_SCORE))  # [c, K, S]
    rank = per_tracked(a["rank"])  # [c, K, S]
    mean, std = (per_position(np.round(a[k], ROUND_STAT)) for k in ("mean", "std"))  # [c, S]
    lse, entropy, kl = (per_position(np.round(a[k], ROUND_NATS)) for k in ("lse", "entropy", "kl"))  # [c, S]
    edges = _bin_edges(per_tracked(a["true_bin"]), score, mean, std, ks)
    kept, sizes = _sparse_samples(a["sample_ids"], a["sample_counts"], a["counts"], samples, S)
    sizes = per_position(sizes)  # [c, S]
    n = sizes.sum(1)  # [c] samples of each position
    ends = np.cumsum(n)
    spans = list(zip((ends - n).tolist(), ends.tolist()))  # [c] where each position's samples are in kept
    stage_top = "top_ids" in a
    if stage_top:
        top_ids = per_position(a["top_ids"])  # [c, S, N]
        # [R, N] surprisal lse - score (>= 0: in fast mode lse comes from the bfloat16 scores and may fall below a top
        # score)
        surprisal = np.maximum(a["lse"][:, None] - a["top_score"], 0.0)
        top_surprisal = per_position(round_stage_top(surprisal))  # [c, S, N] as exported
    out = []
    for i, p in enumerate(a["positions"]):
        ids, k = a["tracked"][i], ks[i]
        nxt = token_ids[p + 1] if p + 1 < len(token_ids) else None
        rec = {
            "pos": p,
            "tracked_ids": ids,
            "next": ids.index(nxt) if nxt is not None else None,
            "score": score[i, :k],
            "rank": rank[i, :k],
            "mean": mean[i],
            "std": std[i],
            "lse": lse[i],
            "entropy": entropy[i],
            "kl": kl[i],
            "bin_edge": edges[i],
            "hist_lo": lo[i],
            "hist_hi": hi[i],
            "hist_counts": counts[i],
            "sample_ids": kept[spans[i][0]: spans[i][1]],  # the sparse bins' tokens, stage after stage
            "sample_sizes": sizes[i],  # [S] how many of them each stage has
        }
        if stage_top:
            rec["stage_top_ids"], rec["stage_top_surprisal"] = top_ids[i], top_surprisal[i]
        out.append(rec)
    return out


def _bin_edges(true_bins: np.ndarray, score: np.ndarray, mean: np.ndarray, std: np.ndarray,
               ks: list[int]) -> list[list[list[int]]]:
    """Per position ``[j, s, bin]`` where the bin recomputed from the rounded numbers (as readers do) is not the true
    one; ``true_bins`` and ``score`` ``[c, K, S]``, ``mean`` and ``std`` ``[c, S]``, ``ks``: each position's number of
    tracked tokens (the rest is padding)."""
    wrong = np.argwhere(z_bin(score, mean[:, None, :], std[:, None, :]) != true_bins)  # [n, 3] (position, j, s)
    out = [[] for _ in ks]
    for (i, j, s), b in zip(wrong.tolist(), true_bins[tuple(wrong.T)].tolist()):
        if j < ks[i]:
            out[i].append([j, s, b])
    return out


def _sparse_samples(ids: np.ndarray, got: np.ndarray, counts: np.ndarray, samples: int, n_stages: int):
    """The sample vocabulary ids (every token of each sparse bin, row after row, bin after bin: ``ids [n]``, ``got
    [R]`` per row, as the statistics give them) checked against the histogram ``counts [R, BINS]``; returns them
    as int32 and how many each row has ``[R]``."""
    per_row = np.where(sparse_bins(counts, samples), counts, 0).sum(1)  # [R] tokens of the sparse bins
    bad = np.nonzero(got != per_row)[0]
    if bad.size:
        r = int(bad[0])
        raise RuntimeError(f"stage {r % n_stages}: {got[r]} sample tokens for {int(per_row[r])} expected")
    return ids.astype(np.int32), per_row


ENCODE_BLOCK = 64  # rows (a lens at a position) whose histograms one vectorised encoding call writes (bounds its
# temporaries for long prompts)


def _encode_histograms(rows: list[dict], sample_refs: np.ndarray, order: int) -> list[tuple[list[str], list[str]]]:
    """Per row (a lens at a position) its ``hist.counts`` and ``hist.samples`` strings, ENCODE_BLOCK rows per call;
    ``sample_refs``: all rows' ``sample_ids`` as string-table indices, concatenated."""
    out = []
    start = 0  # where the block's samples start in sample_refs
    for b0 in range(0, len(rows), ENCODE_BLOCK):
        block = rows[b0: b0 + ENCODE_BLOCK]
        S = len(block[0]["hist_lo"])
        counts = encode_counts(*(np.stack([r[k] for r in block]) for k in ("hist_counts", "hist_lo", "hist_hi")))
        sizes = np.concatenate([r["sample_sizes"] for r in block])  # [B * S]
        end = start + int(sizes.sum())
        texts = encode_samples(sample_refs[start:end], order, sizes)
        start = end
        out.extend((counts[i * S: (i + 1) * S], texts[i * S: (i + 1) * S]) for i in range(len(block)))
    return out


def build_document(meta: dict, prompts_out: list[tuple[int, list[dict]]], tokenizer, options: ExportOptions,
                   vocab_size: int, lenses: list[dict] | None = None) -> dict:
    """Assemble the export document (see :mod:`lenskit.schema`): string table (most referenced first) + columnar
    per-position arrays referring to it."""
    from .tokens import token_texts

    referenced = [np.asarray(meta["prompts"][pi]["token_ids"], dtype=np.int64) for pi, _ in prompts_out]
    rows = []  # every lens's record at every position, in document order
    for _, positions in prompts_out:
        for row in positions:
            rows += [row] + row.get("lenses", [])
            referenced.append(np.asarray(row["tracked_ids"], dtype=np.int64))
    referenced += [r["sample_ids"] for r in rows]
    referenced += [r["stage_top_ids"].ravel() for r in rows if "stage_top_ids" in r]
    # string table ordered by how often a token is referenced (ties: by id), so common references are short numbers
    ids_all, freq = np.unique(np.concatenate(referenced), return_counts=True) if referenced else (np.zeros(0, np.int64),) * 2
    table = ids_all[np.lexsort((ids_all, -freq))]
    lut = np.full(vocab_size, -1, dtype=np.int32)
    lut[table] = np.arange(len(table), dtype=np.int32)

    def refs(ids) -> np.ndarray:
        return lut[np.asarray(ids, dtype=np.int64)]

    sample_refs = refs(np.concatenate([r["sample_ids"] for r in rows])) if rows else np.zeros(0, np.int32)
    order = sample_order(sample_refs) if rows else 0  # one per document
    hists = {id(r): h for r, h in zip(rows, _encode_histograms(rows, sample_refs, order))}

    def lens_fields(row):  # what each lens has of its own at a position
        counts, samples = hists[id(row)]
        top = {}
        if "stage_top_ids" in row:  # the overview grid: each stage's own top-N
            top["stage_top"] = {"tokens": refs(row["stage_top_ids"]), "surprisal": row["stage_top_surprisal"]}
        return {
            "score": row["score"],
            "rank": row["rank"],
            "bin_edge": row["bin_edge"],
            "mean": row["mean"],
            "std": row["std"],
            "lse": row["lse"],
            "entropy": row["entropy"],
            "kl": row["kl"],
            "hist": {"lo": row["hist_lo"], "counts": counts, "samples": samples},
            **top,
        }

    prompts = []
    for pi, positions in prompts_out:
        p_meta = meta["prompts"][pi]
        entry = {"index": pi, "text": p_meta["text"], "tokens": refs(p_meta["token_ids"]).tolist(), "positions": []}
        if "chat" in p_meta:  # `trace --chat`: text is the templated prompt (checked with the trace's metadata)
            entry["chat"] = {"user": p_meta["chat"]["user"], "system": p_meta["chat"].get("system")}
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


def check_option_types(options: ExportOptions) -> ExportOptions:
    """The Python API's :class:`ExportOptions` hold the types the CLI gives them (else one clear InputError, not a
    TypeError deep inside; a string for ``track`` would be followed letter by letter). Returns the options with numpy
    integers (``np.argsort``'s ids, ``np.int64`` counts) as Python ints."""
    from .tokens import is_int

    if not isinstance(options, ExportOptions):
        raise InputError(f"options must be an ExportOptions, not {type(options).__name__}")
    ints = {name: as_index(v) for name in ("top_k", "samples", "stage_top", "prompt", "max_memory")
            if not is_int(v := getattr(options, name)) and as_index(v) is not None}
    if isinstance(options.track, (list, tuple)) and any(not isinstance(t, str) and as_index(t) is not None
                                                        for t in options.track):
        ints["track"] = [t if isinstance(t, str) or as_index(t) is None else as_index(t) for t in options.track]
    options = replace(options, **ints) if ints else options
    for name in ("top_k", "samples", "stage_top"):
        if not is_int(getattr(options, name)):
            raise InputError(f"ExportOptions.{name} must be an int, not {getattr(options, name)!r}")
    if options.prompt is not None and not is_int(options.prompt):
        raise InputError(f"ExportOptions.prompt must be an int (0-based) or None, not {options.prompt!r}")
    if options.positions is not None and not isinstance(options.positions, str):
        raise InputError(f"ExportOptions.positions must be a string such as '3,10-20' or '-1', or None, "
                         f"not {options.positions!r}")
    if not isinstance(options.track, (list, tuple)) or not all(
            isinstance(t, str) or is_int(t) for t in options.track):
        raise InputError(f"ExportOptions.track must be a list of token texts or ids (e.g. [' Paris', 42]), "
                         f"not {options.track!r}")
    if not isinstance(options.norm, bool):
        raise InputError(f"ExportOptions.norm must be True or False, not {options.norm!r}")
    if options.max_memory is not None and not (is_int(options.max_memory) and options.max_memory > 0):
        raise InputError(f"ExportOptions.max_memory must be a positive number of bytes or None, "
                         f"not {options.max_memory!r}")
    for name in ("precision", "device"):
        if not isinstance(getattr(options, name), str):
            raise InputError(f"ExportOptions.{name} must be a string, not {getattr(options, name)!r}")
    if not isinstance(options.lenses, (list, tuple)) or not options.lenses or not all(
            isinstance(x, str) for x in options.lenses):
        raise InputError(f"ExportOptions.lenses must be a non-empty list of lens specs (e.g. ['logit']), "
                         f"not {options.lenses!r}")
    return options


def plan_export(meta: dict, tokenizer, options: ExportOptions) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Check the options against a trace's metadata and tokenizer, before any lens weights load.

    Returns ``[(prompt, positions)]`` to export and the ``--track`` token ids."""
    options = check_option_types(options)
    if not 0 <= options.samples <= 100:
        raise InputError(f"--samples {_int_text(options.samples)} must be between 0 and 100")
    if options.precision not in PRECISIONS:
        raise InputError(f"unknown precision '{options.precision}'; use {', '.join(PRECISIONS)}")
    n_prompts = len(meta["prompts"])
    if options.prompt is not None and not 0 <= options.prompt < n_prompts:
        raise InputError(f"--prompt {_int_text(options.prompt)} is out of range: the trace has {n_prompts} prompt(s) (0-{n_prompts - 1})")
    track_ids = check_export_options(tokenizer, meta["model"]["vocab_size"], options.top_k, options.track,
                                     options.stage_top)
    chosen = [options.prompt] if options.prompt is not None else list(range(n_prompts))
    has = "the prompt has {{n}} tokens" if n_prompts == 1 else "prompt {i} has {{n}} tokens"
    plan = [(i, parse_positions(options.positions, len(meta["prompts"][i]["token_ids"]), has=has.format(i=i)))
            for i in chosen]
    check_document_size(sum(len(p) for _, p in plan), len(meta["stages"]), options.top_k + len(track_ids) + 1,
                        options.stage_top, len(options.lenses))
    return plan, track_ids


MAX_DOCUMENT_VALUES = 50_000_000  # numbers an export may hold (~400 MB of JSON, GBs as Python objects while built):
# 9x the 4,096-token export at the defaults; beyond it, a --top-k in the thousands over every position


def check_document_size(positions: int, stages: int, tracked: int, stage_top: int, lenses: int,
                        what: str = "export", advice: str = "lower --top-k or --stage-top, or export fewer --positions "
                        "at a time") -> None:
    """InputError before any weights load when the document would hold more than MAX_DOCUMENT_VALUES numbers: per
    position, stage and lens a score and a rank for each of ``tracked`` tokens and two numbers for each of the stage's
    own top ``stage_top`` (``--top-k 49152`` over the test paragraph: 1.1 billion numbers, hours of rank passes).
    ``what`` and ``advice`` word it for another command's document (compare's)."""
    values = positions * stages * lenses * (2 * tracked + 2 * stage_top)
    if values > MAX_DOCUMENT_VALUES:
        raise InputError(f"this {what} would hold ~{values / 1e6:,.0f} million numbers ({positions} positions x "
                         f"{stages} stages x {tracked} tracked tokens; ~{values * 8 / 1e9:,.1f} GB of JSON), more "
                         f"than {MAX_DOCUMENT_VALUES:,}: {advice}")


def _check_meta_ids(meta: dict, vocab_size: int) -> None:
    """InputError unless every prompt of ``meta`` has a list of token ids within the lens's vocabulary (a
    hand-built or another model's metadata failed as an IndexError while the document was assembled)."""
    from .tokens import is_int

    for i, p in enumerate(meta["prompts"]):
        ids = p.get("token_ids") if isinstance(p, dict) else None
        if not isinstance(ids, list) or not all(is_int(t) and 0 <= t < vocab_size for t in ids):
            raise InputError(f"meta['prompts'][{i}]['token_ids'] must be a list of token ids from 0 to "
                             f"{vocab_size - 1} (the lens's vocabulary): metadata of another model?")


def export_document(meta: dict, lens, tokenizer, stages_for_prompt, options: ExportOptions, log=None,
                    plan=None) -> dict:
    """Compute the whole export document for a trace's metadata and a way to read each prompt's stages.

    ``lens``: a :class:`lenskit.lenses.StageLens`, a list of them (the first is the document's main lens; the others
    follow its tracked tokens), or a bare :class:`lenskit.lens.Lens` (the logit lens).
    ``stages_for_prompt(i)`` returns a callable ``(p0, p1) -> [S, p1 - p0, D]`` for prompt ``i``; ``plan`` is
    :func:`plan_export`'s result when the caller checked the options already.
    """
    from .lens import Lens
    from .lenses import logit_lens
    from .models import resolve_device
    from .store import check_finite

    if not (isinstance(meta, dict) and isinstance(meta.get("prompts"), list) and isinstance(meta.get("stages"), list)
            and isinstance(meta.get("model"), dict)):
        raise InputError("meta must be a trace's metadata (as trace_prompts or read_trace(...).meta give it)")
    options = check_option_types(options)
    if isinstance(lens, Lens) and [s.strip() for s in options.lenses] != ["logit"]:
        raise InputError(f"ExportOptions.lenses {one_line(repr(options.lenses), 80)} is not used with a bare Lens: "
                         "pass the lenses themselves (lenskit.lenses.open_lenses(...), each .bind(lens)), or "
                         "use export_run_dir")
    lenses = list(lens) if isinstance(lens, (list, tuple)) else [logit_lens(lens) if isinstance(lens, Lens) else lens]
    if not lenses or not all(isinstance(getattr(x, "head", None), Lens) for x in lenses):
        raise InputError(f"lens must be a Lens (lens_from_model), a StageLens or a non-empty list of them, "
                         f"not {one_line(repr(lens), 80)}")
    if tokenizer is None:
        raise InputError("export_document needs the model's tokenizer (for the token texts), not None")
    if not (callable(tokenizer) and all(hasattr(tokenizer, a) for a in ("batch_decode", "convert_ids_to_tokens"))):
        raise InputError(f"tokenizer must be the model's Hugging Face tokenizer (loaded.tokenizer), not "
                         f"{type(tokenizer).__name__}")  # a path or model failed only after every statistic
    if not callable(stages_for_prompt):
        raise InputError(f"stages_for_prompt must be a function i -> ((p0, p1) -> [S, p1 - p0, D] tensor), e.g. "
                         f"lambda i: (lambda p0, p1: states[i][:, p0:p1]), not {type(stages_for_prompt).__name__}")
    _check_meta_ids(meta, lenses[0].head.vocab_size)
    # another model's lens of the same shapes gives wrong numbers silently; compared when meta holds a fingerprint as
    # Lens.fingerprint writes it (16 hex digits), not a hand-built metadata's placeholder
    traced = meta["model"].get("fingerprint")
    if isinstance(traced, str) and FINGERPRINT.fullmatch(traced) and traced != (fp := lenses[0].head.fingerprint()):
        raise InputError(f"the lens is not the traced model's (its fingerprint {fp} differs from the trace's "
                         f"{one_line(traced, 40)}): build it from the model that made these states")
    check_callback(log, "log")
    device = resolve_device(options.device)
    options = replace(options, precision=resolve_precision(options.precision, device))  # the document records the mode
    V = lenses[0].head.vocab_size
    D = lenses[0].head.hidden_size
    S = len(meta["stages"])
    read_stages = stages_for_prompt

    def stages_for_prompt(i):  # the caller's reader, its shapes checked (a torch error deep in the engine otherwise)
        read = read_stages(i)
        if not callable(read):  # e.g. lambda i: states[i] -- a tensor, not a reader
            raise InputError(f"stages_for_prompt({i}) gave {type(read).__name__}; it must return a function "
                             "(p0, p1) -> [S, p1 - p0, D], e.g. lambda i: (lambda p0, p1: states[i][:, p0:p1])")
        finite = getattr(read, "checks_finite", False)  # a trace's reader checks its values itself

        def checked(p0, p1):
            h = read(p0, p1)
            want = (S, p1 - p0, D)
            if not isinstance(h, torch.Tensor) or tuple(h.shape) != want:
                got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
                raise InputError(f"stages_for_prompt({i})({p0}, {p1}) gave {got}; expected a tensor [S, p1 - p0, D] "
                                 f"= {list(want)}")
            if not h.is_floating_point():
                raise InputError(f"stages_for_prompt({i})({p0}, {p1}) gave a tensor of "
                                 f"{str(h.dtype).removeprefix('torch.')}; stages are floating point")
            if not finite:  # NaN would be exported as statistics of nothing (a silent wrong document)
                check_finite(h, meta, i, p0, f"stages_for_prompt({i})")
            return h

        return checked

    plans, track_ids = plan or plan_export(dict(meta, model=dict(meta["model"], vocab_size=V)), tokenizer, options)
    scorers = [Scorer(x, device, options.norm, options.precision) for x in lenses]
    n_stages = len(meta["stages"])
    budget = useful_budget(options.max_memory or auto_max_memory(device), max((len(p) for _, p in plans), default=1),
                           n_stages, V, scorers[0].set_block(n_stages))
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

    options = check_option_types(options)
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

        read.checks_finite = True  # export_document need not check again
        return read

    return export_document(meta, lenses, tok, stages_for_prompt, options, log, plan=plan)
