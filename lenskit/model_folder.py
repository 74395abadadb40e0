"""A model folder checked before transformers opens it: every file it may open is a regular file (a FIFO config
would hang it), ``config.json`` is a JSON object of a sane size, and the sizes it gives could be real and match the
weight files (a ``hidden_size`` of 10**12 would allocate terabytes) -- :func:`model_config`, which ``trace`` calls
before loading (it also gives the vocabulary for checking ``--top-k`` early) and :func:`lenskit.models.load_model`
calls for every folder or hub snapshot.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import ModelError
from .models import _hub_snapshot, check_recordable, quiet_transformers
from .tokens import error_line, is_int, one_line

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
        raise ModelError(f"model folder {shown}: config.json is not valid JSON: {error_line(e)}") from None
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
        raise ModelError(f"cannot load model '{model}': {error_line(e)}") from None
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
