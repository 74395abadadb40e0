"""Mixtral: Mistral blocks whose FFN is a sparse mixture of experts (top-k routed); the MoE block's output is added."""

from ..hookspecs import hookimpl
from . import Adapter

MIXTRAL = Adapter(
    name="mixtral",
    family="Mixtral",
    architectures=("MixtralForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("sparse MoE FFN (top-k experts)", "RMSNorm", "sliding-window attention"),
)


@hookimpl
def register_adapters(register):
    register(MIXTRAL)
