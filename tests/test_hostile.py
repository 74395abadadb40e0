"""Careless and hostile input, class by class, through the real CLI: one `lenskit: error:` line on stderr, exit 1,
no traceback, nothing written that was not asked for, and every pre-existing file byte-identical.

Classes (the README's reliability table counts the cases of each): run folders and ``--force``; output files of
``export``; malformed trace files (hand-made safetensors: 8-byte header length + JSON header + data); what a trace can
make ``export`` load; option values; prompt input (files, stdin, pipes); the server (symlinks, Host, methods).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import assert_clean_error
from lenskit.cli import app
from lenskit.store import TRACE_FILE, read_trace, validate_trace

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def assert_invalid(res, fragment):
    """`lenskit validate` on a broken trace: exit 1, each violation one `lenskit: error:` line, no traceback."""
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("lenskit: error: ") for line in lines), res.stderr
    assert any(fragment in line for line in lines), res.stderr


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (symlinks not followed) -> its sha256: compare before and after a command."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = "dir"
    return out


@pytest.fixture()
def run(tiny_run, tmp_path):
    """A private copy of the tiny run (trace + export.json) that a test may break."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


# ---- 1. run folders and --force ------------------------------------------------------------------------------------


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("\\chapter{One}")
    (path / "data").mkdir(exist_ok=True)
    (path / "data" / "results.csv").write_text("a,b\n1,2\n")
    return path


@pytest.mark.parametrize("force", [False, True])
def test_force_never_deletes_the_current_folder(tiny_dir, tmp_path, monkeypatch, force):
    home = _user_folder(tmp_path / "project")
    monkeypatch.chdir(home)
    before = snapshot(home)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", ".", *(["--force"] if force else [])),
                       "current folder")
    assert snapshot(home) == before


@pytest.mark.parametrize("target", ["..", "../..", "~", "HOME/sub/..", "/"])
def test_force_never_deletes_parents_home_or_root(tiny_dir, tmp_path, monkeypatch, target):
    home = _user_folder(tmp_path / "home")
    work = home / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    out = target.replace("HOME", str(home))
    res = invoke("trace", "the cat", "-m", tiny_dir, "-o", out, "--force")
    assert_clean_error(res, "-o")
    assert snapshot(tmp_path) == before


def test_force_refuses_a_folder_that_is_not_a_run(tiny_dir, tmp_path):
    thesis = _user_folder(tmp_path / "thesis")
    before = snapshot(tmp_path)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", thesis, "--force"), "not a lenskit run folder")
    assert snapshot(tmp_path) == before


def test_force_refuses_a_run_holding_a_users_files(run, tiny_dir):
    (run / "notes.md").write_text("my notes")
    before = snapshot(run.parent)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", run, "--force"), "notes.md")
    assert snapshot(run.parent) == before


@pytest.mark.parametrize("name, content", [
    ("notes.json", b'{"mine": 1}'), ("page.html", b"<html>mine</html>"), ("weights.safetensors", b"\x08" + b"\0" * 7 + b"{}      "),
    ("export.json.bak", b'{"schema":"lenskit.export/3"}'), ("empty.json", b""),
])
def test_force_refuses_a_users_file_with_a_lenskit_suffix(run, tiny_dir, name, content):
    """lenskit's own files are told by their content, not their names: a user's JSON, HTML or safetensors file
    in a run folder stops --force as any other file does."""
    (run / name).write_bytes(content)
    before = snapshot(run.parent)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", run, "--force"), name)
    assert snapshot(run.parent) == before


def test_force_replaces_a_run_holding_lenskit_reports(run, tiny_dir):
    """A report written into the run (``export --html RUN/view.html``) is lenskit's: --force replaces the run."""
    res = invoke("export", run, "--html", run / "view.html")
    assert res.exit_code == 0, res.output
    res = invoke("trace", "the cat", "-m", tiny_dir, "-o", run, "--force")
    assert res.exit_code == 0, res.output
    assert not (run / "view.html").exists() and (run / "trace.safetensors").is_file()


def test_force_refuses_a_folder_with_a_fake_trace(tiny_dir, tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / TRACE_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # safetensors, no lenskit metadata
    before = snapshot(tmp_path)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", fake, "--force"), "not a lenskit run")
    assert snapshot(tmp_path) == before


def test_output_that_is_a_symlink_or_a_file(run, tiny_dir, tmp_path):
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    (tmp_path / "afile").write_text("keep")
    before = snapshot(tmp_path)
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "link", "--force"), "symbolic link")
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "afile", "--force"), "not a folder")
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "afile" / "r"), "cannot write")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_replacing_a_run_is_atomic(run, tiny_dir, monkeypatch, failure):
    """A failure or Ctrl-C while the new run is moved in leaves the old run complete, in place."""
    import lenskit.files as files

    before = snapshot(run)
    real_rename = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old run aside (1), new run in (2): fail the second
            raise failure
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", flaky)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)  # the two-rename way (no renameat2 here)
    res = invoke("trace", "the dog", "-m", tiny_dir, "-o", run, "--force", "-q")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert snapshot(run) == before
    assert [p.name for p in run.parent.iterdir()] == ["run"]  # no temp folder or old copy left behind


