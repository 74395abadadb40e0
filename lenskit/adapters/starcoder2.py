"""StarCoder2: Llama-style sequential blocks with LayerNorm (with bias), biased projections and a plain GELU MLP."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

STARCODER2 = Adapter(
    name="starcoder2",
    family="StarCoder2",
    architectures=("Starcoder2ForCausalLM",),
    **HF_DECODER,
    quirks=("LayerNorm", "sliding-window attention", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(STARCODER2)
