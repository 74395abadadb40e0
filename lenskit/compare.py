"""Compare two runs: one prompt text on two models, or two prompts on one model -- aligned, scored with both lenses,
and written as the ``compare.json`` document (``lenskit.compare/1``, defined here).

Which pairs make sense (:func:`plan_compare`):

* **two models, one text** (base vs instruct, before vs after fine-tuning): the prompt texts must be identical. The
  same tokenization pairs positions one by one (``align: position``); different tokenizations pair the positions
  where both models have read exactly the same prefix of the text, found from each token's character end offset
  (``align: chars``; tokens ending mid-word in one model have no partner and are skipped).
* **one model, two texts** (France vs Italy): positions pair one by one when the token counts match; otherwise the
  user chooses ``--align start`` (the first tokens together) or ``--align end`` (the last tokens, i.e. the next-token
  predictions, together).
* two models *and* two texts: refused -- any difference could come from either.

Per aligned pair the document holds the union of both sides' final top-k tokens (and each side's actual next
token), each token's rank among the whole vocabulary at every stage in each model (``null`` with a reason where the
token is not one of that model's tokens, or where export-only data did not track it), log-probabilities, the
per-stage KL divergence between the two lens distributions (both directions; only over one shared vocabulary), and
each side's decision stage: the first stage from which its own final top-1 stays at rank 1.

From traces (:func:`compare_from_traces`) every number is computed with the engine's scorer (the same fixed GEMM
blocks, so ranks equal the single export's), a few positions at a time within a memory budget: never ``[S, T, V]``.
Without the lens weights, :func:`compare_from_exports` uses the two export.json files and marks the gaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError, LenskitError, TraceFileError
from .tokens import is_int, is_number

COMPARE_SCHEMA = "lenskit.compare/1"
COMPARE_FILE = "compare.json"
ROUND_NATS = 4
ALIGN_CHOICES = ("auto", "position", "chars", "start", "end")
DEFAULT_TOP_K = 5
PAIR_TEMPS = 6  # [S, V] float32 temporaries per side while one pair is worked on (log-softmax, KL terms, ...)
CHAR_END_BATCH = 32  # prefixes decoded at once to find where each token ends in the text (char_ends)
MISSING_VOCAB = "not a token of this model's vocabulary"
MISSING_EXPORT = "not tracked by this run's export.json (no trace or weights to compute it)"


# ---- one side of the comparison ------------------------------------------------------------------------------------


@dataclass
class Side:
    """One run's chosen prompt: from its trace metadata when there is a trace, else from its export.json."""

    label: str  # "A" | "B"
    run: Path
    name: str
    prompt: int
    text: str
    token_ids: list[int]
    tokens: list[str]  # display texts of the prompt's tokens
    model: dict
    stages: dict  # {"name": [...], "kind": [...], "layer": [...]}
    trace: object | None  # lenskit.store.Trace
    export: dict | None  # the export document (plain JSON), loaded on demand
    tokenizer: object | None = None
    lens: object | None = None  # the model's head (lenskit.lens.Lens)
    stage_lens: object | None = None  # the --lens of this side (lenskit.lenses.StageLens), bound to ``lens`` once loaded
    chat: dict | None = None  # `trace --chat`: {"user": the message, "system": --system or None}; text is the template's

    @property
    def n_stages(self) -> int:
        return len(self.stages["name"])

    def same_model(self, other: Side) -> bool:
        keys = ("id", "fingerprint", "architecture", "n_layers", "vocab_size")
        return all(self.model.get(k) == other.model.get(k) for k in keys)


def _load_export(run: Path) -> dict | None:
    import orjson

    from .schema import EXPORT_FILE

    path = run / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise TraceFileError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("lenskit.export/"):
        raise TraceFileError(f"{path} is not a lenskit export")
    return doc


def open_side(run: Path, prompt: int, label: str) -> Side:
    """A run folder's prompt ``prompt``, from its trace (preferred) or its export.json; checks only metadata."""
    from .store import TRACE_FILE, read_trace

    run = Path(run)
    flag = "RUN_A" if label == "A" else "RUN_B"
    if not run.is_dir():
        raise InputError(f"{flag} {run} is not a folder (give a run folder written by `lenskit trace`)")
    trace = read_trace(run) if (run / TRACE_FILE).exists() else None
    export = None if trace is not None else _load_export(run)
    if trace is None and export is None:
        raise InputError(f"{flag} {run} holds neither trace.safetensors nor export.json: not a lenskit run")
    name = run.resolve().name or "run"
    if trace is not None:
        meta = trace.meta
        prompts = meta["prompts"]
        if not 0 <= prompt < len(prompts):
            raise InputError(f"--prompt-{label.lower()} {prompt} is out of range: {run} has {len(prompts)} prompt(s)")
        p = prompts[prompt]
        model = {k: v for k, v in meta["model"].items() if k != "source"}
        stages = {k: [s[k] for s in meta["stages"]] for k in ("name", "kind", "layer")}
        return Side(label, run, name, prompt, p["text"], list(p["token_ids"]), list(p["tokens"]), model, stages,
                    trace, None, chat=_chat_of(p))
    check_export_tables(run, export)
    try:
        return _side_from_export(run, export, prompt, label, name)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise TraceFileError(f"{run}/export.json does not follow the lenskit export schema "
                             f"({type(e).__name__}: {e}); re-run `lenskit export`") from None


def _chat_of(prompt: dict) -> dict | None:
    """A traced prompt's ``chat`` entry (``trace --chat``) when it is well formed, else None: nothing else reads it,
    so a hand-edited one (a string, a number, a user that is not text) is ignored rather than trusted."""
    from .tokens import is_utf8

    chat = prompt.get("chat")
    if not isinstance(chat, dict):
        return None
    user, system = chat.get("user"), chat.get("system")
    if not (isinstance(user, str) and is_utf8(user) and (system is None or isinstance(system, str) and is_utf8(system))):
        return None
    return {"user": user, "system": system}


