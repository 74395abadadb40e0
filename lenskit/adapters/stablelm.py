"""StableLM (2): LayerNorm blocks, sequential by default; parallel attention + MLP when ``use_parallel_residual``."""

from ..hookspecs import hookimpl
from . import Adapter

STABLELM = Adapter(
    name="stablelm",
    family="StableLM",
    architectures=("StableLmForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    attn="self_attn",
    ffn="mlp",
    parallel="use_parallel_residual",
    parallel_mid="post_attention_layernorm",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("sequential or parallel residual (use_parallel_residual)", "partial rotary", "LayerNorm"),
)


@hookimpl
def register_adapters(register):
    register(STABLELM)
