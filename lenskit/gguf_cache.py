"""GGUF files: checked, dequantized once by transformers' GGUF loader and cached as a safetensors folder under
``$LENSKIT_CACHE`` (default ``$XDG_CACHE_HOME/lenskit`` or ``~/.cache/lenskit``), so later runs load at safetensors
speed (:func:`ensure_gguf_cached`, used by :mod:`lenskit.models` and by export's :mod:`lenskit.weights`).

* A damaged file (empty, truncated, counts its size cannot hold, an unsupported version) is refused from its header
  before transformers starts (:func:`check_gguf_header`); the reader's own failures are named as damage.
* An entry is built under a temporary name and installed whole (:func:`_install_gguf_entry`); only a complete one
  (:data:`GGUF_CACHE_FILES`) is trusted, and temporary folders of killed runs are swept after a day.
* A default cache that cannot be written (a read-only home or container, ``HOME`` unset) costs a dequantization per
  run into a temporary folder, with one warning line; an unwritable ``$LENSKIT_CACHE`` is refused (:func:`_workspace`).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import glob
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import torch

from .adapters import model_architecture
from .errors import ModelError, OutputError
from .files import _io_failure, sweep_stale_in
from .models import cache_dir, quiet_transformers, recordable
from .progress import Progress
from .tokens import error_line, one_line


KEY_SAMPLES = 64  # evenly spaced pieces of the file's middle hashed into its cache key, KEY_SAMPLE bytes each
KEY_SAMPLE = 16 << 10


def _gguf_key(path: Path) -> str:
    """The cache key of GGUF file ``path``: its name, size and modification time, its first and last MiB, and
    KEY_SAMPLES pieces of 16 KiB evenly spaced in between (~2 MiB read; hashing the whole file would cost seconds per
    trace for a large model). The time and the pieces tell apart two same-named files of one size that differ in the
    middle -- another quantization or conversion of one model: the default model's tensor table ends 1.77 MB in,
    beyond the first MiB -- which would otherwise share an entry: ``trace`` would use the other's weights (``export``
    checks fingerprints). Two files differing only between the pieces, with equal times, still share one."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    head = 1 << 20
    with open(path, "rb") as f:
        h.update(f.read(head))
        middle = max(0, st.st_size - 2 * head)
        for k in range(KEY_SAMPLES if middle > KEY_SAMPLE else 0):
            f.seek(head + (middle - KEY_SAMPLE) * k // max(1, KEY_SAMPLES - 1))
            h.update(f.read(KEY_SAMPLE))
        f.seek(max(0, st.st_size - head))
        h.update(f.read(head))
    return h.hexdigest()[:16]


def _entry_name(path: Path) -> str:
    """The cache entry's folder name for GGUF file ``path``: its stem, with control characters as ``_`` and at most
    100 characters (a folder name holds 255 bytes), then its key (which tells files apart)."""
    stem = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", "_", path.stem)[:100]
    return f"{stem}-{_gguf_key(path)}"


def gguf_cache_folder(path: Path) -> Path:
    """Where the dequantized safetensors copy of GGUF file ``path`` lives."""
    return cache_dir() / "gguf" / _entry_name(path)


# What a finished cache entry holds (lenskit-source.json is lenskit's own): an entry short of one -- removed by hand,
# copied in part, left by an interrupted older lenskit -- is made again instead of failing every later run.
GGUF_CACHE_FILES = ("config.json", "model.safetensors", "lenskit-source.json")
GGUF_VERSIONS = (2, 3)  # what the gguf package reads
# The fewest bytes a metadata entry (key length, 1-byte key, value type, 1-byte value) and a tensor's description
# (name length, 1-byte name, dimension count, one dimension, type, offset) take: a header claiming more of them than
# the file could hold is damaged or hostile (the reader would walk garbage).
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
_PRIVATE_ENTRIES: dict = {}  # entry name -> this process's temporary entry, made when the default cache is unusable


def _gguf_cache_complete(folder: Path) -> bool:
    try:
        return all((folder / name).is_file() for name in GGUF_CACHE_FILES)
    except OSError:  # a name too long, permissions: not an entry to trust
        return False


def check_gguf_header(path: Path, shown: str) -> None:
    """Refuse, in microseconds, a file that cannot be a GGUF (empty, another format, truncated inside its 24-byte
    header, an unknown version, counts past what its size can hold) with a line saying so, instead of the struct and
    Unicode errors of the reader's walk (after seconds of transformers start-up)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ModelError(f"cannot read GGUF file {shown}: {e.strerror or e}") from None
    if not head:
        raise ModelError(f"GGUF file {shown} is empty")
    if head[:4] != b"GGUF":
        raise ModelError(f"{shown} is not a GGUF file (it does not start with 'GGUF')")
    if len(head) < 24:
        raise ModelError(f"GGUF file {shown} is truncated: {size} bytes, less than a GGUF header")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
    if version & 0xFFFF == 0:  # a big-endian file (the reader swaps it too)
        version, n_tensors, n_kv = struct.unpack(">IQQ", head[4:])
    if version not in GGUF_VERSIONS:
        raise ModelError(f"GGUF file {shown} is GGUF version {version}; lenskit reads versions "
                         f"{' and '.join(map(str, GGUF_VERSIONS))}")
    if n_tensors * _MIN_TENSOR_INFO_BYTES + n_kv * _MIN_KV_BYTES > size - 24:
        raise ModelError(f"GGUF file {shown} is damaged or truncated: its header claims {n_tensors} tensors and "
                         f"{n_kv} metadata entries, more than its {size} bytes can hold")


def _gguf_read_error(e: Exception, shown: str) -> ModelError:
    """The line for transformers/gguf failing on a GGUF file: their own message, named as a damaged file where it
    is the reader tripping over bytes (a cut-off tensor is a numpy reshape error, a cut-off string a struct or
    Unicode error) rather than a readable file of a kind transformers does not support."""
    damaged = isinstance(e, (struct.error, UnicodeDecodeError, EOFError, IndexError, OverflowError)) or (
        isinstance(e, ValueError) and re.search(r"reshape|buffer|mmap|offset", str(e)))
    if isinstance(e, KeyError) and e.args:  # transformers looks a metadata key up: its message is the bare key
        return ModelError(f"cannot read GGUF file {shown}: its metadata lacks {one_line(repr(e.args[0]), 100)}")
    why = "damaged or truncated" if damaged else "unusable"
    return ModelError(f"cannot read GGUF file {shown} ({why}): {error_line(e)}")


def _sweep_stale_temps(folder: Path) -> None:
    """Delete temp folders that a killed dequantization left in the cache (a live one's is fresh: kept)."""
    sweep_stale_in(folder, re.compile(r"\.(?:tmp|old)-[a-z0-9_]{8}"))


def _cache_root() -> Path:
    """:func:`lenskit.models.cache_dir`, or OSError when its name is one a trace cannot record (a line break: the
    trace names the entry it loaded, and was refused after the whole run)."""
    root = cache_dir()
    if not recordable(str(root)):
        raise OSError(errno.EINVAL, "its name holds a line break, a control character or bytes that are not UTF-8, "
                      "which a trace cannot record")
    return root


def _workspace(name: str) -> tuple[Path, Path | None]:
    """Where to dequantize the entry ``name``: a new temp folder in the cache and the entry's folder, or -- when the
    default cache cannot be written (a read-only home or container, ``HOME`` unset, a file in the way) -- a temp
    folder of the system's, deleted when this process ends, and None, with one warning line. A ``$LENSKIT_CACHE``
    that cannot be written is the user's explicit choice: ModelError, before the seconds of dequantizing."""
    where = os.environ.get("LENSKIT_CACHE") or "~/.cache/lenskit"
    try:
        where = str(cache_dir() / "gguf")
        target = _cache_root() / "gguf" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent)), target
    except OSError as e:
        why = e.strerror or str(e)
    if os.environ.get("LENSKIT_CACHE"):
        raise ModelError(f"cannot write lenskit's cache folder {one_line(where)} (set LENSKIT_CACHE to another): "
                         f"{why}")
    try:
        tmp = Path(tempfile.mkdtemp(prefix="lenskit-gguf-"))
        if not recordable(str(tmp)):  # TMPDIR with a line break
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(errno.EINVAL, f"{one_line(str(tmp))}: its name holds a line break or a control character")
    except OSError as e:  # FileNotFoundError too: no usable temporary folder at all
        raise ModelError(f"cannot write lenskit's cache folder {one_line(where)} ({why}) nor a temporary folder "
                         f"({e.strerror or e}): set LENSKIT_CACHE to a writable folder") from None
    atexit.register(shutil.rmtree, tmp, True)
    print(f"lenskit: warning: cannot write lenskit's cache folder {one_line(where)} ({why}); dequantizing into a "
          f"temporary folder for this run only (set LENSKIT_CACHE to a writable folder to keep the copy)",
          file=sys.stderr, flush=True)
    return tmp, None


