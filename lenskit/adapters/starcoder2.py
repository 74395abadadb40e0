"""StarCoder2: Llama-style sequential blocks with LayerNorm (with bias), biased projections and a plain GELU MLP."""

from ..hookspecs import hookimpl
from . import Adapter

STARCODER2 = Adapter(
    name="starcoder2",
    family="StarCoder2",
    architectures=("Starcoder2ForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("LayerNorm", "sliding-window attention", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(STARCODER2)
