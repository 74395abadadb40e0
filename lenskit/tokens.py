"""Tokenization as the model expects it, and token ids -> display strings that are always valid text."""

from __future__ import annotations

import math
import operator
from functools import lru_cache

from .errors import InputError

NO_TOKEN = "<id {id}: no token>"  # display text of a head's id the tokenizer has no token for


@lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    """Inverse of GPT-2's bytes_to_unicode table (byte-level BPE tokens -> raw bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _literal(piece: str) -> str | None:
    """A byte-level token that is not valid UTF-8 on its own, as text with ``\\xNN`` escapes (None if not byte-level)."""
    table = _byte_decoder()
    if piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece).decode("utf-8", errors="backslashreplace")
    return None


def token_texts(tokenizer, ids) -> list[str]:
    """Display strings for token ids: decoded text (with SentencePiece's word-start space kept); partial UTF-8 byte
    tokens become ``\\xNN`` escapes; an id the tokenizer has no token for (a head padded beyond the tokenizer's
    vocabulary, as Qwen's is) becomes ``<id N: no token>``, never an empty string."""
    ids = [int(i) for i in ids]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    for i, text, piece in zip(ids, texts, pieces):
        if piece is None and not text:
            text = NO_TOKEN.format(id=i)
        elif "\ufffd" in text and piece and "\ufffd" not in piece:
            text = _literal(piece) or piece
        elif piece and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text  # SentencePiece drops the word-start space when a token is decoded alone
        out.append(text)
    return out


def is_int(x) -> bool:
    """A JSON integer as Python reads it: an int, not a bool (``true`` is no count, no id, no format number)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite JSON number as Python reads it: an int or float, not a bool, not NaN or infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def as_index(x) -> int | None:
    """A token id or position as given to the API -- an int or a numpy integer, not a bool -- as a Python int;
    None for anything else (a bool, or a 0-d bool tensor, which torch would give as 0 or 1)."""
    if isinstance(x, bool) or str(getattr(x, "dtype", "")) in ("torch.bool", "bool"):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def as_path(x, name: str):
    """An API argument naming a file or folder -- a str or an ``os.PathLike`` such as ``pathlib.Path`` -- as a Path;
    InputError naming ``name`` for anything else (None, bytes, a number), not a TypeError from deep inside."""
    import os
    from pathlib import Path

    if isinstance(x, str) or (isinstance(x, os.PathLike) and isinstance(os.fspath(x), str)):
        return Path(x)
    raise InputError(f"{name} must be a path (a str or pathlib.Path), not {type(x).__name__}")


def check_flag(x, name: str) -> None:
    """InputError unless ``x`` is True or False: ``chat="no"`` or ``allow_download=0`` would be read by truth value."""
    if not isinstance(x, bool):
        raise InputError(f"{name} must be True or False, not {one_line(repr(x), 60)}")


def check_callback(x, name: str) -> None:
    """InputError unless ``x`` is None or callable (a progress ``log`` that is a number failed only when first used)."""
    if x is not None and not callable(x):
        raise InputError(f"{name} must be a function taking a message, or None, not {type(x).__name__}")


def check_optional_str(x, name: str) -> None:
    """InputError unless ``x`` is None or a str (``revision=3`` or ``adapter=b"llama"`` would be quoted wrongly)."""
    if x is not None and not isinstance(x, str):
        raise InputError(f"{name} must be a string or None, not {type(x).__name__}")


def is_utf8(text: str) -> bool:
    """False for text holding lone surrogates -- bytes that were not UTF-8 reach argv and stdin as those, and so does a
    JSON ``"\\ud800"`` escape: no UTF-8 encoder (and no tokenizer) takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def context_length(config) -> int | None:
    """The model's maximum sequence length, if its config says."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def chat_prompt(tokenizer, text: str, system: str | None = None) -> str:
    """``text`` as the user's message in the tokenizer's chat template, the assistant's turn opened
    (``add_generation_prompt``): the prompt whose last position predicts the first token of the model's answer.
    ``system``: a system message first (None: whatever the template does without one). The result already holds the
    template's special tokens: tokenize it with ``special=False``.

    InputError (one line) when the template fails, gives no text, or leaves out the message or the system message
    (a template that drops a role would otherwise trace a prompt without it)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise InputError("--chat: this model's tokenizer has no chat template (a base model?); trace the plain text")
    if isinstance(template, dict) and "default" not in template:  # named templates only (tool_use, rag, ...)
        names = ", ".join(sorted(str(k) for k in template))[:200]
        raise InputError(f"--chat: this model's tokenizer has several chat templates ({names}) and none named "
                         "'default'; lenskit uses only the default one: trace the templated text without --chat")
    from .chat_template import TemplateBudgetError, render_chat_template

    messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": text}]
    try:
        out = render_chat_template(tokenizer, messages)
    except TemplateBudgetError as e:
        raise InputError(f"--chat: the model's chat template {e}; lenskit stopped it (a hostile or broken template): "
                         "trace the templated text yourself, without --chat") from None
    except Exception as e:  # noqa: BLE001 -- the template is the model's own Jinja code: any error is the template's
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise InputError(f"--chat: the model's chat template refused the prompt{' (with --system)' if system else ''}: "
                         f"{one_line(first)}") from None
    if not isinstance(out, str) or not out.strip():
        raise InputError("--chat: the model's chat template gave no text")
    if not is_utf8(out):
        raise InputError("--chat: the model's chat template gave text that is not valid UTF-8")
    for what, part in (("the prompt", text), ("the --system message", system)):
        if part is not None and part.strip() not in out:  # jinja's trim is str.strip: a trimmed message still counts
            raise InputError(f"--chat: the model's chat template left out {what} (its text is not in the template's "
                             "output); trace the templated text yourself, without --chat")
    return out


_LINE_BREAKING = dict.fromkeys([*range(32), *range(127, 160), 0x2028, 0x2029], " ")


def error_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message as one short line (its type's name when it has none): how a library's
    error is quoted inside lenskit's own."""
    text = str(e).strip().splitlines()
    return one_line(text[0], limit) if text else type(e).__name__


def one_line(text: str, limit: int = 300) -> str:
    """``text`` as one short line: control characters (NUL, escapes, newlines, and the line and paragraph separators
    that ``str.splitlines`` breaks at) as spaces, at most ``limit`` chars. Only the start of a long text is looked
    at: a 10 MB string costs no more than a short one."""
    text = text.lstrip()
    cut = len(text) > 4 * limit + 64
    line = (text[: 4 * limit + 64] if cut else text).translate(_LINE_BREAKING).strip()
    return line if len(line) <= limit and not cut else line[: limit - 1] + "…"


def tokenize(tokenizer, text: str, max_len: int | None, special: bool = True) -> list[int]:
    """Token ids for ``text`` with the special tokens the tokenizer adds by default (BOS where the model uses one);
    ``special=False`` for a text that already holds them (:func:`chat_prompt`'s)."""
    if not text.strip():
        raise InputError("the prompt is empty: give some text, or --file with text in it")
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    if max_len is not None and len(ids) > max_len:
        raise InputError(f"the prompt is {len(ids)} tokens long; the model's context is {max_len} tokens")
    return list(ids)