def _side_from_export(run: Path, export: dict, prompt: int, label: str, name: str) -> Side:
    entries = [e for e in export["prompts"] if e.get("index", 0) == prompt]
    if not entries:
        have = ", ".join(str(e.get("index", 0)) for e in export["prompts"][:20])
        raise InputError(f"--prompt-{label.lower()} {prompt}: {run}/export.json holds "
                         + (f"prompt(s) {have} only" if have else "no prompts"))
    e = entries[0]
    check_export_prompt(run, export, e)
    ids = [export["token_ids"][r] for r in e["tokens"]]
    texts = [export["tokens"][r] for r in e["tokens"]]
    return Side(label, run, name, prompt, e["text"], ids, texts, dict(export["model"]), dict(export["stages"]),
                None, export)


# ---- alignment -------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    relation: str  # "models" (one text, two models) | "prompts" (one model, two texts) | "same" (one model, one text)
    align: str  # "position" | "chars" | "start" | "end"
    pairs: list[tuple[int, int, int | None]]  # (position in A, position in B, character end offset or None)
    shared_vocab: bool


def char_ends(side: Side) -> list[int | None]:
    """Per token: how many characters of the prompt text the model has read once it has read this token (None where
    that is not a prefix of the text: a token ending inside a character, or text the tokenizer normalised).

    With the tokenizer: the length of the decoded prefix ``ids[:i+1]`` when the text starts with it. Without: the
    tokens' display texts walked along the text (special tokens read nothing)."""
    text, ids = side.text, side.token_ids
    if side.tokenizer is not None:
        tok, out = side.tokenizer, []
        # a few prefixes at a time, keeping only their lengths: all T prefixes at once would hold T^2/2 tokens' text
        # (gigabytes for a prompt of 30k tokens)
        for i0 in range(0, len(ids), CHAR_END_BATCH):
            decoded = tok.batch_decode([ids[: i + 1] for i in range(i0, min(i0 + CHAR_END_BATCH, len(ids)))],
                                       skip_special_tokens=True, clean_up_tokenization_spaces=False)
            out.extend(len(d) if text.startswith(d) else None for d in decoded)
        return out
    special = {"<s>", "</s>", "<|endoftext|>", "<bos>", "<|begin_of_text|>", "<|im_start|>"}
    out, cur = [], 0
    for t in side.tokens:
        if t in special:
            out.append(cur)
            continue
        for cand in (t, t[1:] if t.startswith(" ") else None):
            if cand is not None and cand and text.startswith(cand, cur):
                cur += len(cand)
                out.append(cur)
                break
        else:
            return out + [None] * (len(side.tokens) - len(out))
    return out


def _char_pairs(a: Side, b: Side) -> list[tuple[int, int, int]]:
    """Pairs of positions that end at the same character offset (the last position for each offset)."""
    ends_a, ends_b = char_ends(a), char_ends(b)
    last_a = {e: i for i, e in enumerate(ends_a) if e is not None}
    last_b = {e: i for i, e in enumerate(ends_b) if e is not None}
    return [(last_a[e], last_b[e], e) for e in sorted(set(last_a) & set(last_b))]


def shared_vocabulary(a: Side, b: Side) -> bool:
    """Do both sides number the same tokens the same way? (Then KL between their distributions is defined.)"""
    if a.model.get("vocab_size") != b.model.get("vocab_size"):
        return False
    if a.same_model(b):
        return True
    if a.tokenizer is not None and b.tokenizer is not None:
        return a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    if a.export is not None and b.export is not None:  # the tokens both exports name must agree, and be many
        ta = dict(zip(a.export["token_ids"], a.export["tokens"]))
        tb = dict(zip(b.export["token_ids"], b.export["tokens"]))
        common = set(ta) & set(tb)
        return len(common) >= 10 and all(ta[i] == tb[i] for i in common)
    return False


def text_difference(a: str, b: str) -> str:
    """Why two texts that look the same are not (" (...)"), or "": texts that differ only in whitespace, line
    endings, Unicode normalisation (NFC vs NFD), a byte-order mark or zero-width characters tokenize differently,
    and each model then read another text, so the refusal says what to make identical."""
    import unicodedata

    invisible = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u2060"))
    checks = [
        ("a byte-order mark or zero-width characters", lambda t: t.translate(invisible)),
        ("line endings (CRLF vs LF)", lambda t: t.replace("\r\n", "\n").replace("\r", "\n")),
        ("Unicode normalisation (NFC vs NFD)", lambda t: unicodedata.normalize("NFC", t)),
        ("whitespace", lambda t: " ".join(t.split())),
    ]
    if max(len(a), len(b)) > 1 << 20:  # a long text is compared as it is (no hint): the checks copy it
        return ""
    for what, norm in checks:
        if norm(a) == norm(b):
            return f" (the texts differ only in {what}: trace both with the very same text)"
    return ""


