"""Gemma 2: "sandwich" norms -- each block's output is RMS-normalized (``post_*_layernorm``) before it is added.

The stream after attention is therefore the input of ``pre_feedforward_layernorm`` (``post_attention_layernorm``
reads the raw attention output, not the stream). Logits are soft-capped: ``cap * tanh(logits / cap)``.
"""

from ..hookspecs import hookimpl
from . import Adapter

GEMMA2 = Adapter(
    name="gemma2",
    family="Gemma 2",
    architectures=("Gemma2ForCausalLM",),
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
        "final logit softcap",
        "local/global attention",
    ),
)


@hookimpl
def register_adapters(register):
    register(GEMMA2)
