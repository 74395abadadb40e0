"""`lenskit survey`: padded capture, mergeable aggregates (shards, order, resume), the CLI, the schema, torchrun."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, assert_clean_error, build, gpt2_config, llama_config

from lenskit.cli import app


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A JSONL corpus of random word documents (1-90 words), 3 bad lines, and a text file."""
    d = tmp_path_factory.mktemp("corpus")
    rnd = random.Random(0)
    with open(d / "a.jsonl", "w") as f:
        for i in range(22):
            f.write(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 90)))}) + "\n")
            if i == 5:
                f.write("{not json\n")
                f.write(json.dumps({"text": "  \n "}) + "\n")
                f.write(json.dumps({"title": "no text field"}) + "\n")
    (d / "b.txt").write_text("the cat sat on the mat and ran to Paris . " * 12)
    (d / "c.txt").write_bytes(b"\xff\xfe not utf-8")
    return d


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from lenskit.models import load_model

    return load_model(tiny_dir, device="cpu")


def _opts(corpus, **kw):
    from lenskit.corpus import expand_sources
    from lenskit.survey import SurveyOptions

    base = dict(sources=expand_sources([str(corpus)]), max_tokens=24, batch_size=3, block_docs=4, examples=4)
    base.update(kw)
    return SurveyOptions(**base)


def _shard(loaded, opts, target, rank=0, world=1, **kw):
    from lenskit.survey import Dist, survey_shard

    return survey_shard(loaded, opts, target, quiet=True, dist_info=Dist(rank, world), **kw)


def _same(a, b):
    """Two aggregates are identical: every integer array, counter and example."""
    assert a.counters == b.counters
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        assert np.array_equal(a.arrays[k], b.arrays[k]), k
    assert json.dumps(a.examples, sort_keys=True) == json.dumps(b.examples, sort_keys=True)


# -- capture under padding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padded_batch_capture_matches_unpadded(family, one_thread):
    """Right padding + attention mask: every real position's stages equal the sequence run alone. Not bit for bit:
    the batch runs kernels of other shapes (GEMM blocking, the masked attention path), whose float32 rounding
    differs by a few units in the last place per op (measured <= 5e-7 on these stages, whose entries are O(1));
    1e-5 allows 20x that over 3 layers and still catches any leak of padding or shifted positions (>= 1e-2)."""
    from lenskit.adapters import find_adapter, model_architecture
    from lenskit.capture import capture_batch, capture_stages

    model = build(llama_config() if family == "llama" else gpt2_config())
    adapter = find_adapter(model_architecture(model))
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in (37, 50, 12, 64, 5)]
    ref = [capture_stages(model, adapter, torch.tensor(s)) for s in seqs]  # [S, n, D] each
    for B in (1, 2, 5):
        h = capture_batch(model, adapter, seqs[:B])  # [S, B, T, D]
        assert h.shape[1] == B and h.shape[2] == max(len(s) for s in seqs[:B])
        for b in range(B):
            torch.testing.assert_close(h[:, b, : len(seqs[b])], ref[b], rtol=0, atol=1e-5)


# -- aggregates -----------------------------------------------------------------------------------------------------


def test_shards_in_any_order_merge_to_the_single_process_result(loaded, corpus, tmp_path, one_thread):
    from lenskit.survey_aggregates import Aggregates

    opts = _opts(corpus)
    single = _shard(loaded, opts, tmp_path / "one")
    c = single.counters
    assert c["documents"] == 23 and (c["empty"], c["unreadable"], c["too_long"]) == (1, 3, 0)
    assert c["positions"] == int(single.arrays["decision"].sum()) > 500
    S = single.n_stages
    assert (single.arrays["top1_at1"][S - 1], single.arrays["top1_le10"][0]) == (c["positions"], single.arrays["top1_le10"][0])
    assert all(len(v) == 4 for v in single.examples.values() if v)
    shards = [_shard(loaded, opts, tmp_path / "three", rank=r, world=3) for r in range(3)]
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = Aggregates(S, opts.examples)
        for r in order:
            merged.merge(Aggregates.from_state(json.loads(json.dumps(shards[r].state()))))
        _same(merged, single)


