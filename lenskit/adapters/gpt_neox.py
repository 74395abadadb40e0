"""GPT-NeoX / Pythia: parallel residual by default (``use_parallel_residual``), sequential when the flag is off.

In the sequential form ``post_attention_layernorm`` reads ``input + attention``, so its input is the stage after
attention; in the parallel form it reads the layer input and the attention stage is ``input + attention``.
"""

from ..hookspecs import hookimpl
from . import Adapter

GPT_NEOX = Adapter(
    name="gpt-neox",
    family="GPT-NeoX / Pythia",
    architectures=("GPTNeoXForCausalLM",),
    embed="gpt_neox.embed_in",
    layers="gpt_neox.layers",
    attn="attention",
    ffn="mlp",
    parallel="use_parallel_residual",
    parallel_mid="post_attention_layernorm",
    final_norm="gpt_neox.final_layer_norm",
    unembed="lm_head",
    quirks=("parallel or sequential residual (use_parallel_residual)", "untied unembedding"),
)


@hookimpl
def register_adapters(register):
    register(GPT_NEOX)
