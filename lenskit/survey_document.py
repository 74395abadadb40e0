"""The survey document: merged :mod:`lenskit.survey_aggregates` -> ``survey.json`` (:mod:`lenskit.survey_schema`),
the examples' export, and the run folder's files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import torch

from . import __version__
from .survey_aggregates import Aggregates
from .survey_schema import (
    BITS_BINS,
    BITS_WIDTH,
    CLASSES,
    DELTA_HALF,
    DELTA_STEP,
    FIXED,
    RANK_BINS,
    SURVEY_FILE,
    SURVEY_VERSION,
)

if TYPE_CHECKING:
    from .survey import SurveyOptions


def layer_count(loaded) -> int:
    from .adapters import get_module

    return len(get_module(loaded.model, loaded.adapter.layers))


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

    stages = stage_names(layer_count(loaded))
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
                  "n_layers": layer_count(loaded), "vocab_size": lens.vocab_size},
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
    meta = build_metadata(fingerprint_info(loaded), stage_names(layer_count(loaded)), prompts)
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