def test_engine_chunking_and_batch_size(loaded, corpus, tmp_path, one_thread):
    """The engine's memory budget never changes a value; the forward batch size changes only float rounding (the
    forward's kernel shapes): every count and histogram is the same, sums agree to 1e-6 relative."""
    a = _shard(loaded, _opts(corpus), tmp_path / "a")
    b = _shard(loaded, _opts(corpus, max_memory=1 << 16), tmp_path / "b")
    _same(a, b)
    c = _shard(loaded, _opts(corpus, batch_size=1), tmp_path / "c")
    assert a.counters == c.counters
    for k in a.arrays:
        if k.endswith("_sum"):
            np.testing.assert_allclose(c.arrays[k], a.arrays[k], rtol=1e-6, atol=64)
        else:
            assert np.array_equal(a.arrays[k], c.arrays[k]), k


def test_resume_after_a_failure_equals_an_uninterrupted_run(loaded, corpus, tmp_path, one_thread):
    from lenskit.survey import SurveyError, checkpoint_path, partial_dir

    opts = _opts(corpus)
    full = _shard(loaded, opts, tmp_path / "full")

    def fail_after_two(n):
        if n == 2:
            raise KeyboardInterrupt

    target = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _shard(loaded, opts, target, on_checkpoint=fail_after_two)
    ck = json.loads(checkpoint_path(partial_dir(target), 0, 1).read_text())
    assert ck["completed_blocks"] == [0, 1]
    with pytest.raises(SurveyError, match="--resume continues it"):
        _shard(loaded, opts, target)
    with pytest.raises(SurveyError, match="another model, corpus or options"):
        _shard(loaded, _opts(corpus, max_tokens=16), target, resume=True)
    _same(_shard(loaded, opts, target, resume=True), full)


def test_no_examples_kept(tiny_dir, corpus, tmp_path, one_thread):
    """--examples 0 (its documented lower bound) keeps no example and writes no export.json."""
    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["survey", str(corpus), "-m", tiny_dir, "-o", str(out), "-q", "--device", "cpu",
                                   "--examples", "0", "--max-docs", "4"])
    assert res.exit_code == 0, res.output
    assert (out / "survey.json").is_file() and not (out / "export.json").exists()


def test_decision_stage_and_classes():
    from lenskit.survey_aggregates import classify

    rank1 = torch.tensor([[5, 1, 1, 1, 1], [1, 3, 2, 1, 1], [9, 9, 9, 9, 1], [1, 1, 1, 1, 1]], dtype=torch.float64)
    right = torch.tensor([True, False, True, False])
    p = torch.tensor([0.9, 0.2, 0.5, 0.7])
    decision, classes = classify(rank1, right, p)
    assert decision.tolist() == [1, 3, 4, 0]
    assert classes["decided_then_lost"].tolist() == [False, True, False, False]
    assert classes["decided_late"].tolist() == [False, True, True, False]
    assert classes["confident_wrong_early"].tolist() == [False, False, False, True]


