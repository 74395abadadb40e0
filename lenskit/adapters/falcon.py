"""Falcon: sequential ALiBi blocks (falcon-rw-1b/7b: ``parallel_attn=False``) or parallel attention + MLP
(falcon-7b/40b/180b, including the new decoder architecture with separate ``ln_attn``/``ln_mlp``).

Sequential blocks: ``post_attention_layernorm`` reads ``input + attention``. Parallel blocks: the attention stage is
``input + attention``; the MLP output is added to the same input.
"""

from ..hookspecs import hookimpl
from . import Adapter

FALCON = Adapter(
    name="falcon",
    family="Falcon",
    architectures=("FalconForCausalLM",),
    embed="transformer.word_embeddings",
    layers="transformer.h",
    attn="self_attention",
    ffn="mlp",
    parallel="parallel_attn",
    parallel_mid="post_attention_layernorm",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    quirks=(
        "sequential ALiBi variant (falcon-rw)",
        "parallel attention + MLP (parallel_attn)",
        "new decoder architecture (two norms per layer)",
        "tied embeddings",
    ),
)


@hookimpl
def register_adapters(register):
    register(FALCON)
