"""`lenskit export` end to end on a tiny model: schema validity, stdout, options, and bad input."""

import json
import re
import shutil

import jsonschema
import orjson
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import assert_clean_error
from lenskit.cli import app
from lenskit.schema import JSON_SCHEMA, SCHEMA_VERSION, histogram, markdown_reference
from lenskit.store import TRACE_FILE, read_trace

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_trace_writes_a_valid_export(tiny_run):
    doc = orjson.loads((tiny_run / "export.json").read_bytes())
    jsonschema.validate(doc, JSON_SCHEMA)
    assert doc["schema"] == SCHEMA_VERSION
    assert len(doc["prompts"]) == 2
    p0 = doc["prompts"][0]
    S = len(doc["stages"]["name"])
    assert S == 2 * 3 + 1
    assert len(p0["positions"]) == len(p0["tokens"])
    pos = p0["positions"][0]
    assert all(len(row) == S for row in pos["rank"]) and len(pos["tracked"]) >= doc["lens"]["top_k"]
    assert "France" in [doc["tokens"][i] for i in pos["tracked"]]  # --track
    counts, samples = histogram(doc, pos)
    assert (counts.sum(1) == doc["vocab_size"]).all()
    per = doc["histogram"]["samples"]
    assert [sorted(x) for x in samples] == [sorted(b for b in range(len(c)) if 0 < c[b] <= per) for c in counts]
    assert all(len(refs) == counts[s, b] for s, x in enumerate(samples) for b, refs in x.items())
    assert len(doc["tokens"]) == len(set(doc["token_ids"]))  # each token string once


def test_export_to_stdout_with_positions_and_prompt(tiny_run):
    res = invoke("export", tiny_run, "-o", "-", "--positions", "1,3-4", "--prompt", "1", "--top-k", "3")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [p["pos"] for p in doc["prompts"][0]["positions"]] == [1, 3, 4]
    assert doc["prompts"][0]["index"] == 1 and doc["lens"]["top_k"] == 3


