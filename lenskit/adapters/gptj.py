"""GPT-J: parallel blocks (attention and MLP both read ``ln_1`` of the layer input), rotary positions, biased head."""

from ..hookspecs import hookimpl
from . import Adapter

GPTJ = Adapter(
    name="gptj",
    family="GPT-J",
    architectures=("GPTJForCausalLM",),
    embed="transformer.wte",
    layers="transformer.h",
    attn="attn",
    ffn="mlp",
    parallel=True,
    final_norm="transformer.ln_f",
    unembed="lm_head",
    quirks=("parallel attention + MLP", "output bias (lm_head.bias)"),
)


@hookimpl
def register_adapters(register):
    register(GPTJ)