def plan_compare(a: Side, b: Side, align: str = "auto", positions: str | None = None) -> Plan:
    """Decide what the comparison is and which positions pair up; :class:`InputError` (one line) when they cannot."""
    from .export import parse_positions
    from .tokens import one_line

    if align not in ALIGN_CHOICES:
        raise InputError(f"unknown --align '{align}': use one of {', '.join(ALIGN_CHOICES)}")
    same_model, same_text = a.same_model(b), a.text == b.text
    if not same_model and not same_text:
        chat = ""
        if a.chat is not None or b.chat is not None:
            same_message = a.chat is not None and b.chat is not None and a.chat == b.chat
            chat = ((" (the message is the same, but `trace --chat` wrapped it in each model's own chat template)")
                    if same_message else " (one or both were traced with --chat: the text is the chat template's)")
        raise InputError(one_line(
            f"cannot align: RUN_A and RUN_B differ in both model ({a.model.get('id')} vs {b.model.get('id')}) and "
            f"prompt text{chat or text_difference(a.text, b.text)}; compare one prompt on two models, or two prompts "
            "on one model", 600))
    relation = "same" if same_model and same_text else "models" if same_text else "prompts"
    shared = shared_vocabulary(a, b)
    Ta, Tb = len(a.token_ids), len(b.token_ids)
    same_tokens = shared and a.token_ids == b.token_ids
    if align == "auto":
        if relation == "prompts":
            if Ta != Tb:
                raise InputError(
                    f"cannot align: the two prompts have {Ta} and {Tb} tokens, so positions do not pair one by one; "
                    "use --align end (the last tokens, i.e. the next-token predictions, together) or --align start")
            align = "position"
        else:
            align = "position" if same_tokens else "chars"
    if align == "chars":
        if not same_text:
            raise InputError("cannot align by characters: the two prompt texts differ (--align chars needs one text)")
        pairs = _char_pairs(a, b)
    else:
        if relation != "prompts" and not same_tokens:
            raise InputError(f"cannot align by --align {align}: the two models tokenize the text differently, so a "
                             "position is a different piece of text in each; use --align chars (or auto)")
        if align == "position" and Ta != Tb:
            raise InputError(f"cannot align by position: the prompts have {Ta} and {Tb} tokens; "
                             "use --align end or --align start")
        n = min(Ta, Tb)
        pairs = [(Ta - n + i, Tb - n + i, None) if align == "end" else (i, i, None) for i in range(n)]
    if positions is not None:
        wanted = set(parse_positions(positions, Ta))
        pairs = [p for p in pairs if p[0] in wanted]
    if not pairs:
        raise InputError("cannot align: no position of RUN_A has a partner in RUN_B"
                         + (" among --positions" if positions is not None else ""))
    return Plan(relation, align, pairs, shared)


def stage_map(a: Side, b: Side) -> list[int]:
    """For each stage of A, B's stage at the same relative depth (the identity when both have as many stages)."""
    Sa, Sb = a.n_stages, b.n_stages
    if Sa == Sb:
        return list(range(Sa))
    return [round(s * (Sb - 1) / max(1, Sa - 1)) for s in range(Sa)]


# ---- the union of tokens at one pair ---------------------------------------------------------------------------------


class Vocab:
    """Token id <-> display text for one side (from its tokenizer, or from its export's string table)."""

    def __init__(self, side: Side):
        self.side = side
        self._text: dict[int, str] = {}
        self._id: dict[str, int | None] = {}
        if side.export is not None:
            self._text.update(zip(side.export["token_ids"], side.export["tokens"]))
        self._text.update(zip(side.token_ids, side.tokens))

    def text(self, tid: int) -> str:
        if tid not in self._text:
            from .tokens import token_texts

            self._text[tid] = token_texts(self.side.tokenizer, [tid])[0]
        return self._text[tid]

    def id_of(self, text: str) -> int | None:
        """The id of the token whose display text is ``text`` (None when the vocabulary has no such single token)."""
        if text in self._id:
            return self._id[text]
        tid = None
        known = [i for i, t in self._text.items() if t == text]
        if known:
            tid = known[0]
        elif self.side.tokenizer is not None:
            tok = self.side.tokenizer
            cands = tok(text, add_special_tokens=False)["input_ids"]
            vocab = tok.get_vocab()
            cands = ([cands[0]] if len(cands) == 1 else []) + [v for k, v in vocab.items() if k == text]
            for c in cands:
                if 0 <= c < self.side.model["vocab_size"] and self.text(c) == text:
                    tid = c
                    break
        self._id[text] = tid
        return tid


def union_tokens(top_a: list[int], top_b: list[int], next_a: int | None, next_b: int | None, va: Vocab, vb: Vocab,
                 shared: bool) -> list[dict]:
    """A's final top-k, then B's not already there, then each side's actual next token: one entry per distinct token
    (by id over a shared vocabulary, else by display text), with its id in each model (None: not a token there)."""
    out: list[dict] = []
    index: dict = {}

    def add(side: int, tid: int, role: str, k: int | None):
        text = (va if side == 0 else vb).text(tid)
        key = tid if shared else text
        if key not in index:
            ids = [tid, tid] if shared else [tid if side == 0 else va.id_of(text), tid if side == 1 else vb.id_of(text)]
            index[key] = len(out)
            out.append({"text": text, "id": ids, "top": [None, None], "next": [False, False]})
        entry = out[index[key]]
        if role == "top":
            entry["top"][side] = k
        else:
            entry["next"][side] = True

    for k, tid in enumerate(top_a):
        add(0, tid, "top", k + 1)
    for k, tid in enumerate(top_b):
        add(1, tid, "top", k + 1)
    for side, tid in ((0, next_a), (1, next_b)):
        if tid is not None:
            add(side, tid, "next", None)
    return out


def decision_stage(ranks) -> int:
    """First stage from which the rank stays 1 (the last stage when only it has rank 1)."""
    s = len(ranks)
    while s > 0 and ranks[s - 1] == 1:
        s -= 1
    return min(s, len(ranks) - 1)


def _rounded(x) -> list:
    return [None if v is None or not math.isfinite(v) else round(float(v), ROUND_NATS) for v in x]


# ---- from traces: both lenses, exact --------------------------------------------------------------------------------


