"""The Python API called wrongly, as in a notebook: each misuse is one LenskitError naming the argument and what is
expected -- never a bare TypeError/AttributeError/IndexError from deep inside torch or transformers, a silent wrong
answer, or a file no reader takes. Tiny random models built in code (conftest), loaded once for the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import gpt2_config, llama_config, save_model

from lenskit.errors import InputError, LenskitError


@pytest.fixture(scope="module")
def api(tmp_path_factory, one_thread):
    """A tiny Llama (loaded, traced on two prompts, its lens) and a tiny GPT-2 of another hidden size."""
    from lenskit.capture import trace_prompts
    from lenskit.lens import lens_from_model
    from lenskit.models import load_model
    from lenskit.store import write_trace

    root = tmp_path_factory.mktemp("api")
    llama = load_model(save_model(root / "llama", llama_config()), device="cpu")
    gpt2 = load_model(save_model(root / "gpt2", gpt2_config(n_embd=48)), device="cpu")
    states, meta = trace_prompts(llama, ["the cat sat on the mat", "Paris is the capital"])
    (root / "run").mkdir()
    write_trace(root / "run" / "trace.safetensors", states, meta)
    return {"root": root, "loaded": llama, "other": gpt2, "states": states, "meta": meta, "run": root / "run",
            "lens": lens_from_model(llama.model, llama.adapter),
            "other_lens": lens_from_model(gpt2.model, gpt2.adapter)}


def refused(fn, fragment, kind=LenskitError):
    """``fn()`` raises ``kind`` (a LenskitError) whose message holds ``fragment``, on one line."""
    with pytest.raises(kind) as e:
        fn()
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg


def reader(states):
    """export_document's ``stages_for_prompt`` over a list of ``[S, T, D]`` tensors."""
    return lambda i: (lambda p0, p1: states[i][:, p0:p1])


# --- load_model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, fragment", [
    ({"model": 5}, "model must be a hub id"),
    ({"model": b"/tmp/model"}, "model must be a hub id"),
    ({"model": ["gpt2"]}, "model must be a hub id"),
    ({"model": "x", "device": None}, "device must be a string"),
    ({"model": "x", "dtype": None}, "dtype must be a string"),
    ({"model": "x", "dtype": torch.float64}, "dtype must be a string"),
    ({"model": "x", "revision": 3}, "revision must be a string or None"),
    ({"model": "x", "adapter": 3}, "adapter must be a string or None"),
    ({"model": "x", "trust_remote_code": "no"}, "trust_remote_code must be True or False"),
    ({"model": "x", "allow_download": 0}, "allow_download must be True or False"),
    ({"model": "x", "log": 1}, "log must be a function"),
    ({"model": "x", "device_map": 3}, "device_map must be a string such as 'auto', a dict"),  # a dict is accelerate's
])
def test_load_model_arguments(kw, fragment):
    from lenskit.models import load_model

    refused(lambda: load_model(**kw), fragment, InputError)  # before anything loads: "x" is never looked up


def test_load_model_accepts_path_and_torch_types(api):
    from lenskit.models import load_model

    loaded = load_model(Path(api["root"] / "llama"), device=torch.device("cpu"), dtype=torch.float32)
    assert loaded.dtype == torch.float32 and loaded.source["path"] == str((api["root"] / "llama").resolve())


# --- trace_prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, kw, fragment", [
    (("The capital",), {}, "texts must be a list of prompt strings"),  # a str: traced letter by letter
    ((b"The capital",), {}, "texts must be a list"),
    ((None,), {}, "texts must be a list"),
    ((np.array(["the cat"]),), {}, "texts must be a list"),
    (([],), {}, "no prompts to trace"),
    (([""],), {}, "the prompt is empty"),
    ((["the cat", None],), {}, "texts[1] must be a string"),
    (([b"the cat"],), {}, "texts[0] must be a string"),
    ((["the cat"],), {"chat": "no"}, "chat must be True or False"),  # "no" is truthy
    ((["the cat"],), {"log": 1}, "log must be a function"),
    ((["the cat"],), {"system": "be brief"}, "--system needs --chat"),
])
def test_trace_prompts_arguments(api, args, kw, fragment):
    from lenskit.capture import trace_prompts

    refused(lambda: trace_prompts(api["loaded"], *args, **kw), fragment, InputError)


