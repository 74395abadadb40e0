"""Adapter conformance suite: every built-in adapter against tiny random models of its family (``tests/families.py``).

Each case runs :func:`lenskit.testing.check_adapter` -- the helper a plugin's own test calls -- : S == 2L+1, stage 0
and layer outputs against independent hooks, lens(last stage) == logits, block contributions by zeroing, then the CLI
on the model saved to disk (``lenskit adapters`` lists it; ``lenskit trace --no-export`` writes the same stages;
``lenskit export`` runs on the trace, in its own test). Also: ``--device-map`` splits and disk offload keep the
capture exact.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from families import FAMILIES, llama
from lenskit.adapters import find_adapter, model_architecture, registry
from lenskit.capture import capture_stages
from lenskit.cli import app
from lenskit.plugins import BUILTIN
from lenskit.testing import build_tiny_model, check_adapter, check_cli, has_command, save_tiny_model, tiny_tokenizer

CASES = [pytest.param(name, make, id=label) for name, cases in FAMILIES.items() for label, make in cases]
PROMPT = "The cat sat on the mat in Paris ."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_every_builtin_adapter_has_a_family_config():
    builtin = {name for name, (_, provider) in registry().items() if provider == BUILTIN}
    assert builtin == set(FAMILIES), "add a tiny config to tests/families.py for every built-in adapter"


@pytest.mark.parametrize("name, make", CASES)
def test_conformance(name, make, tmp_path):
    """The whole suite, in memory and through `lenskit adapters` / `lenskit trace` (export: its own test below)."""
    report = check_adapter(make(), workdir=tmp_path, export=False)  # adapter looked up from the architecture
    assert report.adapter.name == name
    assert report.traced
    assert report.contributions_checked != report.adapter.post_norm


@pytest.mark.parametrize("name, make", CASES)
def test_cli_export(name, make, tmp_path):
    if not has_command("export"):
        pytest.skip("`lenskit export` is not a command yet (lenskit/export.py is being written)")
    assert check_cli(build_tiny_model(make()), name, tmp_path, export=True)


def _trace(runner, folder, out, *extra):
    args = ["trace", PROMPT, "-m", str(folder), "-o", str(out), "--device", "cpu", "--dtype", "float32", "-q"]
    return runner.invoke(app, args + ["--no-export", *extra])


def _read_trace(out):
    with safe_open(str(out / "trace.safetensors"), framework="pt") as f:
        return f.get_tensor("prompt.0.stages"), json.loads(f.metadata()["lenskit"])


# --- device maps and offload ----------------------------------------------------------------------------------------

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",  # offloaded: weights stay on disk (meta here) and are loaded by accelerate's hooks
    "model.norm": "cpu",
    "lm_head": "cpu",
}


@pytest.mark.parametrize("device_map", [SPLIT, "auto"], ids=["explicit-with-disk-offload", "auto"])
def test_device_map_capture_is_exact(device_map, tmp_path):
    from lenskit.models import load_model

    model = save_tiny_model(llama(), tmp_path)
    ids = torch.tensor(tiny_tokenizer()(PROMPT)["input_ids"])
    adapter = find_adapter(model_architecture(model))
    plain = capture_stages(model, adapter, ids)  # [S, T, D]
    loaded = load_model(str(tmp_path), device="cpu", dtype="float32", device_map=device_map)
    if isinstance(device_map, dict):  # a one-device map ("auto" on a CPU-only machine) leaves no hf_device_map
        assert loaded.model.hf_device_map == device_map
        assert loaded.model.model.layers[1].mlp.down_proj.weight.device.type == "meta"  # really offloaded
    torch.testing.assert_close(capture_stages(loaded.model, loaded.adapter, ids), plain)


def test_dispatch_model_offload_capture_is_exact(tmp_path):
    from accelerate import dispatch_model

    model = build_tiny_model(llama())
    adapter = find_adapter(model_architecture(model))
    ids = torch.arange(3, 12)
    plain = capture_stages(model, adapter, ids)  # [S, T, D]
    split = dispatch_model(model, device_map=SPLIT, main_device="cpu", offload_dir=str(tmp_path))
    assert split.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    torch.testing.assert_close(capture_stages(split, adapter, ids), plain)
    check_adapter(split, adapter, cli=False)  # the in-memory suite holds on the offloaded model too


def test_cli_trace_device_map(tmp_path, runner):
    save_tiny_model(llama(), tmp_path / "model")
    result = _trace(runner, tmp_path / "model", tmp_path / "run", "--device-map", "auto")
    assert result.exit_code == 0, result.output
    stages, meta = _read_trace(tmp_path / "run")
    assert stages.shape[0] == 2 * 2 + 1 and meta["model"]["adapter"] == "llama"
