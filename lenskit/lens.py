"""The logit lens: stage states -> the model's own final norm -> unembedding (+ output bias, softcap, logit scale).

The lens reuses the model's own norm and projection modules so that, on the last stage, it reproduces the model's
logits with the model's own arithmetic. From a saved trace only those few weights are loaded (:mod:`lenskit.weights`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch

from .adapters import Adapter, get_module
from .tokens import check_flag


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

    @property
    def hidden_size(self) -> int:
        """D of the stream the lens reads (the pre-unembed projection's input where the family has one)."""
        w = getattr(self.pre, "weight", None)
        return w.shape[1] if w is not None else self.weight.shape[1]

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
        self._check_states(h)
        check_flag(norm, "norm")
        x = self.normed(h.to(self.device, self.weight.dtype), norm)  # [N, D]
        return self.finish(torch.nn.functional.linear(x, self.weight, self.bias))  # [N, V]

    def _check_states(self, h) -> None:
        """InputError unless ``h`` is a floating-point tensor ``[..., D]`` of this lens's hidden size (an integer or
        complex tensor would be cast silently; another model's states, or ``[D, N]``, fail deep inside torch)."""
        from .errors import InputError

        if not isinstance(h, torch.Tensor):
            raise InputError(f"the lens takes a torch tensor [N, D] of stream states, not {type(h).__name__}")
        if not h.is_floating_point():
            raise InputError(f"the lens takes floating-point states, not {str(h.dtype).removeprefix('torch.')}")
        if h.dim() == 0 or h.shape[-1] != self.hidden_size:
            raise InputError(f"the lens takes states [N, D] with D = {self.hidden_size} (this model's hidden size), "
                             f"not {list(h.shape)}: states of another model, or transposed?")

    def to(self, device=None, dtype=None) -> "Lens":
        """A copy on ``device`` with floating-point parameters in ``dtype`` (the model's own modules stay untouched)."""
        mods = [copy.deepcopy(m).to(device=device, dtype=dtype) if m is not None else None for m in (self.norm, self.pre)]
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
    from .errors import InputError

    if hasattr(model, "model") and hasattr(model, "adapter") and not isinstance(model, torch.nn.Module):
        raise InputError("lens_from_model takes the model and its adapter: lens_from_model(loaded.model, loaded.adapter)")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise InputError(f"model must be a Hugging Face model (loaded.model), not {type(model).__name__}")
    if not isinstance(adapter, Adapter):
        raise InputError(f"adapter must be a lenskit Adapter (loaded.adapter), not {type(adapter).__name__}")
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
