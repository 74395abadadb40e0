"""The lens seam: the registry (built-ins and a plugin through ``register_lenses``), the tuned lens in the engine
(per-stage translators in fixed-shape blocks: chunk-size invariance, exact last stage, fast mode), several lenses
in one export, and refusing a lens made for another model."""

from __future__ import annotations

import json
import os

import jsonschema
import orjson
import pytest
import torch
from typer.testing import CliRunner

from conftest import assert_clean_error, build, llama_config
from lenskit.cli import app
from lenskit.hookspecs import hookimpl
from lenskit.lens import lens_from_model
from lenskit.lenses import LensKind, StageLens, Translator, logit_lens, open_lenses, registry
from lenskit.lenses.tuned import CONFIG_FILE, save_lens
from lenskit.plugins import BUILTIN, pm
from lenskit.schema import JSON_SCHEMA, SCHEMA_VERSION, histogram, lens_position, lenses
from lenskit.scoring import Scorer
from lenskit.store import read_trace

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def random_translator(S, D, seed=0, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    tr = Translator(torch.randn(S, D, D, generator=g) * scale / D**0.5, torch.randn(S, D, generator=g) * scale,
                    [True] * (S - 1) + [False])
    tr.weight[-1] = 0
    tr.bias[-1] = 0
    return tr


@pytest.fixture(scope="module")
def tiny_lens_dir(tiny_run, tmp_path_factory):
    """A tuned lens (random translators, last stage identity) for the model of ``tiny_run``."""
    meta = read_trace(tiny_run).meta
    S = len(meta["stages"])
    D = 32
    out = tmp_path_factory.mktemp("lens") / "tiny-lens"
    model = {k: meta["model"][k] for k in ("id", "fingerprint", "architecture", "n_layers", "vocab_size")}
    save_lens(out, random_translator(S, D), model, meta["stages"], {"fit": None})
    return out


def test_builtins_register_through_the_hook():
    kinds = registry()
    assert kinds["logit"][1] == BUILTIN and kinds["tuned"][1] == BUILTIN
    assert not kinds["logit"][0].takes_arg and kinds["tuned"][0].takes_arg


class ScaledLens:
    """A third-party lens: every stage scaled by 2 before the head (an affine translator: A = I, b = 0)."""

    @hookimpl
    def register_lenses(self, register):
        def open_(arg, model, stages):
            S = len(stages)
            tr = Translator(torch.eye(32).repeat(S, 1, 1), torch.zeros(S, 32), [True] * S)
            return StageLens(kind="double", description="2h", model_fingerprint=model["fingerprint"], translator=tr)

        register(LensKind(name="double", description="every stage doubled", open=open_))


def test_a_plugin_lens_is_usable_from_the_cli(tiny_run, tmp_path):
    registry()
    plugin = ScaledLens()
    pm.register(plugin, name="test-double-lens")
    try:
        assert "double" in registry()
        out = tmp_path / "e.json"
        res = invoke("export", tiny_run, "-o", out, "-q", "--lens", "double", "--prompt", "0")
        assert res.exit_code == 0, res.output
        doc = orjson.loads(out.read_bytes())
        assert [x["kind"] for x in doc["lens"]["lenses"]] == ["double"]
        assert doc["lens"]["lenses"][0]["source"] is None
    finally:
        pm.unregister(plugin)
    assert "double" not in registry()


def test_unknown_or_malformed_lens_specs(tiny_run):
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "nope"), "unknown lens 'nope'")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "tuned"), "needs an argument")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "logit:x"), "takes no argument")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "tuned:/nonexistent"), "lens folder not found")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "tuned: "), "needs an argument")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "logit:"), "takes no argument")
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", "no\npe"), "unknown lens 'no pe'")  # one line


