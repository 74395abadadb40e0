"""Qwen2-MoE: Qwen2 blocks with routed experts plus a gated shared expert (dense MLP on ``mlp_only_layers``)."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

QWEN2_MOE = Adapter(
    name="qwen2-moe",
    family="Qwen2-MoE",
    architectures=("Qwen2MoeForCausalLM",),
    **HF_DECODER,
    quirks=("sparse MoE FFN + gated shared expert", "dense MLP on mlp_only_layers", "RMSNorm", "QKV bias"),
)


@hookimpl
def register_adapters(register):
    register(QWEN2_MOE)
