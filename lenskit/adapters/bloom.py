"""BLOOM: sequential ALiBi blocks whose attention and MLP modules add the residual themselves; embedding LayerNorm.

Because ``self_attention`` returns ``residual + attention``, the stage after attention is the input of
``post_attention_layernorm``; the raw contributions are the outputs of ``self_attention.dense`` and
``mlp.dense_4h_to_h``. Stage 0 is the output of ``word_embeddings_layernorm``.
"""

from ..hookspecs import hookimpl
from . import Adapter

BLOOM = Adapter(
    name="bloom",
    family="BLOOM",
    architectures=("BloomForCausalLM",),
    embed="transformer.word_embeddings",
    layers="transformer.h",
    mid="post_attention_layernorm",
    attn="self_attention.dense",
    ffn="mlp.dense_4h_to_h",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    variants=(("apply_residual_connection_post_layernorm", True, (("post_norm", True),)),),
    quirks=(
        "ALiBi",
        "embedding LayerNorm (in stage 0)",
        "residual added inside attention / MLP modules",
        "tied embeddings",
    ),
)


@hookimpl
def register_adapters(register):
    register(BLOOM)
