"""Qwen3: Llama-style pre-norm blocks with RMSNorm on queries and keys (inside attention; the stream is unaffected)."""

from ..hookspecs import hookimpl
from . import Adapter

QWEN3 = Adapter(
    name="qwen3",
    family="Qwen3",
    architectures=("Qwen3ForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("QK-norm", "RMSNorm", "tied embeddings (small sizes)"),
)


@hookimpl
def register_adapters(register):
    register(QWEN3)