def _install_gguf_entry(tmp: Path, target: Path) -> None:
    """Rename the finished entry ``tmp`` to ``target`` (one step: no reader sees half of it). An incomplete
    ``target`` is moved aside and deleted first; a complete one made meanwhile by another process (of the same
    file) stays, and ``tmp`` is deleted."""
    if target.exists() and not _gguf_cache_complete(target):
        aside = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
        with contextlib.suppress(OSError):  # another process may have moved it already
            os.rename(target, aside / "entry")
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not _gguf_cache_complete(target):
            raise


def _remove_superseded(target: Path, path: Path) -> None:
    """Delete the cache entries of GGUF file ``path`` other than ``target``: made from it before it changed (another
    time or content, or an older key), they can never be used again and hold ~4x the file's size each. Only
    complete entries whose ``lenskit-source.json`` names ``path`` itself, and whose folder name is the same stem
    followed by a key, are touched."""
    stem = target.name[: -len(_gguf_key(path)) - 1]
    for entry in target.parent.glob(f"{glob.escape(stem)}-*"):
        if entry == target or not re.fullmatch(r"[0-9a-f]{16}", entry.name[len(stem) + 1:]):
            continue
        try:
            source = json.loads((entry / "lenskit-source.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(source, dict) and source.get("gguf") == str(path) and _gguf_cache_complete(entry):
            aside = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))  # a reader never sees half of it
            with contextlib.suppress(OSError):
                os.rename(entry, aside / "entry")
            shutil.rmtree(aside, ignore_errors=True)


