"""Capture overhead (trace vs a plain forward pass) and cached vs first (dequantizing) default-model load."""

import shutil

import pytest
import torch

from lenskit.capture import capture_stages
from lenskit.commands.trace import example_text
from lenskit.models import load_model


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(torch.get_num_threads())
    return load_model(None)


@pytest.fixture(scope="module")
def ids(loaded):
    return torch.tensor(loaded.tokenizer(example_text())["input_ids"])


@pytest.mark.benchmark(group="trace")
def test_plain_forward(benchmark, loaded, ids):
    benchmark.extra_info["role"] = "baseline"
    benchmark.extra_info["tokens"] = len(ids)

    @torch.inference_mode()
    def forward():
        return loaded.model(input_ids=ids[None], use_cache=False).logits

    benchmark.pedantic(forward, rounds=7, warmup_rounds=2)


@pytest.mark.benchmark(group="trace")
def test_capture_all_stages(benchmark, loaded, ids):
    benchmark.extra_info["role"] = "subject"
    benchmark.pedantic(lambda: capture_stages(loaded.model, loaded.adapter, ids), rounds=7, warmup_rounds=2)


@pytest.mark.benchmark(group="load")
def test_load_cached(benchmark):
    load_model(None)  # make sure the cache exists
    benchmark.extra_info["role"] = "baseline"
    benchmark.pedantic(lambda: load_model(None), rounds=3, warmup_rounds=0)


@pytest.mark.benchmark(group="load")
def test_load_first_time_dequantizing(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSKIT_CACHE", str(tmp_path))
    benchmark.extra_info["role"] = "subject"

    def fresh():
        shutil.rmtree(tmp_path / "gguf", ignore_errors=True)
        return load_model(None)

    benchmark.pedantic(fresh, rounds=2, warmup_rounds=0)
