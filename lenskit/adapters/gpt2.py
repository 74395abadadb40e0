"""GPT-2: learned position embeddings, pre-LayerNorm blocks, tied unembedding (``Conv1D`` projections inside)."""

from ..hookspecs import hookimpl
from . import Adapter

GPT2 = Adapter(
    name="gpt2",
    family="GPT-2",
    architectures=("GPT2LMHeadModel",),
    embed="transformer.wte",
    layers="transformer.h",
    mid="ln_2",
    attn="attn",
    ffn="mlp",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    quirks=("position embeddings in stage 0", "LayerNorm", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(GPT2)
