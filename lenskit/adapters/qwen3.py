"""Qwen3: Llama-style pre-norm blocks with RMSNorm on queries and keys (inside attention; the stream is unaffected)."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

QWEN3 = Adapter(
    name="qwen3",
    family="Qwen3",
    architectures=("Qwen3ForCausalLM",),
    **HF_DECODER,
    quirks=("QK-norm", "RMSNorm", "tied embeddings (small sizes)"),
)


@hookimpl
def register_adapters(register):
    register(QWEN3)
