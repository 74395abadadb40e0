"""Model-family adapters: *declarations* of where a Hugging Face causal LM keeps each part the logit lens needs.

An adapter is data, not code: module paths (dotted, relative to the model or to one decoder layer) and the family's
quirks. The capture and lens machinery reads these fields; nothing here inspects model classes.

How the three stage kinds are obtained for decoder layer ``i`` (the model's own tensors wherever they exist):

* ``embed`` (stage 0): the input the first decoder layer receives (embeddings, position embeddings, scaling).
* ``L{i}.ffn`` (stage 2i+2): the tensor decoder layer ``i`` returns.
* ``L{i}.attn`` (stage 2i+1): for sequential blocks, the *input* of the module named by ``mid`` -- the first thing
  the layer does with the stream after adding the attention block (e.g. Llama's ``post_attention_layernorm``), so
  post-block norms and residual multipliers are already included. For parallel blocks (attention and FFN read the
  same input) no such tensor exists; it is ``layer input + output of the module named by attn``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import AdapterError


@dataclass(frozen=True)
class Adapter:
    """Where a model family keeps its parts, and its quirks.

    Attributes:
        name: short unique name (``llama``), usable with ``--adapter``.
        family: human-readable family name for listings.
        architectures: Hugging Face architecture names (``config.architectures`` / model class names) it serves.
        layers: path of the decoder-layer list (``model.layers``).
        final_norm: path of the final norm applied before the unembedding (None if the family has none).
        unembed: path of the unembedding linear layer (``lm_head``); its bias, if any, is the output bias.
        embed: path of the token embedding (for documentation and tied-weight detection).
        mid: path, inside a layer, of the module whose input is the stream after attention (sequential blocks).
        attn: path, inside a layer, of the attention module; its first output is added to the stream (parallel blocks).
        ffn: path, inside a layer, of the feed-forward block (documentation, conformance checks).
        parallel: True if attention and FFN read the same input; or the name of a boolean config attribute that says so.
        parallel_mid: for models whose flag can switch to sequential: the ``mid`` module to use when it is off.
        pre_unembed: path of a projection applied after the final norm and before the unembedding (OPT).
        softcap: config attribute holding a final logit softcap (``logits = cap * tanh(logits / cap)``).
        logit_scale: config attribute multiplied into the logits (Cohere).
        logit_divide: config attribute the logits are divided by (Granite).
        quirks: human-readable notes shown in the coverage table.
    """

    name: str
    family: str
    architectures: tuple[str, ...]
    layers: str
    final_norm: str | None
    unembed: str = "lm_head"
    embed: str = ""
    mid: str | None = None
    attn: str | None = None
    ffn: str | None = None
    parallel: bool | str = False
    parallel_mid: str | None = None
    pre_unembed: str | None = None
    softcap: str | None = None
    logit_scale: str | None = None
    logit_divide: str | None = None
    quirks: tuple[str, ...] = field(default=())

    def is_parallel(self, config) -> bool:
        """Whether this model instance uses parallel attention/FFN blocks."""
        if isinstance(self.parallel, str):
            return bool(getattr(config, self.parallel, False))
        return bool(self.parallel)

    def mid_module(self, config) -> str | None:
        """The module whose input is the post-attention stream, or None for parallel blocks."""
        if self.is_parallel(config):
            return None
        return self.mid or self.parallel_mid

    def describe(self) -> dict:
        """Plain-dict view (for listings and trace metadata)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, (), "")}


def get_module(root, path: str):
    """Resolve a dotted module path (``model.layers``) on ``root``; '' is root itself."""
    obj = root
    for part in filter(None, path.split(".")):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            raise AdapterError(f"module path '{path}' does not exist on {type(root).__name__} (stopped at '{part}')")
    return obj


def registry() -> dict:
    """``{name: (adapter, provider)}`` for every registered adapter (built-ins and plugins)."""
    from ..plugins import collect_adapters

    return collect_adapters()


def model_architecture(model) -> str:
    """The architecture name of a loaded model: its class name (GGUF-loaded configs carry no ``architectures``)."""
    return type(model).__name__


def find_adapter(architecture: str, forced: str | None = None) -> Adapter:
    """The adapter for ``architecture`` (or the one named ``forced``); a one-line error if none fits."""
    reg = registry()
    if forced:
        if forced not in reg:
            raise AdapterError(f"no adapter named '{forced}'; registered: {', '.join(sorted(reg))}")
        return reg[forced][0]
    for adapter, _ in reg.values():
        if architecture in adapter.architectures:
            return adapter
    families = ", ".join(sorted(a.family for a, _ in reg.values()))
    raise AdapterError(
        f"no adapter for architecture {architecture}; supported families: {families}. "
        "Force a look-alike with --adapter NAME, or add one (README: 'Adding a model family')"
    )
