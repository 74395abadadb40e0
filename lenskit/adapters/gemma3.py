"""Gemma 3 text models (``Gemma3ForCausalLM``): Gemma 2's sandwich norms and softcap, plus QK-norm.

The multimodal ``Gemma3ForConditionalGeneration`` nests the text model elsewhere and is not covered here.
"""

from ..hookspecs import hookimpl
from . import Adapter

GEMMA3_TEXT = Adapter(
    name="gemma3-text",
    family="Gemma 3 (text)",
    architectures=("Gemma3ForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="pre_feedforward_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    softcap="final_logit_softcapping",
    quirks=(
        "embeddings scaled by sqrt(d) (in stage 0)",
        "norms after attention and FFN outputs",
        "final logit softcap (when set)",
        "QK-norm",
        "text-only checkpoints (not Gemma3ForConditionalGeneration)",
    ),
)


@hookimpl
def register_adapters(register):
    register(GEMMA3_TEXT)
