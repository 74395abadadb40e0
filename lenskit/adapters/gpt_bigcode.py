"""GPT-BigCode (StarCoder, SantaCoder): GPT-2 blocks with multi-query attention, learned positions, tied head."""

from ..hookspecs import hookimpl
from . import Adapter

GPT_BIGCODE = Adapter(
    name="gpt-bigcode",
    family="GPT-BigCode / StarCoder",
    architectures=("GPTBigCodeForCausalLM",),
    embed="transformer.wte",
    layers="transformer.h",
    mid="ln_2",
    attn="attn",
    ffn="mlp",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    quirks=("position embeddings in stage 0", "multi-query attention", "LayerNorm", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(GPT_BIGCODE)
