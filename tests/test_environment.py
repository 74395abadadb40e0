"""The process environment as careless or hostile input, through the real CLI in a subprocess: cache locations that
are files, FIFOs, relative or hold a line break; garbage in the variables lenskit and its libraries read (thread
counts, ``LENSKIT_KERNELS``, ``LENSKIT_LOAD_PLUGINS``, ``NUMBA_DISABLE_JIT``, ``CUDA_VISIBLE_DEVICES``, ``TMPDIR``,
``HF_HOME``); encodings that cannot hold the text; standard streams that are closed or full; a deleted current
folder; umask 077. Each failure is one ``lenskit: error:`` line, each ignored setting one warning line, nothing left
behind. Cache rules are also checked in-process (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from gguf_fixture import write_tiny_gguf

from lenskit import gguf_cache
from lenskit.errors import ModelError
from lenskit.models import cache_dir

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lenskit"]
TINY_GGUF_OPTS = ["--top-k", "3", "--stage-top", "3", "-q"]  # its vocabulary holds 8 tokens


def env_of(tmp_path: Path, **changes) -> dict:
    """The test process's environment for a lenskit subprocess: this checkout importable, no plugins, offline, a
    private cache and temp folder; ``changes`` set a variable (None: unset it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LENSKIT_LOAD_PLUGINS="0", HF_HUB_OFFLINE="1",
               LENSKIT_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "LENSKIT_KERNELS", "PYTHONIOENCODING"):
        env.pop(k, None)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def lenskit(args, env, shell_redirect: str = "", cwd=None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI (``shell_redirect``: ``>&-`` and the like, applied by sh), bytes in and out."""
    cmd = [*CLI, *map(str, args)]
    if shell_redirect:
        cmd = ["sh", "-c", 'exec "$@" ' + shell_redirect, "sh", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=180, cwd=cwd, check=False, **kw)


def one_error(res, fragment: str) -> None:
    """Failed the lenskit way: exit 1, stderr exactly one ``lenskit: error:`` line holding ``fragment``."""
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("lenskit: error: ") and fragment in err, err


def warnings_of(res) -> list[str]:
    lines = res.stderr.decode("utf-8", "replace").splitlines()
    assert all(line.startswith("lenskit: warning: ") for line in lines), lines
    return lines


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


# -- the cache location (in-process: cache_dir and ensure_gguf_cached read the environment at each call) ----------

def test_cache_dir_rules(tmp_path, monkeypatch):
    """LENSKIT_CACHE relative: from the current folder; XDG_CACHE_HOME relative: ignored (XDG); HOME empty, relative
    or unset: the account's home, never the current folder (``HOME=`` put ``.cache`` in it)."""
    import pwd

    account = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "lenskit"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LENSKIT_CACHE", "rel")
    assert cache_dir() == tmp_path / "rel"
    monkeypatch.setenv("LENSKIT_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lenskit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lenskit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    for home in ("", "relative/home"):
        monkeypatch.setenv("HOME", home)
        assert cache_dir() == account
    monkeypatch.delenv("HOME")
    assert cache_dir() == account


@pytest.mark.parametrize("where", ["file", "fifo", "line\nbreak", "under-a-file"])
def test_unusable_lenskit_cache_refused_at_once(where, tiny_gguf, tmp_path, monkeypatch):
    """An explicit LENSKIT_CACHE that cannot hold the entry is the user's to fix: one line before dequantizing."""
    target = tmp_path / where
    if where == "file":
        target.write_text("notes")
    elif where == "fifo":
        os.mkfifo(target)
    elif where == "under-a-file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "cache"
    monkeypatch.setenv("LENSKIT_CACHE", str(target))
    monkeypatch.setattr(gguf_cache, "_dequantize", lambda *a: pytest.fail("dequantized"))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ModelError, match="cannot write lenskit's cache folder"):
        gguf_cache.ensure_gguf_cached(tiny_gguf)
    assert sorted(tmp_path.iterdir()) == before  # the line-break folder was never made (the trace refused it after)


def test_read_only_default_cache_uses_a_private_temp_entry(tiny_gguf, tmp_path, monkeypatch):
    """A default cache that cannot be written (simulated: creating a folder in it is refused, as on a read-only
    home; the tests may run as root) dequantizes into a temp folder once per process, with one warning."""
    monkeypatch.delenv("LENSKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(gguf_cache.tempfile, "tempdir", None)  # re-read TMPDIR
    real = gguf_cache.tempfile.mkdtemp

    def read_only(*a, dir=None, **kw):
        if dir is not None and str(tmp_path / "ro") in str(dir):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(gguf_cache.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(gguf_cache, "_PRIVATE_ENTRIES", {})
    folder = gguf_cache.ensure_gguf_cached(tiny_gguf)
    assert folder.parent == tmp_path / "tmp" and (folder / "model.safetensors").is_file()
    assert gguf_cache.ensure_gguf_cached(tiny_gguf) == folder  # once per process
    import shutil

    shutil.rmtree(folder)


# -- through the CLI ---------------------------------------------------------------------------------------------

def test_unwritable_default_cache_still_traces(tiny_gguf, tmp_path):
    """HOME a file (and XDG unset): `trace` of a GGUF runs, one warning line, and the temp entry is gone at exit."""
    (tmp_path / "home").write_text("not a folder")
    env = env_of(tmp_path, LENSKIT_CACHE=None, XDG_CACHE_HOME=None, HOME=str(tmp_path / "home"))
    res = lenskit(["trace", "abc", "-m", tiny_gguf, "-o", tmp_path / "run", *TINY_GGUF_OPTS], env)
    assert res.returncode == 0, res.stderr
    (warning,) = warnings_of(res)
    assert "cannot write lenskit's cache folder" in warning and "temporary folder" in warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "run"]  # no lenskit-gguf-* left in TMPDIR


def test_garbage_settings_warned_once_and_run(tiny_run, tmp_path):
    """Thread counts that are not numbers from 1, plugins "false", NUMBA_DISABLE_JIT=1 (the fused kernels cannot
    run as Python: a bare NotImplementedError before), CUDA_VISIBLE_DEVICES garbage, TMPDIR missing, HF_HOME and
    TORCH_HOME under a file: the export runs, each ignored thread count one lenskit warning, nothing from OpenMP or
    numba (two libgomp lines, a numba traceback, or a ValueError before)."""
    (tmp_path / "file").write_text("x")
    env = env_of(tmp_path, OMP_NUM_THREADS="abc", MKL_NUM_THREADS="-1", NUMBA_NUM_THREADS="0", NUMBA_DISABLE_JIT="1",
                 LENSKIT_LOAD_PLUGINS="false", CUDA_VISIBLE_DEVICES="garbage", TMPDIR=str(tmp_path / "missing"),
                 HF_HOME=str(tmp_path / "file" / "hf"), TORCH_HOME=str(tmp_path / "file" / "torch"),
                 TRANSFORMERS_OFFLINE="1", LENSKIT_DEBUG="yes please")
    res = lenskit(["export", tiny_run, "-o", tmp_path / "e.json", "-q"], env)
    assert res.returncode == 0, res.stderr
    assert [w.split("=")[0].split()[-1] for w in warnings_of(res)] == ["OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                       "NUMBA_NUM_THREADS"]
    assert (tmp_path / "e.json").read_bytes().startswith(b'{"schema":"lenskit.export/')


def test_unknown_kernels_setting_refused(tmp_path):
    one_error(lenskit(["schema"], env_of(tmp_path, LENSKIT_KERNELS="tourch")), "LENSKIT_KERNELS='tourch'")


def test_encodings_that_cannot_hold_the_text(tiny_dir, tmp_path):
    """PYTHONIOENCODING=latin-1 and a run folder named in CJK: the path printed with escapes (an "unexpected
    UnicodeEncodeError" after the run was written, before); under umask 077 the run's files are private."""
    env = env_of(tmp_path, PYTHONIOENCODING="latin-1", LC_ALL="C", LANG="C")
    res = lenskit(["trace", "the cat sat é ☃", "-m", tiny_dir, "-o", tmp_path / "运行", "-q"], env,
                  preexec_fn=lambda: os.umask(0o077))
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert res.stdout.decode("latin-1").strip() == str(tmp_path / "\\u8fd0\\u884c")
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "运行").iterdir()} == {"0o600"}
    schema = lenskit(["adapters"], env)
    assert schema.returncode == 0 and b"llama" in schema.stdout and not schema.stderr


def test_closed_stderr_lands_nowhere(tiny_gguf, tmp_path):
    """2>&-: warnings go nowhere -- not into stdout (``print(file=sys.stderr)`` with Python's None there wrote them
    to stdout) nor into a file lenskit opens (it would take descriptor 2, where OpenMP writes); the run and its
    printed path are intact. The warnings: an ignored thread count, an unwritable default cache."""
    (tmp_path / "home").write_text("not a folder")
    env = env_of(tmp_path, OMP_NUM_THREADS="abc", LENSKIT_CACHE=None, XDG_CACHE_HOME=None, HOME=str(tmp_path / "home"))
    res = lenskit(["trace", "abc", "-m", tiny_gguf, "-o", tmp_path / "run", *TINY_GGUF_OPTS], env, "2>&-")
    assert res.returncode == 0 and res.stdout.decode() == f"{tmp_path / 'run'}\n", res.stdout
    with safe_open(str(tmp_path / "run" / "trace.safetensors"), "pt") as f:
        assert f.metadata()
    # a warning printed before transformers loads (it sets a sys.stderr of its own) went into stdout's JSON
    res = lenskit(["adapters", "--json"], env_of(tmp_path, LENSKIT_LOAD_PLUGINS="maybe"), "2>&-")
    assert res.returncode == 0 and json.loads(res.stdout)


def test_plugins_switch_words(monkeypatch, capsys):
    """LENSKIT_LOAD_PLUGINS=false/no/off skip third-party plugins (``false`` loaded them); garbage loads them with
    one warning line."""
    from lenskit.plugins import third_party_wanted

    for word, wanted in (("0", False), ("False", False), (" off ", False), ("no", False), ("", True), ("1", True)):
        monkeypatch.setenv("LENSKIT_LOAD_PLUGINS", word)
        assert third_party_wanted() is wanted, word
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LENSKIT_LOAD_PLUGINS", "maybe")
    assert third_party_wanted() is True
    assert capsys.readouterr().err.count("lenskit: warning: LENSKIT_LOAD_PLUGINS='maybe'") == 1


def test_closed_or_full_stdout_and_closed_stdin(tiny_run, tmp_path):
    """`export -o -` into a closed stdout: refused before any work (an AttributeError before); into /dev/full: one
    line naming stdout; `trace -f -` from a closed stdin: one line (an AttributeError before)."""
    env = env_of(tmp_path)
    one_error(lenskit(["export", tiny_run, "-o", "-"], env, ">&-"), "stdout is closed")
    one_error(lenskit(["trace", "-f", "-", "-o", tmp_path / "run"], env, "<&-"), "stdin is closed")
    if Path("/dev/full").exists():
        one_error(lenskit(["export", tiny_run, "-o", "-", "-q"], env, ">/dev/full"),
                  "cannot write the export to stdout: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_deleted_current_folder(tmp_path):
    """torch's MKL killed the process at import (``Intel oneMKL FATAL ERROR``, exit 2): now one line, at once."""
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$@"', "sh", *CLI, "trace", "hi",
                           "-o", "rel"], env=env_of(tmp_path), capture_output=True, timeout=60, check=False)
    one_error(proc, "the current folder is gone")