def test_reference_call_matches_the_scorer_and_the_last_stage_is_exact():
    model = build(llama_config())
    head = lens_from_model(model, __import__("lenskit.adapters", fromlist=["x"]).find_adapter("LlamaForCausalLM"))
    S, D, P = 7, 32, 5
    tr = random_translator(S, D)
    lens = StageLens("tuned", "t", head.fingerprint(), tr).bind(head)
    h = torch.randn(P * S, D)  # rows (position, stage)
    stage = torch.arange(P * S) % S
    ref = lens(h, stage)  # [N, V]
    sc = Scorer(lens, torch.device("cpu"), True, "float32")
    sc.set_block(S)
    got = sc.scores(h)[:, sc.inv]  # back to vocabulary order
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    last = torch.arange(P) * S + S - 1
    assert torch.equal(got[last], Scorer(logit_lens(head), torch.device("cpu"), True, "float32").scores(h[last])[:, sc.inv])


def test_identity_translator_equals_the_logit_lens(tiny_run, tmp_path):
    meta = read_trace(tiny_run).meta
    S = len(meta["stages"])
    ident = tmp_path / "ident"
    save_lens(ident, Translator.identity(S, 32), dict(meta["model"]), meta["stages"], {})
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke("export", tiny_run, "-o", a, "-q").exit_code == 0
    res = invoke("export", tiny_run, "-o", b, "-q", "--lens", f"tuned:{ident}")
    assert res.exit_code == 0, res.output
    da, db = orjson.loads(a.read_bytes()), orjson.loads(b.read_bytes())
    assert da["lens"]["lenses"][0]["kind"] == "logit" and db["lens"]["lenses"][0]["kind"] == "tuned"
    assert da["prompts"] == db["prompts"]


def test_tuned_lens_export_is_chunk_size_invariant_and_fast_mode_exact(tiny_run, tiny_lens_dir, tmp_path):
    outs = []
    for extra in ([], ["--max-memory", "1"], ["--precision", "fast"]):
        out = tmp_path / f"t{len(outs)}.json"
        res = invoke("export", tiny_run, "-o", out, "-q", "--lens", f"tuned:{tiny_lens_dir}", *extra)
        assert res.exit_code == 0, res.output
        outs.append(orjson.loads(out.read_bytes()))
    assert outs[0]["prompts"] == outs[1]["prompts"]  # bit-identical for any chunk size
    ids0, ids2 = outs[0]["token_ids"], outs[2]["token_ids"]
    for p0, p2 in zip(outs[0]["prompts"][0]["positions"], outs[2]["prompts"][0]["positions"]):
        assert [ids0[i] for i in p0["tracked"]] == [ids2[i] for i in p2["tracked"]]  # fast mode: same top-k
        assert p0["rank"] == p2["rank"]  # and ranks
    logit = orjson.loads((tiny_run / "export.json").read_bytes())
    k = logit["lens"]["top_k"]
    for pl, pt in zip(logit["prompts"][0]["positions"], outs[0]["prompts"][0]["positions"]):
        # last stage exact: the same final top-k, with the same scores
        assert [logit["token_ids"][i] for i in pl["tracked"][:k]] == [ids0[i] for i in pt["tracked"][:k]]
        assert [r[-1] for r in pl["score"][:k]] == [r[-1] for r in pt["score"][:k]] and pt["kl"][-1] == 0
        assert pl["rank"] != pt["rank"]  # but the translators change the other stages


def test_the_same_lens_twice_is_refused_however_spelled(tiny_run, tiny_lens_dir):
    for a, b in (("logit", " logit"), (f"tuned:{tiny_lens_dir}", f"tuned:{tiny_lens_dir}/"),
                 (f"tuned:{tiny_lens_dir}", f"tuned:{tiny_lens_dir}/../{tiny_lens_dir.name}")):
        assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", a, "--lens", b), "given twice")


