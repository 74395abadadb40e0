"""`lenskit trace` on a tiny model: the trace contract, and every kind of bad input."""

import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from conftest import assert_clean_error
from lenskit.cli import app
from lenskit.store import TRACE_FILE, TRACE_FORMAT, read_trace

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def test_trace_contract(tiny_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("trace", "the cat sat", "-f", _file(tmp_path, "a dog ran"), "-m", tiny_dir, "-o", out, "-q", "--no-export")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    trace = read_trace(out)
    meta = trace.meta
    assert meta["format"] == TRACE_FORMAT and meta["lenskit_version"]
    assert set(meta["model"]) >= {"id", "revision", "fingerprint", "architecture", "adapter", "dtype"}
    assert meta["model"]["architecture"] == "LlamaForCausalLM" and meta["model"]["adapter"] == "llama"
    assert len(meta["stages"]) == 7 and {s["kind"] for s in meta["stages"]} == {"embed", "attn", "ffn"}
    assert [p["text"] for p in meta["prompts"]] == ["the cat sat", "a dog ran"]
    p0 = meta["prompts"][0]
    assert p0["token_ids"][0] == 1 and p0["tokens"] == ["<s>", "the", "cat", "sat"]  # BOS as the tokenizer adds it
    with safe_open(str(out / TRACE_FILE), framework="pt") as f:
        assert json.loads(f.metadata()["lenskit"]) == meta
        for i, p in enumerate(meta["prompts"]):
            t = f.get_tensor(f"prompt.{i}.stages")
            assert t.shape == (7, len(p["token_ids"]), 32)
            assert torch.equal(trace.stages(i), t)
    assert not (out / "export.json").exists()


def test_read_back_equals_written(tiny_dir, tmp_path):
    from lenskit.capture import trace_prompts
    from lenskit.models import load_model
    from lenskit.store import write_trace

    loaded = load_model(tiny_dir)
    states, meta = trace_prompts(loaded, ["the cat sat on the mat"])
    write_trace(tmp_path / TRACE_FILE, states, meta)
    back = read_trace(tmp_path)
    assert back.meta == json.loads(json.dumps(meta))
    assert torch.equal(back.stages(0), states[0])


def _file(tmp_path, text):
    p = tmp_path / f"prompt{abs(hash(text))}.txt"
    p.write_text(text)
    return p


def test_empty_prompt(tiny_dir, tmp_path):
    assert_clean_error(invoke("trace", "   ", "-m", tiny_dir, "-o", tmp_path / "r"), "empty", tmp_path / "r")


def test_missing_file(tiny_dir, tmp_path):
    assert_clean_error(invoke("trace", "-f", tmp_path / "nope.txt", "-m", tiny_dir, "-o", tmp_path / "r"),
                       "prompt file not found", tmp_path / "r")


def test_unknown_model_path(tmp_path):
    assert_clean_error(invoke("trace", "hi", "-m", tmp_path / "no-model", "-o", tmp_path / "r"), "model", tmp_path / "r")


def test_unknown_model_id(tmp_path):
    res = invoke("trace", "hi", "-m", "nobody-at-all/not-a-model-xyz", "-o", tmp_path / "r")
    assert_clean_error(res, "is not on this machine", tmp_path / "r")


def test_prompt_longer_than_context(tiny_dir, tmp_path):
    assert_clean_error(invoke("trace", " ".join(["cat"] * 80), "-m", tiny_dir, "-o", tmp_path / "r"),
                       "context is 64 tokens", tmp_path / "r")


def test_existing_output_needs_force(tiny_dir, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out), "--force")
    assert (out / "keep.txt").exists()
    # a folder that is not a lenskit run is never replaced, --force or not (issue 8)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--force", "-q"), "not a lenskit run")
    assert (out / "keep.txt").read_text() == "x" and not (out / TRACE_FILE).exists()
    (out / "keep.txt").unlink()
    assert invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "-q").exit_code == 0  # an empty folder is used
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "-q"), "--force")  # a run: needs --force
    res = invoke("trace", "the dog", "-m", tiny_dir, "-o", out, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert read_trace(out).meta["prompts"][0]["text"] == "the dog" and (out / "export.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_unprivileged(tiny_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", ro / "r"), "cannot write")


def test_unwritable_output(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed: unwritable for root too
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", blocker / "r"), "cannot write")


def test_corrupted_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(2000))  # its random counts: past its size
    assert_clean_error(invoke("trace", "hi", "-m", bad, "-o", tmp_path / "r"), "damaged or truncated", tmp_path / "r")
    assert not any((tmp_path / "cache").rglob("*.safetensors"))