@pytest.mark.parametrize("which", ["none", "model", "path"])
def test_trace_prompts_needs_a_loaded_model(api, which):
    from lenskit.capture import trace_prompts

    loaded = {"none": None, "model": api["loaded"].model, "path": str(api["root"] / "llama")}[which]
    refused(lambda: trace_prompts(loaded, ["the cat"]), "loaded must be what lenskit.models.load_model returns",
            InputError)


def test_trace_prompts_tokenizer_of_another_model(api):
    """A tokenizer with a larger vocabulary (another model's) gave an IndexError inside the embedding; one that gives
    no ids, a dtype error."""
    import dataclasses

    from conftest import make_tokenizer

    from lenskit.capture import trace_prompts

    bigger = dataclasses.replace(api["loaded"], tokenizer=make_tokenizer(500))
    refused(lambda: trace_prompts(bigger, ["the cat", "w300 the cat"]),
            "prompt 2: the tokenizer gave token id 319, past the model's 96 embeddings", InputError)

    class NoIds:
        def __getattr__(self, name):
            return getattr(api["loaded"].tokenizer, name)

        def __call__(self, text, **kw):
            return {"input_ids": []}

    refused(lambda: trace_prompts(dataclasses.replace(api["loaded"], tokenizer=NoIds()), ["the cat"]),
            "the prompt: the tokenizer gave no tokens", InputError)


def test_trace_prompts_tuple_and_numpy_strings(api):
    from lenskit.capture import trace_prompts

    states, meta = trace_prompts(api["loaded"], (np.str_("the cat sat on the mat"),))
    assert torch.equal(states[0], api["states"][0]) and meta["prompts"][0]["text"] == "the cat sat on the mat"


# --- lens_from_model and Lens.__call__ ----------------------------------------------------------------------------
@pytest.mark.parametrize("which, fragment", [
    ("loaded", "lens_from_model(loaded.model, loaded.adapter)"),
    ("none", "model must be a Hugging Face model"),
    ("adapter none", "adapter must be a lenskit Adapter"),
    ("adapter str", "adapter must be a lenskit Adapter"),
])
def test_lens_from_model_arguments(api, which, fragment):
    from lenskit.lens import lens_from_model

    loaded = api["loaded"]
    args = {"loaded": (loaded, None), "none": (None, loaded.adapter), "adapter none": (loaded.model, None),
            "adapter str": (loaded.model, "llama")}[which]
    refused(lambda: lens_from_model(*args), fragment, InputError)


@pytest.mark.parametrize("which, fragment", [
    ("none", "takes a torch tensor"),
    ("list", "takes a torch tensor"),
    ("numpy", "takes a torch tensor"),
    ("int", "floating-point states, not int64"),
    ("complex", "floating-point states, not complex64"),
    ("transposed", "D = 32"),  # [D, T]
    ("other model", "states of another model"),  # the GPT-2's [T, 48] into the Llama's lens
    ("scalar", "D = 32"),
])
def test_lens_call_arguments(api, which, fragment):
    last = api["states"][0][-1]  # [T, D]
    h = {"none": None, "list": last.tolist(), "numpy": last.numpy(), "int": last.long(),
         "complex": last.to(torch.complex64), "transposed": last.T, "other model": torch.zeros(6, 48),
         "scalar": torch.tensor(1.0)}[which]
    refused(lambda: api["lens"](h), fragment, InputError)


def test_lens_call_norm_flag(api):
    refused(lambda: api["lens"](api["states"][0][-1], norm="no"), "norm must be True or False", InputError)


def test_lens_call_still_takes_any_leading_shape(api):
    states = api["states"][0]  # [S, T, D]
    assert api["lens"](states).shape == (*states.shape[:2], 96)
    assert torch.equal(api["lens"](states.half())[-1], api["lens"](states.half()[-1]))


# --- export_document and ExportOptions ----------------------------------------------------------------------------
def export(api, states=None, meta=None, lens=None, stages=None, **options):
    from lenskit.export import ExportOptions, export_document

    return export_document(meta or api["meta"], lens or api["lens"], api["loaded"].tokenizer,
                           stages or reader(states or api["states"]), ExportOptions(**options))


def test_export_numpy_integers_are_ints(api):
    """np.int64 from numpy (argsort ids, counts) counts as an int everywhere an int is asked for."""
    from lenskit.export import plain

    doc = plain(export(api, top_k=np.int64(3), track=[torch.tensor(5), "Paris"], prompt=np.int32(1),
                       stage_top=np.int64(2), positions="-1"))
    want = plain(export(api, top_k=3, track=[5, "Paris"], prompt=1, stage_top=2, positions="-1"))
    assert doc == want and doc["lens"]["top_k"] == 3


