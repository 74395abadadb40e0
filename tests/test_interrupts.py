"""Interrupts, signals and concurrent commands, through the real command line in subprocesses.

Ctrl-C (SIGINT), SIGTERM (``kill``, ``timeout``, ``docker stop``, CI runners) at a chosen phase of a command: one
``lenskit: error:`` line, exit 130 / 143, no temporary file or folder left, every earlier output as it was. Two
commands writing one target at once: the result is one command's whole output, never a mix, or the second refuses
with one line.

A phase is chosen deterministically: the subprocess runs the CLI with one library function wrapped so that it says
``lenskit-test: paused`` on stderr and waits for a release file (:data:`HARNESS`); the test signals or releases it
after reading that line, never after a guessed sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAUSED = "lenskit-test: paused"

HARNESS = r"""
import importlib, os, sys, time
where = os.environ.get("LENSKIT_TEST_PAUSE")
if where:
    module, name = where.rsplit(":", 1)
    module = importlib.import_module(module)
    original = getattr(module, name)
    def paused(*args, **kwargs):
        sys.stderr.write("lenskit-test: paused\n")
        sys.stderr.flush()
        while not os.path.exists(os.environ["LENSKIT_TEST_RELEASE"]):
            time.sleep(0.02)
        return original(*args, **kwargs)
    setattr(module, name, paused)