def lens_specs(specs) -> list[str]:
    """The ``--lens`` specs as a list of strings (one string: one spec, never its letters), at most two, each
    spelled right (:func:`lenskit.lenses.parse_lens_spec`); errors as one line (a spec may hold a newline)."""
    from .lenses import parse_lens_spec

    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or not all(isinstance(s, str) for s in specs):
        raise InputError("lenses must be a list of --lens specs (strings such as 'logit' or 'tuned:LENS_DIR')")
    if len(specs) > 2:
        raise InputError(f"--lens is given {len(specs)} times: give it once (both runs) or twice (RUN_A's, then "
                         "RUN_B's)")
    for spec in specs:
        try:
            parse_lens_spec(spec)
        except LenskitError as e:
            raise _one_line_error(e) from None
    return list(specs)


def _one_line_error(e: LenskitError, prefix: str = "") -> LenskitError:
    """``e`` (same class) as one line: a lens path or spec may hold newlines or other control characters."""
    from .tokens import one_line

    return type(e)(one_line(f"{prefix}{e}", 600))


def open_side_lenses(sides: list[Side], specs: list[str] | None) -> None:
    """Each side's ``--lens`` (none: the logit lens for both; one: for both; two: A's, then B's), opened against its
    trace's model and stages -- fingerprints and stage counts checked before any weights load."""
    from .lenses import DEFAULT_LENS, open_lenses
    from .tokens import one_line

    specs = lens_specs(specs) or [DEFAULT_LENS]
    for side in sides:
        if side.trace is None:
            raise InputError(one_line(f"--lens {' --lens '.join(s.strip() for s in specs)} needs both runs' traces: "
                                      f"{side.run} has no trace.safetensors (export data follows the lens it was "
                                      "exported with)", 600))
    for side, spec in zip(sides, specs * 2 if len(specs) == 1 else specs):
        try:
            side.stage_lens = open_lenses([spec], side.trace.meta["model"], side.trace.meta["stages"])[0]
        except LenskitError as e:  # which run's lens it is: "the lens ... was fitted for another model" says not
            raise _one_line_error(e, f"--lens for RUN_{side.label} ({side.run}): ") from None


def lens_kinds(sides: list[Side]) -> set[str]:
    """The kinds of lens the sides were asked for (``{"logit"}`` by default)."""
    return {side.stage_lens.kind if side.stage_lens is not None else "logit" for side in sides}


def load_lenses(sides: list[Side], allow_download: bool = False) -> None:
    """The lens weights and tokenizer of each side's model (fingerprints checked); ModelError when not on this
    machine. Each side's ``--lens`` gets its head here."""
    from .weights import lens_for_trace

    for side in sides:
        if side.trace is None:
            raise TraceFileError(f"{side.run} has no trace.safetensors")
        lens, tok = lens_for_trace(side.trace.meta, allow_download)
        side.trace.check_lens(lens.hidden_size, lens.vocab_size)
        side.lens, side.tokenizer = lens, tok
        if side.stage_lens is not None:
            try:
                side.stage_lens = side.stage_lens.bind(lens)
            except LenskitError as e:  # the lens's fault, not missing weights: never read as "weights unavailable"
                raise _one_line_error(InputError(str(e)), f"--lens for RUN_{side.label} ({side.run}): ") from None


def load_tokenizers(sides: list[Side], allow_download: bool = False) -> None:
    """Each side's tokenizer where its model is on this machine (for the alignment; silently None otherwise)."""
    from .weights import model_folder, trace_tokenizer

    for side in sides:
        if side.tokenizer is not None or side.trace is None:
            continue
        try:
            side.tokenizer = trace_tokenizer(model_folder(side.trace.meta["model"], allow_download), side.model)
        except LenskitError:
            side.tokenizer = None


