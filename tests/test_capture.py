"""Stage capture invariants on tiny random Llama and GPT-2 models."""

import torch
from torch.testing import assert_close

from lenskit.adapters import find_adapter, get_module, model_architecture
from lenskit.capture import capture_stages, stage_names
from lenskit.lens import lens_from_model


def _setup(model):
    adapter = find_adapter(model_architecture(model))
    ids = torch.randint(3, model.config.vocab_size, (11,), generator=torch.Generator().manual_seed(1))
    return adapter, ids


def test_stage_count_and_names(tiny_model):
    _, model = tiny_model
    adapter, ids = _setup(model)
    stages = capture_stages(model, adapter, ids)
    L = len(get_module(model, adapter.layers))
    assert stages.shape == (2 * L + 1, len(ids), model.config.hidden_size)
    names = stage_names(L)
    assert [s["kind"] for s in names[:3]] == ["embed", "attn", "ffn"] and names[-1]["name"] == f"L{L - 1}.ffn"


def test_last_stage_reproduces_model_logits(tiny_model):
    _, model = tiny_model
    adapter, ids = _setup(model)
    stages = capture_stages(model, adapter, ids)
    with torch.inference_mode():
        logits = model(ids[None]).logits[0]
    assert_close(lens_from_model(model, adapter)(stages[-1]), logits)


def test_stage_differences_are_block_outputs(tiny_model):
    """stage[2i+1] - stage[2i] = attention's contribution; stage[2i+2] - stage[2i+1] = the FFN's."""
    name, model = tiny_model
    adapter, ids = _setup(model)
    layers = get_module(model, adapter.layers)
    attn_out, ffn_out = {}, {}
    hooks = []
    for i, layer in enumerate(layers):
        hooks.append(get_module(layer, adapter.attn).register_forward_hook(
            lambda m, a, o, i=i: attn_out.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0].clone())))
        hooks.append(get_module(layer, adapter.ffn).register_forward_hook(
            lambda m, a, o, i=i: ffn_out.__setitem__(i, (o[0] if isinstance(o, tuple) else o)[0].clone())))
    stages = capture_stages(model, adapter, ids)
    for h in hooks:
        h.remove()
    for i in range(len(layers)):
        assert_close(stages[2 * i + 1] - stages[2 * i], attn_out[i], atol=1e-5, rtol=1e-4)
        assert_close(stages[2 * i + 2] - stages[2 * i + 1], ffn_out[i], atol=1e-5, rtol=1e-4)


def test_stage0_and_layer_outputs_are_the_models_hidden_states(tiny_model):
    _, model = tiny_model
    adapter, ids = _setup(model)
    stages = capture_stages(model, adapter, ids)
    with torch.inference_mode():
        hs = model(ids[None], output_hidden_states=True).hidden_states
    assert torch.equal(stages[0], hs[0][0])
    for i in range(1, len(hs) - 1):  # the last hidden state has the final norm applied
        assert torch.equal(stages[2 * i], hs[i][0])