def test_missing_gguf(tmp_path):
    assert_clean_error(invoke("trace", "hi", "-m", tmp_path / "nope.gguf", "-o", tmp_path / "r"), "GGUF file not found")


def test_unknown_device(tiny_dir, tmp_path):
    assert_clean_error(invoke("trace", "hi", "-m", tiny_dir, "--device", "tpu", "-o", tmp_path / "r"), "unknown device")


def test_help_is_useful():
    for cmd in ("trace", "export", "serve", "adapters", "schema"):
        res = invoke(cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.stdout, cmd


def test_bad_export_options_fail_before_tracing(tiny_dir, tmp_path):
    res = invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "r", "--track", "not one token")
    assert_clean_error(res, "not a single token", tmp_path / "r")
    assert "prompt 1/1" not in res.stderr  # nothing was traced


def test_missing_weights_are_reported(tmp_path):
    from safetensors.torch import load_file, save_file

    from conftest import llama_config, save_model

    folder = tmp_path / "m"
    save_model(folder, llama_config())
    tensors = load_file(folder / "model.safetensors")
    tensors.pop("lm_head.weight")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    res = invoke("trace", "the cat", "-m", folder, "-o", tmp_path / "r", "-q", "--no-export")
    assert res.exit_code == 0
    assert "lenskit: warning: 1 weight(s) missing from the checkpoint are random: lm_head.weight" in res.stderr
    assert read_trace(tmp_path / "r").meta["model"]["source"]["missing_weights"] == ["lm_head.weight"]


CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ 'the' if m.role == 'system' else 'a' }} {{ m.content }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> cat{% endif %}")  # word-level: roles and turns as known words
NO_SYSTEM = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}<s> a {{ m.content }} </s> {% endfor %}{% if add_generation_prompt %}<s> cat{% endif %}")


@pytest.fixture(scope="module")
def chat_dirs(tiny_dir, tmp_path_factory):
    """The tiny model with a chat template, and with one that refuses system messages."""
    import shutil

    from transformers import AutoTokenizer

    out = {}
    for name, template in (("chat", CHAT_TEMPLATE), ("no-system", NO_SYSTEM)):
        d = tmp_path_factory.mktemp(name) / "model"
        shutil.copytree(tiny_dir, d)
        tok = AutoTokenizer.from_pretrained(d)
        tok.chat_template = template
        tok.save_pretrained(d)
        out[name] = d
    return out


def test_chat_traces_the_templated_prompt(chat_dirs, tmp_path):
    """--chat: the prompt is the user's message in the model's template with the assistant's turn opened, tokenized
    as apply_chat_template(tokenize=True) does (no second BOS); the trace keeps the templated text and the message."""
    from transformers import AutoTokenizer

    out = tmp_path / "run"
    res = invoke("trace", "the cat sat", "-m", chat_dirs["chat"], "-o", out, "-q", "--chat", "--system", "Paris")
    assert res.exit_code == 0, res.output
    meta = read_trace(out).meta
    p = meta["prompts"][0]
    tok = AutoTokenizer.from_pretrained(chat_dirs["chat"])
    messages = [{"role": "system", "content": "Paris"}, {"role": "user", "content": "the cat sat"}]
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want if isinstance(want, list) else want["input_ids"]  # a BatchEncoding in newer transformers
    assert p["token_ids"] == list(want)
    assert p["text"] == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert p["tokens"][:3] == ["<s>", "the", "Paris"] and p["tokens"][-2:] == ["<s>", "cat"]  # one BOS per turn
    assert p["chat"] == {"user": "the cat sat", "system": "Paris"}
    doc = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert doc["prompts"][0]["text"] == p["text"] and doc["prompts"][0]["positions"][-1]["pos"] == len(want) - 1
    assert doc["prompts"][0]["chat"] == {"user": "the cat sat", "system": "Paris"}  # the export says so too
    jsonschema = pytest.importorskip("jsonschema")
    from lenskit.schema import JSON_SCHEMA

    jsonschema.validate(doc, JSON_SCHEMA)


def test_chat_refusals(tiny_dir, chat_dirs, tmp_path):
    out = tmp_path / "run"
    for model, args, words in [
        (tiny_dir, ["--chat"], "no chat template"),
        (chat_dirs["no-system"], ["--chat", "--system", "be brief"], "System role not supported"),
        (chat_dirs["chat"], ["--system", "be brief"], "needs --chat"),
        (chat_dirs["chat"], ["--chat", "--system", "   "], "--system is empty"),
    ]:
        res = invoke("trace", "the cat", "-m", model, "-o", out, "-q", *args)
        assert_clean_error(res, words, out)
    res = invoke("trace", "the cat", "-m", chat_dirs["no-system"], "-o", out, "-q", "--chat", "--no-export")
    assert res.exit_code == 0, res.output  # the same template without a system message