def _gguf_phases(path: Path) -> dict:
    """Where each step of a first dequantization starts, in % of its estimated time. Timed on SmolLM2-135M (98 MB,
    ~17 s): reading the GGUF metadata for the tokenizer (5 s), then again with the weight names (9 s; the config's
    read is remembered, :func:`_gguf_metadata_once`) costs about the same for any model; dequantizing the tensors
    (~2 s per 100 MB) and saving safetensors (~1 s) grow with it."""
    mb100 = path.stat().st_size / 1e8
    seconds = {"tokenizer": 5, "config and weight names": 9, "tensors": 2 * mb100, "saving": mb100}
    total, starts, done = sum(seconds.values()), {}, 0.0
    for step, s in seconds.items():
        starts[step], done = 100 * done / total, done + s
    return starts


@contextlib.contextmanager
def _tensor_progress(progress: Progress, start: float, stop: float):
    """Move ``progress`` from ``start`` to ``stop`` % as transformers dequantizes the GGUF tensors one by one: its loop
    iterates ``tqdm(reader.tensors)``, and that module-level ``tqdm`` is swapped for a counter meanwhile (a
    transformers without it just has no per-tensor steps)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)

    def counted(items=None, *args, **kwargs):
        if items is None:  # not an iteration: leave it to tqdm
            return original(items, *args, **kwargs)
        items = list(items)

        def each():
            progress.update_to(start)
            progress.note("tensors")
            for i, item in enumerate(items, 1):
                yield item
                progress.update_to(start + (stop - start) * i / len(items))

        return each()

    if original is not None:
        gguf_utils.tqdm = counted
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


@contextlib.contextmanager
def _gguf_metadata_once():
    """transformers parses a GGUF's metadata (a slow pure-Python walk over its tokenizer arrays: ~5 s for the default
    model) once for the tokenizer's config and again for the model's; meanwhile the metadata-only reads of one file
    are remembered, so the second is free. The tensor read is untouched. Without that function (another transformers)
    nothing changes."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "load_gguf_checkpoint", None)
    memo: dict = {}

    def once(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return original(path, return_tensors, *args, **kwargs)
        key = str(path)
        if key not in memo:
            memo[key] = original(path, return_tensors=False)
        return copy.deepcopy(memo[key])  # callers may edit what they get

    if original is not None:
        gguf_utils.load_gguf_checkpoint = once
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.load_gguf_checkpoint = original


def ensure_gguf_cached(path: Path, log=None) -> Path:
    """Dequantize ``path`` once into a safetensors folder (atomically: temp folder, then rename); return the folder.

    A failure or interrupt at any point leaves no entry (its temp folder is deleted, or swept a day later if the
    process was killed); two processes dequantizing one file at once both succeed, and one entry stays. A default
    cache that cannot be written gets a private entry in a temporary folder instead, for this process only
    (:func:`_workspace`); a read-only cache that already holds the entry is used as it is.

    ``log`` (see :func:`lenskit.progress.progress_logger`): a bar with an ETA on a terminal, else plain lines."""
    shown = one_line(str(path), 300)
    name = _entry_name(path)
    if name in _PRIVATE_ENTRIES:
        return _PRIVATE_ENTRIES[name]
    with contextlib.suppress(OSError):  # no cache folder can be named: :func:`_workspace` says why
        if _gguf_cache_complete(_cache_root() / "gguf" / name):  # a read-only cache that holds it is fine
            return _cache_root() / "gguf" / name
    check_gguf_header(path, shown)
    tmp, target = _workspace(name)  # before the seconds of dequantizing: an unwritable cache is known now
    kept = False
    try:
        if target is not None:
            _sweep_stale_temps(target.parent)
        kept = _dequantize(path, shown, tmp, target, log)
    finally:  # a full disk, an interrupt: no temp folder of ~4x the GGUF's size stays behind
        if not kept:
            shutil.rmtree(tmp, ignore_errors=True)
    if target is None:
        _PRIVATE_ENTRIES[name] = tmp
        return tmp
    return target


def _dequantize(path: Path, shown: str, tmp: Path, target: Path | None, log) -> bool:
    """Dequantize GGUF file ``path`` into folder ``tmp``, then install it as the cache entry ``target`` (None: ``tmp``
    is this process's private entry). Whether ``tmp`` is to be kept (a private entry)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log:
        into = f"once into {one_line(str(target))}" if target is not None else "into a temporary folder"
        log(f"dequantizing {one_line(path.name)} {into} ...")
    at = _gguf_phases(path)
    with Progress(100, "dequantize", "%", log) as progress:

        def begin(step):
            progress.update_to(at[step])
            progress.note(step)

        try:
            with quiet_transformers(), _gguf_metadata_once(), _tensor_progress(progress, at["tensors"], at["saving"]):
                begin("tokenizer")
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                begin("config and weight names")
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32)
        except Exception as e:  # gguf/transformers raise many kinds for a bad file
            raise _gguf_read_error(e, shown) from None
        begin("saving")
        model.config.architectures = [model_architecture(model)]
        try:
            # transformers refuses save_pretrained on GGUF-loaded models; the weights are plain float32 tensors now
            from safetensors.torch import save_model

            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "lenskit-source.json").write_text(json.dumps({"gguf": str(path)}))
            if target is not None:
                _install_gguf_entry(tmp, target)
                _remove_superseded(target, path)
        except Exception as e:
            why = e.strerror or str(e) if isinstance(e, OSError) else _io_failure(e)  # safetensors' full disk
            if why is None:
                raise
            where = "lenskit's cache " + one_line(str(target.parent)) if target is not None else one_line(str(tmp))
            raise OutputError(f"cannot write the dequantized copy into {where}: {why}") from None
        progress.update_to(100)
    return target is None
