"""The logit lens: stage states -> the model's own final norm -> unembedding (+ output bias, softcap, logit scale).

The lens reuses the model's own norm and projection modules so that, on the last stage, it reproduces the model's
logits with the model's own arithmetic. From a saved trace only those few weights are loaded (``safe_open``), on
an otherwise empty (meta-device) model skeleton -- never the whole model.

:class:`Scorer` is the batched form used by export: fixed-shape matmul blocks (so every row's float32 scores are
independent of how rows are chunked), vocabulary columns in a fixed pseudo-random order, and an optional fast mode
(bfloat16 matmul + a provable per-row error bound + exact float32 re-computation of the few scores that matter).
"""

from __future__ import annotations

import copy
import hashlib
import os
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
        x = self.normed(h.to(self.device, self.weight.dtype), norm)  # [N, D]
        return self.finish(torch.nn.functional.linear(x, self.weight, self.bias))  # [N, V]

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
            from .models import ensure_gguf_cached

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
        raise ModelError(f"cannot find the weights of '{model_id}'{hint}: {str(e).splitlines()[0] if str(e) else e}") from None


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


def load_lens(folder: Path, adapter: Adapter, dtype: torch.dtype = torch.float32, device="cpu") -> Lens:
    """Build only the lens of the model in ``folder`` (see :func:`model_folder`): final norm, projection, unembedding.

    The model skeleton is created on the meta device; only the lens modules are materialized from the checkpoint.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

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


BLOCK_ROWS = 256  # target rows per matmul call (whole positions): large enough for full GEMM speed
MIN_COLS = 16  # narrower column gathers take another BLAS path (different rounding); pad up to this
DENSE_FRACTION = 0.05  # above this share of the vocabulary, an exact re-check computes the whole float32 block
PERM_SEED = 0x1E45  # fixed vocabulary order used to pick histogram samples
BF16_U = 2.0**-8  # unit roundoff of bfloat16
F32_U = 2.0**-24


class Scorer:
    """The lens prepared for batched scoring on ``device``, columns in a fixed permuted order.

    ``precision="float32"``: scores are float32 GEMM results. ``precision="fast"``: scores come from a bfloat16
    GEMM and ``bound[r]`` bounds ``|fast - float32|`` for every score of row r; :meth:`exact` recomputes chosen
    entries bit-identically to the float32 mode (same GEMM block shape), and :meth:`top_k` uses it, so top-k and
    ranks equal float32 mode's.
    """

    def __init__(self, lens: Lens, device: torch.device, norm: bool, precision: str):
        self.lens = lens.to(device=device, dtype=torch.float32)
        self.device = device
        self.norm = norm
        self.fast = precision == "fast"
        V = lens.vocab_size
        g = torch.Generator().manual_seed(PERM_SEED)
        self.col_ids = torch.randperm(V, generator=g).to(device)  # column -> vocab id
        self.inv = torch.empty_like(self.col_ids)
        self.inv[self.col_ids] = torch.arange(V, device=device)  # vocab id -> column
        w = self.lens.weight[self.col_ids]  # [V, D] permuted rows
        self.w_t = w.t().contiguous()  # [D, V]
        self.bias = self.lens.bias[self.col_ids] if self.lens.bias is not None else None
        if self.fast:
            self.w_t16 = self.w_t.to(torch.bfloat16)  # [D, V]
            self.w_norm_max = w.norm(dim=1).max().item()
        self.ws = None
        self.block = BLOCK_ROWS
        self.x = None  # [N', D] normed rows of the last scored chunk
        self._full: dict = {}
        self.bound = None  # [N] error bound per row (zeros in float32 mode)

    def set_block(self, n_stages: int) -> int:
        """Fix the matmul block to a whole number of positions (~BLOCK_ROWS rows); returns positions per block.

        Every matmul call has this same shape, so each row's float32 scores are independent of how positions are
        chunked (the memory budget, ``--positions``); it depends only on the model's stage count.
        """
        per = max(1, round(BLOCK_ROWS / n_stages))
        self.block = per * n_stages
        return per

    def workspace(self, rows: int, stats_rows: int):
        """Buffers for ``rows`` score rows (whole blocks) and ``stats_rows`` statistics rows, reused by every chunk."""
        from .stats import Workspace

        rows = -(-rows // self.block) * self.block
        if self.ws is None or not self.ws.fits(rows, stats_rows, self.lens.vocab_size):
            self.ws = None
            self.ws = Workspace(rows, stats_rows, self.lens.vocab_size, self.device)
        return self.ws

    def _finish(self, out: torch.Tensor, cols=None) -> torch.Tensor:
        if self.bias is not None:
            out += self.bias if cols is None else self.bias[cols]
        return self.lens.finish(out)

    @torch.inference_mode()
    def scores(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, D]`` stream -> ``[N, V]`` float32 scores in permuted column order (into ``out`` if given)."""
        x = self.lens.normed(h.to(self.device, torch.float32), self.norm)  # [N, D]
        n = x.shape[0]
        B = self.block
        padded = -(-n // B) * B
        if padded != n:
            x = torch.cat([x, x.new_zeros(padded - n, x.shape[1])])  # [N', D]
        self.x = x
        self._full = {}  # block -> its float32 scores, computed on demand by exact()
        if out is None:
            out = torch.empty(padded, self.w_t.shape[1], device=self.device)
        for i in range(0, padded, B):  # same GEMM shape every call
            if self.fast:
                out[i: i + B].copy_(torch.matmul(x[i: i + B].to(torch.bfloat16), self.w_t16))  # [B, V]
            else:
                torch.matmul(x[i: i + B], self.w_t, out=out[i: i + B])  # [B, V]
        out = out[:n]
        if self.fast:
            self.bound = self._bound(x[:n], out)
        out = self._finish(out)
        if not self.fast:
            self.bound = torch.zeros(n, device=self.device)
        return out

    def _bound(self, x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Per-row bound on |bfloat16 GEMM - float32 GEMM| (after bias and logit transforms).

        |x.w - bf16(x).bf16(w)| <= (2u + u^2) sum|x_i w_i| (input rounding) + u |result| (output rounding), plus
        float32 accumulation error of both GEMMs (<= 2 D u32 sum|x_i w_i|); sum|x_i w_i| <= |x| max|w_v| (Cauchy-
        Schwarz). Logit transforms: a scale multiplies the bound; a softcap is 1-Lipschitz.
        """
        D = x.shape[1]
        absdot = x.norm(dim=1) * self.w_norm_max  # [N]
        top = raw.abs().amax(dim=1)  # [N]
        e = (2 * BF16_U + BF16_U**2 + 2 * D * F32_U) * absdot + BF16_U * top
        if self.bias is not None:
            e = e + 4 * F32_U * (top + self.bias.abs().max())
        if self.lens.scale is not None:
            e = e * abs(self.lens.scale)
        if self.lens.divide is not None:
            e = e / abs(self.lens.divide)
        return e * 1.01 + 1e-6 * (1 + top)  # margin for the bound's own rounding

    @torch.inference_mode()
    def exact(self, rows: torch.Tensor, cols: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """Float32-mode scores at (rows, cols) of the last chunk, bit-identical to a float32-mode run.

        Narrow requests gather just those columns; once a block needs more than DENSE_FRACTION of the vocabulary
        its full float32 block is computed once and kept for the rest of the chunk (so the worst case costs one
        float32 GEMM on top of the bfloat16 one, never several).
        """
        if not self.fast:
            return s[rows, cols]
        out = torch.empty(rows.shape[0], device=self.device)
        B, V = self.block, self.w_t.shape[1]
        blocks = rows // B
        for b in torch.unique(blocks).tolist():
            sel = torch.nonzero(blocks == b).flatten()
            local = rows[sel] - b * B
            full = self._full.get(b)
            ucols = None if full is not None else torch.unique(cols[sel])
            if full is None and ucols.numel() > DENSE_FRACTION * V:
                full = self._full[b] = self._finish(torch.matmul(self.x[b * B: (b + 1) * B], self.w_t))  # [B, V]
            if full is not None:
                out[sel] = full[local, cols[sel]]
                continue
            if ucols.numel() < MIN_COLS:  # keep the GEMM on the same kernel as the full-width one
                ucols = torch.unique(torch.cat([ucols, torch.arange(MIN_COLS * 2, device=self.device)]))
            part = self._finish(torch.matmul(self.x[b * B: (b + 1) * B], self.w_t[:, ucols]), ucols)  # [B, n]
            out[sel] = part[local, torch.searchsorted(ucols, cols[sel])]
        return out

    @torch.inference_mode()
    def top_k(self, s: torch.Tensor, k: int, final_rows: torch.Tensor) -> torch.Tensor:
        """Columns of the k highest float32 scores of each final row, ties broken by smaller vocabulary id. [c, k]"""
        final = s[final_rows]  # [c, V]
        vals = torch.topk(final, k, dim=-1).values  # [c, k]
        slack = 2 * self.bound[final_rows]  # [c]
        out = []
        for i, r in enumerate(final_rows.tolist()):
            cand = torch.nonzero(final[i] >= vals[i, -1] - slack[i]).flatten()  # all that could be in the top k
            exact = self.exact(torch.full_like(cand, r), cand, s)
            ids = self.col_ids[cand]
            order = sorted(range(len(cand)), key=lambda j: (-exact[j].item(), ids[j].item()))[:k]
            out.append(cand[order])
        return torch.stack(out)
