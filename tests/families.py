"""Tiny random configs, one or more per built-in adapter: ``FAMILIES[adapter_name] -> [(label, config factory)]``.

Every model is float32-sized for speed: width 32, 2 layers, 4 heads, vocab 128, FFN width 64. Families with
variants that take another code path get one config per variant (GPT-NeoX parallel and sequential, Falcon
ALiBi-sequential / parallel / new decoder architecture, OPT pre-LN / project_out / post-LN, ...).
"""

from __future__ import annotations

import transformers as tf

V, D, L, H, F, P = 128, 32, 2, 4, 64, 64  # vocab, width, layers, heads, FFN width, max positions


def _common(**kw) -> dict:
    """Llama-style keyword arguments shared by most decoder configs."""
    base = dict(
        vocab_size=V,
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        intermediate_size=F,
        max_position_embeddings=P,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(kw)
    return base


def gpt2():
    return tf.GPT2Config(
        vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_inner=F, n_positions=P, bos_token_id=1, eos_token_id=2
    )


def gpt_neo():
    return tf.GPTNeoConfig(
        vocab_size=V, hidden_size=D, num_layers=L, num_heads=H, intermediate_size=F, max_position_embeddings=P,
        attention_types=[[["global", "local"], 1]], window_size=4,
    )


def gptj():
    return tf.GPTJConfig(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_inner=F, n_positions=P, rotary_dim=4)


def codegen():
    return tf.CodeGenConfig(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_inner=F, n_positions=P, n_ctx=P, rotary_dim=4)


def gpt_neox(parallel: bool):
    def make():
        return tf.GPTNeoXConfig(
            vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=F,
            max_position_embeddings=P, use_parallel_residual=parallel, tie_word_embeddings=False,
        )

    return make


def llama():
    return tf.LlamaConfig(**_common())


def llama_tied():
    return tf.LlamaConfig(**_common(tie_word_embeddings=True))


def mistral():
    return tf.MistralConfig(**_common(sliding_window=4))


def qwen2():
    return tf.Qwen2Config(**_common())


def mixtral():
    return tf.MixtralConfig(**_common(num_local_experts=4, num_experts_per_tok=2))


def qwen2_moe():
    return tf.Qwen2MoeConfig(
        **_common(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                  decoder_sparse_step=1, mlp_only_layers=[1])
    )


def qwen3():
    return tf.Qwen3Config(**_common(head_dim=8))


def qwen3_moe():
    return tf.Qwen3MoeConfig(
        **_common(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1)
    )


def gemma():
    return tf.GemmaConfig(**_common(head_dim=8))


def gemma2():
    return tf.Gemma2Config(
        **_common(head_dim=8, final_logit_softcapping=3.0, attn_logit_softcapping=5.0, sliding_window=4,
                  query_pre_attn_scalar=8)
    )


def gemma3():
    return tf.Gemma3TextConfig(
        **_common(head_dim=8, final_logit_softcapping=3.0, sliding_window=4, query_pre_attn_scalar=8,
                  layer_types=["sliding_attention", "full_attention"])
    )


def phi():
    return tf.PhiConfig(**_common(num_key_value_heads=H, partial_rotary_factor=0.5))


def phi3():
    return tf.Phi3Config(**_common(num_key_value_heads=H, pad_token_id=0))


def opt(pre_ln: bool = True, proj: int | None = None):
    def make():
        return tf.OPTConfig(
            vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, ffn_dim=F,
            max_position_embeddings=P, word_embed_proj_dim=proj or D, do_layer_norm_before=pre_ln,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )

    return make


def falcon(**variant):
    def make():
        return tf.FalconConfig(
            vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, max_position_embeddings=P,
            ffn_hidden_size=F, pad_token_id=0, bos_token_id=1, eos_token_id=2, **variant,
        )

    return make


def bloom(post_ln_residual: bool = False):
    def make():
        return tf.BloomConfig(
            vocab_size=V, hidden_size=D, n_layer=L, n_head=H, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            apply_residual_connection_post_layernorm=post_ln_residual,
        )

    return make


def stablelm(parallel: bool):
    def make():
        return tf.StableLmConfig(**_common(use_parallel_residual=parallel, partial_rotary_factor=0.5, use_qkv_bias=True))

    return make


def olmo():
    return tf.OlmoConfig(**_common(clip_qkv=8.0))


def olmo2():
    return tf.Olmo2Config(**_common())


def gpt_bigcode(multi_query: bool):
    def make():
        return tf.GPTBigCodeConfig(
            vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_inner=F, n_positions=P, multi_query=multi_query,
        )

    return make


def starcoder2():
    return tf.Starcoder2Config(**_common(sliding_window=4, use_bias=True))


def cohere():
    return tf.CohereConfig(**_common(logit_scale=0.25, use_qk_norm=False))


def granite():
    return tf.GraniteConfig(
        **_common(embedding_multiplier=3.0, residual_multiplier=0.25, logits_scaling=4.0, attention_multiplier=0.2)
    )


FAMILIES = {
    "gpt2": [("gpt2", gpt2)],
    "gpt-neo": [("gpt-neo", gpt_neo)],
    "gptj": [("gptj", gptj)],
    "codegen": [("codegen", codegen)],
    "gpt-neox": [("neox-parallel", gpt_neox(True)), ("neox-sequential", gpt_neox(False))],
    "llama": [("llama", llama), ("llama-tied", llama_tied), ("mistral", mistral), ("qwen2", qwen2)],
    "mixtral": [("mixtral", mixtral)],
    "qwen2-moe": [("qwen2-moe", qwen2_moe)],
    "qwen3": [("qwen3", qwen3)],
    "qwen3-moe": [("qwen3-moe", qwen3_moe)],
    "gemma": [("gemma", gemma)],
    "gemma2": [("gemma2", gemma2)],
    "gemma3-text": [("gemma3-text", gemma3)],
    "phi": [("phi", phi)],
    "phi3": [("phi3", phi3)],
    "opt": [("opt", opt()), ("opt-project", opt(proj=16)), ("opt-post-ln", opt(pre_ln=False, proj=16))],
    "falcon": [
        ("falcon-alibi-sequential", falcon(
            alibi=True, parallel_attn=False, new_decoder_architecture=False, bias=True, multi_query=False
        )),
        ("falcon-parallel", falcon(alibi=False, parallel_attn=True, new_decoder_architecture=False, multi_query=True)),
        ("falcon-new-arch", falcon(new_decoder_architecture=True, num_kv_heads=2, parallel_attn=True)),
    ],
    "bloom": [("bloom", bloom()), ("bloom-residual-post-ln", bloom(True))],
    "stablelm": [("stablelm-sequential", stablelm(False)), ("stablelm-parallel", stablelm(True))],
    "olmo": [("olmo", olmo)],
    "olmo2": [("olmo2", olmo2)],
    "gpt-bigcode": [("gpt-bigcode-mqa", gpt_bigcode(True)), ("gpt-bigcode-mha", gpt_bigcode(False))],
    "starcoder2": [("starcoder2", starcoder2)],
    "cohere": [("cohere", cohere)],
    "granite": [("granite", granite)],
}
