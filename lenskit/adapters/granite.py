"""Granite (3.x): Llama-style blocks with multipliers -- embeddings x ``embedding_multiplier`` (in stage 0), each
block's output x ``residual_multiplier`` before the add, logits / ``logits_scaling``.

``post_attention_layernorm`` reads ``input + multiplier * attention``, so the stage after attention includes it.
"""

from ..hookspecs import hookimpl
from . import HF_DECODER, Adapter

GRANITE = Adapter(
    name="granite",
    family="Granite",
    architectures=("GraniteForCausalLM",),
    **HF_DECODER,
    logit_divide="logits_scaling",
    quirks=(
        "embedding multiplier (in stage 0)",
        "residual multiplier on block outputs",
        "logits divided by logits_scaling",
        "RMSNorm",
    ),
)


@hookimpl
def register_adapters(register):
    register(GRANITE)
