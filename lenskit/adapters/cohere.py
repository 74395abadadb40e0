"""Cohere (Command-R): parallel attention + MLP on one LayerNorm; logits multiplied by ``config.logit_scale``."""

from ..hookspecs import hookimpl
from . import Adapter

COHERE = Adapter(
    name="cohere",
    family="Cohere (Command-R)",
    architectures=("CohereForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    attn="self_attn",
    ffn="mlp",
    parallel=True,
    final_norm="model.norm",
    unembed="lm_head",
    logit_scale="logit_scale",
    quirks=("parallel attention + MLP", "logit scale (multiply)", "bias-free LayerNorm", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(COHERE)
