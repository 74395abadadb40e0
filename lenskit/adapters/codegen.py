"""CodeGen: GPT-J-style parallel blocks (one ``ln_1`` feeds attention and MLP), rotary positions, biased head."""

from ..hookspecs import hookimpl
from . import Adapter

CODEGEN = Adapter(
    name="codegen",
    family="CodeGen",
    architectures=("CodeGenForCausalLM",),
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
    register(CODEGEN)
