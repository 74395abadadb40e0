"""Gemma (1): Llama-style blocks; embeddings are multiplied by sqrt(hidden_size) (in stage 0), RMSNorm scales by 1 + w."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

GEMMA = Adapter(
    name="gemma",
    family="Gemma",
    architectures=("GemmaForCausalLM",),
    **HF_DECODER,
    quirks=("embeddings scaled by sqrt(d) (in stage 0)", "RMSNorm (1 + w)", "tied embeddings"),
)


@hookimpl
def register_adapters(register):
    register(GEMMA)