def test_corpus_formats(tmp_path, monkeypatch):
    from lenskit.corpus import expand_sources, iter_documents
    from lenskit.errors import InputError

    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n\n{"text": 3}\n{"text": "two"}\n')
    docs = list(iter_documents(expand_sources([str(tmp_path / "d.jsonl")])))
    assert [(d.index, d.text, d.problem) for d in docs] == [(0, "one", None), (1, None, "unreadable"), (2, "two", None)]
    assert [d.problem for d in iter_documents([str(tmp_path / "d.jsonl")], max_chars=2)] == ["too_long", "unreadable", "too_long"]
    with pytest.raises(InputError, match="corpus not found"):
        expand_sources([str(tmp_path / "missing.txt")])
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", "", None, "beta"]}), tmp_path / "e.parquet", row_group_size=2)
    got = [(d.text, d.problem) for d in iter_documents([str(tmp_path / "e.parquet")])]
    assert got == [("alpha", None), (None, "empty"), (None, "unreadable"), ("beta", None)]
    pq.write_table(pa.table({"text": [f"row {i} " + "x" * (i % 50) for i in range(3000)]}), tmp_path / "g.parquet",
                   row_group_size=500)
    data = (tmp_path / "g.parquet").read_bytes()  # a row group damaged: found only when read, mid-survey
    (tmp_path / "g.parquet").write_bytes(data[:20000] + bytes(random.Random(0).randrange(256) for _ in range(300))
                                         + data[20300:])
    with pytest.raises(InputError, match="cannot read Parquet file .* at row"):
        list(iter_documents([str(tmp_path / "g.parquet")]))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "f.parquet")
    with pytest.raises(InputError, match="no 'text' column"):
        list(iter_documents([str(tmp_path / "f.parquet")]))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["gamma", "delta"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in iter_documents(expand_sources([str(tmp_path / "ds")]))] == ["gamma", "delta"]
    from lenskit.corpus import DEMO_SOURCE

    demo = list(iter_documents([str(tmp_path / "d.jsonl"), DEMO_SOURCE]))
    assert [d.index for d in demo] == list(range(len(demo))) and len(demo) > 50 and demo[3].text
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "a"}\n{"text": "b"}\n')))
    assert [d.text for d in iter_documents(["-"])] == ["a", "b"]


def test_a_lone_surrogate_in_a_jsonl_text_is_unreadable(tmp_path):
    """JSON's "\\ud800" decodes to a str no tokenizer takes (a TypeError deep in it): counted as unreadable."""
    from lenskit.corpus import iter_documents

    (tmp_path / "d.jsonl").write_text('{"text": "caf\\ud800 au lait"}\n{"text": "ok"}\n')
    assert [(d.text, d.problem) for d in iter_documents([str(tmp_path / "d.jsonl")])] == [
        (None, "unreadable"), ("ok", None)]


def _good_checkpoint(path: Path, recipe: dict, S: int = 7) -> dict:
    from lenskit.survey import Aggregates, save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, recipe, {0, 1}, Aggregates(S, 4))
    return json.loads(path.read_text())


_EXAMPLE = {"key": 7, "doc": 0, "source": "a.txt", "pos": 3, "prompt_pos": 3, "token": "a", "next": "b", "top1": "b",
            "right": True, "p_top1": 0.5, "decision": 2, "top1_rank": [3, 2, 1, 1, 1, 1, 1],
            "next_rank": [3, 2, 1, 1, 1, 1, 1], "before": "x", "after": "y", "prompt_ids": [1, 5, 6, 7]}


def _with_example(ck: dict, **change) -> dict:
    ex = dict(ck["aggregates"]["examples"], decided_late=[dict(_EXAMPLE, **change)])
    return dict(ck, aggregates=dict(ck["aggregates"], examples=ex))


@pytest.mark.parametrize("change, fragment", [
    (lambda ck: [1, 2], "unknown format"),
    (lambda ck: {"format": ck["format"]}, "another model, corpus or options"),
    (lambda ck: dict(ck, completed_blocks="abc"), "completed_blocks"),
    (lambda ck: dict(ck, completed_blocks=[-1]), "completed_blocks"),
    (lambda ck: dict(ck, aggregates={"x": 1}), "aggregates"),
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], n_stages=10**12)), "aggregates"),  # no 8 TB of zeros
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], n_stages=9)), "aggregates"),  # another model's stages
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], arrays={})), "aggregates"),
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], counters={"positions": "many"})), "aggregates"),
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], k_examples="4")), "aggregates"),
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], counters={"positions": -5})), "aggregates"),
    (lambda ck: dict(ck, aggregates=dict(ck["aggregates"], examples={"other": []})), "aggregates"),
    # a string key would fail hex formatting, an id past the vocabulary the examples' trace: after the whole corpus
    (lambda ck: _with_example(ck, key="x"), "aggregates"),
    (lambda ck: _with_example(ck, prompt_ids=[5, 10**6]), "aggregates"),
    (lambda ck: _with_example(ck, prompt_ids=list(range(40))), "aggregates"),  # longer than --max-tokens
    (lambda ck: _with_example(ck, top1_rank="1"), "aggregates"),
])
def test_damaged_survey_checkpoint(tmp_path, change, fragment):
    """--resume reads a checkpoint someone edited or damaged: SurveyError (one line), never a half-read state."""
    from lenskit.survey import SurveyError, load_checkpoint

    recipe = {"corpus": "x", "max_tokens": 16}
    path = tmp_path / "shard-000-of-001.json"
    path.write_text(json.dumps(change(_good_checkpoint(path, recipe))))
    with pytest.raises(SurveyError, match=fragment):
        load_checkpoint(path, recipe, 7, vocab_size=96)