def _chat_model(tiny_dir, folder, template):
    """``tiny_dir`` copied to ``folder`` with ``template`` as its chat template (a str, or a dict of named ones)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


def test_chat_templates_that_misbehave(tiny_dir, chat_dirs, tmp_path):
    """Templates that drop the message or the system message, name only non-default templates, raise a message
    that starts with a newline or holds control characters, or loop past Jinja's sandbox: one line, nothing left."""
    out = tmp_path / "run"
    for n, (template, args, words) in enumerate([
        ("{{ bos_token }}", [], "left out the prompt"),
        ("{% for m in messages %}{% if m.role != 'system' %}<s> a {{ m.content }} </s>{% endif %}{% endfor %}<s> cat",
         ["--system", "Paris"], "left out the --system message"),
        ({"tool_use": CHAT_TEMPLATE, "rag": CHAT_TEMPLATE}, [], "several chat templates (rag, tool_use)"),
        ("{{ raise_exception('\\n\\x1b[31mforged\\x00\\nmore') }}", [], "refused the prompt: [31mforged"),
        ("{% for i in range(10**12) %}x{% endfor %}", [], "the number 1000000000000 given to range"),
        # past budgets lenskit sets (steps, output size, any one value's size), checked before the big value is made
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0].content }}",
         [], "chat template runs longer than"),
        ("{{ 'x' * 10**9 }}{{ messages[0].content }}", [], "chat template makes a value (*) larger than"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}", [],
         "chat template makes more than"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", [],
         "chat template makes a value (~)"),
        ("{{ '' }}", [], "gave no text"),
    ]):
        model = _chat_model(tiny_dir, tmp_path / f"model-{n}", template)
        res = invoke("trace", "the cat", "-m", model, "-o", out, "-q", "--chat", *args)
        assert_clean_error(res, words, out)
        assert res.stderr.count("\n") == 1 and "\x00" not in res.stderr and "\x1b" not in res.stderr
    # a dict holding a default template uses it
    model = _chat_model(tiny_dir, tmp_path / "model-dict", {"default": CHAT_TEMPLATE, "tool_use": "{{ x }}"})
    res = invoke("trace", "the cat", "-m", model, "-o", out, "-q", "--chat", "--no-export")
    assert res.exit_code == 0, res.output
    assert read_trace(out).meta["prompts"][0]["tokens"] == ["<s>", "a", "the", "cat", "</s>", "<s>", "cat"]


def test_chat_prompt_longer_than_the_context_only_in_the_template(chat_dirs, tmp_path):
    """A message that fits the context but not once in the template (with --system): which prompt, and why."""
    out = tmp_path / "run"
    res = invoke("trace", "the cat", " ".join(["cat"] * 60), "-m", chat_dirs["chat"], "-o", out, "-q", "--chat")
    assert_clean_error(res, "prompt 2 is 65 tokens long in the chat template (the message alone is 60)", out)
    res = invoke("trace", "the cat", "-m", chat_dirs["chat"], "-o", out, "-q", "--chat", "--system", "cat " * 70)
    assert_clean_error(res, "(the message alone is 2, --system 70); the model's context is 64 tokens", out)


def test_chat_through_the_python_api(chat_dirs):
    """trace_prompts refuses what the CLI refuses (lone surrogates in a prompt or the system message, an empty
    system message, no prompts) with a LenskitError, never a tokenizer's TypeError."""
    from lenskit.capture import trace_prompts
    from lenskit.errors import InputError
    from lenskit.models import load_model

    loaded = load_model(str(chat_dirs["chat"]), None, "cpu", "float32", False, None, None)
    for texts, kw, words in [
        (["\ud800"], {"chat": True}, "not valid UTF-8"),
        (["\ud800"], {}, "not valid UTF-8"),
        (["the cat"], {"chat": True, "system": "\udcff"}, "--system is not valid UTF-8"),
        (["the cat"], {"chat": True, "system": " \n"}, "--system is empty"),
        ([], {"chat": True}, "no prompts"),
    ]:
        with pytest.raises(InputError, match=words):
            trace_prompts(loaded, texts, **kw)
    _, meta = trace_prompts(loaded, ["the cat", "a dog"], chat=True, system="Paris")
    assert [p["chat"] for p in meta["prompts"]] == [{"user": "the cat", "system": "Paris"},
                                                  {"user": "a dog", "system": "Paris"}]


