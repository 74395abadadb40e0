"""The survey JSON (``survey.json``, ``lenskit.survey/1``), defined once: version, bins, example classes, and the
published JSON Schema that ``lenskit schema --survey`` prints and the tests validate every survey against.

Per-stage arrays have one value per stage (``stages.name``); block arrays one per stage after the embedding
(``blocks.stage``: the attention or FFN block that produced it). Means are exact: each value was rounded to
``2^-20`` before it was summed as an integer (``sums`` holds those integers, so surveys of disjoint corpora can be
merged by adding them, with the histograms and counts).
"""

from __future__ import annotations

SURVEY_VERSION = "lenskit.survey/1"
SURVEY_FILE = "survey.json"
CHECKPOINT_FORMAT = "lenskit.survey-checkpoint/1"

FIXED = 1 << 20  # fixed-point scale of the sums
BITS_WIDTH = 0.125  # histograms of bits (cross-entropy, KL, entropy): bins [i/8, (i+1)/8), the last one open
BITS_BINS = 256  # 0 .. 32 bits
RANK_BINS = 32  # rank histograms: bin i holds ranks 2^i .. 2^(i+1)-1
DELTA_STEP = 0.25  # block effects: change of log2-rank rounded to quarters, bins -16 .. +16
DELTA_HALF = 64
CLASSES = ("decided_late", "decided_then_lost", "confident_wrong_early")
CLASS_HELP = {
    "decided_late": "the final top-1 is rank 1 only from the last layer's attention or FFN on",
    "decided_then_lost": "the final top-1 was rank 1 at some stage, lost it, then came back",
    "confident_wrong_early": "the model is wrong with p(top-1) >= 0.5, decided in the first half of the stages",
}


def _arr(items, description):
    return {"type": "array", "items": items, "description": description}


_NUM_OR_NULL = {"type": ["number", "null"]}
_STAGE_NUM = _arr(_NUM_OR_NULL, "one value per stage (null when no position was surveyed)")
_STAGE_INT = _arr({"type": "integer", "minimum": 0}, "one count per stage")
_HIST = _arr(_arr({"type": "integer", "minimum": 0}, "counts per bin"), "one histogram per stage")


def _bits(what):
    return {
        "type": "object", "additionalProperties": False, "required": ["mean", "p10", "p50", "p90", "hist"],
        "description": f"{what}, in bits, per stage: mean, quantiles (linear inside a histogram bin) and the histogram "
        "(bins of `bins.bits_width` bits from 0; the last bin holds everything above).",
        "properties": {"mean": _STAGE_NUM, "p10": _STAGE_NUM, "p50": _STAGE_NUM, "p90": _STAGE_NUM, "hist": _HIST},
    }


def _ranks(what):
    return {
        "type": "object", "additionalProperties": False, "required": ["mean_log2", "at1", "le10", "le100", "hist"],
        "description": f"{what}: mean log2-rank, shares at rank 1, <= 10, <= 100, and the histogram of floor(log2 rank).",
        "properties": {"mean_log2": _STAGE_NUM, "at1": _STAGE_NUM, "le10": _STAGE_NUM, "le100": _STAGE_NUM,
                       "hist": _HIST},
    }


_EXAMPLE = {
    "type": "object", "additionalProperties": False,
    "required": ["key", "doc", "source", "pos", "token", "next", "top1", "right", "p_top1", "decision", "top1_rank",
                 "next_rank", "before", "after", "prompt", "prompt_pos"],
    "description": "One example position (kept by the smallest hash key of its class: a fixed pseudo-random sample).",
    "properties": {
        "key": {"type": "string", "description": "Its 64-bit sampling key, hex."},
        "doc": {"type": "integer", "minimum": 0, "description": "Document index in the corpus (0-based)."},
        "source": {"type": "string", "description": "File (and line or row) of the document."},
        "pos": {"type": "integer", "minimum": 0, "description": "Token position in the document."},
        "token": {"type": "string"}, "next": {"type": "string", "description": "The actual next token."},
        "top1": {"type": "string", "description": "The model's final top-1."},
        "right": {"type": "boolean"}, "p_top1": {"type": "number", "description": "The model's p(top-1)."},
        "decision": {"type": "integer", "minimum": 0, "description": "Decision stage (index into stages)."},
        "top1_rank": _arr({"type": "integer", "minimum": 1}, "the final top-1's rank per stage"),
        "next_rank": _arr({"type": "integer", "minimum": 1}, "the next token's rank per stage"),
        "before": {"type": "string", "description": "Text before the token (up to 40 tokens)."},
        "after": {"type": "string", "description": "Text after the token (8 tokens)."},
        "prompt_pos": {"type": "integer", "minimum": 0,
                       "description": "Its position in that prompt (the window up to the token: the prompt's last)."},
        "prompt": {"type": ["integer", "null"], "minimum": 0,
                   "description": "Index of its prompt in the run's export.json (its last position), or null."},
    },
}

JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://lenskit.invalid/schema/survey-1.json",
    "title": "lenskit survey",
    "description": "Logit-lens statistics of a causal LM over every position of a corpus (`lenskit survey`).",
    "type": "object",
    "required": ["schema", "lenskit_version", "model", "lens", "stages", "corpus", "options", "run", "bins",
                 "per_stage", "decision", "blocks", "examples", "sums"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SURVEY_VERSION},
        "lenskit_version": {"type": "string"},
        "model": {"type": "object", "description": "id, lens fingerprint, architecture, adapter, dtype, n_layers, "
                  "vocab_size, as in the export."},
        "lens": {"type": "object", "properties": {"norm": {"type": "boolean"}, "precision": {"type": "string"}}},
        "stages": {"type": "object", "required": ["name", "kind", "layer"],
                   "description": "The 2L+1 stages: `embed`, then `L{i}.attn` and `L{i}.ffn` per layer."},
        "corpus": {
            "type": "object", "required": ["sources", "documents", "bad", "windows", "positions", "model_accuracy"],
            "properties": {
                "sources": _arr({"type": "string"}, "the corpus files, in reading order"),
                "documents": {"type": "integer", "minimum": 0, "description": "Documents surveyed."},
                "bad": {"type": "object", "description": "Documents skipped: empty, unreadable, too_long.",
                        "additionalProperties": {"type": "integer", "minimum": 0}},
                "windows": {"type": "integer", "minimum": 0},
                "positions": {"type": "integer", "minimum": 0,
                              "description": "Positions surveyed: every token with a next token in its document."},
                "model_accuracy": {"type": ["number", "null"],
                                   "description": "Share of positions where the model's top-1 is the next token."},
            },
        },
        "options": {"type": "object", "description": "max_tokens, batch_size, block_docs, max_docs, examples, "
                    "processes."},
        "run": {"type": "object", "description": "Wall time and throughput of the run (not part of the result)."},
        "bins": {"type": "object", "description": "The fixed bins of the histograms and the fixed-point scale."},
        "per_stage": {
            "type": "object", "additionalProperties": False,
            "required": ["ce_bits", "next_rank", "top1_rank", "agreement", "kl_bits", "entropy_bits"],
            "properties": {
                "ce_bits": _bits("Lens cross-entropy of the actual next token"),
                "next_rank": _ranks("The actual next token's rank among all vocabulary tokens"),
                "top1_rank": _ranks("The model's final top-1's rank"),
                "agreement": {**_STAGE_NUM, "description": "Share of positions where the stage's top-1 is the "
                              "model's final top-1 (top1_rank.at1)."},
                "kl_bits": _bits("KL(final || stage)"),
                "entropy_bits": _bits("Entropy of the stage's distribution"),
            },
        },
        "decision": {
            "type": "object", "additionalProperties": False, "required": ["right", "wrong"],
            "description": "Histogram of decision stages (the first stage from which the final top-1 stays rank 1), "
            "for positions where the model's top-1 is the next token (right) and where it is not (wrong).",
            "properties": {"right": _STAGE_INT, "wrong": _STAGE_INT},
        },
        "blocks": {
            "type": "object", "additionalProperties": False,
            "required": ["stage", "mean_delta_log2_rank", "share_down", "share_up", "p05", "p50", "p95", "hist"],
            "description": "Block effects: for the block producing each stage after the embedding, the change of the "
            "final top-1's log2-rank it causes (negative: the block promotes it). Histogram bins are centred on "
            "multiples of `bins.delta_step`, from -delta_half to +delta_half steps (the ends hold the tails).",
            "properties": {
                "stage": _arr({"type": "integer", "minimum": 1}, "stage index produced by the block"),
                "mean_delta_log2_rank": _STAGE_NUM, "share_down": _STAGE_NUM, "share_up": _STAGE_NUM,
                "p05": _STAGE_NUM, "p50": _STAGE_NUM, "p95": _STAGE_NUM, "hist": _HIST,
            },
        },
        "examples": {
            "type": "object", "additionalProperties": False, "required": list(CLASSES),
            "description": "Example positions per class: " + "; ".join(f"{k}: {v}" for k, v in CLASS_HELP.items()) + ".",
            "properties": {c: _arr(_EXAMPLE, CLASS_HELP[c]) for c in CLASSES},
        },
        "sums": {"type": "object", "description": "The exact fixed-point sums (integers, scale `bins.fixed_point`)."},
    },
}