def test_export_to_file_is_deterministic(tiny_run, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke("export", tiny_run, "-o", a, "-q", "--track", "France").exit_code == 0
    assert invoke("export", tiny_run, "-o", b, "-q", "--track", "France", "--max-memory", "1").exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    # export from the saved trace equals the export written right after tracing
    assert orjson.loads(a.read_bytes()) == orjson.loads((tiny_run / "export.json").read_bytes())


def test_schema_command_and_docs_are_current():
    res = invoke("schema")
    assert json.loads(res.stdout) == json.loads(json.dumps(JSON_SCHEMA))
    from pathlib import Path

    doc = Path(__file__).parent.parent / "docs" / "export-format.md"
    assert doc.read_text() == markdown_reference(), "docs/export-format.md is stale: lenskit schema --markdown > docs/export-format.md"


@pytest.mark.parametrize("args,fragment", [
    (["--positions", "99"], "out of range"),
    (["--positions", "x-y"], "bad --positions"),
    (["--prompt", "5"], "--prompt 5 is out of range"),
    (["--top-k", "100000"], "--top-k 100000"),
    (["--track", "no such words here"], "not a single token"),
    (["--track", "123456"], "out of range"),
    (["--precision", "half"], "unknown precision"),
])
def test_export_bad_options(tiny_run, tmp_path, args, fragment):
    out = tmp_path / "x.json"
    res = invoke("export", tiny_run, "-o", out, *args)
    assert_clean_error(res, fragment)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_export_too_big_to_hold_is_refused_before_the_weights_load(tiny_run, tmp_path, monkeypatch):
    """`--top-k` near the vocabulary over every position (49,152 over the test paragraph: 1.1 billion numbers, hours
    of rank passes, GBs of memory) is one line naming the size, before any lens weights load; fewer positions pass."""
    import lenskit.export
    import lenskit.weights

    def boom(*a, **k):
        raise AssertionError("lens weights loaded before the document size was checked")

    monkeypatch.setattr(lenskit.export, "MAX_DOCUMENT_VALUES", 20_000)
    with monkeypatch.context() as m:
        m.setattr(lenskit.weights, "trace_lens", boom)
        res = invoke("export", tiny_run, "-o", tmp_path / "x.json", "--top-k", "90")
        assert_clean_error(res, "more than 20,000: lower --top-k or --stage-top, or export fewer --positions")
    assert invoke("export", tiny_run, "-o", tmp_path / "y.json", "--top-k", "90", "-p", "0", "-q").exit_code == 0


def _copy_run(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _with_meta(tiny_run, tmp_path, change):
    """A copy of the run whose trace metadata has been edited by ``change(meta)``."""
    run = _copy_run(tiny_run, tmp_path)
    tensors = load_file(run / TRACE_FILE)
    meta = read_trace(run).meta
    change(meta)
    save_file(tensors, run / TRACE_FILE, metadata={"lenskit": json.dumps(meta)})
    return run


def test_truncated_trace(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    data = (run / TRACE_FILE).read_bytes()
    (run / TRACE_FILE).write_bytes(data[: len(data) // 2])
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), "trace")
    assert not (tmp_path / "o.json").exists()


def test_garbage_trace(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    (run / TRACE_FILE).write_bytes(b"not a safetensors file at all")
    assert_clean_error(invoke("export", run), "not a readable safetensors file")


def test_other_format_version(tiny_run, tmp_path):
    run = _with_meta(tiny_run, tmp_path, lambda meta: meta.update(format=99))
    assert_clean_error(invoke("export", run), "format 99")


def test_fingerprint_mismatch(tiny_run, tmp_path):
    run = _with_meta(tiny_run, tmp_path, lambda meta: meta["model"].update(fingerprint="0000000000000000"))
    assert_clean_error(invoke("export", run), "differ from the traced model")


def test_missing_weights(tiny_run, tmp_path):
    gone = {"id": str(tmp_path / "gone"), "path": str(tmp_path / "gone"), "gguf": None, "revision": None}
    run = _with_meta(tiny_run, tmp_path, lambda meta: meta["model"].update(source=gone))
    assert_clean_error(invoke("export", run), "cannot find the weights")


def test_missing_run(tmp_path):
    assert_clean_error(invoke("export", tmp_path / "nope"), "no trace at")


def test_export_html_report(tiny_run, tmp_path):
    html = tmp_path / "report.html"
    res = invoke("export", tiny_run, "-o", tmp_path / "e.json", "--html", html, "-q")
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") or text.lstrip().lower().startswith("<!doctype html")
    assert SCHEMA_VERSION in text and "</script>" in text
    assert "<script src=" not in text  # D3 and the viewer inlined: nothing loaded from elsewhere


def test_positions_out_of_range_names_the_prompt(tiny_run, tmp_path):
    """With several prompts, --positions applies to each: the error says which prompt is too short."""
    out = tmp_path / "x.json"
    res = invoke("export", tiny_run, "-o", out, "--positions", "10")  # prompt 0 has 11 tokens, prompt 1 has 8
    assert_clean_error(res, "prompt 1 has 8 tokens")
    assert not out.exists()


@pytest.mark.parametrize("change,fragment", [
    ({"track": "Paris"}, "ExportOptions.track must be a list"),  # not followed letter by letter
    ({"track": 5}, "ExportOptions.track must be a list"),
    ({"top_k": "5"}, "ExportOptions.top_k must be an int"),
    ({"top_k": True}, "ExportOptions.top_k must be an int"),
    ({"positions": 3}, "ExportOptions.positions must be a string"),
    ({"prompt": "1"}, "ExportOptions.prompt must be an int"),
    ({"samples": "3"}, "ExportOptions.samples must be an int"),
    ({"max_memory": "256M"}, "ExportOptions.max_memory must be a positive"),
    ({"max_memory": 0}, "ExportOptions.max_memory must be a positive"),
    ({"norm": "no"}, "ExportOptions.norm must be True or False"),
    ({"lenses": "logit"}, "ExportOptions.lenses must be a non-empty list"),
])
def test_python_api_option_types_are_input_errors(tiny_run, change, fragment):
    """The Python API's ExportOptions of the wrong type: one InputError naming the field, before any weights load."""
    from lenskit.errors import InputError
    from lenskit.export import ExportOptions, export_run_dir

    with pytest.raises(InputError, match=fragment):
        export_run_dir(tiny_run, ExportOptions(**change))


def test_export_document_checks_its_arguments(tiny_dir):
    """export_document with a wrong lens, tokenizer, metadata or stage reader: InputError, not a deep torch error."""
    from lenskit.capture import trace_prompts
    from lenskit.errors import InputError
    from lenskit.export import ExportOptions, export_document
    from lenskit.lens import lens_from_model
    from lenskit.models import load_model

    loaded = load_model(tiny_dir, device="cpu")
    with pytest.raises(InputError, match="list of prompt strings"):
        trace_prompts(loaded, "the cat")  # a str, not a list: would be traced letter by letter
    with pytest.raises(InputError, match=r"texts\[1\] must be a string"):
        trace_prompts(loaded, ["the cat", 5])
    states, meta = trace_prompts(loaded, ["the cat sat"])
    lens = lens_from_model(loaded.model, loaded.adapter)
    def good(i):
        return lambda p0, p1: states[i][:, p0:p1]

    opts = ExportOptions(top_k=2, positions="-1")
    for args, fragment in (
        ((meta, None, loaded.tokenizer, good), "lens must be a Lens"),
        ((meta, [], loaded.tokenizer, good), "lens must be a Lens"),
        ((meta, lens, None, good), "needs the model's tokenizer"),
        (({}, lens, loaded.tokenizer, good), "must be a trace's metadata"),
        ((meta, lens, loaded.tokenizer, lambda i: (lambda p0, p1: states[i][:, p0:p1, :5])), r"expected a tensor"),
    ):
        with pytest.raises(InputError, match=fragment):
            export_document(*args, opts)
    doc = export_document(meta, lens, loaded.tokenizer, good, opts)
    assert [q["pos"] for q in doc["prompts"][0]["positions"]] == [len(states[0][0]) - 1]


def test_schema_markdown_with_survey_is_refused():
    """`lenskit schema --survey --markdown` used to print the survey's JSON Schema, ignoring --markdown."""
    assert_clean_error(invoke("schema", "--survey", "--markdown"), "--markdown is the export format's")


@pytest.mark.parametrize("change,fragment", [
    ({"precision": ["fast"]}, "ExportOptions.precision must be a string"),
    ({"device": 0}, "ExportOptions.device must be a string"),
    ({"lenses": [3]}, "ExportOptions.lenses must be a non-empty list"),
    ({"top_k": 10**5000}, "--top-k (a number of thousands of digits)"),  # str() of it would raise ValueError
    ({"prompt": 10**5000}, "--prompt (a number of thousands of digits)"),
])
def test_python_api_option_values_are_input_errors(tiny_run, change, fragment):
    from lenskit.errors import InputError
    from lenskit.export import ExportOptions, export_run_dir

    with pytest.raises(InputError, match=re.escape(fragment)):
        export_run_dir(tiny_run, ExportOptions(**change))


def test_parse_positions_and_resolve_track_check_their_arguments():
    """The public helpers called from Python: wrong types are one InputError; numpy integers work like ints; a bool
    is not token id 1; a str of tracks is not followed letter by letter."""
    import numpy as np

    from lenskit.errors import InputError
    from lenskit.export import parse_positions, resolve_track

    assert parse_positions("0-1", np.int64(3)) == [0, 1]
    for spec, n in ((3, 5), (["1"], 5), (b"1", 5), ("1", -3), ("1", True), ("1", 2.5), (None, None)):
        with pytest.raises(InputError, match="--positions"):
            parse_positions(spec, n)
    assert resolve_track(None, [np.int64(3), 7], 100) == [3, 7]
    for items in ([True], [3.0], [None], [b"1"], "5", None, [10**5000]):
        with pytest.raises(InputError, match="--track"):
            resolve_track(None, items, 100)


def test_adapters_check_refuses_an_empty_model_name():
    """`--check ''` used to load the current folder as a model."""
    for name in ("", "  "):
        assert_clean_error(invoke("adapters", "--check", name), "not an empty name")
