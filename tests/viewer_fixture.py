"""A synthetic, schema-valid export document for the viewer and server tests (no model needed).

:func:`make_export` simulates a small vocabulary's logits at every stage of a ``layers``-layer model and derives every
field the way ``lenskit export`` defines them (ranks by comparison counting, z-histograms with seeded samples), so a
value drawn by the viewer can be compared with the JSON. The vocabulary is full of hostile texts: markup, ``</script>``,
quotes, control, zero-width and bidi characters, and byte-level tokens written as ``\\xNN`` text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lenskit.schema import (
    HIST_BINS,
    HIST_SAMPLES,
    HIST_Z_MAX,
    HIST_Z_MIN,
    JSON_SCHEMA,
    ROUND_NATS,
    ROUND_SCORE,
    ROUND_STAT,
    SCHEMA_VERSION,
    STAGE_TOP,
    count_deltas,
    encode_counts,
    encode_samples,
    round_stage_top,
    sample_order,
    sparse_bins,
    vlq_encode,
    vlq_encode_many,
    z_bin,
)

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script>",
    "<script>alert(2)</script>",
    "\"quoted' text",
    "\n",
    "\t",
    " ",
    "a\u200bb",
    "\u202eRTL",
    "\\xe2\\x80",
    "&amp;",
    "\u2028",
    " Kra",
    "<!--",
]
WORDS = [" the", " a", ".", ",", " and", " of", " to", " in", " is", " model", " token", " score", "ing", "ed", " Kra", "emer"]


def _vocab(size: int) -> list[str]:
    vocab = list(HOSTILE)
    for w in WORDS:
        if w not in vocab:
            vocab.append(w)
    i = 0
    while len(vocab) < size:
        vocab.append(f"w{i}")
        i += 1
    return vocab[:size]


def _round(x, places):
    return [round(float(v), places) for v in x]


def _lens_fields(sc, tracked, version, r_nats, stage_top, order_rank, ref) -> dict:
    """A position's per-lens fields (``score`` ... ``hist``, ``stage_top``) from one lens's scores ``sc [S, V]``;
    version 4's ``hist.samples`` stay lists of string-table indices (:func:`make_export` encodes them once the
    document's ``histogram.sample_order`` is known)."""
    v1 = version == 1
    S, vocab_size = sc.shape
    mean = sc.mean(axis=1)
    std = sc.std(axis=1)
    m = sc.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(sc - m).sum(axis=1)))
    logp = sc - lse[:, None]
    prob = np.exp(logp)
    entropy = -(prob * logp).sum(axis=1)
    kl = (prob[-1][None, :] * (logp[-1][None, :] - logp)).sum(axis=1)
    z = (sc - mean[:, None]) / std[:, None]
    bins = np.clip(np.floor((z - HIST_Z_MIN) / (HIST_Z_MAX - HIST_Z_MIN) * HIST_BINS), 0, HIST_BINS - 1).astype(int)
    lo, hi, counts, samples, dense = [], [], [], [], []
    for s in range(S):
        c = np.bincount(bins[s], minlength=HIST_BINS)
        nz = np.nonzero(c)[0]
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]))
        dense.append(c)
        counts.append([int(v) for v in c[nz[0] : nz[-1] + 1]])
        flat = []
        for b in range(nz[0], nz[-1] + 1):
            if not v1 and not sparse_bins(c[b], HIST_SAMPLES):
                continue  # v2: only sparse bins list tokens (all of them)
            members = np.nonzero(bins[s] == b)[0]
            members = members[np.argsort(order_rank[members])][:HIST_SAMPLES]
            flat.extend(ref(v) for v in members)
        samples.append(vlq_encode(flat) if version == 3 else flat)
    top_fields = {}
    if stage_top and not v1:
        order_top = np.lexsort((np.arange(vocab_size)[None, :].repeat(S, 0), -sc), axis=1)[:, :stage_top]  # [S, N]
        top_logp = np.take_along_axis(logp, order_top, 1)
        top_fields["stage_top"] = {"tokens": [[ref(v) for v in row] for row in order_top]}
        if version == 3:
            top_fields["stage_top"]["logp"] = round_stage_top(top_logp).tolist()
        else:
            top_fields["stage_top"]["surprisal"] = round_stage_top(-top_logp).tolist()
    tbins = np.array([[int(bins[s, v]) for s in range(S)] for v in tracked])
    r_mean, r_std, r_score = _round(mean, ROUND_STAT), _round(std, ROUND_STAT), np.array(sc[:, tracked].T)
    if v1:
        bin_field = {"bin": tbins.tolist()}
    else:
        wrong = np.argwhere(z_bin(r_score, np.array(r_mean)[None], np.array(r_std)[None]) != tbins)
        bin_field = {"bin_edge": [[int(j), int(s), int(tbins[j, s])] for j, s in wrong]}
        if version == 4:
            counts = encode_counts(np.array(dense), np.array(lo), np.array(hi))
        else:
            counts = vlq_encode_many(count_deltas(np.array(dense), np.array(lo), np.array(hi)))
    return {
        "score": [_round(sc[:, v], ROUND_SCORE) for v in tracked],
        "rank": [[int(1 + (sc[s] > sc[s, v]).sum()) for s in range(S)] for v in tracked],
        **bin_field,
        "mean": r_mean,
        "std": r_std,
        "lse": _round(lse, r_nats),
        "entropy": _round(entropy, r_nats),
        "kl": _round(np.maximum(kl, 0.0), r_nats),
        "hist": {"lo": lo, "counts": counts, "samples": samples},
        **top_fields,
    }


