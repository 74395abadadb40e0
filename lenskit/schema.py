"""The export JSON, defined once: version, histogram layout, rounding, encodings and the published JSON Schema.

``lenskit schema`` prints :data:`JSON_SCHEMA`; ``docs/export-format.md`` is generated from its descriptions
(:func:`markdown_reference`), and a test fails when that file is stale. :mod:`lenskit.export` builds documents
that validate against it, and the viewer's ``js/data.js`` is the only JavaScript that reads them.

Layout in one breath: a string table ``tokens`` (each token text once, with its vocabulary id in ``token_ids``);
prompts -> positions -> columnar arrays indexed ``[tracked token][stage]`` or ``[stage]``; every token reference is
an index into the string table. The histograms (most of the bytes) are Base64 Exp-Golomb bit strings
(:func:`exp_golomb_encode`); :func:`histogram` and :func:`tracked_bins` read them back.

Version 2 (``lenskit.export/2``, a third of version 1's size) differs from version 1: counts are VLQ strings of the
change from the previous stage, sample tokens are all the tokens of the sparse bins (at most ``histogram.samples``
tokens) and none of the others, the tracked tokens' bins are recomputed from ``score``/``mean``/``std`` (``bin_edge``
lists the rare exceptions) instead of being stored, and lse/entropy/KL have 3 decimals. Version 3 adds lenses
(``lens.lenses``: kind, source and fingerprint of each; a position's ``lenses`` holds the per-lens fields of the
second and later lenses); a version-2 document reads as version 3 with the one logit lens.
Version 3 documents may carry ``stage_top`` per position (each stage's own top-N tokens, the overview grid; with
``lens.stage_top`` = N): an optional field, so older version-3 documents stay valid and readers that do not know it
lose nothing else. Version 4 (``lenskit.export/4``, 10% smaller than version 3 on the test paragraph) stores the same
numbers in fewer bytes: ``hist.counts`` keeps version 3's integers (each bin's change from the previous stage) but
writes them as Exp-Golomb codes whose order follows the previous stage's count (:func:`encode_counts`),
``hist.samples`` are Exp-Golomb codes of one order per document (``histogram.sample_order``, :func:`encode_samples`),
and ``stage_top.logp`` became ``stage_top.surprisal`` (the same numbers negated: no minus signs). The viewer,
:func:`histogram` and the notebook read all four.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("auto", "float32", "fast", "bf16")  # --precision: auto resolves to one of the others (scoring.py)

SCHEMA_VERSION = "lenskit.export/4"
SCHEMA_VERSIONS_READ = ("lenskit.export/1", "lenskit.export/2", "lenskit.export/3", SCHEMA_VERSION)  # js/data.js too
EXPORT_FILE = "export.json"  # name of the export inside a run folder (written by trace/export, served by serve)

# Histogram of z-scored logits: HIST_BINS equal bins over [HIST_Z_MIN, HIST_Z_MAX]; z-scores outside the range are
# counted in the first or last bin (so counts always sum to the vocabulary size).
HIST_BINS = 100
HIST_Z_MIN = -8.0
HIST_Z_MAX = 12.0
HIST_SAMPLES = 3  # sparse bins (at most this many tokens) list all their tokens; denser bins list none

# Rounding (decimal places) of the floats written: enough for the figures, hover and re-computing z-scores.
ROUND_SCORE = 2  # logits to 0.01 (what any figure resolves; was 3: 0.13 MB more for the test paragraph)
ROUND_STAT = 3  # mean and std (z-scores and histogram bins are recomputed from them)
ROUND_NATS = 2  # lse, entropy and KL: like the scores (log-probability = score - lse) and as the viewer shows them
# The overview grid: each stage's own top STAGE_TOP tokens (`--stage-top`) with surprisals (-log-probabilities), the
# top-1's (the cell colour) to ROUND_NATS decimals, the others' (shown on hover only) to ROUND_STAGE_TOP_REST.
STAGE_TOP = 5
ROUND_STAGE_TOP_REST = 1


def _arr(items: dict, description: str) -> dict:
    return {"type": "array", "items": items, "description": description}


_NUM = {"type": "number"}
_INT = {"type": "integer"}
_IDX = {"type": "integer", "minimum": 0}
_PER_STAGE_NUM = _arr(_NUM, "one value per stage")
_PER_STAGE_INT = _arr(_INT, "one value per stage")

_PER_LENS = ("score", "rank", "bin_edge", "mean", "std", "lse", "entropy", "kl", "hist")  # fields each lens has
_PER_LENS_OPTIONAL = ("stage_top",)  # and may have

_POSITION = {
    "type": "object",
    "description": "Everything the figures show for one token position of one prompt.",
    "required": ["pos", "tracked", "next", "score", "rank", "bin_edge", "mean", "std", "lse", "entropy", "kl", "hist"],
    "additionalProperties": False,
    "properties": {
        "pos": {"type": "integer", "minimum": 0, "description": "Token position in the prompt (0-based)."},
        "tracked": _arr(
            _IDX,
            "Tracked tokens as string-table indices: the first `lens.top_k` are the final top-k in final rank order "
            "(top-1 first); then the actual next token and the user's `--track` tokens when not already listed.",
        ),
        "next": {
            "type": ["integer", "null"],
            "description": "Index into `tracked` of the prompt's actual next token; null at the last position.",
        },
        "score": _arr(_arr(_NUM, "per stage"), "`[tracked][stage]` lens score (logit) of each tracked token."),
        "rank": _arr(
            _arr({"type": "integer", "minimum": 1}, "per stage, 1 to `vocab_size`"),
            "`[tracked][stage]` rank among all vocabulary tokens: 1 + number of tokens with a strictly greater score.",
        ),
        "bin_edge": _arr(
            _arr(_INT, "[tracked, stage, bin]"),
            "The histogram bin of tracked token j at stage s is computed from the rounded numbers, "
            "clamp(floor((z - `z_min`) / width), 0, `bins` - 1) with z = (score - mean) / std in float64 (z = 0 when "
            "std is 0); `[j, s, bin]` entries give the true bin where that differs (a score at a bin edge: rare).",
        ),
        "mean": dict(_PER_STAGE_NUM, description="`[stage]` mean of the raw scores over the vocabulary."),
        "std": dict(_PER_STAGE_NUM, description="`[stage]` standard deviation of the raw scores over the vocabulary, the sample one (sum of squared deviations divided by V - 1); z = (score - mean) / std."),
        "lse": dict(
            _PER_STAGE_NUM, description="`[stage]` log-sum-exp of the scores: log-probability of a token = score - lse."
        ),
        "entropy": dict(_PER_STAGE_NUM, description="`[stage]` entropy (nats) of the softmax of the scores."),
        "kl": dict(
            _PER_STAGE_NUM, description="`[stage]` KL(final || stage) in nats: divergence of the stage's softmax from the last stage's."
        ),
        "hist": {
            "type": "object",
            "description": "Histogram of z-scored scores per stage; only the span of non-empty bins is stored. Integer "
            "lists are Base64 Exp-Golomb strings: each number (>= 0) as an Exp-Golomb code of order k -- with "
            "q = (n >> k) + 1, floor(log2 q) zero bits, then q in binary, then the low k bits of n -- the codes of a "
            "list back to back, most significant bit first, cut into 6-bit digits written with the standard Base64 "
            "alphabet (A-Z a-z 0-9 + /, no `=`), the last digit padded with zero bits; a reader stops where only zero "
            "bits are left. Signed numbers are zigzagged first (n = 2d for d >= 0, -2d - 1 for d < 0).",
            "required": ["lo", "counts", "samples"],
            "additionalProperties": False,
            "properties": {
                "lo": dict(_PER_STAGE_INT, description="`[stage]` index of the first stored bin."),
                "counts": _arr(
                    {"type": "string"},
                    "`[stage]` Exp-Golomb, zigzagged: the token counts of bins `lo` to the last non-empty bin, each "
                    "minus the same bin's count at the previous stage (0 at stage 0); a bin's order k is "
                    "floor(log2(c + 1) / 2) of that previous count c (k = 0 at stage 0: changes grow like the square "
                    "root of the count). The counts of a stage sum to `vocab_size`.",
                ),
                "samples": _arr(
                    {"type": "string"},
                    "`[stage]` Exp-Golomb of order `histogram.sample_order`: string-table indices, bin after bin: each "
                    "non-empty bin with at most `histogram.samples` tokens lists all of them (by vocabulary id); denser "
                    "bins list none.",
                ),
            },
        },
        "stage_top": {
            "type": "object",
            "description": "Only when `lens.stage_top` > 0 (`--stage-top N`, default 5): each stage's own N highest-scoring "
            "tokens (the overview grid: what the model would predict if it stopped at that stage), exact and tie-broken "
            "like the final top-k (higher score first, then smaller vocabulary id). Absent in older documents.",
            "required": ["tokens", "surprisal"],
            "additionalProperties": False,
            "properties": {
                "tokens": _arr(_arr(_IDX, "N string-table indices, best first"), "`[stage][N]` the stage's top-N tokens."),
                "surprisal": _arr(
                    _arr({"type": "number", "minimum": 0}, "N surprisals"),
                    f"`[stage][N]` their surprisals in nats at that stage, -log-probability = lse - score (>= 0; "
                    f"version 3 stored the log-probabilities as `logp`): the top-1's to {ROUND_NATS} decimals, the "
                    f"others' to {ROUND_STAGE_TOP_REST}.",
                ),
            },
        },
    },
}

_POSITION["properties"]["lenses"] = _arr(
    {
        "type": "object",
        "required": list(_PER_LENS),
        "additionalProperties": False,
        "properties": {k: _POSITION["properties"][k] for k in _PER_LENS + _PER_LENS_OPTIONAL},
    },
    "Only when the export holds several lenses: for `lens.lenses[1]`, `lens.lenses[2]`, ... the same fields as above "
    "(`score` ... `hist`) computed with that lens, for the same `tracked` tokens; the fields above are `lens.lenses[0]`'s.",
)

_LENS_ENTRY = {
    "type": "object",
    "required": ["kind", "source", "fingerprint"],
    "properties": {
        "kind": {"type": "string", "description": "Registered lens kind: `logit` (the model's own final norm and unembedding) or `tuned` (a fitted affine translator per stage first), or a plugin's."},
        "source": {"type": ["string", "null"], "description": "Where the lens came from (the `tuned` lens folder); null for `logit`."},
        "fingerprint": {"type": "string", "description": "Hash of the lens: the model head's fingerprint (`logit`), or of it and the translators."},
        "description": {"type": "string", "description": "One line saying what the lens computes."},
        "covered": _arr({"type": "boolean"}, "`[stage]` whether the stage has a fitted translator (others are the identity: the logit lens)."),
        "imported_from": {"type": "object", "description": "For a lens converted from tuned-lens files: what was read."},
    },
}

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_VERSION,
    "title": "lenskit export",
    "description": "Logit-lens statistics of one traced run: per prompt, per token position, per stage.",
    "type": "object",
    "required": ["schema", "lenskit_version", "model", "lens", "vocab_size", "stages", "histogram", "tokens", "token_ids", "prompts"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_VERSION, "description": "Format name and version of this document."},
        "lenskit_version": {"type": "string", "description": "Version of lenskit that wrote it."},
        "model": {
            "type": "object",
            "description": "The traced model (copied from the trace): id, revision, fingerprint, architecture, adapter, dtype, ...",
            "required": ["id", "fingerprint", "architecture", "adapter", "dtype"],
        },
        "lens": {
            "type": "object",
            "description": "How scores were computed.",
            "required": ["norm", "precision", "top_k"],
            "properties": {
                "norm": {"type": "boolean", "description": "Whether the final norm was applied (false: raw projection, `--no-norm`)."},
                "precision": {
                    "enum": list(PRECISIONS[1:]),
                    "description": "How scores were computed. `float32`: a float32 GEMM; `fast`: a bfloat16 GEMM with an exact float32 re-check (ranks and top-k identical to float32); `bf16`: scores defined as bfloat16-rounded stream and weight, float32 accumulation and output (every statistic exact for those scores; near-ties may order differently from float32).",
                },
                "top_k": {"type": "integer", "minimum": 1, "description": "Number of final top tokens tracked per position."},
                "stage_top": {"type": "integer", "minimum": 0, "description": "N of each position's `stage_top`: every stage's own top-N tokens (0 or absent: none)."},
                "lenses": _arr(_LENS_ENTRY, "The lenses of this export (`--lens`, first = the one whose numbers are a position's own fields; its final top-k are the tracked tokens of all). lenskit always writes it; absent means one logit lens."),
            },
        },
        "vocab_size": {"type": "integer", "minimum": 1, "description": "Number of vocabulary entries scored (rows of the unembedding)."},
        "stages": {
            "type": "object",
            "description": "Columnar stage table, S = 2L+1 entries each.",
            "required": ["name", "kind", "layer"],
            "properties": {
                "name": _arr({"type": "string"}, "`embed`, `L{i}.attn`, `L{i}.ffn`."),
                "kind": _arr({"enum": ["embed", "attn", "ffn"]}, "Which block produced the stage."),
                "layer": _arr(_INT, "Decoder layer index (-1 for the embedding)."),
            },
        },
        "histogram": {
            "type": "object",
            "description": "Histogram layout: `bins` equal bins over z in [`z_min`, `z_max`]; z outside is counted in the edge bins.",
            "required": ["bins", "z_min", "z_max", "samples", "sample_order"],
            "properties": {
                "bins": {"type": "integer", "minimum": 1, "description": "Number of bins."},
                "z_min": {"type": "number", "description": "Left edge of bin 0 (z-score)."},
                "z_max": {"type": "number", "description": "Right edge of the last bin (z-score)."},
                "samples": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Bins holding at most this many tokens list them all as samples (the sparse tails); "
                    "denser bins list none.",
                },
                "sample_order": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Order k of the Exp-Golomb codes of `hist.samples` (the writer picks the k that "
                    "makes them shortest).",
                },
            },
        },
        "tokens": _arr({"type": "string"}, "String table: each token text once (decoded; invalid UTF-8 bytes as \\xNN)."),
        "token_ids": _arr(_IDX, "Vocabulary id of each string-table entry (same length as `tokens`)."),
        "prompts": _arr(
            {
                "type": "object",
                "required": ["text", "tokens", "positions"],
                "additionalProperties": False,
                "properties": {
                    "index": {"type": "integer", "description": "Prompt number in the trace."},
                    "text": {"type": "string", "description": "The prompt text."},
                    "chat": {
                        "type": "object",
                        "required": ["user", "system"],
                        "additionalProperties": False,
                        "properties": {"user": {"type": "string"}, "system": {"type": ["string", "null"]}},
                        "description": "Traced with `--chat`: `text` is the chat template's prompt; `user` the message "
                        "in it, `system` the `--system` message (null: none given).",
                    },
                    "tokens": _arr(_IDX, "The prompt's tokens as string-table indices."),
                    "positions": _arr(_POSITION, "Exported positions (all, or those chosen with `--positions`)."),
                },
            },
            "Exported prompts.",
        ),
    },
}


_EXP_GOLOMB_EXAMPLE = (
    "Worked example of `hist.counts` (see `hist` below for the code). Two stages, both with `lo` = 40: stage 0 "
    "counts 5 and 2 tokens in bins 40 and 41, stage 1 counts 4 and 3. Stage 0 stores 5 - 0 and 2 - 0, zigzagged to "
    "10 and 4, with order 0 (nothing before it): 10 -> q = 11 -> `000` `1011`; 4 -> q = 5 -> `00` `101`; the 12 bits "
    "`000101` `100101` are the digits 5 and 37: `\"Fl\"`. Stage 1 stores 4 - 5 = -1 and 3 - 2 = 1, zigzagged to 1 "
    "and 2; the orders come from stage 0's counts: floor(log2(5 + 1) / 2) = 1 and floor(log2(2 + 1) / 2) = 0. 1 with "
    "k = 1 -> q = (1 >> 1) + 1 = 1 -> `1`, then its low bit `1`; 2 with k = 0 -> q = 3 -> `0` `11`; `11011` padded "
    "to `110110` is digit 54: `\"2\"`."
)


def markdown_reference() -> str:
    """Field-by-field reference of the export format, generated from :data:`JSON_SCHEMA`'s descriptions."""
    lines = [
        f"# Export format (`{SCHEMA_VERSION}`)",
        "",
        "Generated from `lenskit/schema.py` (`lenskit schema` prints the JSON Schema). Do not edit by hand.",
        "",
        (
            f"Histogram: {HIST_BINS} bins over z in [{HIST_Z_MIN}, {HIST_Z_MAX}], bin width "
            f"{(HIST_Z_MAX - HIST_Z_MIN) / HIST_BINS:g}; scores rounded to {ROUND_SCORE} decimals, `lse`, `entropy` and `kl` to {ROUND_NATS}, "
            f"`mean` and `std` to {ROUND_STAT}."
        ),
        "",
        (
            "Version 2 differs from version 1 (`lenskit.export/1`, still read by the viewer): histogram counts and samples "
            "are Base64 VLQ strings, counts are stored as changes from the previous stage, only sparse bins list sample "
            "tokens (all of theirs), the tracked tokens' bins are recomputed (`bin_edge`) instead of stored (`bin`), and "
            "`lse`, `entropy`, `kl` have 3 decimals instead of 4. Version 3 adds `lens.lenses` and, in exports with "
            "several lenses, `positions[].lenses`; a version-2 document is a version-3 one with the single logit lens. "
            "Version-3 documents may also carry the optional `lens.stage_top` and `positions[].stage_top` (the overview "
            "grid), absent from older ones. Version 4 stores the same numbers in fewer bytes: `hist.counts` holds "
            "version 3's integers as zigzagged Exp-Golomb codes whose order follows the previous stage's count instead "
            "of VLQ, `hist.samples` are Exp-Golomb codes of order `histogram.sample_order` (new) instead of VLQ, and "
            "`stage_top.logp` became `stage_top.surprisal` (negated: no minus signs). Rounding is not part of the "
            "version: lenskit 0.1 writes scores with "
            f"{ROUND_SCORE} decimals, `lse`, `entropy` and `kl` with {ROUND_NATS}, `mean`/`std` with {ROUND_STAT} (earlier "
            "builds: 3, 3 and 4); "
            "readers use the numbers as they are."
        ),
        "",
        _EXP_GOLOMB_EXAMPLE,
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            kind = sub.get("type") or ("enum" if "enum" in sub else "const")
            if isinstance(kind, list):
                kind = " or ".join(kind)
            lines.append(f"| `{path}` | {kind} | {sub.get('description', '').replace('|', '/')} |")
            if sub.get("type") == "object":
                walk(sub, path)
            elif sub.get("type") == "array" and sub["items"].get("type") == "object":
                walk(sub["items"], path + "[]")

    walk(JSON_SCHEMA, "")
    return "\n".join(lines) + "\n"


# ---- encodings (the viewer's js/data.js mirrors these)

VLQ_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # Base64's, also of Exp-Golomb
_VLQ_INDEX = {c: i for i, c in enumerate(VLQ_ALPHABET)}
_DIGIT_BITS = {c: format(i, "06b") for i, c in enumerate(VLQ_ALPHABET)}
_ALPHABET_BYTES = np.frombuffer(VLQ_ALPHABET.encode(), dtype=np.uint8)


def vlq_encode(values) -> str:
    """Integers -> Base64 VLQ, as in JavaScript source maps: sign in the lowest bit of the first digit, 5 bits per
    base64 digit, least significant first, bit 5 (value 32) set on every digit but a number's last."""
    return vlq_encode_many([values])[0]


def vlq_encode_many(arrays) -> list[str]:
    """:func:`vlq_encode` of each integer array, in one vectorised pass over all of them (an export encodes ~20,000
    short arrays: one numpy pass each would cost more than the statistics)."""
    parts = [np.asarray(a, dtype=np.int64).ravel() for a in arrays]
    if not parts:
        return []
    v = np.concatenate(parts)
    if v.size == 0:
        return [""] * len(parts)
    u = np.where(v < 0, ((-v) << 1) | 1, v << 1)
    nd = np.ones(u.shape, dtype=np.int64)  # digits per number
    rest = u >> 5
    while rest.any():
        nd += rest > 0
        rest >>= 5
    start = np.cumsum(nd) - nd
    out = np.empty(int(nd.sum()), dtype=np.uint8)
    alphabet = np.frombuffer(VLQ_ALPHABET.encode(), dtype=np.uint8)
    for k in range(int(nd.max())):
        m = nd > k
        digit = (u[m] >> (5 * k)) & 31
        digit |= np.where(nd[m] - 1 > k, 32, 0)
        out[start[m] + k] = alphabet[digit]
    text = out.tobytes().decode("ascii")
    ends = np.cumsum([len(p) for p in parts])  # number index where each array ends
    digit_end = np.concatenate([[0], np.cumsum(nd)])[ends]
    digit_start = np.concatenate([[0], digit_end[:-1]])
    return [text[a:b] for a, b in zip(digit_start.tolist(), digit_end.tolist())]


def vlq_decode(text: str) -> list[int]:
    """Base64 VLQ -> integers (inverse of :func:`vlq_encode`)."""
    out, value, shift = [], 0, 0
    for ch in text:
        d = _VLQ_INDEX[ch]
        value |= (d & 31) << shift
        if d & 32:
            shift += 5
            continue
        out.append(-(value >> 1) if value & 1 else value >> 1)
        value, shift = 0, 0
    return out


def zigzag(values) -> np.ndarray:
    """Signed integers -> non-negative ones, small magnitudes first: d -> 2d (d >= 0), -2d - 1 (d < 0)."""
    d = np.asarray(values, dtype=np.int64)
    return np.where(d >= 0, d << 1, ((-d) << 1) - 1)


def unzigzag(values) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    z = np.asarray(values, dtype=np.int64)
    return np.where(z & 1, -((z + 1) >> 1), z >> 1)


_EG_MAX = 2**53  # largest code value n + 2^k (exactly a float64, as JavaScript's numbers hold it)


def exp_golomb_encode(values, orders, sizes) -> list[str]:
    """Non-negative integers -> Base64 Exp-Golomb strings (``js/data.js`` ``decodeExpGolomb`` mirrors the reader).

    The format: each number n with its order k as an Exp-Golomb code of order k -- with q = (n >> k) + 1,
    floor(log2 q) zero bits, then q in binary, then the low k bits of n (together: n + 2^k in binary after as many
    zero bits as that has digits beyond k + 1) -- the codes of one string back to back, most significant bit first,
    cut into 6-bit digits written in the standard Base64 alphabet (:data:`VLQ_ALPHABET`, no ``=``), the last digit
    padded with zero bits. Every code holds a 1 bit, so a reader stops where only zero bits are left.

    ``values``: the numbers of all strings, concatenated; ``orders``: each one's k (or one k for all); ``sizes``: how
    many numbers each string has. One vectorised pass over all of them (an export writes ~12,000 strings)."""
    n = np.asarray(values, dtype=np.int64).ravel()
    k = np.broadcast_to(np.asarray(orders, dtype=np.int64), n.shape)
    sizes = np.asarray(sizes, dtype=np.int64).ravel()
    if n.size != sizes.sum():
        raise ValueError(f"{n.size} values for strings of {int(sizes.sum())} in all")
    w = n + (np.int64(1) << k)  # the code's value: q << k | low k bits of n
    if n.size and (n.min() < 0 or k.min() < 0 or w.max() > _EG_MAX):
        raise ValueError("Exp-Golomb codes need 0 <= n, 0 <= k and n + 2^k <= 2^53")
    if n.size == 0:
        return [""] * sizes.size
    digits = np.frexp(w.astype(np.float64))[1].astype(np.int64)  # binary digits of w (exact: w <= 2^53)
    length = 2 * digits - 1 - k  # code length: digits - k - 1 leading zero bits, then w's digits
    code_end = np.cumsum(length)  # [values] unpadded bit offset where each code ends
    string_bits = np.diff(np.concatenate([[0], code_end])[np.cumsum(sizes)], prepend=0)  # [strings]
    chars = -(-string_bits // 6)  # [strings] Base64 digits of each string
    pad = chars * 6 - string_bits
    end = code_end + np.repeat(np.cumsum(pad) - pad, sizes)  # [values] padded code ends
    # Each Base64 digit is the sum of the pieces of the codes' values w that fall in it (the leading zeros add
    # nothing): w shifted to end on a digit boundary, cut into 6-bit pieces from the digit holding the code's last
    # bit back to the one holding its leading 1.
    at = (end + 5) // 6 - 1  # [values] digit of each code's last bit
    v = w << (6 * at + 6 - end)  # [values] w ending on that digit's boundary (< 2^59)
    ats, pieces = [], []
    while at.size:  # one piece per remaining code, each a digit further back
        ats.append(at)
        pieces.append(v & 63)
        v = v >> 6
        more = v > 0
        at, v = at[more] - 1, v[more]
    digit = np.bincount(np.concatenate(ats), weights=np.concatenate(pieces), minlength=int(chars.sum()))
    digit = digit.astype(np.uint8)  # sums of non-overlapping bits < 64: exact
    text = _ALPHABET_BYTES[digit].tobytes().decode("ascii")
    ends = np.cumsum(chars).tolist()
    return [text[e - c: e] for e, c in zip(ends, chars.tolist())]


def exp_golomb_decode(text: str, order=0) -> list[int]:
    """Base64 Exp-Golomb string -> integers (inverse of :func:`exp_golomb_encode`); ``order``: one k for all numbers,
    or a sequence holding the k of each (at least as long as the string has numbers)."""
    try:
        bits = "".join([_DIGIT_BITS[c] for c in text])
    except KeyError as e:
        raise ValueError(f"bad Base64 digit {e.args[0]!r}") from None
    ks = np.asarray(order, dtype=np.int64).tolist()
    out, i, size = [], 0, len(bits)
    while (one := bits.find("1", i)) >= 0:
        if isinstance(ks, list):
            if len(out) >= len(ks):
                raise ValueError(f"more numbers than the {len(ks)} orders given")
            k = ks[len(out)]
        else:
            k = ks
        end = 2 * one - i + 1 + k  # as many digits after the leading 1 as zeros before it, then k
        if end > size:
            raise ValueError("truncated Exp-Golomb string")
        out.append(int(bits[one:end], 2) - (1 << k))
        i = end
    if size - i >= 6:
        raise ValueError("Exp-Golomb string padded with a whole zero digit")
    return out


def count_orders(previous) -> np.ndarray:
    """Exp-Golomb order of a histogram count's change given the same bin's count c at the previous stage:
    floor(log2(c + 1) / 2) (changes grow like the square root of the count)."""
    c = np.asarray(previous, dtype=np.int64)
    return (np.frexp((c + 1).astype(np.float64))[1] - 1) >> 1


def _count_deltas(counts, lo, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``counts [..., S, BINS]`` (one position's stages, or several positions') -> ``delta``, ``prev`` and ``kept``,
    each ``[..., S, BINS]``: the change of each bin from the previous stage, that stage's count (0 before the first
    stage and outside the previous stage's ``lo..hi``), and whether the bin is in the stage's stored span ``lo..hi``."""
    c = np.asarray(counts, dtype=np.int64)  # [..., S, BINS]
    bins = np.arange(c.shape[-1])
    kept = (bins >= np.asarray(lo)[..., None]) & (bins <= np.asarray(hi)[..., None])  # [..., S, BINS] stored spans
    shown = np.where(kept, c, 0)
    prev = np.zeros_like(shown)  # [..., S, BINS] the previous stage's span
    prev[..., 1:, :] = shown[..., :-1, :]
    return shown - prev, prev, kept


def count_deltas(counts, lo, hi) -> list[np.ndarray]:
    """Per stage the integers ``hist.counts`` stores (versions 2 to 4): bins ``lo..hi``, each minus the same bin's
    count at the previous stage. Versions 2 and 3 wrote them as VLQ (``vlq_encode_many(count_deltas(...))``)."""
    delta, _, kept = _count_deltas(counts, lo, hi)
    return [delta[s, kept[s]] for s in range(delta.shape[0])]


def encode_counts(counts, lo, hi) -> list[str]:
    """``counts [S, HIST_BINS]`` -> ``hist.counts``: per stage the :func:`count_deltas` of bins ``lo..hi``, zigzagged,
    as Exp-Golomb codes of the :func:`count_orders` of the previous stage's counts.

    Several positions at once: ``counts [P, S, HIST_BINS]``, ``lo`` and ``hi`` ``[P, S]`` -> the P * S strings,
    position after position (one vectorised pass)."""
    delta, prev, kept = _count_deltas(counts, lo, hi)
    return exp_golomb_encode(zigzag(delta[kept]), count_orders(prev[kept]), kept.sum(-1))


def decode_counts(texts, lo, bins: int) -> np.ndarray:
    """``hist.counts`` of version 4 -> dense ``counts [S, bins]`` (inverse of :func:`encode_counts`)."""
    counts = np.zeros((len(texts), bins), dtype=np.int64)
    prev = np.zeros(bins, dtype=np.int64)  # the previous stage's counts (0 outside its span: its bins are empty)
    for s, text in enumerate(texts):
        start = lo[s]
        span = unzigzag(exp_golomb_decode(text, count_orders(prev[start:])))
        counts[s, start: start + len(span)] = span + prev[start: start + len(span)]
        prev = counts[s]
    return counts


def sample_order(values) -> int:
    """The Exp-Golomb order that codes ``values`` (string-table indices) in the fewest bits (smallest k on ties)."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if v.size == 0:
        return 0
    top = int(v.max()).bit_length()
    bits = [int((2 * np.frexp((v + (1 << k)).astype(np.float64))[1] - 1 - k).sum()) for k in range(top + 1)]
    return int(np.argmin(bits))


def encode_samples(arrays, order: int, sizes=None) -> list[str]:
    """Per stage the sample tokens' string-table indices -> ``hist.samples``: Exp-Golomb codes of order ``order``
    (``histogram.sample_order``).

    ``arrays``: one per stage; or, with ``sizes`` (how many indices each stage has), all the stages' indices
    concatenated (many positions' stages in one vectorised pass)."""
    if sizes is None:
        parts = [np.asarray(a, dtype=np.int64).ravel() for a in arrays]
        if not parts:
            return []
        arrays, sizes = np.concatenate(parts), [p.size for p in parts]
    return exp_golomb_encode(arrays, order, sizes)


def round_stage_top(surprisal) -> np.ndarray:
    """``[S, N]`` surprisals (or version 3's log-probabilities) as exported: column 0 (each stage's top-1, the grid's
    colour) to ``ROUND_NATS`` decimals, the rest to ``ROUND_STAGE_TOP_REST`` (no negative zeros)."""
    x = np.asarray(surprisal, dtype=np.float64)
    out = np.round(x, ROUND_STAGE_TOP_REST)
    out[:, :1] = np.round(x[:, :1], ROUND_NATS)
    return np.ascontiguousarray(out + 0.0)


def sparse_bins(counts, samples: int):
    """Which bins list their sample tokens: the non-empty ones with at most ``samples`` tokens."""
    c = np.asarray(counts)
    return (c > 0) & (c <= samples)


def z_bin(score, mean, std, bins: int = HIST_BINS, z_min: float = HIST_Z_MIN, z_max: float = HIST_Z_MAX):
    """Histogram bin of a score from the exported (rounded) numbers, as the viewer computes it (float64):
    ``clamp(floor((z - z_min) / width), 0, bins - 1)``, z = (score - mean) / std (0 when std is 0)."""
    score, mean, std = (np.asarray(x, dtype=np.float64) for x in (score, mean, std))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, (score - mean) / np.where(std > 0, std, 1.0), 0.0)
        b = np.floor((z - z_min) / ((z_max - z_min) / bins))
    return np.clip(b, 0, bins - 1).astype(np.int64)


# ---- reading documents back (tests, scripts; js/data.js is the viewer's reader)


def histogram(doc: dict, position: dict) -> tuple[np.ndarray, list[dict]]:
    """A position's histograms: ``counts [S, bins]`` (dense) and per stage ``{bin: [string-table index, ...]}``
    of the bins that list samples. Reads versions 1 to 4."""
    h, bins = position["hist"], doc["histogram"]["bins"]
    per = doc["histogram"]["samples"]
    v1 = doc["schema"] == "lenskit.export/1"
    vlq = doc["schema"] in ("lenskit.export/2", "lenskit.export/3")  # else version 4: Exp-Golomb
    S = len(h["lo"])
    if v1 or vlq:
        counts = np.zeros((S, bins), dtype=np.int64)
        for s in range(S):
            lo = h["lo"][s]
            span = np.asarray(h["counts"][s] if v1 else vlq_decode(h["counts"][s]), dtype=np.int64)
            counts[s, lo: lo + len(span)] = span + (0 if v1 or s == 0 else counts[s - 1, lo: lo + len(span)])
    else:
        counts = decode_counts(h["counts"], h["lo"], bins)
    listed = np.minimum(counts, per) if v1 else np.where(sparse_bins(counts, per), counts, 0)  # [S, bins] samples
    samples = []
    for s in range(S):
        text = h["samples"][s]
        flat = text if v1 else vlq_decode(text) if vlq else exp_golomb_decode(text, doc["histogram"]["sample_order"])
        got, k = {}, 0
        for b in np.flatnonzero(listed[s]).tolist():  # bin after bin
            n = int(listed[s, b])
            got[b] = list(flat[k: k + n])
            k += n
        samples.append(got)
    return counts, samples


def tracked_bins(doc: dict, position: dict) -> np.ndarray:
    """``[tracked][stage]`` histogram bin of each tracked token (version 1: stored; version 2: recomputed from the
    rounded numbers, then ``bin_edge``'s exceptions)."""
    if "bin" in position:
        return np.asarray(position["bin"], dtype=np.int64)
    hg = doc["histogram"]
    out = z_bin(position["score"], position["mean"], position["std"], hg["bins"], hg["z_min"], hg["z_max"])
    for j, s, b in position["bin_edge"]:
        out[j, s] = b
    return out


def lenses(doc: dict) -> list[dict]:
    """The lenses of a document (``lens.lenses``; versions 1 and 2: the one logit lens)."""
    return doc["lens"].get("lenses") or [{"kind": "logit", "source": None, "fingerprint": doc["model"].get("fingerprint")}]


def lens_position(position: dict, lens: int) -> dict:
    """A position as lens number ``lens`` of ``lens.lenses`` saw it: the shared fields (``pos``, ``tracked``,
    ``next``) with that lens's own; readable by :func:`histogram` and :func:`tracked_bins`."""
    if lens == 0:
        return position
    return {**{k: position[k] for k in ("pos", "tracked", "next")}, **position["lenses"][lens - 1]}
