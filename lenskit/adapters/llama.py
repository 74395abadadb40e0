"""Llama-style decoders (Llama, Mistral, Qwen2, SmolLM): pre-norm, sequential attention then gated MLP, RMSNorm."""

from ..hookspecs import hookimpl
from . import Adapter

LLAMA = Adapter(
    name="llama",
    family="Llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("RMSNorm", "tied embeddings (SmolLM)"),
)


@hookimpl
def register_adapters(register):
    register(LLAMA)
