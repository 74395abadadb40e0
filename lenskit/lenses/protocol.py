"""The lens protocol: what a lens is to the engine, and what a plugin registers.

A lens turns stage states into vocabulary scores knowing which stage each row is: ``[rows, D]`` + stage index
``[rows]`` -> ``[rows, V]``. Every lens lenskit runs has two parts, and says which is which so the engine's exact
modes keep working:

* ``translator``: an optional per-stage *affine* map of the stream, ``h + A_s h + b_s`` (:class:`Translator`; None =
  identity, the logit lens). Affine, so it is applied in the engine's fixed-shape GEMM blocks (one batched matmul
  per block, stage by stage) and every row's result is independent of how positions are chunked.
* ``head``: the model's own final norm + unembedding (+ bias, logit transforms): a :class:`lenskit.lens.Lens`, whose
  unembedding GEMM the scorer runs in float32 or ``fast`` mode with its exact re-check.

A plugin registers a :class:`LensKind` through the ``register_lenses`` hook: a name (what ``--lens NAME[:ARG]``
says), a description, and ``open(arg, model, stages)``, which checks the lens's files against the trace's model
(fingerprint, stage count) *before* any model weights load and returns a :class:`StageLens` without its head;
:meth:`StageLens.bind` attaches the head once it is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..lens import Lens


@dataclass
class Translator:
    """Per-stage affine maps of the residual stream, ``h -> h + h @ A_s^T + b_s`` (zeros: identity).

    ``weight``: ``[S, D, D]`` (A_s), ``bias``: ``[S, D]`` (b_s), ``covered``: ``[S]`` which stages were fitted (the
    others are identity: e.g. attention stages of an imported tuned-lens lens, and always the last stage).
    """

    weight: torch.Tensor  # [S, D, D]
    bias: torch.Tensor  # [S, D]
    covered: list[bool] = field(default_factory=list)

    @classmethod
    def identity(cls, n_stages: int, d: int) -> "Translator":
        return cls(torch.zeros(n_stages, d, d), torch.zeros(n_stages, d), [False] * n_stages)

    @property
    def n_stages(self) -> int:
        return self.weight.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    def to(self, device=None, dtype=torch.float32) -> "Translator":
        return Translator(self.weight.to(device, dtype), self.bias.to(device, dtype), list(self.covered))

    def __call__(self, h: torch.Tensor, stage: torch.Tensor) -> torch.Tensor:
        """``h [N, D]``, ``stage [N]`` -> ``[N, D]``: each row through its own stage's map (any row order)."""
        a = self.weight.to(h.device, h.dtype)[stage]  # [N, D, D]
        return h + torch.einsum("nij,nj->ni", a, h) + self.bias.to(h.device, h.dtype)[stage]  # [N, D]

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        """``h [P, S, D]`` (P positions x all S stages) -> ``[P, S, D]``, one batched matmul over the stages.

        The engine calls this with a fixed P per GEMM block, so every row's result is independent of chunking."""
        t = h.transpose(0, 1).contiguous()  # [S, P, D]
        y = torch.baddbmm(self.bias.unsqueeze(1), t, self.weight.transpose(1, 2))  # [S, P, D]: A_s h + b_s
        return h + y.transpose(0, 1)  # [P, S, D]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.weight, self.bias):
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        h.update(bytes(self.covered))
        return h.hexdigest()[:16]


@dataclass
class StageLens:
    """One lens as the engine sees it: an optional affine ``translator`` before the model's own ``head``.

    ``kind``: the registered name (``logit``, ``tuned``, ...); ``source``: where it came from (a path, or None);
    ``model_fingerprint``: the fingerprint of the model head it belongs to (the trace's ``model.fingerprint``).
    """

    kind: str
    description: str
    model_fingerprint: str
    translator: Translator | None = None
    source: str | None = None
    head: Lens | None = None
    extra: dict = field(default_factory=dict)  # anything else the export's lens entry should record

    @property
    def name(self) -> str:
        return self.kind

    def bind(self, head: Lens) -> "StageLens":
        """This lens with the model's head (final norm + unembedding) attached."""
        if self.translator is not None and self.translator.hidden_size != head.hidden_size:
            from ..errors import ModelError

            raise ModelError(f"the {self.kind} lens is for hidden size {self.translator.hidden_size}, the model's is "
                             f"{head.hidden_size}")
        return dataclasses.replace(self, head=head)

    def fingerprint(self) -> str:
        """The model head's fingerprint for the logit lens; a hash of it and the translator otherwise."""
        if self.translator is None:
            return self.model_fingerprint
        return hashlib.sha256(f"{self.model_fingerprint}:{self.translator.fingerprint()}".encode()).hexdigest()[:16]

    @torch.inference_mode()
    def __call__(self, h: torch.Tensor, stage: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Reference scores: ``h [N, D]`` + ``stage [N]`` -> ``[N, V]`` (the engine uses :mod:`lenskit.scoring`)."""
        h = h.to(self.head.device, torch.float32)
        if self.translator is not None:
            h = self.translator.to(h.device)(h, stage.to(h.device))
        return self.head(h, norm)

    def info(self) -> dict:
        """The export's entry for this lens."""
        out = {"kind": self.kind, "source": self.source, "fingerprint": self.fingerprint(),
               "description": self.description}
        if self.translator is not None:
            out["covered"] = [bool(c) for c in self.translator.covered]
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class LensKind:
    """A kind of lens a plugin registers: ``--lens NAME`` or ``--lens NAME:ARG``.

    ``open(arg, model, stages)``: ``arg`` is the text after the colon (None without one), ``model`` the trace's
    ``model`` section (``fingerprint``, ``n_layers``, ``vocab_size``, ...), ``stages`` its stage table. It checks
    everything it can without model weights and returns a :class:`StageLens` without its head, or raises a
    :class:`lenskit.errors.LenskitError` with a one-line message.
    """

    name: str
    description: str
    open: Callable[[str | None, dict, list], StageLens]
    takes_arg: bool = False  # True: NAME:ARG required (e.g. a path)
