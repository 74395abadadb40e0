"""The plugin API from the outside: an out-of-tree adapter registered on ``lenskit.plugins.pm``, forcing adapters with
``--adapter``, and the one-line error for a model family no adapter serves.
"""

from __future__ import annotations

import json

import pytest
import transformers as tf
from safetensors import safe_open
from typer.testing import CliRunner

from families import llama
from lenskit.adapters import Adapter, registry
from lenskit.cli import app
from lenskit.errors import AdapterError
from lenskit.hookspecs import hookimpl
from lenskit.plugins import pm
from lenskit.testing import check_adapter, save_tiny_model

PROMPT = "the cat sat on the mat"

LOOKALIKE = Adapter(
    name="test-lookalike",
    family="Test look-alike (out of tree)",
    architectures=("NotARealArchitectureForCausalLM",),
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
    quirks=("registered by a test",),
)


class LookalikePlugin:
    """What a third-party package's entry-point module looks like."""

    @hookimpl
    def register_adapters(self, register):
        register(LOOKALIKE)


class ClashingPlugin:
    @hookimpl
    def register_adapters(self, register):
        register(Adapter(name="llama", family="Not Llama", architectures=(), layers="x", final_norm=None))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def plugin():
    registry()  # load the built-ins first, as the CLI does
    obj = LookalikePlugin()
    pm.register(obj, name="test-lookalike-plugin")
    try:
        yield obj
    finally:
        pm.unregister(obj)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_model(llama(), folder)
    return folder


def _trace(folder, out, *extra):
    args = ["trace", PROMPT, "-m", str(folder), "-o", str(out), "--device", "cpu", "--dtype", "float32", "-q"]
    return CliRunner().invoke(app, args + ["--no-export", *extra])


def _adapter_of(out) -> str:
    with safe_open(str(out / "trace.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["lenskit"])["model"]["adapter"]


def test_out_of_tree_adapter_registers_lists_and_traces(plugin, llama_folder, tmp_path):
    reg = registry()
    assert reg["test-lookalike"] == (LOOKALIKE, "test-lookalike-plugin")
    listing = CliRunner().invoke(app, ["adapters"])
    assert listing.exit_code == 0 and "test-lookalike" in listing.output
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "test-lookalike")
    assert result.exit_code == 0, result.output
    assert _adapter_of(tmp_path / "run") == "test-lookalike"
    check_adapter(llama(), "test-lookalike")  # a plugin's own conformance test is this one line
    pm.unregister(plugin)
    assert "test-lookalike" not in registry()
    pm.register(plugin, name="test-lookalike-plugin")  # the fixture unregisters it again


def test_plugin_adapters_stay_out_of_the_builtin_table(plugin):
    from lenskit.adapters import coverage_markdown

    assert "test-lookalike" not in coverage_markdown()
    assert "test-lookalike-plugin" in coverage_markdown(builtin_only=False)


def test_plugin_cannot_replace_a_builtin():
    registry()
    obj = ClashingPlugin()
    pm.register(obj, name="test-clashing-plugin")
    try:
        with pytest.raises(AdapterError, match="clashes"):
            registry()
    finally:
        pm.unregister(obj)


def test_force_builtin_adapter(llama_folder, tmp_path):
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "llama")
    assert result.exit_code == 0, result.output
    assert _adapter_of(tmp_path / "run") == "llama"


def test_force_unknown_adapter_name(llama_folder, tmp_path):
    result = _trace(llama_folder, tmp_path / "run", "--adapter", "no-such-adapter")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no adapter named 'no-such-adapter'" in lines[0] and "llama" in lines[0]


def test_unknown_family_is_one_line(tmp_path):
    config = tf.XGLMConfig(
        vocab_size=128, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    save_tiny_model(config, tmp_path / "model")
    result = _trace(tmp_path / "model", tmp_path / "run")
    assert result.exit_code == 1
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("lenskit: error: no adapter for architecture XGLMForCausalLM")
    assert "Llama" in line and "GPT-NeoX / Pythia" in line  # lists the supported families
    assert "--adapter" in line and "Adding a model family" in line  # points to forcing and to the plugin docs
    assert not (tmp_path / "run").exists()


def test_listing_is_an_aligned_table_with_a_header(plugin):
    lines = CliRunner().invoke(app, ["adapters"]).output.splitlines()
    assert lines[0].split() == ["ADAPTER", "FAMILY", "ARCHITECTURES", "PROVIDED", "BY"]
    starts = [lines[0].index(h) for h in ("ADAPTER", "FAMILY", "ARCHITECTURES", "PROVIDED BY")]
    reg = registry()
    assert len(lines) == 1 + len(reg) and all(line == line.rstrip() for line in lines)
    for line in lines[1:]:
        name = line[: starts[1]].strip()
        adapter, provider = reg[name]
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        assert cells == [name, adapter.family, ", ".join(adapter.architectures), provider], line
    assert any(line.endswith("test-lookalike-plugin") for line in lines)