def test_replacing_a_run_swaps_it_in_one_step(run, tiny_dir, monkeypatch):
    """Where the system can (Linux renameat2), the old and new run are exchanged in one step, so the folder is never
    missing (a reader such as `lenskit serve` never finds nothing, a power cut leaves one whole run); then the old
    run goes and nothing else is left."""
    import lenskit.files as files

    swaps = []
    real = files._exchange

    def watched(a, b):
        ok = real(a, b)
        swaps.append(ok)
        if ok:
            assert run.is_dir() and read_trace(run).meta["prompts"][0]["text"] == "the dog"  # in place at once
        return ok

    monkeypatch.setattr(files, "_exchange", watched)
    monkeypatch.setattr(files.os, "rename", lambda *a: pytest.fail("renamed aside: no exchange"))
    if not real(run, run):  # exchanging a path with itself: a no-op that says whether the call exists
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system")
    res = invoke("trace", "the dog", "-m", tiny_dir, "-o", run, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert swaps == [True] and [p.name for p in run.parent.iterdir()] == ["run"]


def test_force_replaces_a_run_completely(run, tiny_dir):
    res = invoke("trace", "the dog", "-m", tiny_dir, "-o", run, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert read_trace(run).meta["prompts"][0]["text"] == "the dog"
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]


# ---- 2. files written by export ------------------------------------------------------------------------------------


def test_html_into_a_missing_folder_touches_nothing(run, tmp_path):
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "--html", tmp_path / "missing" / "report.html"), "does not exist")
    assert snapshot(tmp_path) == before


def test_html_alone_writes_only_the_report(run, tmp_path):
    before = snapshot(run)
    res = invoke("export", run, "--html", tmp_path / "r.html", "--positions", "1")
    assert res.exit_code == 0, res.output
    assert snapshot(run) == before  # export.json (maybe an earlier --track result) untouched
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>") or (tmp_path / "r.html").stat().st_size
    assert f"wrote {tmp_path / 'r.html'}" in res.stderr


def test_default_export_says_what_it_wrote(run):
    res = invoke("export", run, "--positions", "1")
    assert res.exit_code == 0, res.output
    assert f"wrote {run / 'export.json'}" in res.stderr


@pytest.mark.parametrize("target, fragment", [
    ("notes.txt", "not a lenskit export"),  # a user's file is never overwritten
    ("run/trace.safetensors", "another file of this command"),  # nor the trace being read
    ("run", "is a folder"),
    ("nowhere/e.json", "does not exist"),
])
def test_export_output_refused(run, tmp_path, target, fragment):
    (tmp_path / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", tmp_path / target), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("html_target, fragment", [
    ("notes.txt", "not a lenskit report"),
    ("run/export.json", "not a lenskit report"),
    ("same", "another file of this command"),
])
def test_html_output_refused(run, tmp_path, html_target, fragment):
    (tmp_path / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    html = tmp_path / "e.json" if html_target == "same" else tmp_path / html_target
    assert_clean_error(invoke("export", run, "-o", tmp_path / "e.json", "--html", html), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["-o", "--html"])
def test_output_that_is_a_dangling_symlink_is_refused(run, tmp_path, flag):
    """Writing would replace the link itself (the rename does not follow it): refused like any symlink."""
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "missing" / "target.json")
    before = snapshot(tmp_path)
    args = ["-o", tmp_path / "e.json", "--html", link] if flag == "--html" else ["-o", link]
    assert_clean_error(invoke("export", run, *args, "--positions", "0"), "symbolic link")
    assert snapshot(tmp_path) == before