def test_good_survey_checkpoint_loads(tmp_path):
    from lenskit.survey import load_checkpoint

    recipe = {"corpus": "x"}
    _good_checkpoint(tmp_path / "ck.json", recipe)
    done, agg = load_checkpoint(tmp_path / "ck.json", recipe, 7)
    assert done == {0, 1} and agg.n_stages == 7
    (tmp_path / "ck.json").write_text(json.dumps(_with_example(json.loads((tmp_path / "ck.json").read_text()))))
    assert load_checkpoint(tmp_path / "ck.json", recipe, 7, vocab_size=96)[1].examples["decided_late"] == [_EXAMPLE]


def test_sources_that_would_hang_or_never_end_are_refused(tmp_path, monkeypatch):
    """A FIFO (no writer: read for ever; and a survey reads its sources twice), /dev/zero, a name too long for the
    filesystem, stdin that is a terminal: one InputError each, when the corpus is expanded (before the model loads)."""
    from lenskit.corpus import expand_sources
    from lenskit.errors import InputError

    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    for name, fragment in (("pipe.txt", "not a regular file"), ("zero.jsonl", "not a regular file"),
                           ("x" * 300, "cannot read the corpus"), ("pipe.txt/a", "corpus not found")):
        with pytest.raises(InputError, match=fragment):
            expand_sources([str(tmp_path / name)])
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "dir" / "pipe.txt")  # in a folder: left out, as dot files and dot folders are
    (tmp_path / "dir" / ".git").mkdir()
    (tmp_path / "dir" / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (tmp_path / "dir" / ".run.survey-partial").mkdir()
    (tmp_path / "dir" / ".run.survey-partial" / "shard-000-of-001.json").write_text("{}")
    (tmp_path / "dir" / "a.txt").write_text("the cat")
    assert expand_sources([str(tmp_path / "dir")]) == [str(tmp_path / "dir" / "a.txt")]
    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
    with pytest.raises(InputError, match="stdin, which is a terminal"):
        expand_sources(["-"])


def test_remove_partial_deletes_only_checkpoints(tmp_path):
    """A folder that happens to have the partial folder's name keeps what lenskit did not write there."""
    from lenskit.survey import partial_dir, remove_partial

    folder = partial_dir(tmp_path / "run")
    folder.mkdir()
    (folder / "shard-000-of-001.json").write_text("{}")
    (folder / ".shard-000-of-001.json.abc.tmp").write_text("{")
    (folder / "notes.txt").write_text("mine")
    remove_partial(tmp_path / "run")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (folder / "notes.txt").unlink()
    (folder / "shard-000-of-001.json").write_text("{}")
    remove_partial(tmp_path / "run")
    assert not folder.exists()


def test_reading_is_bounded(tmp_path, monkeypatch):
    """Long documents and lines are too_long once their bound is read (never held whole), JSON nested past Python's
    recursion limit is unreadable, and an endless stdin ends as one too_long document."""
    import io

    from lenskit.corpus import TOO_LONG, bounded_lines, count_documents, iter_documents

    assert list(bounded_lines(io.BytesIO(b"abc\n" + b"x" * 50 + b"\nde"), 10)) == [b"abc\n", TOO_LONG, b"de"]
    assert list(bounded_lines(io.BytesIO(b"0123456789\n"), 10)) == [b"0123456789\n"]
    (tmp_path / "a.txt").write_bytes(b"a" * 41)
    assert [d.problem for d in iter_documents([str(tmp_path / "a.txt")], max_chars=10)] == ["too_long"]
    (tmp_path / "d.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + '}\n{"text": "ok"}\n')
    assert [(d.text, d.problem) for d in iter_documents([str(tmp_path / "d.jsonl")])] == [
        (None, "unreadable"), ("ok", None)]
    (tmp_path / "e.jsonl").write_bytes(b'{"text": "' + b"a" * (2 << 20) + b'"}\n{"text": "ok"}\n')
    assert [(d.text, d.problem) for d in iter_documents([str(tmp_path / "e.jsonl")], max_chars=100)] == [
        (None, "too_long"), ("ok", None)]
    assert count_documents([str(tmp_path / "e.jsonl")], max_chars=100) == 2
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')  # as Notepad saves it
    assert [d.text for d in iter_documents([str(tmp_path / "bom.jsonl")])] == ["a", "b"]
    with open("/dev/zero", "rb") as zero:
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": zero})())
        assert [d.problem for d in iter_documents(["-"], max_chars=1000)] == ["too_long"]
    stream = b" \n" * 5 + b'{"text": "a"}\n' + b'{"text": "' + b"b" * 5000 + b'"}\n{"text": "c"}'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stream)))
    assert [(d.text, d.problem) for d in iter_documents(["-"], max_chars=100)] == [
        ("a", None), (None, "too_long"), ("c", None)]


