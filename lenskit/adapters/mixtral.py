"""Mixtral: Mistral blocks whose FFN is a sparse mixture of experts (top-k routed); the MoE block's output is added."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

MIXTRAL = Adapter(
    name="mixtral",
    family="Mixtral",
    architectures=("MixtralForCausalLM",),
    **HF_DECODER,
    quirks=("sparse MoE FFN (top-k experts)", "RMSNorm", "sliding-window attention"),
)


@hookimpl
def register_adapters(register):
    register(MIXTRAL)