def _no_loading(monkeypatch):
    """Make any model load fail the test: what must be refused before the weights load."""
    import lenskit.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lenskit.models, "load_model", refuse)


def test_top_k_past_the_vocabulary_fails_before_loading(tiny_dir, tmp_path, monkeypatch):
    """--top-k / --stage-top beyond the vocabulary of a local folder's config.json: refused before any weights load;
    the check after loading stays (a hub id not downloaded, a .gguf)."""
    _no_loading(monkeypatch)
    out = tmp_path / "r"
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--top-k", 97),
                       "--top-k 97 must be between 1 and the vocabulary size (96)", out)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--stage-top", 100),
                       "--stage-top 100 must be between 0 and the vocabulary size (96)", out)
    monkeypatch.undo()
    res = invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "-q", "--top-k", 96, "--stage-top", 0)
    assert res.exit_code == 0, res.output  # the whole vocabulary is a valid top-k


def _model_copy(tiny_dir, folder):
    import shutil

    shutil.copytree(tiny_dir, folder)
    return folder


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                  "model.safetensors", "chat_template.jinja"])
@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "broken link"])
def test_model_folder_with_non_regular_files(tiny_dir, tmp_path, monkeypatch, name, kind):
    """A FIFO, folder, device or dangling link under a name transformers opens: refused in one line before
    transformers sees the folder (it would hang on a FIFO, or skip the file and load something else)."""
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    model = _model_copy(tiny_dir, tmp_path / "m")
    path = model / name
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        if not os.path.exists(os.devnull):
            pytest.skip("no null device")
        path.symlink_to(os.devnull)
    else:
        path.symlink_to(tmp_path / "gone")
    _no_loading(monkeypatch)
    words = {"fifo": "is a named pipe (FIFO), not a regular file", "folder": "is a folder, not a regular file",
             "device": "is a device, not a regular file", "broken link": "is a broken symbolic link"}[kind]
    res = invoke("trace", "the cat", "-m", model, "-o", tmp_path / "r")
    assert_clean_error(res, f"{name} {words}", tmp_path / "r")
    from lenskit.errors import ModelError
    from lenskit.model_folder import check_model_folder

    with pytest.raises(ModelError, match="not a regular file|broken symbolic link"):
        check_model_folder(model, str(model))


def test_model_folder_of_links_is_fine(tiny_dir, tmp_path):
    """Hub cache snapshots are symbolic links to regular files: they load."""
    model = tmp_path / "links"
    model.mkdir()
    for f in os.listdir(tiny_dir):
        (model / f).symlink_to(os.path.join(tiny_dir, f))
    res = invoke("trace", "the cat", "-m", model, "-o", tmp_path / "r", "-q", "--no-export")
    assert res.exit_code == 0, res.output


def _edit_config(tiny_dir, folder, edit):
    model = _model_copy(tiny_dir, folder)
    path = model / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(edit(cfg) if callable(edit) else edit)
    return model


@pytest.mark.parametrize("edit, words", [
    ("[1, 2]", "config.json is not a JSON object (it is a list)"),
    ("null", "config.json is not a JSON object"),
    ("{not json", "config.json is not valid JSON"),
    ("[" * 100000 + "]" * 100000, "config.json is not valid JSON"),  # nested past Python's recursion limit
    ("\xff{}", "config.json is not valid JSON"),
    (lambda c: json.dumps(dict(c, model_type="no-such-model-type")), "does not recognize this architecture"),
    (lambda c: json.dumps(dict(c, hidden_size=10 ** 12)), "past any real model"),
    (lambda c: json.dumps(dict(c, num_hidden_layers=10 ** 6)), "far more than its weight files hold"),
])
def test_model_folder_with_a_bad_config(tiny_dir, tmp_path, monkeypatch, edit, words):
    """config.json that is not a JSON object, names an unknown model type, or gives sizes that would allocate
    terabytes (the weights lack them, so they would be made at random): one line, before any weights load."""
    model = _edit_config(tiny_dir, tmp_path / "m", edit)
    _no_loading(monkeypatch)
    assert_clean_error(invoke("trace", "the cat", "-m", model, "-o", tmp_path / "r"), words, tmp_path / "r")
    monkeypatch.undo()
    from lenskit.errors import ModelError
    from lenskit.models import load_model

    with pytest.raises(ModelError, match=re.escape(words)):  # the Python API refuses it too
        load_model(str(model), None, "cpu", "float32")


