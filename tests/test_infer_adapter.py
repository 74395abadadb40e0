"""A model of a family no adapter names: lenskit infers its layout from the registered declarations, verifies it on
the user's prompt (:func:`lenskit.testing.verify_layouts`), and traces with a one-line warning -- or fails with the
one-line "no adapter" error when no layout verifies. ``lenskit adapters --check MODEL`` runs the verification alone.

Unknown families are real transformers families lenskit has no adapter for (SmolLM3, OLMo 3, Cohere 2) and classes
registered here under new architecture names (a Llama and a GPT-2 look-alike, and a model whose final norm is not
where any layout says). All are tiny random models built from configs; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from conftest import assert_clean_error
from families import FAMILIES, _common
from safetensors import safe_open
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from typer.testing import CliRunner

from lenskit.adapters import registry
from lenskit.adapters.infer import adapter_for, candidate_layouts
from lenskit.capture import capture_stages, trace_prompts
from lenskit.cli import app
from lenskit.errors import AdapterError
from lenskit.models import load_model
from lenskit.testing import build_tiny_model, save_tiny_model, verify_layouts

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "the cat sat on the mat"


# --- architectures no adapter names, registered with transformers' Auto classes under new names ----------------------


class NewLMConfig(tf.LlamaConfig):
    model_type = "lenskit-test-newlm"


class MyNewLMForCausalLM(tf.LlamaForCausalLM):
    """A Llama under a new architecture name."""

    config_class = NewLMConfig


class NewGPTConfig(tf.GPT2Config):
    model_type = "lenskit-test-newgpt"


class MyNewGPTLMHeadModel(tf.GPT2LMHeadModel):
    """A GPT-2 under a new architecture name (``transformer.h``, ``ln_2``, ``transformer.ln_f``)."""

    config_class = NewGPTConfig


class MovedNormConfig(tf.LlamaConfig):
    model_type = "lenskit-test-movednorm"


class MovedNormForCausalLM(tf.LlamaForCausalLM):
    """Llama modules, but ``model.norm`` is an identity and the real final norm runs inside ``lm_head``'s call: every
    module path of the Llama layout exists, and the lens built from it misses the final norm."""

    config_class = MovedNormConfig

    def __init__(self, config):
        super().__init__(config)
        self.model.norm = torch.nn.Identity()
        self.final_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head.register_forward_pre_hook(lambda mod, args: (self.final_norm(args[0]),))


for _config, _model in ((NewLMConfig, MyNewLMForCausalLM), (NewGPTConfig, MyNewGPTLMHeadModel),
                        (MovedNormConfig, MovedNormForCausalLM)):
    tf.AutoConfig.register(_config.model_type, _config, exist_ok=True)
    tf.AutoModelForCausalLM.register(_config, _model, exist_ok=True)


def new_lm():
    return NewLMConfig(**_common())


def new_gpt():
    return NewGPTConfig(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64,
                        bos_token_id=1, eos_token_id=2)


def moved_norm():
    return MovedNormConfig(**_common())


# (label, config factory, architecture, the layout that must be inferred, layouts rejected before it)
UNKNOWN = [
    ("smollm3", lambda: tf.SmolLM3Config(**_common()), "SmolLM3ForCausalLM", "llama", []),
    ("olmo3", lambda: tf.Olmo3Config(**_common()), "Olmo3ForCausalLM", "olmo2", ["llama"]),  # post-norm blocks
    ("cohere2", lambda: tf.Cohere2Config(**_common(logit_scale=0.25)), "Cohere2ForCausalLM", "cohere", []),
    ("renamed-llama", new_lm, "MyNewLMForCausalLM", "llama", []),
    ("renamed-gpt2", new_gpt, "MyNewGPTLMHeadModel", "gpt2", []),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each unknown family (and the moved-norm model) saved with a tiny tokenizer: ``{label: folder}``."""
    out = {}
    for label, make in [(u[0], u[1]) for u in UNKNOWN] + [("moved-norm", moved_norm)]:
        out[label] = tmp_path_factory.mktemp(label)
        save_tiny_model(make(), out[label])
    return out


def _trace(folder, out, *extra, prompts=(PROMPT,)):
    args = ["trace", *prompts, "-m", str(folder), "-o", str(out), "--device", "cpu", "--dtype", "float32"]
    return CliRunner().invoke(app, args + ["--no-export", *extra])


