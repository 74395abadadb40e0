"""Phi-1 / Phi-1.5 / Phi-2: parallel blocks (attention and MLP read one ``input_layernorm``), partial rotary, biased head."""

from ..hookspecs import hookimpl
from . import Adapter

PHI = Adapter(
    name="phi",
    family="Phi",
    architectures=("PhiForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    attn="self_attn",
    ffn="mlp",
    parallel=True,
    final_norm="model.final_layernorm",
    unembed="lm_head",
    quirks=("parallel attention + MLP", "output bias (lm_head.bias)", "LayerNorm"),
)


@hookimpl
def register_adapters(register):
    register(PHI)