sys.argv[0] = "lenskit"
from lenskit.cli import main
main()
"""


class Lenskit:
    """``lenskit ARGS`` in a subprocess (in ``cwd``), optionally paused on entry to ``pause`` (``module:function``)
    until :meth:`release`; stderr is collected line by line as it comes."""

    def __init__(self, *args, cwd: Path, pause: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(ROOT), LENSKIT_LOAD_PLUGINS="0", OMP_NUM_THREADS="1")
        self.release_file = cwd / f".release-{id(self)}"
        if pause:
            env.update(LENSKIT_TEST_PAUSE=pause, LENSKIT_TEST_RELEASE=str(self.release_file))
        self.proc = subprocess.Popen([sys.executable, "-c", HARNESS, *map(str, args)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")),
                                        daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Wait until a stderr line holds ``text`` (the process still running)."""
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {text!r}: {''.join(self.lines)}"
            assert time.monotonic() < end, f"no {text!r} within {timeout}s: {''.join(self.lines)}"
            time.sleep(0.02)

    def release(self) -> None:
        self.release_file.touch()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Exit status, stdout and stderr, once the process has ended."""
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self._reader.join(timeout)
        self.release_file.unlink(missing_ok=True)
        return self.proc.returncode, out, "".join(self.lines)


def assert_one_line(err: str, code: int, rc: int, fragment: str) -> None:
    """Exit ``code``; the last stderr line the only ``lenskit: error:`` line, holding ``fragment``; no traceback."""
    assert rc == code, err
    assert "Traceback" not in err and err.count("lenskit: error:") == 1, err
    assert err.strip().splitlines()[-1].startswith("lenskit: error: ") and fragment in err.strip().splitlines()[-1], err


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` -> its sha256 (or 'dir'); release files of this module left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if not p.name.startswith(".release-")}


def traced_texts(run: Path) -> tuple[list, list]:
    """The prompt texts of a run's trace and of its export.json: they must be the same run's."""
    from lenskit.store import read_trace

    trace = [p["text"] for p in read_trace(run / "trace.safetensors").meta["prompts"]]
    doc = json.loads((run / "export.json").read_text())
    strings = doc.get("strings")
    texts = [p["text"] if isinstance(p["text"], str) else strings[p["text"]] for p in doc["prompts"]]
    return trace, texts


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run (trace + export.json) under ``tmp_path/work``."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_run, work / "run")
    return work / "run"


def test_signal_while_trace_replaces_a_run(tiny_dir, run_copy):
    """`trace --force` over a run, stopped by Ctrl-C and by SIGTERM with its new run built beside the old: the old
    run stays byte-identical and no temporary folder is left (SIGTERM killed the process at once, leaving the
    `.run.*.tmp` folder: hundreds of MB for a real model)."""
    work = run_copy.parent
    before = snapshot(work)
    procs = {sig: Lenskit("trace", "the cat", "-m", tiny_dir, "-o", "run", "--force", "-q", cwd=work,
                          pause="lenskit.files:replace_run_dir") for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, p in procs.items():
        p.wait_for(PAUSED)
        p.proc.send_signal(sig)
    rc, _, err = procs[signal.SIGINT].finish()
    assert_one_line(err, 130, rc, "interrupted")
    rc, _, err = procs[signal.SIGTERM].finish()
    assert_one_line(err, 143, rc, "terminated (SIGTERM)")
    assert snapshot(work) == before


def test_signal_while_export_writes(run_copy):
    """`export -o FILE --html FILE` stopped by SIGTERM with its first temporary file written beside the target: the
    earlier files stay as they were, no `.*.tmp` is left."""
    work = run_copy.parent
    (work / "e.json").write_bytes((run_copy / "export.json").read_bytes())
    before = snapshot(work)
    p = Lenskit("export", "run", "-o", "e.json", "--html", "page.html", "-q", cwd=work,
                pause="lenskit.files:default_mode")
    p.wait_for(PAUSED)
    assert any(f.name.endswith(".tmp") for f in work.iterdir())  # the phase: a temp file beside the target
    p.proc.send_signal(signal.SIGTERM)
    rc, _, err = p.finish()
    assert_one_line(err, 143, rc, "terminated (SIGTERM)")
    assert snapshot(work) == before


def test_files_put_in_the_folder_meanwhile_are_kept(tiny_dir, tiny_run, tmp_path, monkeypatch):
    """The -o folder is checked again as the run moves in: a folder that appeared while the model ran -- with a
    user's notes, or another trace's run when this one has no --force -- is refused with one line and kept as it
    is (before: it was renamed aside and deleted, notes and all)."""
    from typer.testing import CliRunner

    import lenskit.store
    from lenskit.cli import app

    original = lenskit.store.write_trace
    made = {}

    def meanwhile(path, *args):
        original(path, *args)
        made["run"].mkdir()
        (made["run"] / made["name"]).write_bytes(made["data"])

    monkeypatch.setattr(lenskit.store, "write_trace", meanwhile)
    for name, data, force, fragment in [("notes.txt", b"mine", ["--force"], "not a lenskit run folder"),
                                        ("trace.safetensors", (tiny_run / "trace.safetensors").read_bytes(), [],
                                         "use --force")]:
        made.update(run=tmp_path / name, name=name, data=data)
        res = CliRunner().invoke(app, ["trace", "the cat", "-m", tiny_dir, "-o", str(made["run"]), "-q", *force])
        assert res.exit_code == 1 and fragment in res.stderr and "changed while this command ran" in res.stderr, res.output
        assert [p.name for p in made["run"].iterdir()] == [name] and (made["run"] / name).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "trace.safetensors"]


def test_two_traces_into_one_folder(tiny_dir, tmp_path):
    """Two traces into one new folder at once, the second to finish with --force: the first writes it, the second
    replaces it whole, never the trace of one with the export.json of the other, no temporary folder left."""
    a = Lenskit("trace", "the dog ran", "-m", tiny_dir, "-o", "same", "--force", "-q", cwd=tmp_path,
                pause="lenskit.files:replace_run_dir")
    a.wait_for(PAUSED)
    rc, out, err = Lenskit("trace", "the cat sat", "-m", tiny_dir, "-o", "same", "-q", cwd=tmp_path).finish()
    assert rc == 0, err
    assert traced_texts(tmp_path / "same") == (["the cat sat"], ["the cat sat"])
    a.release()
    rc, _, err = a.finish()
    assert rc == 0, err
    assert traced_texts(tmp_path / "same") == (["the dog ran"], ["the dog ran"])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".release-")) == ["same"]


def test_export_while_trace_replaces_the_run(tiny_dir, run_copy):
    """`export RUN` (writing RUN/export.json) while `trace --force -o RUN` replaces the run: the export refuses with
    one line and the run stays the new trace's whole (before: the old trace's export.json was written into the new
    run)."""
    work = run_copy.parent
    e = Lenskit("export", "run", "-q", cwd=work, pause="lenskit.commands.export:_same_run")
    e.wait_for(PAUSED)
    rc, _, err = Lenskit("trace", "the dog ran", "-m", tiny_dir, "-o", "run", "--force", "-q", cwd=work).finish()
    assert rc == 0, err
    e.release()
    rc, _, err = e.finish()
    assert_one_line(err, 1, rc, "was replaced while it was exported")
    assert traced_texts(run_copy) == (["the dog ran"], ["the dog ran"])


def test_two_fit_lens_into_one_folder(tiny_dir, tmp_path):
    """A second `fit-lens -o L` while one runs is refused (before: it resumed from the first's checkpoint and the
    two overwrote each other's files); SIGTERM to the first before its first checkpoint leaves no folder."""
    (tmp_path / "c.txt").write_text("\n\n".join("the cat sat on the mat and ran to Paris ." * 4 for _ in range(20)))
    args = ("fit-lens", "c.txt", "-m", tiny_dir, "-o", "lens", "--steps", "2", "--seq-len", "16", "--batch", "2",
            "--init-tokens", "64", "--heldout-tokens", "32", "-q")
    first = Lenskit(*args, cwd=tmp_path, pause="lenskit.lenses.fit:_fit_lens")
    first.wait_for(PAUSED)
    rc, _, err = Lenskit(*args, cwd=tmp_path).finish()
    assert_one_line(err, 1, rc, "another lenskit fit-lens is writing this lens folder")
    first.proc.send_signal(signal.SIGTERM)
    rc, _, err = first.finish()
    assert_one_line(err, 143, rc, "terminated")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".release-")) == ["c.txt"]


