"""Llama-style decoders (Llama, Mistral, Qwen2, SmolLM): pre-norm, sequential attention then gated MLP, RMSNorm."""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

LLAMA = Adapter(
    name="llama",
    family="Llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
    **HF_DECODER,
    quirks=("RMSNorm", "tied embeddings (SmolLM)"),
)


@hookimpl
def register_adapters(register):
    register(LLAMA)
