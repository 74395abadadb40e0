"""OLMo 2: no pre-norms -- attention reads the raw stream, and each block's output is RMS-normalized before the add.

The stream after attention is therefore the input of ``mlp`` itself (``post_attention_layernorm`` reads the raw
attention output). Queries and keys are RMS-normalized inside attention.
"""

from ..hookspecs import hookimpl
from . import Adapter

OLMO2 = Adapter(
    name="olmo2",
    family="OLMo 2",
    architectures=("Olmo2ForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="mlp",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("norms after attention and FFN outputs (no pre-norm)", "QK-norm", "RMSNorm"),
)


@hookimpl
def register_adapters(register):
    register(OLMO2)