def test_two_surveys_into_one_folder(tiny_dir, tmp_path):
    """A second `survey -o S` while one runs is refused (before: both wrote one checkpoint, or the second said the
    running one was an interrupted survey to --resume); Ctrl-C to the first leaves neither S nor its checkpoint
    folder."""
    (tmp_path / "c.txt").write_text("the cat sat on the mat and ran to Paris .")
    args = ("survey", "c.txt", "-m", tiny_dir, "-o", "s", "--device", "cpu", "-q")
    first = Lenskit(*args, cwd=tmp_path, pause="lenskit.survey:_survey_shard")
    first.wait_for(PAUSED)
    assert (tmp_path / ".s.survey-partial").is_dir()
    rc, _, err = Lenskit(*args, cwd=tmp_path).finish()
    assert_one_line(err, 1, rc, "another lenskit survey into")
    first.proc.send_signal(signal.SIGINT)
    rc, _, err = first.finish()
    assert_one_line(err, 130, rc, "interrupted")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".release-")) == ["c.txt"]


def test_serve_stops_on_sigterm(run_copy):
    """`serve` stops on SIGTERM as on Ctrl-C: 'lenskit: stopped', exit 0, no traceback."""
    p = Lenskit("serve", "run", "--port", "0", cwd=run_copy.parent)
    p.wait_for("lenskit: serving")
    p.proc.send_signal(signal.SIGTERM)
    rc, out, err = p.finish()
    assert rc == 0 and err.strip().splitlines()[-1] == "lenskit: stopped" and "Traceback" not in err, err


def test_a_killed_commands_leftovers_are_swept_a_day_later(tmp_path):
    """SIGKILL leaves `.NAME.xxxxxxxx.tmp` beside the target (nothing can clean up then); the next command writing
    that target deletes such leftovers once they are a day old -- a live command's are younger -- and nothing else."""
    import os

    from lenskit.files import STALE_SECONDS, atomic_write, new_run_dir

    out = tmp_path / "run"
    old_dir, old_file, fresh = tmp_path / ".run.abcd1234.tmp", tmp_path / ".export.json.zz9_x0y1.tmp", tmp_path / ".run.fresh001.tmp"
    keep = [tmp_path / ".run.notes.tmp", tmp_path / "run.abcd1234.tmp", tmp_path / ".run.abcd1234.tmp.bak"]
    old_dir.mkdir()
    (old_dir / "trace.safetensors").write_bytes(b"x" * 100)
    old_file.write_text("{")
    fresh.mkdir()
    for p in keep:
        p.mkdir()
    past = os.stat(tmp_path).st_mtime - STALE_SECONDS - 60
    for p in (old_dir, old_file, *keep):
        os.utime(p, (past, past))
    tmp = new_run_dir(out)
    assert not old_dir.exists() and fresh.exists() and all(p.exists() for p in keep)
    assert old_file.exists()  # another target's: only `export.json`'s writer sweeps it
    atomic_write(tmp_path / "export.json", lambda t: open(t, "w").write("{}"))
    assert not old_file.exists() and tmp.exists()