def _meta(run) -> tuple[dict, torch.Tensor]:
    with safe_open(str(run / "trace.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["lenskit"]), f.get_tensor("prompt.0.stages")


# --- the library ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label,make", [(label, make) for cases in FAMILIES.values() for label, make in cases])
def test_every_builtin_family_is_inferred_to_a_layout_that_captures_its_stages(label, make):
    """As if its adapter were not registered: the inferred, verified layout captures what the family's own does."""
    model = build_tiny_model(make())
    ids = torch.arange(3, 10)
    own = next(a for a, _ in registry().values() if type(model).__name__ in a.architectures)
    _, stages, _ = verify_layouts(model, candidate_layouts(model), ids)
    torch.testing.assert_close(stages, capture_stages(model, own, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label,make,arch,layout,rejected", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_unknown_family_is_inferred_and_verified(label, make, arch, layout, rejected):
    model = build_tiny_model(make())
    assert type(model).__name__ == arch
    first, candidates = adapter_for(model)
    assert candidates and first is candidates[0]
    adapter, _, why = verify_layouts(model, candidates, torch.arange(3, 10))
    assert adapter.name == layout and list(why) == rejected
    assert adapter == registry()[layout][0]  # a registered declaration: `lenskit export` finds it by name


def test_verification_costs_one_extra_forward_pass(folders):
    loaded = load_model(str(folders["smollm3"]), device="cpu", dtype="float32")
    assert loaded.inferred and loaded.adapter.name == "llama"
    passes = []
    handle = loaded.model.register_forward_hook(lambda *a: passes.append(1))
    try:
        _, meta = trace_prompts(loaded, [PROMPT, "the dog ran"])
    finally:
        handle.remove()
    assert len(passes) == 2 + 1  # one per prompt, plus the FFN-zeroed pass on the first
    assert not loaded.inferred and meta["model"]["adapter"] == "llama"
    assert meta["model"]["source"]["adapter_inferred"]["layout"] == "llama"


def test_no_candidate_layout_keeps_the_registry_error():
    xglm = tf.XGLMConfig(vocab_size=128, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                         max_position_embeddings=64)
    model = build_tiny_model(xglm)
    assert candidate_layouts(model) == ()
    with pytest.raises(AdapterError, match="no adapter for architecture XGLMForCausalLM; supported families"):
        adapter_for(model)


# --- the CLI -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label,arch,layout", [(u[0], u[2], u[3]) for u in UNKNOWN], ids=[u[0] for u in UNKNOWN])
def test_trace_infers_warns_and_records(label, arch, layout, folders, tmp_path):
    run = tmp_path / "run"
    result = _trace(folders[label], run, "-q")
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    warning = (f"lenskit: warning: no adapter for {arch}; using the inferred layout '{layout}' (verified on your "
               f"prompt); --adapter {layout} skips the check")
    assert lines == [warning]
    meta, stored = _meta(run)
    assert meta["model"]["adapter"] == layout and meta["model"]["architecture"] == arch
    inferred = meta["model"]["source"]["adapter_inferred"]
    assert inferred["layout"] == layout and "lens(last stage) == logits" in inferred["checks"]
    model = tf.AutoModelForCausalLM.from_pretrained(str(folders[label]), dtype=torch.float32).eval()
    ids = torch.tensor(meta["prompts"][0]["token_ids"])
    torch.testing.assert_close(stored, capture_stages(model, registry()[layout][0], ids), rtol=0, atol=0)


def test_inferred_trace_exports_and_validates(folders, tmp_path):
    run = tmp_path / "run"
    result = _trace(folders["olmo3"], run, "-q", prompts=(PROMPT, "the dog ran"))
    assert result.exit_code == 0, result.output
    for args in (["export", str(run), "-q"], ["validate", str(run)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + result.stderr
    assert (run / "export.json").is_file()


def test_forced_adapter_skips_inference(folders, tmp_path):
    result = _trace(folders["smollm3"], tmp_path / "run", "-q", "--adapter", "llama")
    assert result.exit_code == 0 and result.stderr == "", result.output
    meta, _ = _meta(tmp_path / "run")
    assert meta["model"]["adapter"] == "llama" and "adapter_inferred" not in meta["model"]["source"]


def test_trace_fails_cleanly_when_no_layout_verifies(folders, tmp_path):
    run = tmp_path / "run"
    result = _trace(folders["moved-norm"], run, "-q")
    assert_clean_error(result, "no adapter for architecture MovedNormForCausalLM (no inferred layout passed verification:", run)
    err = result.stderr.strip().splitlines()[-1]
    assert "'llama': lens(last stage) vs the model's logits" in err and "--adapter NAME" in err


def test_check_finds_the_layout(folders):
    result = CliRunner().invoke(app, ["adapters", "--check", str(folders["olmo3"]), "--device", "cpu"])
    assert result.exit_code == 0, result.output + result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("rejected"))
    assert rows["CHECK"] == "RESULT"
    assert rows["architecture"] == "Olmo3ForCausalLM (no registered adapter)"
    assert rows["fits"].startswith("olmo2 ")
    assert "rejected llama" in result.stdout and "with every FFN zeroed" in result.stdout


def test_check_a_registered_family(tmp_path):
    save_tiny_model(tf.LlamaConfig(**_common()), tmp_path / "llama")
    result = CliRunner().invoke(app, ["adapters", "--check", str(tmp_path / "llama"), "--device", "cpu"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "LlamaForCausalLM (registered)" in result.stdout and "fits" in result.stdout


def test_check_says_why_none_fits(folders):
    result = CliRunner().invoke(app, ["adapters", "--check", str(folders["moved-norm"]), "--device", "cpu"])
    assert_clean_error(result, "no inferred layout passed verification")


def test_verify_inferred_settles_the_adapter_for_batch_commands(folders, capsys):
    from lenskit.testing import verify_inferred

    loaded = load_model(str(folders["olmo3"]), device="cpu", dtype="float32")
    assert loaded.adapter.name == "llama" and loaded.inferred  # unverified: the first candidate
    verify_inferred(loaded)
    assert loaded.adapter.name == "olmo2" and not loaded.inferred
    assert "(verified on a built-in prompt)" in capsys.readouterr().err
    verify_inferred(loaded)  # settled: nothing more runs
    assert capsys.readouterr().err == ""
