"""OPT: pre-LN blocks with inline FFN (``fc1``/``fc2``), learned positions; final norm then ``project_out``.

Inside a layer the stream is flattened to ``[B*T, D]`` before the FFN, so the stage after attention is the input of
``final_layer_norm`` (the layer's FFN pre-norm, not the model's final norm). Checkpoints with
``word_embed_proj_dim != hidden_size`` (OPT-350m) project the stream out before the unembedding; OPT-350m is also
post-LN (``do_layer_norm_before=False``): no final norm, and the stream after attention is the input of ``fc1``.
"""

from ..hookspecs import hookimpl
from . import Adapter

OPT = Adapter(
    name="opt",
    family="OPT",
    architectures=("OPTForCausalLM",),
    embed="model.decoder.embed_tokens",
    layers="model.decoder.layers",
    mid="final_layer_norm",
    attn="self_attn",
    ffn="fc2",
    final_norm="model.decoder.final_layer_norm",
    pre_unembed="model.decoder.project_out",
    unembed="lm_head",
    variants=(
        ("do_layer_norm_before", False, (("mid", "fc1"), ("final_norm", None), ("post_norm", True))),
    ),
    quirks=(
        "position embeddings in stage 0",
        "project_out before the unembedding (OPT-350m)",
        "post-LN variant (OPT-350m): no final norm",
        "tied embeddings",
    ),
)


@hookimpl
def register_adapters(register):
    register(OPT)
