"""The logit lens: stage states -> the model's own final norm -> unembedding (+ output bias, softcap, logit scale).

The lens reuses the model's own norm and projection modules so that, on the last stage, it reproduces the model's
logits with the model's own arithmetic. From a saved trace only those few weights are loaded (``safe_open``), on
an otherwise empty (meta-device) model skeleton -- never the whole model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters import Adapter, get_module
from .errors import ModelError


@dataclass
class Lens:
    """Final norm + unembedding of one model. ``weight``: ``[V, D]``; ``bias``: ``[V]`` or None."""

    norm: torch.nn.Module | None
    pre: torch.nn.Module | None
    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None = None
    scale: float | None = None
    divide: float | None = None

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def normed(self, h: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """``[N, D]`` stream -> ``[N, D]`` input of the unembedding (final norm, pre-unembed projection)."""
        if norm and self.norm is not None:
            h = self.norm(h)
        if self.pre is not None:
            h = self.pre(h)
        return h

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply the family's logit transforms, in the model's order, to raw unembedding output."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.inference_mode()
    def __call__(self, h: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Scores for ``h`` ``[N, D]`` -> ``[N, V]`` (in the lens's dtype)."""
        x = self.normed(h.to(self.device, self.weight.dtype), norm)  # [N, D]
        return self.finish(torch.nn.functional.linear(x, self.weight, self.bias))  # [N, V]

    def to(self, device=None, dtype=None) -> "Lens":
        """A copy on ``device`` with floating-point parameters in ``dtype``."""
        mods = [m.to(device=device, dtype=dtype) if m is not None else None for m in (self.norm, self.pre)]
        w = self.weight.to(device=device, dtype=dtype)
        b = self.bias.to(device=device, dtype=dtype) if self.bias is not None else None
        return Lens(mods[0], mods[1], w, b, self.softcap, self.scale, self.divide)

    def fingerprint(self) -> str:
        """A short hash of the lens weights (norm, projection, unembedding, bias) as float32 values."""
        h = hashlib.sha256()
        w = self.weight
        rows = torch.linspace(0, w.shape[0] - 1, min(w.shape[0], 2048)).long().to(w.device)
        parts = [("unembed", w[rows])]
        if self.bias is not None:
            parts.append(("bias", self.bias))
        for tag, mod in (("norm", self.norm), ("pre", self.pre)):
            for name, p in (mod.state_dict().items() if mod is not None else ()):
                parts.append((f"{tag}.{name}", p))
        for name, t in parts:
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        h.update(str(tuple(self.weight.shape)).encode())
        return h.hexdigest()[:16]


def _config_value(config, attr: str | None):
    if not attr:
        return None
    value = getattr(config, attr, None)
    return float(value) if value not in (None, 0) else None


def lens_from_model(model, adapter: Adapter) -> Lens:
    """The lens of a loaded model, sharing its modules and weights."""
    adapter = adapter.for_config(model.config)  # config-dependent variants (OPT post-LN: no final norm)
    head = get_module(model, adapter.unembed)
    norm = get_module(model, adapter.final_norm) if adapter.final_norm else None
    pre = get_module(model, adapter.pre_unembed, optional=True) if adapter.pre_unembed else None
    cfg = model.config
    return Lens(
        norm=norm,
        pre=pre,
        weight=head.weight,
        bias=getattr(head, "bias", None),
        softcap=_config_value(cfg, adapter.softcap),
        scale=_config_value(cfg, adapter.logit_scale),
        divide=_config_value(cfg, adapter.logit_divide),
    )


def _checkpoint_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no safetensors weights in {folder}; the lens needs them (re-save the model with safetensors)")
    return files


def _resolve_folder(source: dict) -> Path:
    """A local folder holding the model's config and weights: the recorded path, or the hub cache for an id."""
    path = source.get("path")
    if path and Path(path).is_dir():
        return Path(path)
    model_id = source.get("id")
    if source.get("gguf"):
        from .models import ensure_gguf_cached

        gguf = Path(source["gguf"])
        if gguf.is_file():
            return ensure_gguf_cached(gguf)
        raise ModelError(f"the trace's model weights are gone: {gguf} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(model_id, revision=source.get("revision"), allow_patterns=["*.json", "*.safetensors"])
        )
    except Exception as e:
        raise ModelError(f"cannot find the weights of '{model_id}': {str(e).splitlines()[0] if str(e) else e}") from None


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


def load_lens(source: dict, adapter: Adapter, dtype: torch.dtype = torch.float32, device="cpu") -> Lens:
    """Build only the lens of the model described by a trace's ``model.source``: final norm, projection, unembedding.

    The model skeleton is created on the meta device; only the lens modules are materialized from the checkpoint.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = _resolve_folder(source)
    try:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ModelError(f"cannot read the model config in {folder}: {str(e).splitlines()[0] if str(e) else e}") from None
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
        with safe_open(str(file), framework="pt") as f:
            for file_key in f.keys():
                key = file_key if file_key in targets else rename(file_key)
                if key in targets and key not in found:
                    found[key] = f.get_tensor(file_key)
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