def test_lenskit_overwrites_its_own_outputs(run, tmp_path):
    for _ in range(2):
        res = invoke("export", run, "-o", tmp_path / "e.json", "--html", tmp_path / "r.html", "--positions", "0", "-q")
        assert res.exit_code == 0, res.output
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("target, fragment", [
    ("~no-such-user-of-lenskit/x.json", "~ of a user"),
    ("a\0b.json", "null byte"),
    ("n" * 300 + ".json", "too long"),
])
def test_paths_python_cannot_use(run, tmp_path, monkeypatch, target, fragment):
    """A ~user that does not exist, a NUL byte, a name longer than the file system allows: one line, exit 1."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", target), fragment)
    assert_clean_error(invoke("trace", "the cat", "-o", target.replace(".json", "")), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args", [
    ("export", "{tmp}/no\nlenskit: warning: forged"),  # a path holding a newline, quoted in the message
    ("validate", "{tmp}/no\u2028such"),  # a line separator (str.splitlines breaks there)
    ("export", "{run}", "--track", "x" * 1_000_000),  # a megabyte quoted
])
def test_error_messages_stay_one_short_line(run, tmp_path, args):
    """Whatever an error quotes, the CLI prints it as one line of at most MAX_ERROR characters."""
    from lenskit.cli import MAX_ERROR

    res = invoke(*[a.format(tmp=tmp_path, run=run) for a in args])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lenskit: error: "), res.stderr[:2000]
    assert len(lines[0]) <= len("lenskit: error: ") + MAX_ERROR


def test_stdout_closed_early_is_quiet(run):
    """``lenskit export RUN -o - | head -c 100``: the reader leaves before the document is written (a tiny run's
    would fit the pipe's buffer otherwise), lenskit exits 141 with nothing on stderr."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "lenskit", "export", str(run), "-o", "-"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141, err
    assert err == b"", err


def test_full_disk_while_writing_the_trace(tiny_dir, tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError, not OSError: still one line, nothing left."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    res = invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "r", "-q")
    assert_clean_error(res, "No space left on device", tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


# ---- 3. malformed trace files --------------------------------------------------------------------------------------


def raw_safetensors(path: Path, header: dict, data: bytes = b"", header_len: int | None = None) -> None:
    """Write a safetensors file by hand: 8-byte little-endian header length, JSON header, data."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if header_len is None else header_len) + head + data)


def _meta(run: Path) -> dict:
    return read_trace(run).meta


def _rewrite(run: Path, change=None, tensors=None) -> None:
    meta = _meta(run)
    t = load_file(run / TRACE_FILE)
    if change:
        change(meta)
    if tensors:
        tensors(t)
    save_file(t, run / TRACE_FILE, metadata={"lenskit": json.dumps(meta)})


def _set(path: list, value):
    def change(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value

    return change


META_CASES = [
    (_set(["model"], KeyError), "no 'model' section"),
    (_set(["model"], "llama"), "no 'model' section"),
    (_set(["model", "architecture"], KeyError), "model.architecture"),
    (_set(["model", "vocab_size"], -1), "model.vocab_size"),
    (_set(["model", "vocab_size"], "96"), "model.vocab_size"),
    (_set(["model", "dtype"], "int8"), "model.dtype"),
    (_set(["model", "fingerprint"], None), "model.fingerprint"),
    (_set(["prompts", 0, "chat"], "hi"), "'chat' must be"),
    (_set(["prompts", 0, "chat"], {"user": 5, "system": None}), "'chat' must be"),
    (_set(["prompts", 0, "chat"], {"user": "hi", "system": ["x"]}), "'chat' must be"),
    (_set(["prompts", 0, "token_ids"], KeyError), "no 'token_ids'"),
    (_set(["prompts", 0, "token_ids"], "1 2 3"), "no 'token_ids'"),
    (_set(["prompts", 0, "token_ids", 1], 10**9), "outside the vocabulary"),
    (_set(["prompts", 0, "token_ids", 1], -3), "outside the vocabulary"),
    (_set(["prompts", 0, "token_ids", 1], 2.5), "no 'token_ids'"),
    (_set(["prompts", 0, "text"], None), "no 'text'"),
    (_set(["prompts", 0, "tokens"], ["x"]), "'tokens' must be"),
    (_set(["prompts"], []), "no 'prompts'"),
    (_set(["prompts", 0], "hello"), "not an object"),
    (_set(["stages"], KeyError), "no 'stages'"),
    (_set(["stages", 1, "kind"], "mlp"), "stage 1"),
    (_set(["model", "n_layers"], 5), "expected 2L+1"),
    (_set(["format"], "1"), "format '1'"),
    (_set(["format"], KeyError), "format None"),
    (_set(["prompts", 0, "text"], "caf\udce9"), "no 'text'"),  # a lone surrogate: no UTF-8 writer takes it
    (_set(["prompts", 0, "tokens", 0], "\ud800"), "'tokens' must be"),
    (_set(["stages", 1, "layer"], 10**20), "stage 1"),
    (_set(["format"], True), "format True"),  # JSON true == 1 in Python
    (_set(["lenskit_version"], 5), "lenskit_version"),
    (_set(["lenskit_version"], KeyError), "lenskit_version"),
    (_set(["model", "id"], None), "model.id"),
    (_set(["model", "id"], 7), "model.id"),
    (_set(["model", "id"], "a\nb"), "model.id"),  # echoed by export's messages: one line only
    (_set(["model", "adapter"], None), "model.adapter"),
    (_set(["model", "adapter"], ["llama"]), "model.adapter"),
    (_set(["model", "vocab_size"], 10**30), "model.vocab_size"),
    (_set(["model", "vocab_size"], 1e30), "model.vocab_size"),
    (_set(["model", "vocab_size"], 96.0), "model.vocab_size"),
    (_set(["model", "vocab_size"], True), "model.vocab_size"),
    (_set(["model", "n_layers"], 10**30), "model.n_layers"),
    (_set(["model", "revision"], 3), "model.revision"),
    (_set(["model", "source", "gguf"], "/x" * 5000), "model.source.gguf"),
    (_set(["stages", 1, "name"], "L5.ffn"), "stage 1 is 'L5.ffn'"),  # names follow kind and layer
    (_set(["stages", 2, "layer"], 1), "stage 2 is 'L0.ffn' (kind ffn, layer 1)"),
    (lambda m: m["stages"].__setitem__(slice(1, 3), m["stages"][2:0:-1]), "stage 1 is 'L0.ffn'"),  # out of order
    (_set(["model", "extra"], json.loads("[" * 40 + "]" * 40)), "nested more than 32 levels"),  # orjson stops at 255
    (_set(["model", "extra"], float("nan")), "holds NaN"),  # json.dumps writes NaN: no JSON reader takes it
    (_set(["model", "extra"], "\ud800"), "not valid Unicode"),
]


@pytest.mark.parametrize("change, fragment", META_CASES)
def test_metadata_breaking_the_contract(run, tmp_path, change, fragment):
    _rewrite(run, change)
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), fragment)
    assert_invalid(invoke("validate", run), fragment)
    assert snapshot(tmp_path) == before


HUGE = "x" * 10_000_000


@pytest.mark.parametrize("change, fragment", [
    (_set(["format"], HUGE), "format 'xxx"),
    (_set(["lenskit_version"], HUGE), "lenskit_version"),
    (_set(["model", "id"], HUGE), "model.id"),
    (_set(["model", "architecture"], "\n" + HUGE), "model.architecture"),
    (_set(["model", "dtype"], HUGE), "model.dtype"),
    (_set(["model", "vocab_size"], [HUGE] * 3), "model.vocab_size"),
    (_set(["stages", 3, "name"], HUGE), "stage 3 is 'xxx"),
])
def test_huge_values_are_quoted_short(run, tmp_path, change, fragment):
    """A 10 MB string in the metadata: named in a short line, never echoed whole."""
    _rewrite(run, change)
    for res in (invoke("validate", run), invoke("export", run, "-o", tmp_path / "o.json")):
        assert_clean_error(res, fragment)
        assert len(res.stderr) < 600, len(res.stderr)


TENSOR_CASES = [
    (lambda t: t.update({k: v[:, :, :16].contiguous() for k, v in t.items()}), "differs from the lens"),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"][:, :, :16].contiguous()}), "another prompt"),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"][:, :-1].contiguous()}), "expected [7, "),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"][0].contiguous()}), "expected [S, T, D]"),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"].to(torch.int32)}), "dtype 'I32'"),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"].to(torch.bool)}), "dtype 'BOOL'"),
    (lambda t: t.pop("prompt.1.stages"), "prompt.1.stages is missing"),
    (lambda t: t.update({"evil": torch.zeros(2)}), "unexpected tensor"),
    (lambda t: t["prompt.1.stages"].__setitem__((4, 2, 7), float("nan")), "stage L1.ffn, position 2"),
    (lambda t: t["prompt.0.stages"].__setitem__((0, 0, 0), float("inf")), "stage embed, position 0"),
    (lambda t: t.update({"prompt.0.stages": t["prompt.0.stages"].half().mul(1e6)}), "non-finite"),
]


@pytest.mark.parametrize("change, fragment", TENSOR_CASES)
def test_tensors_breaking_the_contract(run, tmp_path, change, fragment):
    _rewrite(run, tensors=change)
    if fragment == "differs from the lens":  # a valid trace on its own: only the lens can tell
        assert validate_trace(run) == []
    else:
        assert_invalid(invoke("validate", run), fragment)
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), fragment)
    assert snapshot(tmp_path) == before


def _valid_header(run: Path) -> tuple[dict, bytes]:
    data = (run / TRACE_FILE).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8: 8 + n]), data[8 + n:]


RAW_CASES = [
    (lambda h, d: (b"", None), "readable safetensors"),
    (lambda h, d: (b"\x01\x02\x03", None), "readable safetensors"),
    (lambda h, d: (struct.pack("<Q", 2**63) + b"{}", None), "readable safetensors"),
    (lambda h, d: (struct.pack("<Q", 5) + b"nope!", None), "not JSON"),
    (lambda h, d: (struct.pack("<Q", 2) + b"[]", None), "not a JSON object"),
    (lambda h, d: ({"__metadata__": {"other": "x"}}, b""), "no lenskit metadata"),
    (lambda h, d: ({"__metadata__": {"lenskit": "{not json"}}, b""), "not valid JSON"),
    (lambda h, d: ({"__metadata__": {"lenskit": "[1, 2]"}}, b""), "not a JSON object"),
    (lambda h, d: (h, d[: len(d) // 3]), "truncated"),
    (lambda h, d: (dict(h, **{"prompt.0.stages": dict(h["prompt.0.stages"], data_offsets=[0, 4])}), d), "data offsets"),
    (lambda h, d: (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, None), "not JSON"),  # nesting depth
    (lambda h, d: ({"__metadata__": {"lenskit": "[" * 100_000 + "]" * 100_000}}, b""), "not valid JSON"),
]


def _shift(h: dict, key: str, by: int) -> dict:
    """The header with tensor ``key``'s data ``by`` bytes later (its size unchanged)."""
    a, b = h[key]["data_offsets"]
    return dict(h, **{key: dict(h[key], data_offsets=[a + by, b + by])})


def _with_meta(h: dict, text) -> dict:
    return dict(h, __metadata__=dict(h["__metadata__"], lenskit=text(h["__metadata__"]["lenskit"])))


def _duplicate_tensor(h: dict, d: bytes) -> bytes:
    """A header naming prompt.0.stages twice: Python's json keeps the last, a reader in another language may not."""
    head = json.dumps(h).encode()
    head = head[:-1] + b', "prompt.0.stages": ' + json.dumps(h["prompt.0.stages"]).encode() + b"}"
    return struct.pack("<Q", len(head)) + head + d


RAW_CASES += [
    # millions of tiny values: gigabytes as Python objects, refused before parsing
    (lambda h, d: (struct.pack("<Q", 27_000_002) + b"[" + b"{}," * 9_000_000 + b"]", None), "more than 8,000,000 values"),
    (lambda h, d: (_with_meta(h, lambda t: "[" + "0," * 8_000_000 + "0]"), d), "more than 8,000,000 values"),
    (lambda h, d: (_duplicate_tensor(h, d), None), "'prompt.0.stages' twice"),
    (lambda h, d: (_with_meta(h, lambda t: t[:-1] + ', "format": 1}'), d), "'format' twice"),
    (lambda h, d: (_with_meta(h, lambda t: t[:-1] + ', "x": Infinity}'), d), "holds Infinity"),
    (lambda h, d: (_with_meta(h, lambda t: t[:-1] + ', "x": -NaN}'), d), "not valid JSON"),
    (lambda h, d: (dict(h, __metadata__=dict(h["__metadata__"], other=5)), d), "map names to strings"),
    (lambda h, d: (dict(h, __metadata__=dict(h["__metadata__"], other="\ud800")), d), "not valid Unicode"),
    (lambda h, d: (dict(h, extra=json.loads("[" * 10 + "]" * 10)), d), "nested more than"),
    (lambda h, d: (_shift(h, "prompt.1.stages", -4), d[:-4]), "back to back"),  # overlapping tensors
    (lambda h, d: (_shift(h, "prompt.1.stages", 4), d[:-4] + b"\0" * 8), "back to back"),  # a gap
    (lambda h, d: (_shift(h, "prompt.1.stages", 2**40), d), "back to back"),  # beyond the end of the file
    (lambda h, d: (h, d + b"\0" * 16), "16 bytes after its last tensor"),
    (lambda h, d: (dict(h, **{"prompt.0.stages": dict(h["prompt.0.stages"], dtype=["F32"])}), d), "dtype ['F32']"),
    (lambda h, d: (dict(h, **{"prompt.0.stages": dict(h["prompt.0.stages"], shape=[7, 11, 10**4000])}), d),
     "its data offsets"),  # an int of 4000 digits: no overflow, no huge line
    (lambda h, d: (dict(h, **{"x" * 10_000_000: h["prompt.0.stages"]}), d), "unexpected tensor(s) 'xxx"),
    (lambda h, d: (b'{"schema": "lenskit.export/3", "model": {}}', None), "is a JSON file, not a safetensors trace"),
]


@pytest.mark.parametrize("make, fragment", RAW_CASES)
def test_hand_made_files(run, tmp_path, make, fragment):
    header, data = _valid_header(run)
    head, body = make(header, data)
    if isinstance(head, bytes):
        (run / TRACE_FILE).write_bytes(head)
    else:
        raw_safetensors(run / TRACE_FILE, head, body)
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), fragment)
    assert_invalid(invoke("validate", run), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("make, fragment", [
    (lambda t: t / "nonexistent", "does not exist"),
    (lambda t: t / "nonexistent" / TRACE_FILE, "does not exist"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "-o {tmp}/empty` first"),  # a folder without a trace
    (lambda t: (os.mkfifo(t / "fifo"), t / "fifo")[1], "not a regular file"),  # never opened: no hang
])
def test_validate_a_path_that_is_no_trace(tmp_path, make, fragment):
    path = make(tmp_path)
    for res in (invoke("validate", path), invoke("export", path, "-o", tmp_path / "o.json")):
        assert_clean_error(res, fragment.format(tmp=tmp_path))
        assert "-o ." not in res.stderr


def test_validate_passes_a_good_trace(run):
    res = invoke("validate", run)
    assert res.exit_code == 0 and res.stdout.strip().endswith(": ok"), res.output


# ---- 4. what a trace can make export load --------------------------------------------------------------------------


def test_trace_cannot_make_export_download(run, monkeypatch):
    """A hub id missing locally is looked up with local_files_only=True, even with HF_HUB_OFFLINE unset."""
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kw):
        calls.append(kw)
        raise FileNotFoundError("not in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _rewrite(run, _set(["model", "source"], {"id": "evil-org/huge-model", "path": "/nonexistent", "gguf": None}))
    assert_clean_error(invoke("export", run), "--allow-download")
    assert calls and all(kw.get("local_files_only") is True for kw in calls)
    calls.clear()
    invoke("export", run, "--allow-download")
    assert calls and calls[0].get("local_files_only") is False
    calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the usual switch, set explicitly
    invoke("export", run)
    assert calls and calls[0].get("local_files_only") is False


@pytest.mark.parametrize("source, fragment", [
    ({"gguf": "/nonexistent/model.gguf"}, "does not exist"),
    ({"path": None, "id": None}, "cannot find the weights of '/nonexistent/model'"),
    ({"path": "/etc", "id": None}, "cannot load"),
])
def test_trace_source_elsewhere(run, source, fragment):
    _rewrite(run, _set(["model", "source"], source))
    _rewrite(run, _set(["model", "id"], "/nonexistent/model"))  # a trace always names its model (the contract)
    assert_clean_error(invoke("export", run), fragment)


@pytest.mark.parametrize("damage", ["truncated", "zeros", "fifo"])
def test_trace_model_folder_with_damaged_weights(run, tiny_dir, tmp_path, damage):
    """The folder a trace names holds a broken (or blocking) weights file: one line naming it, never a hang."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.unlink()
    if damage == "fifo":
        os.mkfifo(weights)
    else:
        weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0" * 100)
    _rewrite(run, _set(["model", "source"], {"path": str(folder)}))
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), str(weights))
    assert not (tmp_path / "o.json").exists()


# ---- 5. option values, checked before the lens loads ---------------------------------------------------------------


@pytest.fixture()
def no_lens(monkeypatch):
    """Make loading the lens weights fail loudly: an option error must come first."""
    import lenskit.weights as weights

    def boom(*a, **k):
        raise AssertionError("the lens weights were loaded before the options were checked")

    monkeypatch.setattr(weights, "trace_lens", boom)


@pytest.mark.parametrize("args, fragment", [
    (["--max-memory", "infG"], "--max-memory"),
    (["--max-memory", "-5M"], "--max-memory"),
    (["--max-memory", "nan"], "--max-memory"),
    (["--max-memory", "0"], "--max-memory"),
    (["--max-memory", "1e400G"], "--max-memory"),
    (["--max-memory", "5 parsecs"], "--max-memory"),
    (["--max-memory", "١٠M"], "--max-memory"),
    (["--track", "٣"], "not in the vocabulary"),
    (["--track", "France Paris"], "not a single token"),
    (["--track", "99999"], "out of range"),
    (["--track", ""], "not a single token"),
    (["--positions", "99"], "out of range"),
    (["--positions", "٣"], "bad --positions"),
    (["--positions", "3-1"], "is empty"),
    (["--positions", "1,,2"], "bad --positions"),
    (["--positions", "+1"], "bad --positions"),
    (["--positions", "1_0"], "bad --positions"),
    (["--prompt", "5"], "out of range"),
    (["--prompt", "-1"], "--prompt"),
    (["--top-k", "0"], "--top-k"),
    (["--top-k", "100000"], "--top-k"),
    (["--samples", "101"], "--samples"),
    (["--precision", "half"], "unknown precision"),
    (["--device", "meta"], "unknown device"),
    (["--device", "cuda:٣"], "unknown device"),
    (["--device", "mps"], "not available"),
    (["--track", "9" * 5000], "out of range"),  # past Python's 4300-digit int() limit
    (["--positions", "9" * 5000], "out of range"),
    (["--positions", "0-" + "9" * 5000], "out of range"),
    (["--positions", "-" + "9" * 5000], "out of range"),
    (["--positions", "0" * 5000 + "99"], "position 000"),  # leading zeros count towards int()'s limit too
])
def test_bad_options_refused_before_the_lens_loads(run, tmp_path, no_lens, args, fragment):
    before = snapshot(tmp_path)
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json", *args), fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, fragment", [
    (["--dtype", "int8"], "unknown dtype"),
    (["--device", "xla"], "unknown device"),
    (["--top-k", "-3"], "--top-k"),
    (["--track", "٣"], "not in the vocabulary"),
])
def test_bad_trace_options(tiny_dir, tmp_path, args, fragment):
    assert_clean_error(invoke("trace", "the cat", "-m", tiny_dir, "-o", tmp_path / "r", *args), fragment, tmp_path / "r")


def test_prompt_that_is_not_utf8(tiny_dir, tmp_path):
    """Bytes that are not UTF-8 (a mis-encoded argument or stdin) reach Python as lone surrogates."""
    res = invoke("trace", "the \udcff cat", "-m", tiny_dir, "-o", tmp_path / "r")
    assert_clean_error(res, "not valid UTF-8", tmp_path / "r")


def test_max_memory_past_the_prompts_needs(run, tmp_path):
    """--max-memory 1T for an 11-token prompt: buffers sized for the prompt, not a terabyte, and the same export."""
    assert invoke("export", run, "-o", tmp_path / "a.json", "-q").exit_code == 0
    res = invoke("export", run, "-o", tmp_path / "b.json", "-q", "--max-memory", "1T")
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["prompts"] == b["prompts"]


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                   "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511357952 "
                                   "bytes. Error code 12 (Cannot allocate memory)")])
def test_out_of_memory_is_one_line(run, tmp_path, monkeypatch, error):
    import lenskit.export

    def oom(*a, **k):
        raise error

    monkeypatch.setattr(lenskit.export, "export_document", oom)
    assert_clean_error(invoke("export", run, "-o", tmp_path / "o.json"), "out of memory")
    assert not (tmp_path / "o.json").exists()


def _prompt_file(tmp_path, content: bytes):
    f = tmp_path / "p.txt"
    f.write_bytes(content)
    return f


@pytest.mark.parametrize("make, fragment", [
    (lambda t: t, "is a folder"),
    (lambda t: _prompt_file(t, b"\xff\xfe t\x00h\x00e\x00"), "not valid UTF-8"),  # UTF-16
    (lambda t: _prompt_file(t, b"\xef\xbb\xbf \r\n\t"), "is empty"),  # a BOM and whitespace
    (lambda t: (os.mkfifo(t / "fifo"), t / "fifo")[1], "is empty"),  # a named pipe nobody writes to: no hang
])
def test_bad_prompt_files(tiny_dir, tmp_path, make, fragment):
    f = make(tmp_path)
    assert_clean_error(invoke("trace", "-f", f, "-m", tiny_dir, "-o", tmp_path / "r"), fragment, tmp_path / "r")


def test_prompt_stdin_that_is_not_utf8(tiny_dir, tmp_path):
    res = invoke("trace", "-f", "-", "-m", tiny_dir, "-o", tmp_path / "r", input=b"\xff\xfe\x00 the cat")
    assert_clean_error(res, "stdin is not valid UTF-8", tmp_path / "r")


def test_prompt_larger_than_any_context(tiny_dir, tmp_path, monkeypatch):
    """`-f /dev/zero` or `yes | lenskit trace -f -` stop at a bound, never read forever."""
    import lenskit.commands.trace as trace_cmd

    monkeypatch.setattr(trace_cmd, "MAX_PROMPT_BYTES", 1000)
    res = invoke("trace", "-f", "/dev/zero", "-m", tiny_dir, "-o", tmp_path / "r")
    assert_clean_error(res, "larger than", tmp_path / "r")
    res = invoke("trace", "-f", "-", "-m", tiny_dir, "-o", tmp_path / "r", input=b"the " * 1000)
    assert_clean_error(res, "stdin is larger than", tmp_path / "r")


def test_prompt_file_with_a_bom_and_a_pipe(tiny_dir, tmp_path):
    """A Windows editor's byte-order mark is not part of the prompt; `-f <(cmd)` (a pipe) is read like a file."""
    f = _prompt_file(tmp_path, b"\xef\xbb\xbfthe cat sat")
    assert invoke("trace", "-f", f, "-m", tiny_dir, "-o", tmp_path / "a", "-q", "--no-export").exit_code == 0
    assert read_trace(tmp_path / "a").meta["prompts"][0]["text"] == "the cat sat"
    r, w = os.pipe()
    os.write(w, b"the cat")
    os.close(w)
    res = invoke("trace", "-f", f"/dev/fd/{r}", "-m", tiny_dir, "-o", tmp_path / "b", "-q", "--no-export")
    os.close(r)
    assert res.exit_code == 0, res.output
    assert read_trace(tmp_path / "b").meta["prompts"][0]["text"] == "the cat"


# ---- 6. the server -------------------------------------------------------------------------------------------------


@pytest.fixture()
def served(run, tmp_path):
    from lenskit.server import Server, Site, find_runs

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "export.json").symlink_to(secret)
    srv = Server(Site(find_runs([run, evil])), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, path="/runs.json", host=None, method="GET"):
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


def test_symlink_out_of_the_run_is_refused(served):
    status, body = request(served, "/runs/evil/export.json", host=f"127.0.0.1:{served.server_address[1]}")
    assert status == 403 and b"root:" not in body
    status, _ = request(served, "/runs/run/export.json", host=f"127.0.0.1:{served.server_address[1]}")
    assert status == 200


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "evil.example:{port}", "localhost.evil",
                                  "127.0.0.1:1", "", "[::1]:1"])