def test_two_lenses_in_one_export(tiny_run, tiny_lens_dir, tmp_path):
    out = tmp_path / "two.json"
    res = invoke("export", tiny_run, "-o", out, "-q", "--lens", "logit", "--lens", f"tuned:{tiny_lens_dir}")
    assert res.exit_code == 0, res.output
    doc = orjson.loads(out.read_bytes())
    jsonschema.validate(doc, JSON_SCHEMA)
    assert doc["schema"] == SCHEMA_VERSION
    info = lenses(doc)
    assert [x["kind"] for x in info] == ["logit", "tuned"]
    assert info[0]["fingerprint"] == doc["model"]["fingerprint"] and info[1]["source"] == str(tiny_lens_dir)
    assert info[1]["covered"] == [True] * 6 + [False] and info[1]["fingerprint"] != info[0]["fingerprint"]
    singles = []
    for spec in ("logit", f"tuned:{tiny_lens_dir}"):
        one = tmp_path / "one.json"
        assert invoke("export", tiny_run, "-o", one, "-q", "--lens", spec).exit_code == 0
        singles.append(orjson.loads(one.read_bytes()))
    numbers = ("score", "rank", "mean", "std", "lse", "entropy", "kl", "bin_edge")
    for pos, p_logit, p_tuned in zip(doc["prompts"][0]["positions"], singles[0]["prompts"][0]["positions"],
                                     singles[1]["prompts"][0]["positions"]):
        assert [doc["token_ids"][i] for i in pos["tracked"]] == [singles[0]["token_ids"][i] for i in p_logit["tracked"]]
        second = lens_position(pos, 1)
        for key in numbers:
            assert pos[key] == p_logit[key] and second[key] == p_tuned[key]
        assert second["hist"]["counts"] == p_tuned["hist"]["counts"]
        counts, _ = histogram(doc, second)
        assert (counts.sum(1) == doc["vocab_size"]).all()
    # a version-2 document reads as one logit lens
    assert lenses({"lens": {"norm": True}, "model": {"fingerprint": "x"}})[0]["kind"] == "logit"


def test_a_lens_for_another_model_is_refused(tiny_run, tmp_path):
    meta = read_trace(tiny_run).meta
    other = tmp_path / "other"
    save_lens(other, Translator.identity(len(meta["stages"]), 32), dict(meta["model"], fingerprint="0123456789abcdef",
                                                                         id="some/other-model"), meta["stages"], {})
    res = invoke("export", tiny_run, "-o", tmp_path / "x.json", "--lens", f"tuned:{other}")
    assert_clean_error(res, "was fitted for some/other-model")
    assert not (tmp_path / "x.json").exists()
    cfg = json.loads((other / CONFIG_FILE).read_text())
    with pytest.raises(Exception, match="fitted for"):
        open_lenses([f"tuned:{other}"], meta["model"], meta["stages"])
    assert cfg["covered"] == [False] * len(meta["stages"])


def test_trace_with_two_lenses(tiny_dir, tiny_run, tiny_lens_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("trace", "the cat sat on the mat", "-m", tiny_dir, "-o", out, "-q", "--lens", "logit", "--lens",
                 f"tuned:{tiny_lens_dir}")
    assert res.exit_code == 0, res.output
    doc = orjson.loads((out / "export.json").read_bytes())
    assert [x["kind"] for x in doc["lens"]["lenses"]] == ["logit", "tuned"]
    assert all(len(p["lenses"]) == 1 for p in doc["prompts"][0]["positions"])
    # refused before the forward passes, nothing left behind
    bad = tmp_path / "bad"
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", bad, "-q", "--lens", "tuned:/nope"),
                       "lens folder not found", bad)


