"""OLMo (1): Llama-style blocks with parameter-free LayerNorm (no weight or bias) and optional QKV clipping."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

OLMO = Adapter(
    name="olmo",
    family="OLMo",
    architectures=("OlmoForCausalLM",),
    **HF_DECODER,
    quirks=("non-parametric LayerNorm", "QKV clipping"),
)


@hookimpl
def register_adapters(register):
    register(OLMO)
