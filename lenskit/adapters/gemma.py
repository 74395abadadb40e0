"""Gemma (1): Llama-style blocks; embeddings are multiplied by sqrt(hidden_size) (in stage 0), RMSNorm scales by 1 + w."""

from ..hookspecs import hookimpl
from . import Adapter

GEMMA = Adapter(
    name="gemma",
    family="Gemma",
    architectures=("GemmaForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("embeddings scaled by sqrt(d) (in stage 0)", "RMSNorm (1 + w)", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(GEMMA)
