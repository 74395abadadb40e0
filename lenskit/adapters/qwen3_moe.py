"""Qwen3-MoE: Qwen3 blocks (QK-norm) whose FFN is a sparse mixture of experts (dense MLP on ``mlp_only_layers``)."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

QWEN3_MOE = Adapter(
    name="qwen3-moe",
    family="Qwen3-MoE",
    architectures=("Qwen3MoeForCausalLM",),
    **HF_DECODER,
    quirks=("sparse MoE FFN (top-k experts)", "QK-norm", "RMSNorm"),
)


@hookimpl
def register_adapters(register):
    register(QWEN3_MOE)
