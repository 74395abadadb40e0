"""The trace file ``RUN_DIR/trace.safetensors``: a public contract, written and read (and validated) only here.

* tensor ``prompt.{i}.stages``: ``[S, T, D]`` residual stream, S = 2L+1, in the model's dtype, one per prompt;
* metadata key ``lenskit``: a JSON document (see :func:`build_metadata`) with ``format``, ``lenskit_version``,
  ``model``, ``stages`` and ``prompts``.

Every reader goes through :func:`read_trace`, which checks the whole contract from the header alone (metadata keys and
types, token ids within the vocabulary, tensor names, dtypes and shapes, file size); stage values are checked for
finite numbers as they are read (:meth:`Trace.reader`), so a broken file is one line naming the file and the
problem, never a traceback. :func:`validate_trace` lists every violation (``lenskit validate``).

Writes go to a temporary name in the same folder and are renamed into place, so a failed run leaves no partial file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import TraceFileError
from .files import atomic_write
from .tokens import error_line, is_int, is_utf8, one_line

TRACE_FORMAT = 1
TRACE_FILE = "trace.safetensors"
META_KEY = "lenskit"
STAGE_KINDS = ("embed", "attn", "ffn")
STAGE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
FINITE_ROWS = 64  # positions checked for non-finite values per step of a full check
MAX_VOCAB = 1 << 24  # 64x the largest vocabulary in use: anything larger is a damaged or hostile file
MAX_LAYERS = 10_000
MAX_DEPTH = 32  # nesting of the metadata document (lenskit's own is 4 deep); orjson refuses past 255
MAX_NAME = 200  # model.architecture, model.adapter, model.fingerprint, lenskit_version ...
MAX_PATH = 4096  # ... and model.id, model.revision and model.source's paths (PATH_MAX)
MAX_JSON_ITEMS = 8_000_000  # values in the header or the metadata: a 140,000-token trace of the default model (10 GB
# of stages) has ~300,000; this many Python objects take ~0.5 GB
SHOW = 80  # at most this many characters of a value quoted from a file in a message


def write_trace(path: Path, stages: list[torch.Tensor], meta: dict) -> None:
    """Write one ``[S, T, D]`` tensor per prompt and the metadata document, atomically.

    What is written is checked against the contract (as :func:`read_trace` will) before it is renamed into place: a
    file no reader would take is an InputError, never written."""
    from safetensors.torch import save_file

    from .errors import InputError
    from .tokens import as_path

    path = as_path(path, "path")
    if not isinstance(stages, (list, tuple)) or not all(isinstance(s, torch.Tensor) for s in stages):
        raise InputError("stages must be a list of [S, T, D] torch tensors, one per prompt (as trace_prompts gives "
                         f"them), not {type(stages).__name__}")
    try:
        text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:  # numpy values, NaN, a circular reference
        raise InputError(f"meta cannot be written as JSON ({error_line(e, 120)}): give trace_prompts' metadata") from None
    tensors = {f"prompt.{i}.stages": s.detach().cpu().contiguous() for i, s in enumerate(stages)}

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={META_KEY: text})
        problems = _problems(Path(tmp))[0]
        if problems:
            raise InputError(f"write_trace: the stages and meta do not make a valid trace, not written: {problems[0]}")

    atomic_write(path, write)


def trace_path(run: Path) -> Path:
    """Accept a run folder or the trace file itself."""
    run = Path(run)
    return run / TRACE_FILE if run.is_dir() else run


# --- the contract -------------------------------------------------------------------------------------------------


def _header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header and the byte offset where tensor data starts; TraceFileError if unreadable."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise TraceFileError(f"{path} is not a readable safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER and head.lstrip().startswith((b"{", b"[")):  # `lenskit validate run/export.json`
                raise TraceFileError(f"{path} is a JSON file, not a safetensors trace: give the run folder "
                                     f"or its {TRACE_FILE}")
            if n > MAX_HEADER or 8 + n > size:
                raise TraceFileError(f"{path} is not a readable safetensors file (header length {n} does not fit the file)")
            raw = fh.read(n)
    except OSError as e:
        raise TraceFileError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = _loads(raw.decode("utf-8"))
    except _Strict as e:  # valid for Python's json module, not for safetensors' own reader (nor unambiguous)
        raise TraceFileError(f"{path} is not a readable safetensors file (its header {e})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise TraceFileError(f"{path} is not a readable safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise TraceFileError(f"{path} is not a readable safetensors file (its header is not a JSON object)")
    why = _structure(header, 4)  # a safetensors header: {name: {dtype, shape, data_offsets}, __metadata__: {str: str}}
    if why:
        raise TraceFileError(f"{path} is not a readable safetensors file (its header {why})")
    meta = header.get("__metadata__", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise TraceFileError(f"{path} is not a readable safetensors file (its __metadata__ must map names to strings)")
    return header, 8 + n


class _Strict(ValueError):
    """JSON that Python's json module reads but that is not plain JSON: a key twice in one object, NaN, Infinity."""