def test_a_damaged_lens_json_is_one_line(tiny_run, tiny_lens_dir, tmp_path):
    """lens.json values of the wrong type (a number for `covered`, a string or `true` for a count) are refused by
    name, not met later as a TypeError or a confusing comparison."""
    import shutil

    meta = read_trace(tiny_run).meta
    good = json.loads((tiny_lens_dir / CONFIG_FILE).read_text())
    S = len(meta["stages"])
    for field, value, words in [
        ("covered", 5, "covered is not a list"),
        ("covered", [True] * (S - 1), "covered is not a list"),
        ("covered", ["yes"] * S, "covered is not a list"),
        ("n_stages", "7", "model.n_stages is not a positive integer"),
        ("n_stages", True, "model.n_stages is not a positive integer"),
        ("hidden_size", "32", "model.hidden_size is not a positive integer"),
        ("fingerprint", 5, "model.fingerprint is not a string"),
    ]:
        lens = tmp_path / f"{field}-{value!r}"[:60]
        shutil.copytree(tiny_lens_dir, lens)
        cfg = json.loads(json.dumps(good))
        (cfg if field == "covered" else cfg["model"])[field] = value
        (lens / CONFIG_FILE).write_text(json.dumps(cfg))
        res = invoke("export", tiny_run, "-o", tmp_path / "x.json", "--lens", f"tuned:{lens}")
        assert_clean_error(res, words)
        assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", [CONFIG_FILE, "lens.safetensors"])
def test_a_lens_file_that_is_a_fifo_is_refused_by_every_command(tiny_run, tiny_lens_dir, tmp_path, name):
    """A FIFO lens.json or lens.safetensors waited for ever in export, compare and fit-lens's readers: one line."""
    import shutil

    lens = tmp_path / "lens"
    shutil.copytree(tiny_lens_dir, lens)
    (lens / name).unlink()
    os.mkfifo(lens / name)
    for args in (("export", tiny_run, "-o", tmp_path / "x.json"),
                 ("compare", tiny_run, tiny_run, "-o", tmp_path / "cmp", "-q")):
        assert_clean_error(invoke(*args, "--lens", f"tuned:{lens}"), f"{name} is not a regular file")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "cmp").exists()


def _lens_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_save_lens_is_one_change(tiny_run, tmp_path, monkeypatch):
    """save_lens writes both files in full before it replaces anything: a failure while writing leaves the old lens
    as it was; an interrupt between the renames leaves no lens.json (refused as not a lens), never new weights read
    with the old config; no temporary file is left either way."""
    import os

    from lenskit.errors import InputError, OutputError
    from lenskit.lenses import tuned

    meta = read_trace(tiny_run).meta
    S = len(meta["stages"])
    model = {k: meta["model"][k] for k in ("id", "fingerprint", "architecture", "n_layers", "vocab_size")}
    out = tmp_path / "lens"
    save_lens(out, random_translator(S, 32, seed=1), model, meta["stages"], {"fit": None})
    (out / "notes.txt").write_text("mine")  # a user's file beside the lens stays
    before = _lens_files(out)
    fp_before = tuned.read_config(out)["translator_fingerprint"]

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:  # the config cannot be written: nothing changes
        m.setattr(type(out), "write_text", full_disk)
        with pytest.raises(OutputError, match="cannot write the lens into .*No space left on device"):
            save_lens(out, random_translator(S, 32, seed=2), model, meta["stages"], {"fit": None})
    assert _lens_files(out) == before

    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    with monkeypatch.context() as m:  # killed between the two renames
        m.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            save_lens(out, random_translator(S, 32, seed=3), model, meta["stages"], {"fit": None})
    assert sorted(p.name for p in out.iterdir()) == ["lens.safetensors", "notes.txt"]
    with pytest.raises(InputError, match="not a lenskit lens folder"):
        tuned.read_config(out)
    tr = random_translator(S, 32, seed=3)
    save_lens(out, tr, model, meta["stages"], {"fit": None})  # saving again completes it
    cfg = tuned.read_config(out)
    assert cfg["translator_fingerprint"] == tr.fingerprint() != fp_before
    assert tuned.load_translator(out, cfg).fingerprint() == tr.fingerprint()
    assert sorted(p.name for p in out.iterdir()) == ["lens.json", "lens.safetensors", "notes.txt"]
