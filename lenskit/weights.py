"""Loading only the lens weights of a traced model -- final norm, pre-unembed projection, unembedding -- and its
tokenizer, from wherever the trace says the model is *on this machine* (a folder, a GGUF file's cache, the hub
cache). The model skeleton is created on the meta device; only the lens modules are materialized (``safe_open``),
never the whole model. The hub is asked only when the user allows downloads (:func:`downloads_allowed`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .adapters import Adapter, get_module
from .errors import ModelError
from .lens import Lens, lens_from_model
from .tokens import error_line


def _checkpoint_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no safetensors weights in {folder}; the lens needs them (re-save the model with safetensors)")
    odd = next((f for f in files + [folder / "config.json"] if f.exists() and not f.is_file()), None)
    if odd is not None:  # a FIFO or a device would block the read (or never end): refuse it
        raise ModelError(f"{odd} is not a regular file; the model folder {folder} is damaged")
    return files


def downloads_allowed(allow_download: bool = False) -> bool:
    """May lenskit ask the hub for files missing locally? Only when the user says so: ``--allow-download``, or
    ``HF_HUB_OFFLINE=0`` set explicitly."""
    return allow_download or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off")


def model_folder(model: dict, allow_download: bool = False) -> Path:
    """A local folder holding a trace's model config and weights (``model`` is the trace's ``model`` section).

    The recorded source is used only where it exists on this machine: its folder, its GGUF file (dequantized once
    into lenskit's cache), or the hub cache's snapshot of its id and commit. The hub itself is asked only when
    :func:`downloads_allowed`. Whatever is found, the caller checks the weights' fingerprint against the trace's.
    """
    source = model.get("source") if isinstance(model.get("source"), dict) else {}
    path = source.get("path")
    if isinstance(path, str) and path and Path(path).is_dir():
        return Path(path)
    gguf = source.get("gguf")
    if isinstance(gguf, str) and gguf:
        if Path(gguf).is_file():
            from .gguf_cache import ensure_gguf_cached

            return ensure_gguf_cached(Path(gguf))
        raise ModelError(f"the trace's model weights are gone: {gguf} does not exist")
    model_id = source.get("id") or model.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise ModelError("the trace names no model folder, GGUF file or hub id that exists here")
    revision = source.get("commit") or source.get("revision") or model.get("revision")
    online = downloads_allowed(allow_download)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, allow_patterns=["*.json", "*.safetensors"],
                                      local_files_only=not online))
    except Exception as e:
        hint = "" if online else " (not in the local hub cache; --allow-download fetches it)"
        raise ModelError(f"cannot find the weights of '{model_id}'{hint}: {error_line(e)}") from None


def _checkpoint_renamer(skeleton):
    """``file key -> model key`` through transformers' own checkpoint renames (identity where there are none).

    Transformers 5 saves and reads some families under legacy names (GPT-NeoX / Pythia: ``embed_out.weight`` for
    ``lm_head.weight``); only plain renames matter here, never the tensor-merging converters.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        renamings = [
            t for t in get_model_conversion_mapping(skeleton)
            if isinstance(t, WeightRenaming) and not isinstance(t, WeightConverter)
        ]
    except Exception:  # older transformers: keys are module paths
        return lambda key: key
    if not renamings:
        return lambda key: key

    def rename(key: str) -> str:
        try:
            return rename_source_key(key, renamings, [])[0]
        except Exception:
            return key

    return rename


def _no_init_weights():
    """transformers' context that skips weight initialisation (its home moved in 5.x); a no-op where absent."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            from contextlib import nullcontext as no_init_weights
    return no_init_weights()


def load_lens(folder: Path, adapter: Adapter, dtype: torch.dtype = torch.float32, device="cpu") -> Lens:
    """Build only the lens of the model in ``folder`` (see :func:`model_folder`): final norm, projection, unembedding."""
    from accelerate import init_empty_weights
    from safetensors import SafetensorError, safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights(), _no_init_weights():  # meta tensors, and no random init of them (0.2 s)
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ModelError(f"cannot read the model config in {folder}: {error_line(e)}") from None
    adapter = adapter.for_config(config)
    wanted = [p for p in (adapter.final_norm, adapter.pre_unembed, adapter.unembed) if p]
    wanted = [p for p in wanted if get_module(skeleton, p, optional=True) is not None]
    want_keys = {}
    for path in wanted:
        for name, _ in get_module(skeleton, path).named_parameters():
            want_keys[f"{path}.{name}"] = None
    tied_key = f"{adapter.embed}.weight" if adapter.embed else None
    found: dict = {}
    targets = set(want_keys) | ({tied_key} if tied_key else set())
    rename = _checkpoint_renamer(skeleton)
    for file in _checkpoint_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for file_key in f.keys():
                    key = file_key if file_key in targets else rename(file_key)
                    if key in targets and key not in found:
                        found[key] = f.get_tensor(file_key)
        except (OSError, SafetensorError) as e:
            raise ModelError(f"cannot read the model weights {file} (damaged or incomplete?): "
                             f"{error_line(e)}") from None
    unembed_key = f"{adapter.unembed}.weight"
    if unembed_key not in found and tied_key in found:
        found[unembed_key] = found[tied_key]
    missing = [k for k in want_keys if k not in found]
    if missing:
        raise ModelError(f"the lens weights {', '.join(missing)} are not in the checkpoint at {folder}")
    for path in wanted:
        mod = get_module(skeleton, path)
        mod.to_empty(device="cpu")
        with torch.no_grad():
            for name, p in mod.named_parameters():
                p.copy_(found[f"{path}.{name}"])
        mod.to(device=device, dtype=dtype)
    return lens_from_model(skeleton, adapter)


def trace_tokenizer(folder: Path, model: dict):
    """The tokenizer saved with a trace's model (never the model repository's own code)."""
    from transformers import AutoTokenizer

    from .models import quiet_transformers

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer of '{model.get('id')}': {error_line(e)}") from None


def trace_lens(folder: Path, model: dict) -> Lens:
    """Only the lens weights of a trace's model, their fingerprint checked against the trace's."""
    from .adapters import find_adapter
    from .models import DTYPES

    adapter = find_adapter(model["architecture"], model.get("adapter"))
    lens = load_lens(folder, adapter, dtype=DTYPES.get(model["dtype"], torch.float32))
    fp = lens.fingerprint()
    if fp != model["fingerprint"]:
        raise ModelError(
            f"the weights found for '{model.get('id')}' differ from the traced model's (fingerprint {fp} != "
            f"{model['fingerprint']}); re-run `lenskit trace`"
        )
    return lens


def lens_for_trace(meta: dict, allow_download: bool = False) -> tuple[Lens, object]:
    """Load only the lens weights (and the tokenizer) of a trace's model, checking the weights' fingerprint."""
    folder = model_folder(meta["model"], allow_download)
    return trace_lens(folder, meta["model"]), trace_tokenizer(folder, meta["model"])