def make_export(
    prompts: int = 2,
    positions: int = 20,
    layers: int = 4,
    top_k: int = 10,
    vocab_size: int = 400,
    seed: int = 0,
    validate: bool = True,
    version: int = 4,
    embed_scale: float = 1.0,
    embed_shift: float = 0.0,
    stage_top: int = STAGE_TOP,
    lenses: int = 1,
) -> dict:
    """Build a ``lenskit.export/4`` document (``version=1`` or ``3``: an older one the viewer still reads):
    ``prompts`` prompts of ``positions`` tokens, S = 2*layers+1 stages. ``embed_scale``/``embed_shift`` make the
    embedding stage's scores ``scale * x + shift`` (as real models' embedding stage sits far from the rest).
    ``stage_top``: each stage's own top-N per position (the overview grid; 0 for none, as in older documents).
    ``lenses`` > 1: a multi-lens document (``lens.lenses``; per position ``lenses`` with the later lenses' fields, from
    the first lens's scores perturbed by seeded noise; the tracked tokens stay the first lens's)."""
    if version not in (1, 3, 4):
        raise ValueError(f"no synthetic lenskit.export/{version}")
    v1 = version == 1
    r_nats = ROUND_STAT if v1 else ROUND_NATS
    rng = np.random.default_rng(seed)
    lens_rng = np.random.default_rng(seed + 7919)  # the later lenses' noise: the first lens's numbers stay as without
    vocab = _vocab(vocab_size)
    S = 2 * layers + 1
    order = rng.permutation(vocab_size)  # the fixed pseudo-random order samples are drawn in
    order_rank = np.empty(vocab_size, dtype=np.int64)
    order_rank[order] = np.arange(vocab_size)

    table: dict[int, int] = {}  # vocab id -> string-table index

    def ref(vid: int) -> int:
        vid = int(vid)
        if vid not in table:
            table[vid] = len(table)
        return table[vid]

    out_prompts = []
    for p in range(prompts):
        # Prompt tokens: hostile ones first (so the strip shows them), then words.
        ids = [i for i in range(len(HOSTILE))] + list(rng.integers(len(HOSTILE), len(HOSTILE) + len(WORDS), positions))
        ids = ids[p : p + positions]
        text = "".join(vocab[i] for i in ids)
        pos_list = []
        for t in range(positions):
            nxt = ids[t + 1] if t + 1 < positions else None
            final = rng.normal(0.0, 2.0, vocab_size)
            if nxt is not None and t % 3 == 0:
                final[nxt] += 9.0  # the model "knows" the next token here
            final[rng.integers(0, len(HOSTILE))] += 7.0  # a hostile token near the top
            start = rng.normal(0.0, 1.0, vocab_size)
            stages = []
            for s in range(S):
                a = s / (S - 1)
                x = (1 - a) * start + a * final + rng.normal(0.0, 0.3 * (1 - a), vocab_size)
                if s == 0:
                    x = embed_scale * x + embed_shift
                stages.append(np.round((3.0 + s) * x + 0.5 * s, ROUND_SCORE))
            sc = np.stack(stages)  # (S, V)
            top = np.argsort(-sc[-1], kind="stable")[:top_k]
            tracked = list(top)
            if nxt is not None and nxt not in tracked:
                tracked.append(nxt)
            fields = _lens_fields(sc, tracked, version, r_nats, stage_top, order_rank, ref)
            if lenses > 1:
                # Further lenses: the same tracked tokens, the scores perturbed stage by stage (less towards the output).
                extra = []
                for k in range(1, lenses):
                    noise = np.stack([lens_rng.normal(0.0, 2.5 * (1 - s / (S - 1)) + 0.4, vocab_size) for s in range(S)])
                    sc_k = np.round(sc + noise, ROUND_SCORE)
                    extra.append(_lens_fields(sc_k, tracked, version, r_nats, stage_top, order_rank, ref))
                fields["lenses"] = extra
            pos_list.append(
                {
                    "pos": t,
                    "tracked": [ref(v) for v in tracked],
                    "next": tracked.index(nxt) if nxt is not None else None,
                    **fields,
                }
            )
        out_prompts.append({"index": p, "text": text, "tokens": [ref(i) for i in ids], "positions": pos_list})

    order = 0
    if version == 4:  # the samples as Exp-Golomb codes of the order that suits them (as lenskit.export writes them)
        per_lens = [f for p in out_prompts for x in p["positions"] for f in [x] + x.get("lenses", [])]
        order = sample_order([t for f in per_lens for flat in f["hist"]["samples"] for t in flat])
        for f in per_lens:
            f["hist"]["samples"] = encode_samples(f["hist"]["samples"], order)
    by_index = sorted(table.items(), key=lambda kv: kv[1])
    doc = {
        "schema": SCHEMA_VERSION if version == 4 else f"lenskit.export/{version}",
        "lenskit_version": "0.1.0",
        "model": {
            "id": "synthetic/<b>tiny</b>",
            "fingerprint": "0" * 16,
            "architecture": "SyntheticForCausalLM",
            "adapter": "synthetic",
            "dtype": "float32",
        },
        "lens": {"norm": True, "precision": "float32", "top_k": top_k, **({"stage_top": stage_top} if not v1 else {})},
        "vocab_size": vocab_size,
        "stages": {
            "name": ["embed"] + [f"L{i}.{k}" for i in range(layers) for k in ("attn", "ffn")],
            "kind": ["embed"] + [k for _ in range(layers) for k in ("attn", "ffn")],
            "layer": [-1] + [i for i in range(layers) for _ in range(2)],
        },
        "histogram": {"bins": HIST_BINS, "z_min": HIST_Z_MIN, "z_max": HIST_Z_MAX, "samples": HIST_SAMPLES,
                      **({"sample_order": order} if version == 4 else {})},
        "tokens": [vocab[v] for v, _ in by_index],
        "token_ids": [v for v, _ in by_index],
        "prompts": out_prompts,
    }
    if lenses > 1:
        entries = [{"kind": "logit", "source": None, "fingerprint": "0" * 16, "description": "final norm and unembedding"}]
        entries += [{"kind": "tuned", "source": f"lenses/<b>synth-{k}", "fingerprint": f"{k:016x}",
                     "description": "synthetic perturbed lens"} for k in range(1, lenses)]
        doc["lens"]["lenses"] = entries
    if validate and version == 4:
        import jsonschema

        jsonschema.validate(doc, JSON_SCHEMA)
    return doc


def write_run(folder: Path, doc: dict | None = None) -> Path:
    """Write ``doc`` (default: :func:`make_export`) as ``folder/export.json``; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.json").write_text(json.dumps(doc or make_export(), ensure_ascii=False), encoding="utf-8")
    return folder


if __name__ == "__main__":  # python tests/viewer_fixture.py DIR: write a synthetic run for manual viewing
    import sys

    print(write_run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")))
