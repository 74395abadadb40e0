"""`lenskit fit-lens`: fitting on a tiny random model (held-out KL drops at every stage), resuming from a checkpoint,
importing a tuned-lens (Belrose et al.) folder, and a short fit on the default model (realmodel)."""

from __future__ import annotations

import json
import os
import random

import orjson
import pytest
import torch
from typer.testing import CliRunner

from conftest import WORDS, assert_clean_error, llama_config, save_model
from lenskit.cli import app
from lenskit.lenses.fit import CHECKPOINT_FILE, FitOptions, Fitter, fit_lens
from lenskit.lenses.tuned import CONFIG_FILE, WEIGHTS_FILE, load_translator, read_config

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """A tiny random Llama with larger weights (its stages' logit-lens KL is far from 0), saved with a tokenizer."""
    return save_model(tmp_path_factory.mktemp("sharp"), llama_config(initializer_range=0.3))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200)))
    return path


def test_fit_lowers_heldout_kl_at_every_stage(sharp_dir, corpus, tmp_path):
    out = tmp_path / "lens"
    res = invoke("fit-lens", corpus, "-m", sharp_dir, "-o", out, "--steps", "20", "--seq-len", "32", "--batch", "4",
                 "--lr", "3e-3", "--init-tokens", "2000", "--heldout-tokens", "512")
    assert res.exit_code == 0, res.output
    assert "tok_s=" in res.stderr and "held-out KL" in res.stderr
    cfg = read_config(out)
    kl = cfg["fit"]["heldout_kl"]
    S = 7
    assert len(kl["logit"]) == S and cfg["covered"] == [True] * (S - 1) + [False]
    assert all(t < lo for t, lo in zip(kl["tuned"][:-1], kl["logit"][:-1])), kl
    assert kl["tuned"][-1] == kl["logit"][-1] == 0
    tr = load_translator(out, cfg)
    assert tr.weight[-1].abs().max() == 0 and tr.bias[-1].abs().max() == 0  # last stage: identity
    assert not (out / CHECKPOINT_FILE).exists() and (out / WEIGHTS_FILE).is_file()
    # the lens in use: trace + export with both lenses
    run = tmp_path / "run"
    res = invoke("trace", "the cat sat on the mat", "-m", sharp_dir, "-o", run, "-q", "--lens", "logit", "--lens",
                 f"tuned:{out}")
    assert res.exit_code == 0, res.output
    doc = orjson.loads((run / "export.json").read_bytes())
    assert [x["kind"] for x in doc["lens"]["lenses"]] == ["logit", "tuned"]
    # and refused for another model
    other = save_model(tmp_path / "other", llama_config(initializer_range=0.3, hidden_size=48))
    assert_clean_error(invoke("trace", "the cat", "-m", other, "-o", tmp_path / "r2", "-q", "--lens", f"tuned:{out}"),
                       "was fitted for")


def test_identity_init_also_learns(sharp_dir, corpus, tmp_path):
    from lenskit.models import load_model

    loaded = load_model(sharp_dir)
    opts = FitOptions(steps=15, seq_len=32, batch=4, lr=3e-3, init="identity", heldout_tokens=512, stages="0,3")
    fit = fit_lens(loaded, [corpus.read_text()], tmp_path / "l", opts, quiet=True)
    kl = fit["heldout_kl"]
    assert kl["tuned"][0] < kl["logit"][0] and kl["tuned"][3] < kl["logit"][3]
    assert kl["tuned"][1] == kl["logit"][1]  # not fitted: identity
    assert read_config(tmp_path / "l")["covered"] == [True, False, False, True, False, False, False]