def compare_from_traces(a: Side, b: Side, plan: Plan, top_k: int = DEFAULT_TOP_K, device: str = "auto",
                        max_memory: int | None = None, log=None) -> dict:
    """The compare document computed from both traces with both lenses (see the module docstring)."""
    import torch

    from .models import resolve_device
    from .planning import auto_max_memory
    from .progress import Progress
    from .scoring import Scorer

    dev = resolve_device(device)
    budget = max_memory or auto_max_memory(dev)
    sides = (a, b)
    scorers, per_block = [], 1
    for side in sides:
        sc = Scorer(side.stage_lens or side.lens, dev, True, "float32")  # a translator's rows: whole positions
        per_block = max(per_block, sc.set_block(side.n_stages))  # positions per GEMM block (rows are padded to it)
        scorers.append(sc)
    V = [side.lens.vocab_size for side in sides]
    for side in sides:
        if top_k > side.lens.vocab_size:
            raise InputError(f"--top-k {top_k} is larger than the vocabulary of {side.run} ({side.lens.vocab_size})")
    kl_ok = plan.shared_vocab and V[0] == V[1]
    smap = stage_map(a, b)
    vocabs = (Vocab(a), Vocab(b))
    row_bytes = sum(s.n_stages * v * 4 for s, v in zip(sides, V))  # one position's scores, both sides
    # a chunk's scores stay while its pairs are worked through, one pair's temporaries at a time; chunks are whole GEMM
    # blocks (a smaller chunk would compute the padded rows anyway)
    blocks = max(1, (budget - PAIR_TEMPS * row_bytes) // max(1, per_block * row_bytes))
    chunk = per_block * min(blocks, max(1, 64 // per_block))
    out = []
    with torch.inference_mode(), Progress(len(plan.pairs), "compare", "positions", log) as progress:
        for c0 in range(0, len(plan.pairs), chunk):
            group = plan.pairs[c0: c0 + chunk]
            scores, finals = [], []
            for k, (side, sc) in enumerate(zip(sides, scorers)):
                pos = [p[k] for p in group]
                lo, hi = min(pos), max(pos) + 1
                h = side.trace.reader(side.prompt)(lo, hi)[:, [p - lo for p in pos]]  # [S, c, D]
                S = side.n_stages
                rows = h.permute(1, 0, 2).reshape(len(pos) * S, -1)  # [c*S, D] (position, stage)
                s = sc.scores(rows)  # [c*S, V] in the scorer's column order
                final_rows = torch.arange(len(pos), device=s.device) * S + S - 1
                top = sc.col_ids[sc.top_k(s, top_k, final_rows)].tolist()  # [c, k] vocabulary ids
                scores.append(s)
                finals.append(top)
            for i, (pa, pb, end) in enumerate(group):
                nxt = [side.token_ids[p + 1] if p + 1 < len(side.token_ids) else None for side, p in zip(sides, (pa, pb))]
                tokens = union_tokens(finals[0][i], finals[1][i], nxt[0], nxt[1], *vocabs, plan.shared_vocab)
                lps = []
                for k, (side, sc) in enumerate(zip(sides, scorers)):
                    S = side.n_stages
                    blk = scores[k][i * S: (i + 1) * S]  # [S, V]
                    lse = torch.logsumexp(blk, dim=-1)  # [S]
                    for t in tokens:
                        tid = t["id"][k]
                        t.setdefault("rank", [None, None])
                        t.setdefault("logp", [None, None])
                        t.setdefault("missing", [None, None])
                        if tid is None:
                            t["missing"][k] = MISSING_VOCAB
                            continue
                        col = sc.inv[tid]
                        val = blk[:, col]  # [S]
                        t["rank"][k] = (1 + (blk > val[:, None]).sum(-1)).tolist()
                        t["logp"][k] = _rounded((val - lse).tolist())
                    if kl_ok:
                        # [S, V] in vocabulary order: each model's scorer orders its columns by its own weight
                        lps.append(torch.log_softmax(blk, dim=-1).index_select(1, sc.inv))
                kl = None
                if kl_ok:
                    la, lb = lps[0], lps[1][smap]  # [S_A, V] each
                    kl = [_rounded((la.exp() * (la - lb)).sum(-1).clamp_min(0).tolist()),
                          _rounded((lb.exp() * (lb - la)).sum(-1).clamp_min(0).tolist())]
                    del la, lb
                top1 = [tokens[0], next(t for t in tokens if t["top"][1] == 1)]
                out.append(_pair_record(pa, pb, end, nxt, vocabs, tokens, kl,
                                        [decision_stage(top1[k]["rank"][k]) for k in range(2)]))
            progress.update(len(group))
    kl_info = {"available": kl_ok, "why": None if kl_ok else "the two models have different vocabularies: KL is "
               "defined only between distributions over the same tokens", "stage_map": smap,
               "same_depth": a.n_stages == b.n_stages}
    return build_compare(a, b, plan, "traces", top_k, kl_info, out)


def _pair_record(pa, pb, end, nxt, vocabs, tokens, kl, decide) -> dict:
    return {
        "a": pa,
        "b": pb,
        "end": end,
        "next": [vocabs[k].text(t) if t is not None else None for k, t in enumerate(nxt)],
        "decide": decide,
        "kl": kl,
        "tokens": tokens,
    }


# ---- from exports: what both export.json hold ------------------------------------------------------------------------


EXPORT_SECTIONS = {"model": dict, "stages": dict, "lens": dict, "prompts": list, "token_ids": list, "tokens": list}


def _check_export_shape(side: Side) -> None:
    """The top-level sections compare reads from an export.json (:func:`compare_from_exports` then checks that it
    is the export of the trace beside it)."""
    if side.export is not None:
        check_export_tables(side.run, side.export)


def _export_error(run: Path, what: str) -> TraceFileError:
    from .tokens import one_line

    return TraceFileError(one_line(f"{run}/export.json does not follow the lenskit export schema ({what}); re-run "
                                   "`lenskit export`", 600))


def check_export_tables(run: Path, export: dict) -> None:
    """Everything compare reads from an export.json outside its positions, with the right types -- a hand-edited one
    (a token id that is text, a prompt text that is a number, a negative index that Python would read from the end)
    is refused here, never copied into compare.json or used to index a table."""
    from .schema import SCHEMA_VERSIONS_READ

    if export.get("schema") not in SCHEMA_VERSIONS_READ:
        raise _export_error(run, f"schema {str(export.get('schema'))[:40]!r} is not one of "
                                 f"{', '.join(SCHEMA_VERSIONS_READ)}")
    bad = [k for k, t in EXPORT_SECTIONS.items() if not isinstance(export.get(k), t)]
    if bad:
        raise _export_error(run, f"{', '.join(bad)} missing or malformed")
    vocab = export["model"].get("vocab_size")
    if not is_int(vocab) or vocab < 1:
        raise _export_error(run, "model.vocab_size is not a positive whole number")
    if export["model"].get("fingerprint") is not None and not isinstance(export["model"]["fingerprint"], str):
        raise _export_error(run, "model.fingerprint is not text")
    names = [export["stages"].get(k) for k in ("name", "kind", "layer")]
    if not all(isinstance(v, list) for v in names) or len({len(v) for v in names}) != 1 or not names[0]:
        raise _export_error(run, "stages.name, .kind and .layer are not lists of one length (at least one stage)")
    top_k = export["lens"].get("top_k", 1)
    if not is_int(top_k) or top_k < 1:
        raise _export_error(run, "lens.top_k is not a positive whole number")
    ids, texts = export["token_ids"], export["tokens"]
    if len(ids) != len(texts):
        raise _export_error(run, "token_ids and tokens differ in length")
    if not all(is_int(t) and 0 <= t < vocab for t in ids):
        raise _export_error(run, f"token_ids holds an entry that is not a token id of a {vocab}-token vocabulary")
    if not all(isinstance(t, str) for t in texts):
        raise _export_error(run, "tokens holds an entry that is not text")
    for e in export["prompts"]:
        if not isinstance(e, dict) or not is_int(e.get("index", 0)):
            raise _export_error(run, "a prompt entry is not an object with a whole-number index")


def _table_indices(x, n: int) -> bool:
    """``x`` is a list of indices into a table of ``n`` entries (never negative: Python would count from the end)."""
    return isinstance(x, list) and all(is_int(r) and 0 <= r < n for r in x)


def check_export_prompt(run: Path, export: dict, entry: dict) -> None:
    """A prompt entry's text and tokens (:func:`check_export_tables` first)."""
    if not isinstance(entry.get("text"), str):
        raise _export_error(run, f"prompt {entry.get('index', 0)}'s text is not text")
    if not _table_indices(entry.get("tokens"), len(export["tokens"])) or not entry["tokens"]:
        raise _export_error(run, f"prompt {entry.get('index', 0)}'s tokens are not indices into the token table")


def check_export_positions(run: Path, export: dict, entry: dict, n_tokens: int, n_stages: int) -> None:
    """A prompt entry's position records, as :func:`compare_from_exports` reads them: each position once and within
    the prompt, tracked tokens in the table, and per tracked token one rank (1 to the vocabulary size) and one score per
    stage; ``lse`` per stage."""
    where = f"prompt {entry.get('index', 0)}"
    rows = entry.get("positions")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _export_error(run, f"{where}'s positions are not a list of objects")
    seen: set[int] = set()
    for r in rows:
        pos = r.get("pos")
        if not is_int(pos) or not 0 <= pos < n_tokens or pos in seen:
            raise _export_error(run, f"{where} has a position {repr(pos)[:20]} that is not one of its {n_tokens} "
                                     "tokens, or is listed twice")
        seen.add(pos)
        tracked, rank, score, lse = r.get("tracked"), r.get("rank"), r.get("score"), r.get("lse")
        if not _table_indices(tracked, len(export["token_ids"])) or not tracked:
            raise _export_error(run, f"{where}, position {pos}: tracked is not a list of indices into token_ids")
        per_stage = (lambda v, ok: isinstance(v, list) and len(v) == n_stages and all(ok(x) for x in v))
        grid = (lambda v, ok: isinstance(v, list) and len(v) == len(tracked) and all(per_stage(x, ok) for x in v))
        vocab = export["model"]["vocab_size"]
        if not grid(rank, lambda x: is_int(x) and 1 <= x <= vocab) or not grid(score, is_number) or not per_stage(lse, is_number):
            raise _export_error(run, f"{where}, position {pos}: rank, score and lse are not one number per stage "
                                     f"({n_stages}) for each tracked token, ranks from 1 to {vocab}")


def _check_export_of_trace(side: Side) -> None:
    """Refuse an export.json that is not of the trace beside it (another model, or other token ids for the prompt):
    the alignment comes from the trace, the values from the export, so they must describe the same run."""
    from .schema import EXPORT_FILE

    if side.trace is None or side.export is None:
        return
    path = side.run / EXPORT_FILE
    if side.export["model"].get("fingerprint") != side.model.get("fingerprint"):
        raise TraceFileError(f"{path} is of another model than {side.run}/trace.safetensors "
                             "(fingerprints differ): re-run `lenskit export` on the run")
    e = next((e for e in side.export["prompts"] if e.get("index", 0) == side.prompt), None)
    if e is not None and [side.export["token_ids"][r] for r in e["tokens"]] != side.token_ids:
        raise TraceFileError(f"{path} holds other tokens for prompt {side.prompt} than {side.run}/trace.safetensors: "
                             "re-run `lenskit export` on the run")


def compare_from_exports(a: Side, b: Side, plan: Plan, top_k: int = DEFAULT_TOP_K, why: str = "") -> dict:
    """The compare document from the two export.json files only: ranks and log-probabilities only for the tokens each
    export tracked at that position (the others are ``null`` with ``missing`` saying so), no KL."""
    try:
        return _compare_from_exports(a, b, plan, top_k, why)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise TraceFileError(f"an export.json of {a.run} or {b.run} does not follow the lenskit export schema "
                             f"({type(e).__name__}: {e}); re-run `lenskit export`") from None


def _compare_from_exports(a: Side, b: Side, plan: Plan, top_k: int = DEFAULT_TOP_K, why: str = "") -> dict:
    sides = (a, b)
    for side in sides:
        if side.export is None:
            side.export = _load_export(side.run)
        if side.export is None:
            raise InputError(f"{side.run} has no export.json and its lens weights are not available ({why}); "
                             "compare needs one or the other")
        _check_export_shape(side)
        entry = next((e for e in side.export["prompts"] if e.get("index", 0) == side.prompt), None)
        if entry is None:  # (an empty list too: there is nothing to read the values from)
            raise InputError(f"{side.run}/export.json does not hold prompt {side.prompt}")
        check_export_prompt(side.run, side.export, entry)
        _check_export_of_trace(side)
        if side.export["lens"].get("top_k", top_k) < top_k:
            raise InputError(f"{side.run}/export.json holds only the top {side.export['lens']['top_k']} tokens; "
                             f"use --top-k {side.export['lens']['top_k']} or make the weights available")
    vocabs = (Vocab(a), Vocab(b))
    recs = []
    for side in sides:
        e = next(e for e in side.export["prompts"] if e.get("index", 0) == side.prompt)
        check_export_positions(side.run, side.export, e, len(side.token_ids), side.n_stages)
        recs.append({r["pos"]: r for r in e["positions"]})
    out, skipped = [], 0
    for pa, pb, end in plan.pairs:
        if pa not in recs[0] or pb not in recs[1]:
            skipped += 1
            continue
        rows = (recs[0][pa], recs[1][pb])
        tracked = [[side.export["token_ids"][r] for r in row["tracked"]] for side, row in zip(sides, rows)]
        nxt = [side.token_ids[p + 1] if p + 1 < len(side.token_ids) else None for side, p in zip(sides, (pa, pb))]
        tokens = union_tokens(tracked[0][:top_k], tracked[1][:top_k], nxt[0], nxt[1], *vocabs, plan.shared_vocab)
        for t in tokens:
            t["rank"], t["logp"], t["missing"] = [None, None], [None, None], [None, None]
            for k, (row, ids) in enumerate(zip(rows, tracked)):
                tid = t["id"][k]
                if tid is None:
                    t["missing"][k] = MISSING_VOCAB
                elif tid not in ids:
                    t["missing"][k] = MISSING_EXPORT
                else:
                    j = ids.index(tid)
                    t["rank"][k] = list(row["rank"][j])
                    t["logp"][k] = _rounded(np.asarray(row["score"][j], float) - np.asarray(row["lse"], float))
        decide = [decision_stage(row["rank"][0]) for row in rows]
        out.append(_pair_record(pa, pb, end, nxt, vocabs, tokens, None, decide))
    if not out:
        raise InputError("cannot compare from the exports: none of the aligned positions is in both export.json "
                         "files (they were exported with --positions)")
    kl_info = {"available": False, "why": "computed from the two export.json files only (" + (why or "no traces")
               + "): KL between the models needs both lenses' full distributions", "stage_map": stage_map(a, b),
               "same_depth": a.n_stages == b.n_stages}
    doc = build_compare(a, b, plan, "exports", top_k, kl_info, out)
    doc["skipped"] = skipped
    return doc


# ---- the document ----------------------------------------------------------------------------------------------------


def build_compare(a: Side, b: Side, plan: Plan, source: str, top_k: int, kl: dict, pairs: list[dict]) -> dict:
    """Assemble the ``lenskit.compare/1`` document (see :func:`json_schema`)."""
    def run_entry(side: Side) -> dict:
        keep = ("id", "revision", "fingerprint", "architecture", "adapter", "dtype", "n_layers", "vocab_size")
        return {
            "label": side.label,
            "name": side.name,
            "prompt": side.prompt,
            "model": {k: side.model.get(k) for k in keep if k in side.model},
            "text": side.text,
            "tokens": side.tokens,
            "token_ids": side.token_ids,
            "stages": side.stages,
            "lens": lens_entry(side),
            **({"chat": side.chat} if side.chat is not None else {}),
        }

    return {
        "schema": COMPARE_SCHEMA,
        "lenskit_version": __version__,
        "relation": plan.relation,
        "align": plan.align,
        "source": source,
        "vocabulary": "shared" if plan.shared_vocab else "separate",
        "top_k": top_k,
        "runs": [run_entry(a), run_entry(b)],
        "kl": kl,
        "pairs": pairs,
    }


def lens_entry(side: Side) -> dict:
    """The lens a side's numbers come from: its ``--lens`` (kind, source, fingerprint, ...) when computed from the
    trace; from export-only data, the export's first lens (the one its ranks follow)."""
    if side.stage_lens is not None:
        return side.stage_lens.info()
    if side.export is not None:
        from .schema import lenses

        try:
            first = lenses(side.export)[0]
            return {k: first[k] for k in ("kind", "source", "fingerprint") if k in first} or {"kind": "logit"}
        except (KeyError, TypeError, IndexError, AttributeError):
            pass
    return {"kind": "logit"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def json_schema() -> dict:
    """The JSON Schema of ``compare.json`` (``lenskit.compare/1``)."""
    ints = {"type": "array", "items": {"type": "integer"}}
    nums = {"type": "array", "items": {"type": ["number", "null"]}}
    pair2 = lambda item: {"type": "array", "items": item, "minItems": 2, "maxItems": 2}  # noqa: E731
    run = {
        "type": "object",
        "required": ["label", "name", "prompt", "model", "text", "tokens", "token_ids", "stages"],
        "properties": {
            "label": {"enum": ["A", "B"]},
            "name": {"type": "string", "description": "the run folder's name"},
            "prompt": {"type": "integer", "description": "index of the prompt in the run"},
            "model": {"type": "object"},
            "text": {"type": "string"},
            "tokens": {"type": "array", "items": {"type": "string"}, "description": "display text of each token"},
            "token_ids": ints,
            "stages": {"type": "object", "required": ["name", "kind", "layer"]},
            "lens": {"type": "object", "required": ["kind"], "description": "the lens this run's numbers come from "
                     "(`--lens`; logit by default): kind, source, fingerprint, ..."},
            "chat": {"type": "object", "required": ["user", "system"], "description": "a prompt traced with "
                     "`trace --chat`: the user's message and the system message (text is the chat template's)",
                     "properties": {"user": {"type": "string"}, "system": {"type": ["string", "null"]}}},
        },
    }
    token = {
        "type": "object",
        "required": ["text", "id", "top", "next", "rank", "logp", "missing"],
        "properties": {
            "text": {"type": "string"},
            "id": pair2(_nullable({"type": "integer"})),
            "top": pair2(_nullable({"type": "integer"})),
            "next": pair2({"type": "boolean"}),
            "rank": pair2(_nullable(ints)),
            "logp": pair2(_nullable(nums)),
            "missing": pair2(_nullable({"type": "string"})),
        },
    }
    pair = {
        "type": "object",
        "required": ["a", "b", "end", "next", "decide", "kl", "tokens"],
        "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"},
            "end": _nullable({"type": "integer"}),
            "next": pair2(_nullable({"type": "string"})),
            "decide": pair2({"type": "integer"}),
            "kl": _nullable(pair2(nums)),
            "tokens": {"type": "array", "items": token},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "lenskit compare document",
        "type": "object",
        "required": ["schema", "lenskit_version", "relation", "align", "source", "vocabulary", "top_k", "runs", "kl",
                     "pairs"],
        "properties": {
            "schema": {"const": COMPARE_SCHEMA},
            "lenskit_version": {"type": "string"},
            "relation": {"enum": ["models", "prompts", "same"]},
            "align": {"enum": ["position", "chars", "start", "end"]},
            "source": {"enum": ["traces", "exports"]},
            "vocabulary": {"enum": ["shared", "separate"]},
            "top_k": {"type": "integer", "minimum": 1},
            "runs": {"type": "array", "items": run, "minItems": 2, "maxItems": 2},
            "kl": {"type": "object", "required": ["available", "why", "stage_map", "same_depth"]},
            "pairs": {"type": "array", "items": pair, "minItems": 1},
            "skipped": {"type": "integer"},
        },
    }


def is_compare_dir(folder: Path) -> bool:
    """A folder ``lenskit compare`` wrote: it holds a compare.json of this schema family."""
    from .files import file_head

    return (file_head(Path(folder) / COMPARE_FILE, 64) or b"").startswith(b'{"schema":"lenskit.compare/')


def _check_compare_args(run_a, run_b, prompt_a, prompt_b, top_k, device, max_memory, exports_only, allow_download,
                        log, warn) -> tuple:
    """:func:`run_compare`'s arguments as the Python API may give them, checked before any file is opened: paths a
    str or Path, indices ints (numpy ints too; not bools or floats), flags True or False. Returns ``(run_a, run_b,
    prompt_a, prompt_b, top_k)`` as Paths and ints."""
    from .tokens import as_index, as_path, check_callback, check_flag

    run_a, run_b = as_path(run_a, "run_a"), as_path(run_b, "run_b")
    ints = []
    for value, name in ((prompt_a, "prompt_a"), (prompt_b, "prompt_b"), (top_k, "top_k")):
        if as_index(value) is None:
            raise InputError(f"{name} must be a whole number (an int), not {type(value).__name__}")
        ints.append(as_index(value))
    if not isinstance(device, str):
        raise InputError(f"device must be a string (auto, cpu, cuda, cuda:N or mps), not {type(device).__name__}")
    if max_memory is not None and not (is_int(as_index(max_memory)) and as_index(max_memory) > 0):
        raise InputError(f"max_memory must be a positive number of bytes or None, not {max_memory!r:.60}")
    check_flag(exports_only, "exports_only")
    check_flag(allow_download, "allow_download")
    check_callback(log, "log")
    check_callback(warn, "warn")
    return (run_a, run_b, *ints)


def run_compare(run_a: Path, run_b: Path, prompt_a: int = 0, prompt_b: int = 0, align: str = "auto",
                positions: str | None = None, top_k: int = DEFAULT_TOP_K, device: str = "auto",
                max_memory: int | None = None, exports_only: bool = False, allow_download: bool = False, log=None,
                warn=None, lenses: list[str] | None = None) -> dict:
    """Open both runs, align them (refusing pairs that cannot be), and compute the document: from the traces with
    both lenses, or -- with ``exports_only`` or when the weights are not on this machine -- from the exports.

    ``lenses``: the ``--lens`` specs (none: the logit lens; one: for both runs; two: RUN_A's, then RUN_B's). A lens
    other than the logit lens needs both traces and their weights: export-only data follows the lens each export
    was made with, so it is never used in its place."""
    from .errors import ModelError
    from .lenses import DEFAULT_LENS, parse_lens_spec
    from .tokens import one_line

    run_a, run_b, prompt_a, prompt_b, top_k = _check_compare_args(run_a, run_b, prompt_a, prompt_b, top_k, device,
                                                                  max_memory, exports_only, allow_download, log, warn)
    a, b = open_side(run_a, prompt_a, "A"), open_side(run_b, prompt_b, "B")
    if not is_int(top_k) or top_k < 1:
        raise InputError("--top-k must be a whole number, at least 1")
    for side in (a, b):  # before any weights load (compare_from_traces checks the lens's own vocabulary again)
        vocab = side.model.get("vocab_size")
        if is_int(vocab) and top_k > vocab:
            raise InputError(f"--top-k {top_k} is larger than the vocabulary of {side.run} ({vocab})")
    lenses = lens_specs(lenses)
    custom = [spec for spec in lenses if parse_lens_spec(spec)[0].name != DEFAULT_LENS]
    if custom and exports_only:
        raise InputError(one_line(f"--lens {custom[0].strip()} needs the traces: --exports-only reads the export.json "
                                  "files, whose ranks follow the lens each was exported with", 600))
    if not exports_only and (custom or (a.trace is not None and b.trace is not None)):
        open_side_lenses([a, b], lenses)  # a missing trace: refused for a tuned lens, export data for the logit lens
    why = None
    if exports_only:
        why = "--exports-only"
    elif a.trace is None or b.trace is None:
        why = f"{(a if a.trace is None else b).run} has no trace"
    else:
        try:
            load_lenses([a, b], allow_download)
        except ModelError as e:
            if custom:
                raise _one_line_error(e, f"--lens {custom[0].strip()} needs the weights of both runs' models: ") \
                    from None
            why = f"lens weights unavailable: {e}"
    if why is not None:
        if not exports_only:
            load_tokenizers([a, b], allow_download)
        for side in (a, b):
            if side.export is None:
                side.export = _load_export(side.run)
            _check_export_shape(side)
    plan = plan_compare(a, b, align, positions)
    from .export import check_document_size  # both final top-k per pair, ranked at every stage of both sides

    check_document_size(len(plan.pairs), a.n_stages + b.n_stages, 2 * top_k, 0, 1, "comparison",
                        "lower --top-k, or compare fewer --positions at a time")
    if why is None:
        return compare_from_traces(a, b, plan, top_k, device, max_memory, log)
    if warn and not exports_only:
        warn(f"{why}; compare.json holds export-only data: ranks only for the tokens each export tracked, no KL")
    return compare_from_exports(a, b, plan, top_k, why)