@pytest.mark.parametrize("layers", [0, -3])
def test_model_config_without_layers(tiny_dir, tmp_path, monkeypatch, layers):
    """num_hidden_layers 0 or negative: named in one line before loading (it was 'adapter hooks did not fire')."""
    model = _edit_config(tiny_dir, tmp_path / "m", lambda c: json.dumps(dict(c, num_hidden_layers=layers)))
    _no_loading(monkeypatch)
    assert_clean_error(invoke("trace", "the cat", "-m", model, "-o", tmp_path / "r"),
                       f"num_hidden_layers = {layers}; a model needs at least one", tmp_path / "r")


def test_model_folder_without_a_config(tmp_path, monkeypatch):
    """A folder with no config.json (empty, or holding only a GGUF file): named in one line, with the GGUF file to
    pass instead when there is one (transformers said "Couldn't instantiate the backend tokenizer")."""
    _no_loading(monkeypatch)
    (tmp_path / "empty").mkdir()
    assert_clean_error(invoke("trace", "the cat", "-m", tmp_path / "empty", "-o", tmp_path / "r"), "has no config.json",
                       tmp_path / "r")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "m.gguf").write_bytes(b"GGUF")
    assert_clean_error(invoke("trace", "the cat", "-m", tmp_path / "g", "-o", tmp_path / "r"), "name it: -m ",
                       tmp_path / "r")
    monkeypatch.undo()
    assert_clean_error(invoke("adapters", "--check", tmp_path / "empty"), "has no config.json")


def test_model_folder_whose_name_a_trace_cannot_record(tiny_dir, tmp_path, monkeypatch):
    """A model folder whose path holds a line break: refused before loading (model.id must be one line: the trace
    would have failed only when written, after the forward passes)."""
    import shutil

    odd = tmp_path / "new\nline"
    shutil.copytree(tiny_dir, odd)
    _no_loading(monkeypatch)
    assert_clean_error(invoke("trace", "the cat", "-m", odd, "-o", tmp_path / "r"), "line break", tmp_path / "r")


def test_hostile_model_arguments(tmp_path):
    """-m "" (it was the current folder, with a tokenizer error) and a .gguf name that is a FIFO or a folder (it was
    'not found')."""
    assert_clean_error(invoke("trace", "the cat", "-m", "", "-o", tmp_path / "r"), "--model is empty", tmp_path / "r")
    (tmp_path / "dir.gguf").mkdir()
    assert_clean_error(invoke("trace", "the cat", "-m", tmp_path / "dir.gguf", "-o", tmp_path / "r"),
                       "dir.gguf is not a regular file", tmp_path / "r")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.gguf")
        assert_clean_error(invoke("trace", "the cat", "-m", tmp_path / "pipe.gguf", "-o", tmp_path / "r"),
                           "pipe.gguf is not a regular file", tmp_path / "r")


def test_lens_folder_with_a_fifo_fails_before_loading(tiny_dir, tmp_path, monkeypatch):
    """--lens tuned:DIR whose lens.json is a FIFO used to wait forever; an unknown lens kind is refused before the
    model loads too."""
    _no_loading(monkeypatch)
    out = tmp_path / "r"
    lens = tmp_path / "lens"
    lens.mkdir()
    (lens / "lens.json").mkdir()
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--lens", f"tuned:{lens}"),
                       "lens.json is not a regular file", out)
    if hasattr(os, "mkfifo"):
        (lens / "lens.json").rmdir()
        os.mkfifo(lens / "lens.json")
        assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--lens", f"tuned:{lens}"),
                           "lens.json is not a regular file", out)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--lens", "nope"), "unknown lens 'nope'",
                       out)


def test_prompt_files_with_nul_bytes_and_crlf(tiny_dir, tmp_path):
    """NUL bytes and CRLF line ends are text like any other: traced as given (the trace keeps them), one prompt per
    file; invalid UTF-8 is refused in one line."""
    f = tmp_path / "p.txt"
    f.write_bytes(b"the cat\x00sat\r\nthe dog\r\n")
    res = invoke("trace", "-f", f, "-m", tiny_dir, "-o", tmp_path / "r", "-q")
    assert res.exit_code == 0, res.output
    assert read_trace(tmp_path / "r").meta["prompts"][0]["text"] == "the cat\x00sat\r\nthe dog\r\n"
    f.write_bytes(b"the cat \xff\xfe")
    assert_clean_error(invoke("trace", "-f", f, "-m", tiny_dir, "-o", tmp_path / "r2"), "not valid UTF-8 text (byte 8)",
                       tmp_path / "r2")