@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
    ({"WORLD_SIZE": str(10**30)}, "WORLD_SIZE="),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK='2'"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "99999"}, "MASTER_PORT='99999'"),
])
def test_torchrun_environment_garbage_is_one_line(tmp_path, monkeypatch, env, fragment):
    """torchrun variables set by hand or left in a shell: one line before the model loads (the model here does not
    exist), not a ValueError or KeyError traceback, nor a wait for ranks that can never come."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "a.txt").write_text("the cat")
    res = CliRunner().invoke(app, ["survey", str(tmp_path / "a.txt"), "-m", str(tmp_path / "no-model"), "-o",
                                   str(tmp_path / "r"), "-q"])
    assert_clean_error(res, fragment, tmp_path / "r")


def test_a_peer_that_never_joins_is_one_line(tmp_path, monkeypatch):
    """WORLD_SIZE=2 set by hand with no second process: rank 0 says it is joining, waits JOIN_SECONDS (10 min; 2 s
    here) for the peer, then one line -- not torch's 2-hour wait. Nothing is written."""
    import socket

    import lenskit.survey as survey_mod

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(survey_mod, "JOIN_SECONDS", 2)
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "a.txt").write_text("the cat")
    res = CliRunner().invoke(app, ["survey", str(tmp_path / "a.txt"), "-m", str(tmp_path / "no-model"), "-o",
                                   str(tmp_path / "r")])
    assert "joining the torchrun job of 2 processes at 127.0.0.1" in res.stderr
    assert_clean_error(res, "cannot join the torchrun job", tmp_path / "r")