def _pairs(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Strict(f"has the key {_show(dup)} twice in one object")
    return out


def _constant(name: str):
    raise _Strict(f"holds {name}, which JSON does not allow")


def _loads(text: str):
    """``json.loads`` refusing duplicate keys and NaN/Infinity (:class:`_Strict`): safetensors' reader refuses
    both, and which of two values a reader keeps is not for a file to leave open. Refuses before parsing a text that
    could hold more than MAX_JSON_ITEMS values (its commas and brackets bound them): 100 MB of ``[{},{},...`` would
    take gigabytes as Python objects."""
    if text.count(",") + text.count("{") + text.count("[") > MAX_JSON_ITEMS:
        raise _Strict(f"holds more than {MAX_JSON_ITEMS:,} values (commas and brackets), more than any trace's")
    return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)


def _structure(doc, max_depth: int) -> str | None:
    """Why ``doc`` (parsed JSON) is no document lenskit reads: nested deeper than ``max_depth``, or text holding
    lone surrogates (a JSON ``"\\ud800"`` escape, which no UTF-8 writer takes); None when fine. Iterative: no
    recursion limit to hit."""
    stack = [(doc, 0)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, str):
            if not _is_text(x):
                return "holds text that is not valid Unicode (a lone surrogate escape)"
        elif isinstance(x, (dict, list)):
            if depth >= max_depth:
                return f"is nested more than {max_depth} levels deep"
            if isinstance(x, dict):
                stack.extend((k, depth) for k in x)
                stack.extend((v, depth + 1) for v in x.values())
            else:
                stack.extend((v, depth + 1) for v in x)
    return None


