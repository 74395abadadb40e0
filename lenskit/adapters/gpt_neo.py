"""GPT-Neo: GPT-2-like pre-LayerNorm blocks with learned positions, alternating global and local attention."""

from ..hookspecs import hookimpl
from . import Adapter

GPT_NEO = Adapter(
    name="gpt-neo",
    family="GPT-Neo",
    architectures=("GPTNeoForCausalLM",),
    embed="transformer.wte",
    layers="transformer.h",
    mid="ln_2",
    attn="attn",
    ffn="mlp",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    quirks=("position embeddings in stage 0", "local/global attention layers", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(GPT_NEO)