def test_cli_refuses_a_fifo_corpus_before_the_model_loads(tmp_path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    res = CliRunner().invoke(app, ["survey", str(tmp_path / "pipe.jsonl"), "-m", str(tmp_path / "no-model"), "-o",
                                   str(tmp_path / "r"), "-q"])
    assert_clean_error(res, "not a regular file", tmp_path / "r")
    res = CliRunner().invoke(app, ["survey", "--demo", "--max-chars", str(10**30), "-m", str(tmp_path / "no-model")])
    assert_clean_error(res, "--max-chars")


# -- the command ----------------------------------------------------------------------------------------------------


def _doc_without_run(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("run")
    doc["options"].pop("processes")
    return doc


def test_cli_writes_a_valid_survey_run_that_serve_shows(tiny_dir, corpus, tmp_path, one_thread):
    import jsonschema

    from lenskit.survey_schema import JSON_SCHEMA

    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["survey", str(corpus), "-m", tiny_dir, "-o", str(out), "--max-tokens", "24", "-b", "3",
                              "--block-docs", "4", "--examples", "3"])
    assert res.exit_code == 0, res.output
    assert "surveyed 23 document(s)" in res.stderr and "unreadable 3" in res.stderr
    doc = json.loads((out / "survey.json").read_text())
    jsonschema.validate(doc, JSON_SCHEMA)
    S = len(doc["stages"]["name"])
    assert doc["per_stage"]["agreement"][-1] == 1.0 and len(doc["blocks"]["stage"]) == S - 1
    assert sum(doc["decision"]["right"]) + sum(doc["decision"]["wrong"]) == doc["corpus"]["positions"]
    export = json.loads((out / "export.json").read_text())
    n_examples = sum(len(v) for v in doc["examples"].values())
    assert len(export["prompts"]) == n_examples > 0
    ex = next(e for v in doc["examples"].values() for e in v)
    p = export["prompts"][ex["prompt"]]
    assert [q["pos"] for q in p["positions"]] == [len(p["tokens"]) - 1]
    assert export["tokens"][p["tokens"][-1]] == ex["token"]
    assert not list(tmp_path.glob(".*"))  # no checkpoint or temporary folder left
    runs = json.loads(runner.invoke(app, ["serve", str(out), "--get", "/runs.json"]).stdout)
    assert runs["runs"][0]["survey"] == "runs/run/survey.json"
    got = runner.invoke(app, ["serve", str(out), "--get", "/runs/run/survey.json"])
    assert json.loads(got.stdout)["schema"] == "lenskit.survey/1"
    assert runner.invoke(app, ["serve", str(out), "--get", "/corpus.html"]).exit_code == 0
    before = _doc_without_run(out / "survey.json")
    again = runner.invoke(app, ["survey", str(corpus), "-m", tiny_dir, "-o", str(out), "-q"])
    assert_clean_error(again, "already exists; use --force")
    forced = runner.invoke(app, ["survey", str(corpus), "-m", tiny_dir, "-o", str(out), "-q", "--force",
                                 "--max-tokens", "24", "-b", "3", "--block-docs", "4", "--examples", "3"])
    assert forced.exit_code == 0, forced.output
    assert _doc_without_run(out / "survey.json") == before


def test_ctrl_c_while_writing_keeps_the_old_run(tiny_dir, tmp_path, monkeypatch, one_thread):
    """Ctrl-C while --force writes the new run: the old run stays whole, no temporary folder is left beside it, and
    the checkpoints stay for --resume."""
    import lenskit.survey_document as sd

    (tmp_path / "c.txt").write_text("the cat sat on the mat and ran to Paris . " * 3)
    out = tmp_path / "run"
    args = ["survey", str(tmp_path / "c.txt"), "-m", tiny_dir, "-o", str(out), "-q", "--device", "cpu",
            "--examples", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(tmp, doc, export_doc):
        (Path(tmp) / "survey.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(sd, "write_survey_run", interrupted)
    res = CliRunner().invoke(app, [*args, "--force"])
    assert res.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.survey-partial", "c.txt", "run"]


def test_cli_errors(tiny_dir, tmp_path):
    runner = CliRunner()
    assert_clean_error(runner.invoke(app, ["survey", "-m", tiny_dir, "-o", str(tmp_path / "r")]), "no corpus")
    assert_clean_error(runner.invoke(app, ["survey", str(tmp_path / "nope.txt"), "-m", tiny_dir, "-o",
                                           str(tmp_path / "r")]), "corpus not found", tmp_path / "r")
    (tmp_path / "x.txt").write_text("the cat")
    assert_clean_error(runner.invoke(app, ["survey", str(tmp_path / "x.txt"), "-m", tiny_dir, "--max-tokens", "999",
                                           "-o", str(tmp_path / "r")]), "longer than the model's context")
    assert_clean_error(runner.invoke(app, ["survey", str(tmp_path / "x.txt"), "-m", str(tmp_path / "no-model"), "-o",
                                           str(tmp_path / "x.txt" / "a" / "r")]), "x.txt is not a folder")
    assert (tmp_path / "x.txt").read_text() == "the cat"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.md").write_text("mine")
    assert_clean_error(runner.invoke(app, ["survey", str(tmp_path / "x.txt"), "-m", tiny_dir, "-o",
                                           str(tmp_path / "busy"), "--force"]), "not a lenskit run folder")


def test_a_corpus_with_nothing_to_survey_is_an_error(tiny_dir, tmp_path, one_thread):
    """Only empty and binary documents: one line saying why, exit 1, no run and no partial checkpoints left."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("   \n")
    (corpus / "blob.txt").write_bytes(b"\xff\xfe\x00\x01" * 64)
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["survey", str(corpus), "-m", tiny_dir, "-o", str(out), "-q", "--device", "cpu"])
    assert_clean_error(res, "nothing to survey", out)
    assert "empty 1" in res.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_schema_command_prints_the_survey_schema():
    res = CliRunner().invoke(app, ["schema", "--survey"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["properties"]["schema"]["const"] == "lenskit.survey/1"


def test_torchrun_two_processes_equal_one(tiny_dir, corpus, tmp_path):
    """`torchrun --nproc-per-node 2` (gloo, CPU): rank 0 merges both shards; the survey equals a single process's."""
    args = [str(corpus), "-m", tiny_dir, "--max-tokens", "24", "-b", "3", "--block-docs", "4", "--examples", "3", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LENSKIT_LOAD_PLUGINS="0")
    one = subprocess.run([sys.executable, "-m", "lenskit.cli", "survey", *args, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "lenskit.cli", "survey", *args, "-o", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "survey.json").read_text())["options"]["processes"] == 2
    assert _doc_without_run(tmp_path / "two" / "survey.json") == _doc_without_run(tmp_path / "one" / "survey.json")
    assert (tmp_path / "two" / "export.json").read_bytes() == (tmp_path / "one" / "export.json").read_bytes()


def _started_until(checkpoint, cmd, env, what: str, stderr=subprocess.DEVNULL):
    """A survey process started and left running until its first ``checkpoint`` file exists (skips the test when it
    finishes first: a machine too fast for the corpus to be ``what``, killed or interrupted, mid-way)."""
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip(f"the survey finished before it could be {what} (machine too fast for this corpus)")
    return proc


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_dir, corpus, tmp_path):
    """SIGKILL a real `lenskit survey` process once a checkpoint exists; `--resume` gives the uninterrupted result."""
    import signal

    args = [str(corpus), "-m", tiny_dir, "--max-tokens", "24", "-b", "1", "--block-docs", "1", "--examples", "3", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LENSKIT_LOAD_PLUGINS="0")
    cli = [sys.executable, "-m", "lenskit.cli", "survey", *args]
    whole = subprocess.run([*cli, "-o", str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=180)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    ck = tmp_path / f".{out.name}.survey-partial" / "shard-000-of-001.json"
    proc = _started_until(ck, [*cli, "-o", str(out)], env, "killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists() and ck.exists()  # nothing half-written in place: only the checkpoint
    done = json.loads(ck.read_text())
    assert done  # a readable checkpoint (written atomically)
    res = subprocess.run([*cli, "-o", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert _doc_without_run(out / "survey.json") == _doc_without_run(tmp_path / "whole" / "survey.json")
    assert (out / "export.json").read_bytes() == (tmp_path / "whole" / "export.json").read_bytes()


def test_an_interrupted_survey_says_how_to_resume(tiny_dir, corpus, tmp_path):
    """Ctrl-C once a checkpoint exists: exit 130 and one line that says the checkpoints are kept for --resume."""
    import signal

    out = tmp_path / "cut"
    ck = tmp_path / f".{out.name}.survey-partial" / "shard-000-of-001.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LENSKIT_LOAD_PLUGINS="0")
    proc = _started_until(ck, [sys.executable, "-m", "lenskit.cli", "survey", str(corpus), "-m", tiny_dir,
                               "--max-tokens", "24", "-b", "1", "--block-docs", "1", "-q", "-o", str(out)], env,
                          "interrupted", stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("lenskit: error: interrupted; the checkpoints are kept: rerun the same "
                                            "command with --resume to continue")
    assert ck.exists() and not out.exists()