@pytest.mark.parametrize("options, fragment", [
    ({"top_k": 0}, "--top-k 0 must be between 1"),
    ({"top_k": -1}, "--top-k -1 must be between 1"),
    ({"top_k": 10**30}, "must be between 1 and the vocabulary size (96)"),
    ({"top_k": 3.0}, "ExportOptions.top_k must be an int"),
    ({"top_k": True}, "ExportOptions.top_k must be an int"),
    ({"top_k": torch.tensor(True)}, "ExportOptions.top_k must be an int"),  # torch's index of it is 1
    ({"track": [np.True_]}, "ExportOptions.track must be a list"),
    ({"track": "Paris"}, "ExportOptions.track must be a list"),
    ({"track": ["the cat"]}, "is not a single token (2 tokens)"),
    ({"track": [96]}, "token id 96 is out of range"),
    ({"track": [-1]}, "token id -1 is out of range"),
    ({"track": [b"Paris"]}, "ExportOptions.track must be a list"),
    ({"track": ["zzzz"]}, "is not in the vocabulary"),
    ({"positions": 3}, "ExportOptions.positions must be a string"),
    ({"positions": "99"}, "position 99 is out of range"),
    ({"prompt": 2}, "--prompt 2 is out of range"),
    ({"prompt": 1.0}, "ExportOptions.prompt must be an int"),
    ({"device": None}, "ExportOptions.device must be a string"),
    ({"max_memory": 1.5e9}, "ExportOptions.max_memory must be a positive number"),
    ({"stage_top": 10**30}, "--stage-top"),
    ({"norm": "yes"}, "ExportOptions.norm must be True or False"),
    ({"lenses": ["tuned:/nowhere"]}, "is not used with a bare Lens"),  # was silently the logit lens
])
def test_export_options(api, options, fragment):
    refused(lambda: export(api, **options), fragment, InputError)


@pytest.mark.parametrize("which, fragment", [
    ("none", "stages_for_prompt must be a function"),
    ("tensor list", "stages_for_prompt must be a function"),
    ("gives a tensor", "stages_for_prompt(0) gave Tensor; it must return a function"),  # lambda i: states[i]
    ("gives None", "stages_for_prompt(0) gave NoneType"),
    ("transposed", "expected a tensor [S, p1 - p0, D] = [7, 7, 32]"),
    ("numpy", "gave ndarray"),
    ("int", "stages are floating point"),
    ("nan", "non-finite value (NaN or infinity) at stage L1.attn, position 2"),  # was a document of NaN statistics
])
def test_export_stages_for_prompt(api, which, fragment):
    states = api["states"]
    nan = [s.clone() for s in states]
    nan[0][3, 2, 5] = float("nan")
    stages = {"none": 5, "tensor list": states, "gives a tensor": lambda i: states[i], "gives None": lambda i: None,
              "transposed": reader([s.transpose(1, 2) for s in states]),
              "numpy": lambda i: (lambda p0, p1: states[i][:, p0:p1].numpy()),
              "int": reader([s.long() for s in states]), "nan": reader(nan)}[which]
    refused(lambda: export(api, stages=stages, prompt=0), fragment, LenskitError)


def test_export_other_models_lens_and_meta(api):
    meta = api["meta"]
    refused(lambda: export(api, lens=api["other_lens"]), "the lens is not the traced model's", InputError)
    unsigned = dict(meta, model={k: v for k, v in meta["model"].items() if k != "fingerprint"})
    refused(lambda: export(api, meta=unsigned, lens=api["other_lens"]),
            "expected a tensor [S, p1 - p0, D] = [7, 7, 48]", InputError)
    foreign = dict(meta, prompts=[dict(meta["prompts"][0], token_ids=[1, 500, 3])])  # was an IndexError
    refused(lambda: export(api, meta=foreign), "meta['prompts'][0]['token_ids'] must be a list of token ids from 0 "
            "to 95", InputError)
    refused(lambda: export(api, meta={"prompts": []}), "meta must be a trace's metadata", InputError)
    refused(lambda: export(api, lens=api["loaded"].model), "lens must be a Lens", InputError)
    from lenskit.export import ExportOptions, export_document

    for tok in ("/models/llama", api["loaded"].model):  # failed with an AttributeError after every statistic
        refused(lambda tok=tok: export_document(meta, api["lens"], tok, reader(api["states"]), ExportOptions()),
                "tokenizer must be the model's Hugging Face tokenizer", InputError)