def _show(value, limit: int = SHOW) -> str:
    """A value read from a file, quoted for a message: its repr, cut short, on one line (a 10 MB string, a list of a
    million numbers or a deeply nested one yield a few dozen characters)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlong, r.maxlevel = limit, limit, limit, 3
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    try:
        text = r.repr(value)
    except (RecursionError, ValueError):  # ValueError: an int past Python's str() digit limit
        text = f"<{type(value).__name__}>"
    return one_line(text, limit)


def _is_text(x) -> bool:
    """A str that is valid Unicode (no lone surrogates, which no UTF-8 writer accepts)."""
    return isinstance(x, str) and is_utf8(x)


def _is_name(x, limit: int = MAX_NAME) -> bool:
    """A non-empty one-line string of valid Unicode, at most ``limit`` characters: a name or path a message may show."""
    return (isinstance(x, str) and 0 < len(x) <= limit and _is_text(x)
            and not any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in x))


def _check_meta(meta) -> list[str]:
    """Problems of the ``lenskit`` metadata document (empty when it keeps the contract): its fields, then (all of
    them fine) anything else in it that no plain JSON document holds."""
    out = _check_fields(meta)
    why = None if out else _structure(meta, MAX_DEPTH)  # what export copies into export.json (model's other keys)
    return [f"its lenskit metadata {why}"] if why else out


def _check_fields(meta) -> list[str]:
    if not isinstance(meta, dict):
        return ["its lenskit metadata is not a JSON object"]
    if not is_int(meta.get("format")) or meta["format"] != TRACE_FORMAT:  # JSON's true and 1.0 are not format 1
        return [(f"it is trace format {_show(meta.get('format'))}; this lenskit reads format {TRACE_FORMAT}: "
                 "re-run `lenskit trace`")]
    out = []
    if not _is_name(meta.get("lenskit_version")):
        out.append(f"lenskit_version must be a version string (found {_show(meta.get('lenskit_version'))})")
    model = meta.get("model")
    if not isinstance(model, dict):
        return out + ["metadata has no 'model' section"]
    name = f"a non-empty string on one line (at most {MAX_NAME} characters)"
    path = f"a non-empty string on one line (at most {MAX_PATH} characters)"
    for key, ok, what in (
        ("id", lambda v: _is_name(v, MAX_PATH), f"{path}: the model's hub id or folder"),
        ("architecture", _is_name, name),
        ("adapter", _is_name, name),
        ("fingerprint", _is_name, name),
        ("vocab_size", lambda v: is_int(v) and 0 < v <= MAX_VOCAB, f"a positive integer (at most {MAX_VOCAB})"),
        ("n_layers", lambda v: is_int(v) and 0 <= v <= MAX_LAYERS, f"a non-negative integer (at most {MAX_LAYERS})"),
        ("dtype", lambda v: isinstance(v, str) and v.upper().replace("FLOAT", "F").replace("BFLOAT", "BF") in
         {"F32", "F16", "BF16", "F64"}, "float32, float16, bfloat16 or float64"),
    ):
        if not ok(model.get(key)):
            out.append(f"model.{key} must be {what} (found {_show(model.get(key))})")
    if model.get("revision") is not None and not _is_name(model["revision"], MAX_PATH):
        out.append(f"model.revision must be null or {path} (found {_show(model['revision'])})")
    source = model.get("source")
    if "source" in model and not isinstance(source, dict):
        out.append("model.source must be an object")
    elif isinstance(source, dict):  # where export looks for the weights (and names in its messages)
        for key in ("id", "revision", "commit", "path", "gguf"):
            if source.get(key) is not None and not _is_name(source[key], MAX_PATH):
                out.append(f"model.source.{key} must be null or {path} (found {_show(source[key])})")
    stages = meta.get("stages")
    if not isinstance(stages, list) or not stages:
        out.append("metadata has no 'stages' list")
    else:
        for j, s in enumerate(stages):
            if not (isinstance(s, dict) and _is_text(s.get("name")) and s.get("kind") in STAGE_KINDS
                    and is_int(s.get("layer")) and -1 <= s["layer"] < len(stages)):
                out.append(f"stage {j} must be {{name: string, kind: {'|'.join(STAGE_KINDS)}, layer: integer}}")
                break
        else:  # stage j of every trace: embed, then L{i}.attn, L{i}.ffn per layer i (capture.stage_names)
            from .capture import stage_names

            for j, (s, w) in enumerate(zip(stages, stage_names(len(stages) // 2))):
                if (s["name"], s["kind"], s["layer"]) != (w["name"], w["kind"], w["layer"]):
                    out.append(f"stage {j} is {_show(s['name'])} (kind {s['kind']}, layer {s['layer']}); stage {j} of "
                               f"a trace is {w['name']!r} (kind {w['kind']}, layer {w['layer']})")
                    break
        L = model.get("n_layers")
        if is_int(L) and len(stages) != 2 * L + 1:
            out.append(f"{len(stages)} stages for {_show(L)} layers (expected 2L+1 = {_show(2 * L + 1)})")
    prompts = meta.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        return out + ["metadata has no 'prompts' list"]
    V = model.get("vocab_size")
    for i, p in enumerate(prompts):
        if not isinstance(p, dict):
            out.append(f"prompt {i} is not an object")
            continue
        ids = p.get("token_ids")
        if not _is_text(p.get("text")):
            out.append(f"prompt {i} has no 'text' string (of valid Unicode)")
        if not isinstance(ids, list) or not ids or not all(is_int(t) for t in ids):
            out.append(f"prompt {i} has no 'token_ids' list of integers")
            continue
        if is_int(V) and V > 0:
            bad = next((t for t in ids if not 0 <= t < V), None)
            if bad is not None:
                out.append(f"prompt {i}: token id {_show(bad)} is outside the vocabulary (0-{V - 1})")
        toks = p.get("tokens")
        if not isinstance(toks, list) or len(toks) != len(ids) or not all(_is_text(t) for t in toks):
            out.append(f"prompt {i}: 'tokens' must be {len(ids)} strings (valid Unicode), one per token id")
        chat = p.get("chat")  # `trace --chat`: the message and the system message inside the templated text
        if "chat" in p and not (isinstance(chat, dict) and _is_text(chat.get("user"))
                                and (chat.get("system") is None or _is_text(chat.get("system")))):
            out.append(f"prompt {i}: 'chat' must be {{\"user\": a string, \"system\": a string or null}}")
    return out


def _check_tensors(meta: dict, header: dict, data_start: int, size: int) -> list[str]:
    """Problems of the tensors (names, dtypes, shapes, offsets) against the metadata."""
    out = []
    prompts, S = meta["prompts"], len(meta["stages"])
    want = {f"prompt.{i}.stages" for i in range(len(prompts))}
    names = set(header) - {"__metadata__"}
    extra = sorted(names - want)
    if extra:
        out.append(f"unexpected tensor(s) {', '.join(_show(n, 40) for n in extra[:3])}: a trace holds only "
                   "prompt.{i}.stages")
    D = None
    spans = []  # (start, end, name) of each tensor's data
    for i, p in enumerate(prompts):
        key = f"prompt.{i}.stages"
        info = header.get(key)
        if not isinstance(info, dict):
            out.append(f"tensor {key} is missing")
            continue
        shape, dtype, offs = info.get("shape"), info.get("dtype"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in STAGE_DTYPES:
            out.append(f"tensor {key} has dtype {_show(dtype)}; stages are floating point ({', '.join(STAGE_DTYPES)})")
            continue
        T = len(p.get("token_ids") or [])
        if not (isinstance(shape, list) and len(shape) == 3 and all(is_int(n) for n in shape)):
            out.append(f"tensor {key} has shape {_show(shape)}; expected [S, T, D]")
            continue
        if shape[0] != S or shape[1] != T or shape[2] < 1:
            out.append(f"tensor {key} has shape {_show(shape)}; expected [{S}, {T}, D] ({S} stages, {T} tokens)")
            continue
        if D is not None and shape[2] != D:
            out.append(f"tensor {key} has hidden size {_show(shape[2])}, another prompt {_show(D)}")
        D = shape[2]
        nbytes = math.prod(shape) * torch.empty(0, dtype=STAGE_DTYPES[dtype]).element_size()
        if not (isinstance(offs, list) and len(offs) == 2 and all(is_int(o) for o in offs) and offs[1] - offs[0] == nbytes):
            out.append(f"tensor {key}: its data offsets {_show(offs)} do not match its shape")
            continue
        spans.append((offs[0], offs[1], key))
    if out:
        return out
    # safetensors' own layout rule: the tensors' data back to back from byte 0, the file ending with the last one
    at = 0
    for start, stop, key in sorted(spans):
        if start != at:
            return [(f"tensor {key}: its data starts at byte {_show(start)} of the data, not {at}: tensors in a "
                     "safetensors file lie back to back, without gaps or overlaps")]
        at = stop
    if size < data_start + at:
        return [f"the file is truncated ({size} bytes, the header needs {data_start + at})"]
    if size > data_start + at:
        return [f"the file has {size - data_start - at} bytes after its last tensor's data (a damaged or appended file)"]
    return out


def _problems(path: Path) -> tuple[list[str], dict | None, int]:
    """(violations, metadata, hidden size) of the trace at ``path``, from its header alone."""
    if not path.is_file():
        if path.name == TRACE_FILE and path.parent.is_dir():  # a folder without a trace
            return [f"no trace at {path}: run `lenskit trace ... -o {path.parent}` first"], None, 0
        if not path.exists():
            return [f"no trace at {path}: it does not exist"], None, 0
        return [f"no trace at {path}: it is not a regular file"], None, 0  # a pipe or device: never opened
    header, data_start = _header(path)
    raw = header.get("__metadata__", {}).get(META_KEY)  # _header: __metadata__ maps names to strings
    if raw is None:
        return ["it has no lenskit metadata: it was not written by `lenskit trace`"], None, 0
    try:
        meta = _loads(raw)
    except _Strict as e:
        return [f"its lenskit metadata {e}"], None, 0
    except (ValueError, RecursionError):
        return ["its lenskit metadata is not valid JSON"], None, 0
    problems = _check_meta(meta)
    if problems:
        return problems, meta, 0
    problems = _check_tensors(meta, header, data_start, path.stat().st_size)
    return problems, meta, 0 if problems else header["prompt.0.stages"]["shape"][2]


@dataclass
class Trace:
    """A trace file opened and validated: metadata now, stage tensors on demand (checked for finite values)."""

    path: Path
    meta: dict
    hidden_size: int

    @property
    def n_prompts(self) -> int:
        return len(self.meta["prompts"])

    def check_lens(self, hidden_size: int, vocab_size: int) -> None:
        """Refuse a lens whose shapes do not fit this trace (its hidden size and the metadata's vocabulary)."""
        if hidden_size != self.hidden_size:
            raise TraceFileError(f"{self.path}: hidden size {self.hidden_size} differs from the lens's {hidden_size}")
        if vocab_size != self.meta["model"]["vocab_size"]:
            raise TraceFileError(f"{self.path}: vocabulary of {self.meta['model']['vocab_size']} tokens differs from "
                                 f"the lens's {vocab_size}")

    def reader(self, i: int):
        """``(p0, p1) -> [S, p1-p0, D]`` of prompt ``i``, read without loading the rest; non-finite values refused."""
        from safetensors import safe_open

        key = f"prompt.{i}.stages"

        def read(p0: int, p1: int) -> torch.Tensor:
            try:
                with safe_open(str(self.path), framework="pt") as f:
                    h = f.get_slice(key)[:, p0:p1, :]  # [S, c, D]
            except Exception as e:  # safetensors raises several kinds for a damaged file
                raise TraceFileError(f"{self.path}: cannot read prompt {i} ({error_line(e, 200)})") from None
            check_finite(h, self.meta, i, p0, self.path)
            return h

        read.checks_finite = True  # export_document need not check again
        return read

    def stages(self, i: int) -> torch.Tensor:
        """Stage tensor of prompt ``i``: ``[S, T, D]``."""
        return self.reader(i)(0, len(self.meta["prompts"][i]["token_ids"]))

    def check_values(self) -> None:
        """Read every stage value once (in steps of FINITE_ROWS positions), refusing the first non-finite one."""
        for i, p in enumerate(self.meta["prompts"]):
            read, T = self.reader(i), len(p["token_ids"])
            for p0 in range(0, T, FINITE_ROWS):
                read(p0, min(T, p0 + FINITE_ROWS))


def check_finite(h: torch.Tensor, meta: dict, prompt: int, p0: int, path) -> None:
    """Raise TraceFileError naming the first (stage, position) of ``h`` ``[S, c, D]`` holding NaN or infinity."""
    bad = ~torch.isfinite(h).all(-1)  # [S, c]
    if bool(bad.any()):
        s, c = (int(v) for v in torch.nonzero(bad)[0])
        name = meta["stages"][s]["name"]
        raise TraceFileError(f"{path}: prompt {prompt} has a non-finite value (NaN or infinity) at stage {name}, "
                             f"position {p0 + c}; the trace overflowed (a float16 model?): re-trace in float32 or bfloat16")


def validate_trace(run: Path) -> list[str]:
    """Every violation of the trace contract in ``run`` (header, metadata, tensors, then values), one line each."""
    path = trace_path(_run_path(run))
    try:
        problems, meta, hidden = _problems(path)
        if not problems:
            Trace(path, meta, hidden).check_values()
    except TraceFileError as e:
        return [str(e)]
    return [p if p.startswith((str(path), "no trace at")) else f"{path}: {p}" for p in problems]


def _run_path(run) -> Path:
    """``run`` as the Python API may give it (a str or Path); InputError for None, bytes or a number."""
    from .tokens import as_path

    return as_path(run, "run (a run folder or its trace.safetensors)")


def read_trace(run: Path) -> Trace:
    """Open and validate a trace (see the module docstring); raise :class:`TraceFileError` on the first violation."""
    path = trace_path(_run_path(run))
    problems, meta, hidden = _problems(path)
    if problems:
        p = problems[0]
        raise TraceFileError(p if p.startswith(("no trace at", str(path))) else f"{path}: {p}")
    return Trace(path=path, meta=meta, hidden_size=hidden)


def safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a regular safetensors file (not a symlink); ``{}`` for anything else or unreadable --
    how lenskit recognises its own trace, lens and checkpoint files."""
    path = Path(path)
    if not path.is_file() or path.is_symlink():
        return {}
    try:
        meta = _header(path)[0].get("__metadata__")
    except TraceFileError:
        return {}
    return meta if isinstance(meta, dict) else {}


def is_run_folder(folder: Path) -> bool:
    """True for a folder that ``lenskit trace`` wrote: it holds a trace file with lenskit metadata."""
    return META_KEY in safetensors_metadata(Path(folder) / TRACE_FILE)


def build_metadata(model_info: dict, stages: list[dict], prompts: list[dict]) -> dict:
    """The ``lenskit`` metadata document of a trace file."""
    return {
        "format": TRACE_FORMAT,
        "lenskit_version": __version__,
        "model": model_info,
        "stages": stages,
        "prompts": prompts,
    }
