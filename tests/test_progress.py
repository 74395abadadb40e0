"""Progress on stderr: a tqdm bar with an ETA on a terminal, plain lines elsewhere, nothing with ``-q``."""

import io
import re
import sys
import time

from typer.testing import CliRunner

from lenskit import progress as progress_module
from lenskit.cli import app
from lenskit.progress import Progress

ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d")  # tqdm's [elapsed<remaining] once a rate is known


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_bar_with_eta_on_a_terminal(monkeypatch):
    err, lines = FakeTTY(), []
    monkeypatch.setattr(sys, "stderr", err)
    with Progress(4, "export", "positions", lines.append) as p:
        for _ in range(2):
            time.sleep(0.25)  # past tqdm's mininterval, so each update is drawn
            p.update(1)
        p.note("prompt 1/1")
        p.update(1)
    out = err.getvalue()
    assert "\r" in out and "lenskit: export:" in out and "2/4" in out and ETA.search(out), out
    assert "prompt 1/1" in out and lines == []  # notes beside the bar; no plain lines


def test_percentage_bar(monkeypatch):
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    with Progress(100, "dequantize", "%", lambda m: None) as p:
        p.note("tokenizer")
        time.sleep(0.25)
        p.update_to(40)
        p.update_to(30)  # never backwards
        assert p.done == 40
    out = err.getvalue()
    assert "lenskit: dequantize:  40%" in out and "tokenizer" in out and ETA.search(out), out


def test_plain_lines_off_a_terminal(monkeypatch):
    err, lines = io.StringIO(), []
    monkeypatch.setattr(sys, "stderr", err)
    with Progress(10, "export", "positions", lines.append) as p:
        p.note("not shown: periodic lines instead")
        for _ in range(10):
            p.update(1)
    assert [re.sub(r" \(.*s\)$", "", m) for m in lines] == [f"export: {i}/10 positions" for i in range(1, 10)]
    with Progress(5, "trace", "tokens", lines.append, every=None) as p:  # notes instead of periodic lines
        p.note("prompt 1/1: 5 tokens")
        p.update(5)
    assert lines[-1] == "prompt 1/1: 5 tokens" and len(lines) == 10
    with Progress(100, "dequantize", "%", lines.append) as p:
        p.update_to(55.5)
    assert re.fullmatch(r"dequantize: 56% \(\d+\.\ds\)", lines[-1])
    assert err.getvalue() == ""  # through the logger only: no carriage-return bar


def test_quiet_is_silent_on_a_terminal(monkeypatch):
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    with Progress(4, "export", "positions", None) as p:
        p.note("x")
        p.update(4)
    assert p.bar is None and err.getvalue() == ""


def test_progress_logger_keeps_its_stream(monkeypatch, capsys):
    log = progress_module.progress_logger(False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as quiet_transformers does meanwhile
    log("still shown")
    assert capsys.readouterr().err == "lenskit: still shown\n"
    assert progress_module.progress_logger(True) is None


def test_gguf_tensor_steps(tmp_path):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from lenskit.gguf_cache import _gguf_phases, _tensor_progress

    f = tmp_path / "m.gguf"
    f.write_bytes(b"\0" * 1000)
    at = _gguf_phases(f)
    assert list(at) == ["tokenizer", "config and weight names", "tensors", "saving"]
    assert at["tokenizer"] == 0 and sorted(at.values()) == list(at.values()) and at["saving"] < 100
    original, lines = gguf_utils.tqdm, []
    with Progress(100, "dequantize", "%", lines.append, every=None) as p:
        with _tensor_progress(p, 20, 80):
            seen = []
            for t in gguf_utils.tqdm(["a", "b", "c", "d"], desc="Converting"):
                seen.append((t, p.done))
        assert seen == [("a", 20), ("b", 35), ("c", 50), ("d", 65)] and p.done == 80 and lines == ["tensors"]
    assert gguf_utils.tqdm is original


runner = CliRunner()


def test_trace_progress_cli(tiny_dir, tmp_path, monkeypatch):
    args = ["trace", "the cat sat", "a dog ran on the mat", "-m", str(tiny_dir), "--no-export"]
    plain = runner.invoke(app, [*args, "-o", str(tmp_path / "a")])  # CliRunner's stderr is not a terminal
    assert plain.exit_code == 0, plain.output
    assert "lenskit: prompt 1/2: 4 tokens\nlenskit: prompt 2/2: 7 tokens\n" in plain.stderr and "\r" not in plain.stderr
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream: True)
    bar = runner.invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert bar.exit_code == 0, bar.output
    assert "\r" in bar.stderr and "lenskit: trace:" in bar.stderr and "/11 [" in bar.stderr, bar.stderr
    assert "prompt 2/2: 7 tokens" in bar.stderr and "lenskit: prompt" not in bar.stderr
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "c"), "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout.strip() == str(tmp_path / "c")


def test_gguf_metadata_read_once_per_file(monkeypatch):
    """During a dequantization the metadata-only GGUF reads of one file run once (the second read, for the config,
    is served from memory, as an independent copy); tensor reads pass through; the original is restored after."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from lenskit.gguf_cache import _gguf_metadata_once

    calls = []

    def fake(path, return_tensors=False, *args, **kwargs):
        calls.append((str(path), return_tensors))
        return {"config": {"n": 1}, "tensors": {} if return_tensors else None}

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", fake)
    with _gguf_metadata_once():
        a = gguf_utils.load_gguf_checkpoint("m.gguf", return_tensors=False)
        a["config"]["n"] = 99  # a caller edits its copy
        b = gguf_utils.load_gguf_checkpoint("m.gguf", return_tensors=False)
        gguf_utils.load_gguf_checkpoint("m.gguf", return_tensors=True)
    assert b["config"]["n"] == 1
    assert calls == [("m.gguf", False), ("m.gguf", True)]
    assert gguf_utils.load_gguf_checkpoint is fake