def test_export_options_object(api):
    from lenskit.export import export_document

    refused(lambda: export_document(api["meta"], api["lens"], api["loaded"].tokenizer, reader(api["states"]),
                                    {"top_k": 3}), "options must be an ExportOptions", InputError)


# --- read_trace / write_trace -------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", [None, 5, b"/tmp/run"])
def test_read_trace_path_types(run):
    from lenskit.store import read_trace, validate_trace

    refused(lambda: read_trace(run), "run (a run folder or its trace.safetensors) must be a path", InputError)
    refused(lambda: validate_trace(run), "must be a path", InputError)


def test_read_trace_str(api):
    from lenskit.store import read_trace

    assert read_trace(str(api["run"])).n_prompts == 2


@pytest.mark.parametrize("which, fragment", [
    ("one tensor", "stages must be a list of [S, T, D] torch tensors"),  # iterated: S prompts were written
    ("numpy", "stages must be a list"),
    ("one fewer", "tensor prompt.1.stages is missing"),
    ("transposed", "tensor prompt.0.stages has shape [7, 32, 7]"),
    ("int", "stages are floating point"),
    ("meta None", "its lenskit metadata is not a JSON object"),
    ("meta numpy", "meta cannot be written as JSON"),
    ("path None", "path must be a path"),
])
def test_write_trace_refuses_what_no_reader_takes(api, tmp_path, which, fragment):
    from lenskit.store import write_trace

    states, meta = api["states"], api["meta"]
    meta_np = dict(meta, prompts=[dict(p, token_ids=np.array(p["token_ids"])) for p in meta["prompts"]])
    args = {"one tensor": (states[0], meta), "numpy": ([s.numpy() for s in states], meta),
            "one fewer": (states[:1], meta), "transposed": ([s.transpose(1, 2) for s in states], meta),
            "int": ([s.long() for s in states], meta), "meta None": (states, None), "meta numpy": (states, meta_np),
            "path None": (states, meta)}[which]
    path = None if which == "path None" else tmp_path / "trace.safetensors"
    refused(lambda: write_trace(path, *args), fragment, InputError)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_write_trace_str_path(api, tmp_path):
    from lenskit.store import read_trace, write_trace

    write_trace(str(tmp_path / "trace.safetensors"), api["states"], api["meta"])
    assert torch.equal(read_trace(tmp_path).stages(1), api["states"][1])


# --- run_compare --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, fragment", [
    ({"run_a": None}, "run_a must be a path"),
    ({"prompt_b": "1"}, "prompt_b must be a whole number"),
    ({"prompt_b": 1.0}, "prompt_b must be a whole number"),
    ({"prompt_b": True}, "prompt_b must be a whole number"),  # was prompt 1
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"device": None}, "device must be a string"),
    ({"max_memory": -1}, "max_memory must be a positive number"),
    ({"exports_only": "no"}, "exports_only must be True or False"),
    ({"log": 1}, "log must be a function"),
])
def test_run_compare_arguments(api, kw, fragment):
    from lenskit.compare import run_compare

    args = {"run_a": api["run"], "run_b": api["run"], "align": "end"} | kw
    refused(lambda: run_compare(**args), fragment, InputError)


def test_run_compare_numpy_ints_and_str_paths(api):
    from lenskit.compare import run_compare

    doc = run_compare(str(api["run"]), api["run"], prompt_a=np.int64(0), prompt_b=np.int64(1), align="end",
                      top_k=np.int64(2), device="cpu")
    assert [r["prompt"] for r in doc["runs"]] == [0, 1] and doc["top_k"] == 2



def test_export_lens_of_another_model_of_the_same_shapes(api):
    """A fine-tune's lens has the traced model's shapes: only the fingerprint tells them apart (silently wrong
    numbers before)."""
    import copy

    from lenskit.lens import lens_from_model

    twin = copy.deepcopy(api["loaded"].model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(1.5)
    refused(lambda: export(api, lens=lens_from_model(twin, api["loaded"].adapter)),
            "the lens is not the traced model's", InputError)


def test_export_log_callback(api):
    from lenskit.export import ExportOptions, export_document

    refused(lambda: export_document(api["meta"], api["lens"], api["loaded"].tokenizer, reader(api["states"]),
                                    ExportOptions(), log=1), "log must be a function", InputError)
