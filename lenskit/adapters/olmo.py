"""OLMo (1): Llama-style blocks with parameter-free LayerNorm (no weight or bias) and optional QKV clipping."""

from ..hookspecs import hookimpl
from . import Adapter

OLMO = Adapter(
    name="olmo",
    family="OLMo",
    architectures=("OlmoForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("non-parametric LayerNorm", "QKV clipping"),
)


@hookimpl
def register_adapters(register):
    register(OLMO)
