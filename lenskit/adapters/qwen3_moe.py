"""Qwen3-MoE: Qwen3 blocks (QK-norm) whose FFN is a sparse mixture of experts (dense MLP on ``mlp_only_layers``)."""

from ..hookspecs import hookimpl
from . import Adapter

QWEN3_MOE = Adapter(
    name="qwen3-moe",
    family="Qwen3-MoE",
    architectures=("Qwen3MoeForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("sparse MoE FFN (top-k experts)", "QK-norm", "RMSNorm"),
)


@hookimpl
def register_adapters(register):
    register(QWEN3_MOE)