def test_resume_from_checkpoint(sharp_dir, corpus, tmp_path, monkeypatch):
    from lenskit.models import load_model

    loaded = load_model(sharp_dir)
    text = [corpus.read_text()]
    opts = FitOptions(steps=6, seq_len=32, batch=2, init_tokens=256, heldout_tokens=128, checkpoint_every=2)
    full = fit_lens(loaded, text, tmp_path / "a", opts, quiet=True)
    calls = {"n": 0}
    step = Fitter.step

    def interrupted(self, seqs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return step(self, seqs)

    monkeypatch.setattr(Fitter, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_lens(loaded, text, tmp_path / "b", opts, quiet=True)
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file() and not (tmp_path / "b" / CONFIG_FILE).exists()
    monkeypatch.setattr(Fitter, "step", step)
    logs = []
    resumed = fit_lens(loaded, text, tmp_path / "b", opts, log=logs.append, quiet=True)
    assert any("resuming" in x and "step 2" in x for x in logs)
    assert resumed["loss_history"] == full["loss_history"]  # same batches, same Adam state: the same fit
    a, b = load_translator(tmp_path / "a", read_config(tmp_path / "a")), load_translator(tmp_path / "b", read_config(tmp_path / "b"))
    torch.testing.assert_close(a.weight, b.weight)


def write_tuned_lens_folder(path, L, D, bias=True, seed=0):
    """A lens in the tuned-lens package's format: config.json (TunedLensConfig.to_dict()) and params.pt
    (``layer_translators.state_dict()``: one Linear(D, D) per hidden state 0..L-1, keys ``{i}.weight``/``{i}.bias``)."""
    torch.manual_seed(seed)
    translators = torch.nn.ModuleList([torch.nn.Linear(D, D, bias=bias) for _ in range(L)])
    path.mkdir(parents=True)
    torch.save(translators.state_dict(), path / "params.pt")
    (path / "config.json").write_text(json.dumps({
        "base_model_name_or_path": "tiny", "d_model": D, "num_hidden_layers": L, "bias": bias,
        "base_model_revision": None, "unembed_hash": None, "lens_type": "linear_tuned_lens",
    }))
    return translators


def test_import_a_tuned_lens_folder(tiny_dir, tiny_run, tmp_path):
    src = tmp_path / "tl"
    translators = write_tuned_lens_folder(src, L=3, D=32)
    out = tmp_path / "imported"
    res = invoke("fit-lens", "--import", src, "-m", tiny_dir, "-o", out)
    assert res.exit_code == 0, res.output
    cfg = read_config(out)
    assert cfg["covered"] == [True, False, True, False, True, False, False]  # embed, L0.ffn, L1.ffn
    assert cfg["imported_from"]["format"] == "tuned-lens"
    tr = load_translator(out, cfg)
    for i in range(3):
        assert torch.equal(tr.weight[2 * i], translators[i].weight.detach())
        assert torch.equal(tr.bias[2 * i], translators[i].bias.detach())
    assert tr.weight[1::2].abs().max() == 0 and tr.weight[-1].abs().max() == 0
    res = invoke("export", tiny_run, "-o", tmp_path / "e.json", "-q", "--lens", f"tuned:{out}")
    assert res.exit_code == 0, res.output
    doc = orjson.loads((tmp_path / "e.json").read_bytes())
    assert doc["lens"]["lenses"][0]["covered"] == cfg["covered"] and "imported_from" in doc["lens"]["lenses"][0]


def test_import_refuses_pickled_code_and_wrong_shapes(tiny_dir, tmp_path):
    src = tmp_path / "evil"
    write_tuned_lens_folder(src, L=3, D=32)
    torch.save({"0.weight": torch.nn.Linear(2, 2)}, src / "params.pt")  # a module object: not plain tensors
    assert_clean_error(invoke("fit-lens", "--import", src, "-m", tiny_dir, "-o", tmp_path / "o1"), "as plain tensors")
    wrong = tmp_path / "wrong"
    write_tuned_lens_folder(wrong, L=2, D=32)
    assert_clean_error(invoke("fit-lens", "--import", wrong, "-m", tiny_dir, "-o", tmp_path / "o2"), "is for 2 layers")
    assert_clean_error(invoke("fit-lens", "--import", tmp_path, "-m", tiny_dir, "-o", tmp_path / "o3"), "no config.json")
    assert_clean_error(invoke("fit-lens", "-o", tmp_path / "o4"), "give a CORPUS")


def _set_config(src, **change):
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(dict(cfg, **change)))


@pytest.mark.parametrize("damage, fragment", [
    (lambda src: (src / "config.json").unlink() or os.mkfifo(src / "config.json"), "not a regular file"),
    (lambda src: (src / "params.pt").unlink() or os.mkfifo(src / "params.pt"), "not a regular file"),
    (lambda src: (src / "params.pt").unlink() or (src / "params.pt").symlink_to("/dev/zero"), "not a regular file"),
    (lambda src: (src / "params.pt").unlink(), "has no params.pt"),
    (lambda src: (src / "config.json").write_text("[" * 100_000 + "]" * 100_000), "cannot read"),
    (lambda src: (src / "config.json").write_bytes(b" " * (2 << 20)), "not a tuned-lens config"),
    (lambda src: _set_config(src, d_model="32"), "d_model"),
    (lambda src: _set_config(src, num_hidden_layers=True), "num_hidden_layers"),
    (lambda src: _set_config(src, num_hidden_layers=10**30), "num_hidden_layers"),
    (lambda src: _set_config(src, lens_type=["x"] * 10_000), "not a linear tuned lens"),
])
def test_import_folder_checked_before_the_model_loads(tmp_path, damage, fragment):
    """A tuned-lens folder with a FIFO or device (torch.load would wait for ever or read without end), a config that
    is not one (nested, huge, sizes as strings or booleans): one line, before the model (here missing) loads, nothing
    written."""
    src = tmp_path / "tl"
    write_tuned_lens_folder(src, L=3, D=32)
    damage(src)
    res = invoke("fit-lens", "--import", src, "-m", tmp_path / "no-model", "-o", tmp_path / "out")
    assert_clean_error(res, fragment, tmp_path / "out")
    assert len(res.stderr) < 1000


def test_import_of_a_file_or_nothing_and_non_string_keys(tiny_dir, tmp_path):
    (tmp_path / "f").write_text("x")
    assert_clean_error(invoke("fit-lens", "--import", tmp_path / "f", "-m", tmp_path / "m", "-o", tmp_path / "o"),
                       "not a folder")
    assert_clean_error(invoke("fit-lens", "--import", tmp_path / "nope", "-m", tmp_path / "m", "-o", tmp_path / "o"),
                       "folder not found")
    src = tmp_path / "tl"
    write_tuned_lens_folder(src, L=3, D=32)
    torch.save({0: torch.zeros(32, 32)}, src / "params.pt")  # an int key: no state dict of names
    assert_clean_error(invoke("fit-lens", "--import", src, "-m", tiny_dir, "-o", tmp_path / "o"), "state dict",
                       tmp_path / "o")


def test_fit_output_below_a_file_and_seq_len_past_the_context(tiny_dir, corpus, tmp_path):
    """-o under a file fails before the model loads (not at the first checkpoint); --seq-len past the model's context
    (64 here) is one line, not an IndexError of learned positions mid-fit."""
    (tmp_path / "f").write_text("mine")
    assert_clean_error(invoke("fit-lens", corpus, "-m", tmp_path / "no-model", "-o", tmp_path / "f" / "lens"),
                       "is not a folder")
    assert (tmp_path / "f").read_text() == "mine"
    assert_clean_error(invoke("fit-lens", corpus, "-m", tiny_dir, "--device", "cpu", "-o", tmp_path / "lens",
                              "--seq-len", "65", "-q"), "longer than the model's context", tmp_path / "lens")


@pytest.mark.realmodel
def test_short_fit_on_the_default_model_beats_the_logit_lens(default_model_available, tmp_path):
    """Least-squares start on ~2k tokens of pydoc_data.topics, then 2 KL steps, held out 128 tokens. To stay near
    two minutes on a shared 2-core CPU, a subset of 8 stages (from the embedding to the next-to-last) is fitted and
    evaluated; the other stages are identity (the logit lens) by construction."""
    from pydoc_data.topics import topics

    from lenskit.models import load_model

    loaded = load_model(None)
    stages = "0,1,2,10,30,50,58,59"
    opts = FitOptions(steps=2, seq_len=128, batch=1, lr=1e-4, init_tokens=2048, heldout_tokens=128, max_tokens=8000,
                      stages=stages)
    fit = fit_lens(loaded, [topics[k] for k in sorted(topics)], tmp_path / "lens", opts, quiet=True)
    kl = fit["heldout_kl"]
    chosen = [int(s) for s in stages.split(",")]
    print("\n[stage, logit KL, tuned KL]:", [(s, kl["logit"][s], kl["tuned"][s]) for s in chosen])
    assert all(kl["tuned"][s] < kl["logit"][s] for s in chosen), kl
    assert kl["tuned"][-1] == kl["logit"][-1] == 0


@pytest.mark.parametrize("name, content", [(CONFIG_FILE, '{"my": "notes"}'), (WEIGHTS_FILE, "my weights"),
                                           (CHECKPOINT_FILE, "not a checkpoint")])
def test_fit_never_replaces_files_it_did_not_write(corpus, tmp_path, name, content):
    """Refused before the model loads (-m names nothing): the user's file stays as it was."""
    out = tmp_path / "lens"
    out.mkdir()
    (out / name).write_text(content)
    assert_clean_error(invoke("fit-lens", corpus, "-m", tmp_path / "no-model", "-o", out), "not written by lenskit")
    assert (out / name).read_text() == content and sorted(p.name for p in out.iterdir()) == [name]


def test_fit_output_and_lr_refused(corpus, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert_clean_error(invoke("fit-lens", corpus, "-m", tmp_path / "no-model", "-o", tmp_path / "dangling"),
                       "symbolic link")
    assert not (tmp_path / "nowhere").exists()
    for lr in ("inf", "1e300", "nan"):
        assert_clean_error(invoke("fit-lens", corpus, "-o", tmp_path / "l", "--lr", lr), "--lr")
    # 10**30 least-squares tokens cycled through the corpus for ever
    assert_clean_error(invoke("fit-lens", corpus, "-o", tmp_path / "l", "--init-tokens", str(10**30)), "--init-tokens")


def test_fit_output_that_is_a_run_folder_is_refused(corpus, tiny_run, tmp_path):
    """A lens written into a run folder would leave a run that `trace --force` no longer recognises: refused before
    the model loads, the run untouched."""
    before = sorted(p.name for p in tiny_run.iterdir())
    assert_clean_error(invoke("fit-lens", corpus, "-m", tmp_path / "no-model", "-o", tiny_run), "a folder of its own")
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_corrupt_lens_config_is_one_line(tiny_run, tmp_path):
    (tmp_path / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    assert_clean_error(invoke("export", tiny_run, "-o", "-", "--lens", f"tuned:{tmp_path}"), "cannot read")


def test_stage_spec_errors_speak_of_stages():
    from lenskit.errors import InputError
    from lenskit.lenses.fit import parse_stages

    assert parse_stages("0-2,-1", 13) == [0, 1, 2, 12] and parse_stages(None, 13) == list(range(12))
    for spec, fragment in (("0-999", "stage 999 is out of range: the model has 13 stages"), ("x", "bad --stages"),
                           ("5-2", "bad --stages '5-2'")):
        with pytest.raises(InputError, match=fragment):
            parse_stages(spec, 13)
    with pytest.raises(InputError, match=r"stage 99999999999999999999\.\.\.\(5000 characters\) is out of range"):
        parse_stages("9" * 5000, 13)  # past Python's 4300-digit int() limit


def _damage_meta(change):
    def damage(path):
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["lenskit_fit"])
        change(meta)
        save_file(load_file(path), path, metadata={"lenskit_fit": json.dumps(meta)})

    return damage


def _damage_tensor(path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    t = load_file(path)
    t["A"] = t["A"][:, :4, :4].contiguous()
    save_file(t, path, metadata=metadata)


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "damaged or incomplete"),
    (_damage_meta(lambda m: m.update(step=-10**30)), "damaged or incomplete (step"),  # would loop ~forever
    (_damage_meta(lambda m: m.update(step="5")), "damaged or incomplete (step"),
    (_damage_meta(lambda m: m.pop("logit_kl")), "no held-out KL"),
    (_damage_tensor, "tensor A"),
    ("other model", "from a fit with other options, model or corpus"),
])
def test_interrupted_checkpoint_that_cannot_resume(tiny_dir, corpus, tmp_path, monkeypatch, damage, fragment):
    """A checkpoint left by an interrupted fit, then damaged or resumed with another model: one line, kept as is."""
    import lenskit.lenses.fit as fit_module

    args = ["--steps", "2", "--seq-len", "8", "--batch", "2", "--init-tokens", "16", "--heldout-tokens", "8",
            "--checkpoint-every", "1", "--device", "cpu", "-q", "-o", tmp_path / "lens"]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_lens", interrupt)
    assert invoke("fit-lens", corpus, "-m", tiny_dir, *args).exit_code == 130
    monkeypatch.undo()
    ckpt = tmp_path / "lens" / CHECKPOINT_FILE
    model = tiny_dir
    if damage == "other model":  # same options and corpus, another hidden size: refused before any tensor is copied
        model = save_model(tmp_path / "wide", llama_config(hidden_size=48))
    else:
        damage(ckpt)
    before = ckpt.read_bytes()
    assert_clean_error(invoke("fit-lens", corpus, "-m", model, *args), fragment)
    assert ckpt.read_bytes() == before and sorted(p.name for p in (tmp_path / "lens").iterdir()) == [CHECKPOINT_FILE]


def test_seed_beyond_64_bits_refused(corpus, tmp_path):
    assert_clean_error(invoke("fit-lens", corpus, "-o", tmp_path / "l", "--seed", str(2**70)), "--seed")
