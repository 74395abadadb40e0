"""The export JSON, defined once: version, histogram layout, rounding, and the published JSON Schema.

``lenskit schema`` prints :data:`JSON_SCHEMA`; ``docs/export-format.md`` is generated from its descriptions
(:func:`markdown_reference`), and a test fails when that file is stale. :mod:`lenskit.export` builds documents
that validate against it, and the viewer's ``js/data.js`` is the only JavaScript that reads them.

Layout in one breath: a string table ``tokens`` (each token text once, with its vocabulary id in ``token_ids``);
prompts -> positions -> columnar arrays indexed ``[tracked token][stage]`` or ``[stage]``; every token reference is
an index into the string table.
"""

from __future__ import annotations

SCHEMA_VERSION = "lenskit.export/1"
EXPORT_FILE = "export.json"  # name of the export inside a run folder (written by trace/export, served by serve)

# Histogram of z-scored logits: HIST_BINS equal bins over [HIST_Z_MIN, HIST_Z_MAX]; z-scores outside the range are
# counted in the first or last bin (so counts always sum to the vocabulary size).
HIST_BINS = 100
HIST_Z_MIN = -8.0
HIST_Z_MAX = 12.0
HIST_SAMPLES = 3

# Rounding (decimal places) of the floats written: enough for the figures, hover and re-computing z-scores.
ROUND_SCORE = 3
ROUND_STAT = 4


def _arr(items: dict, description: str) -> dict:
    return {"type": "array", "items": items, "description": description}


_NUM = {"type": "number"}
_INT = {"type": "integer"}
_IDX = {"type": "integer", "minimum": 0}
_PER_STAGE_NUM = _arr(_NUM, "one value per stage")
_PER_STAGE_INT = _arr(_INT, "one value per stage")

_POSITION = {
    "type": "object",
    "description": "Everything the figures show for one token position of one prompt.",
    "required": ["pos", "tracked", "next", "score", "rank", "bin", "mean", "std", "lse", "entropy", "kl", "hist"],
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
            _arr(_INT, "per stage"),
            "`[tracked][stage]` rank among all vocabulary tokens: 1 + number of tokens with a strictly greater score.",
        ),
        "bin": _arr(_arr(_INT, "per stage"), "`[tracked][stage]` histogram bin (0-based) of each tracked token."),
        "mean": dict(_PER_STAGE_NUM, description="`[stage]` mean of the raw scores over the vocabulary."),
        "std": dict(_PER_STAGE_NUM, description="`[stage]` standard deviation of the raw scores (z = (score - mean) / std)."),
        "lse": dict(
            _PER_STAGE_NUM, description="`[stage]` log-sum-exp of the scores: log-probability of a token = score - lse."
        ),
        "entropy": dict(_PER_STAGE_NUM, description="`[stage]` entropy (nats) of the softmax of the scores."),
        "kl": dict(
            _PER_STAGE_NUM, description="`[stage]` KL(final || stage) in nats: divergence of the stage's softmax from the last stage's."
        ),
        "hist": {
            "type": "object",
            "description": "Histogram of z-scored scores per stage; only the span of non-empty bins is stored.",
            "required": ["lo", "counts", "samples"],
            "additionalProperties": False,
            "properties": {
                "lo": dict(_PER_STAGE_INT, description="`[stage]` index of the first stored bin."),
                "counts": _arr(
                    _arr(_INT, "per bin"),
                    "`[stage][bin - lo]` token counts from bin `lo` to the last non-empty bin; each row sums to `vocab_size`.",
                ),
                "samples": _arr(
                    _arr(_IDX, "per sample"),
                    "`[stage]` sample tokens (string-table indices), bin after bin: bin b contributes "
                    "min(`histogram.samples`, count of b) tokens, the first ones of the bin in a fixed pseudo-random "
                    "vocabulary order (seeded, so reruns agree).",
                ),
            },
        },
    },
}

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "lenskit.export/1",
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
                    "enum": ["fast", "float32"],
                    "description": "`fast`: reduced-precision matmul with an exact float32 re-check; `float32`: plain float32. Ranks and top-k are identical.",
                },
                "top_k": {"type": "integer", "minimum": 1, "description": "Number of final top tokens tracked per position."},
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
            "required": ["bins", "z_min", "z_max", "samples"],
            "properties": {
                "bins": {"type": "integer", "minimum": 1, "description": "Number of bins."},
                "z_min": {"type": "number", "description": "Left edge of bin 0 (z-score)."},
                "z_max": {"type": "number", "description": "Right edge of the last bin (z-score)."},
                "samples": {"type": "integer", "minimum": 0, "description": "Maximum sample tokens stored per bin."},
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
                    "tokens": _arr(_IDX, "The prompt's tokens as string-table indices."),
                    "positions": _arr(_POSITION, "Exported positions (all, or those chosen with `--positions`)."),
                },
            },
            "Exported prompts.",
        ),
    },
}


def markdown_reference() -> str:
    """Field-by-field reference of the export format, generated from :data:`JSON_SCHEMA`'s descriptions."""
    lines = [
        "# Export format (`lenskit.export/1`)",
        "",
        "Generated from `lenskit/schema.py` (`lenskit schema` prints the JSON Schema). Do not edit by hand.",
        "",
        f"Histogram: {HIST_BINS} bins over z in [{HIST_Z_MIN}, {HIST_Z_MAX}], bin width "
        f"{(HIST_Z_MAX - HIST_Z_MIN) / HIST_BINS:g}; scores rounded to {ROUND_SCORE} decimals, statistics to {ROUND_STAT}.",
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