def test_dns_rebinding_hosts_are_refused(served, host):
    status, body = request(served, "/runs/run/export.json", host=host.format(port=served.server_address[1]))
    assert status == 403 and b"schema" not in body


def test_two_host_headers_are_refused(served):
    """Which of two Host headers a proxy or browser would use is not ours to guess: neither order is answered."""
    own = f"127.0.0.1:{served.server_address[1]}"
    for hosts in ([own, "evil.example"], ["evil.example", own], [own, own]):
        conn = http.client.HTTPConnection(*served.server_address[:2], timeout=10)
        conn.putrequest("GET", "/runs/run/export.json", skip_host=True, skip_accept_encoding=True)
        for h in hosts:
            conn.putheader("Host", h)
        conn.endheaders()
        res = conn.getresponse()
        assert res.status == 403 and b"schema" not in res.read()
        conn.close()


def test_a_request_never_finished_is_dropped(served, monkeypatch):
    """A client that sends half a request and waits holds its connection (and thread) only for Handler.timeout."""
    import socket
    import time

    from lenskit.server import Handler

    monkeypatch.setattr(Handler, "timeout", 0.5)
    with socket.create_connection(served.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /runs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the request goes on
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not answered
        assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "127.0.0.1"])
def test_own_host_names_are_answered(served, host):
    assert request(served, "/runs.json", host=host.format(port=served.server_address[1]))[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_only_get_and_head(served, method):
    port = served.server_address[1]
    assert request(served, "/runs.json", host=f"127.0.0.1:{port}", method=method)[0] == 405
    assert request(served, "/runs.json", host=f"127.0.0.1:{port}", method="HEAD")[0] == 200


def test_wildcard_bind_warns(run, monkeypatch):
    from lenskit.commands import serve as serve_cmd
    from lenskit.server import Server

    monkeypatch.setattr(Server, "serve_forever", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    res = invoke("serve", run, "--host", "0.0.0.0", "--port", "0")
    assert res.exit_code == 0, res.output
    assert "visible to anyone" in res.stderr
    assert serve_cmd  # imported for the monkeypatch target's module


def test_run_folder_whose_name_is_not_utf8(run, tmp_path):
    """A folder name with bytes that are not UTF-8 must not break /runs.json (nor the gzip warm-up) for every run."""
    from lenskit.server import Site, find_runs

    odd = tmp_path / "b\udcffd"
    run.rename(odd)
    site = Site(find_runs([odd]))
    site.warm()
    res = site.get("/runs.json")
    assert res.status == 200
    url = json.loads(res.body)["runs"][0]["url"]
    assert site.get("/" + url).status == 200

