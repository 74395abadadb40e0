"""Phi-3 / Phi-3.5 / Phi-4-mini: Llama-style sequential blocks with fused QKV and gate/up projections, RMSNorm."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

PHI3 = Adapter(
    name="phi3",
    family="Phi-3",
    architectures=("Phi3ForCausalLM",),
    **HF_DECODER,
    quirks=("fused QKV / gate-up projections", "RMSNorm"),
)


@hookimpl
def register_adapters(register):
    register(PHI3)
