"""What lenskit writes to disk, and the rules that keep a user's files safe.

* Every file is written to a temporary name beside its target and renamed into place (:func:`atomic_write`), so an
  interrupted command leaves the old file or the new one, never half of one; what a killed one (SIGKILL) left there
  is swept a day later by the next command writing that target (:func:`sweep_stale`).
* A command overwrites only what it was asked to write, and only when that is lenskit's own output of the same
  kind (:func:`check_output_file`): an export, a report, a run folder. Anything else is refused with one line.
* A run folder is replaced only when it is recognisably a lenskit run (a ``trace.safetensors`` with lenskit metadata
  and nothing but lenskit's files beside it, each recognised by its content: :func:`_written_by_lenskit`) or
  empty, never the current folder, one of its parents or the home folder; the replacement swaps the new run with
  the old in one step where Linux can (``renameat2``), else renames the old run aside and moves the new one in, then
  deletes the old (:func:`replace_run_dir`): a failure or interrupt at any point leaves one complete run in place.
* Two commands writing one target at once never mix their outputs: the final check and the replacement of a run
  folder happen under a lock on its parent folder (:func:`locked`), so the last to finish replaces the whole run, or
  refuses when the folder it checked at the start has changed meanwhile; a folder a command keeps writing into for
  its whole duration (a lens folder, a survey's checkpoints) is held with :func:`hold_folder`, and a second command
  is refused with one line. The locks are ``flock`` locks on the folders themselves: no lock file is ever created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import OutputError

SIGNATURES = {  # what the start of each kind of lenskit output looks like
    "export": (b'{"schema":"lenskit.export/',),
    "report": (b'<meta name="generator" content="lenskit ',),
    "document": (b'{"schema":"lenskit.',),  # any lenskit JSON document: export, survey, compare
}
SIGNATURE_BYTES = 4096


def default_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask (temp files are created private; finished ones get the usual permissions)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


STALE_SECONDS = 24 * 3600  # a temporary file or folder of lenskit's this old beside a target is a killed run's


def sweep_stale(target: Path) -> None:
    """Delete what a killed lenskit command (SIGKILL, a power cut) left beside ``target``: its temporary files and
    folders, named exactly as this module makes them (``.NAME.xxxxxxxx.tmp`` / ``.old``: tempfile's 8 random
    characters) and untouched for STALE_SECONDS -- a live command's are minutes old (:func:`sweep_stale_in`)."""
    import re

    sweep_stale_in(target.parent, re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.(?:tmp|old)"))


def sweep_stale_in(folder: Path, pattern) -> None:
    """Delete the entries of ``folder`` whose whole name matches ``pattern`` (a compiled regex) and that nothing has
    touched for STALE_SECONDS. Anything else is never touched; a link is removed, never followed."""
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for e in entries:
        with contextlib.suppress(OSError):
            if time.time() - e.stat(follow_symlinks=False).st_mtime < STALE_SECONDS:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``; remove the temp file on any failure."""
    atomic_write_all([(Path(path), write)])


def atomic_write_all(items: list[tuple[Path, object]], before_renames=None, what: str | None = None) -> None:
    """:func:`atomic_write` of several files as one change: every ``write(tmp_path)`` of ``items`` ``[(path,
    write)]`` runs to the end first (a full disk or an error leaves every target as it was), then ``before_renames()``
    if given, then the renames in order, with signals held back (:func:`signals_deferred`). Errors as OutputError naming ``what`` (default: the first path)."""
    items = [(Path(p), w) for p, w in items]
    what = what or str(items[0][0])
    for path, _ in items:
        if path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder")
    temps: list[str] = []
    for path, _ in items:
        sweep_stale(path)
    try:
        for path, _ in items:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise OutputError(f"cannot write to {path.parent}: {e.strerror or e}") from None
            os.close(fd)
            temps.append(tmp)
        for tmp, (_, write) in zip(temps, items):
            write(tmp)
            os.chmod(tmp, default_mode())
        with signals_deferred():  # all of the renames or none: never one file of a pair new, the other old
            if before_renames is not None:
                before_renames()
            for tmp, (path, _) in zip(temps, items):
                os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {what}: {e.strerror or e}") from None
    except Exception as e:
        why = _io_failure(e)
        if why is None:
            raise
        raise OutputError(f"cannot write {what}: {why}") from None
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _io_failure(e: Exception) -> str | None:
    """The file system's complaint inside a writer's own error (safetensors reports a full disk as
    ``SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)``); None for others."""
    from safetensors import SafetensorError

    text = str(e)
    if not isinstance(e, SafetensorError) or "I/O error: " not in text:
        return None
    return text.split("I/O error: ", 1)[1].split(" (os error", 1)[0].strip()[:200] or "I/O error"


def file_head(path: Path, n: int = SIGNATURE_BYTES) -> bytes | None:
    """The first ``n`` bytes of a regular file (not a symlink), or None: how lenskit recognises its own outputs."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return None


def _is_kind(path: Path, kind: str) -> bool:
    head = file_head(path)
    return head is not None and (not head or any(sig in head for sig in SIGNATURES[kind]))


def check_output_file(path: Path, kind: str, others: tuple[Path, ...] = ()) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written.

    ``kind`` is ``export`` or ``report``: an existing file is replaced only when it is lenskit's own output of that
    kind (or empty). ``others`` are the command's other inputs and outputs, which this one must not be.
    """
    path = Path(path)
    flag = "-o" if kind == "export" else "--html"
    if path.is_symlink():  # dangling ones too: writing would replace the link itself, never its target
        raise OutputError(f"{flag} {path} is a symbolic link; lenskit overwrites only its own files: name a real file")
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; name a file")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{flag} {path}: the folder {parent} is not writable")
    target = path.resolve()
    if any(target == Path(other).resolve() for other in others):
        raise OutputError(f"{flag} {path} is also another file of this command (the trace it reads, or -o); name another file")
    if path.exists() and not (path.is_file() and _is_kind(path, kind)):
        raise OutputError(f"{flag} {path} exists and is not a lenskit {kind}; lenskit overwrites only its own "
                          "files: remove it or name another file")
    return path


def protected(folder: Path) -> str | None:
    """Why ``folder`` can never be a run folder to replace (None when it can)."""
    real = folder.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if real == cwd:
        return "is the current folder"
    if real in cwd.parents:
        return "contains the current folder"
    if real == home or real in home.parents:
        return "is your home folder or above it"
    if real == Path(real.anchor):
        return "is a filesystem root"
    return None


def _written_by_lenskit(path: Path) -> bool:
    """Whether ``path`` is a file lenskit writes into a run folder, told by its content, not its name: a JSON
    document with a ``lenskit.*`` schema, a lenskit HTML report, a safetensors file with lenskit's metadata. A user's
    ``notes.json`` or an empty file is not (``--force`` would delete it)."""
    head = file_head(path)
    if not head:  # not a regular file, a symlink, unreadable or empty
        return False
    if path.suffix == ".json":
        return any(head.startswith(sig) for sig in SIGNATURES["document"])
    if path.suffix == ".html":
        return any(sig in head for sig in SIGNATURES["report"])
    if path.suffix == ".safetensors":
        from .store import META_KEY, safetensors_metadata

        return META_KEY in safetensors_metadata(path)
    return False


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that lenskit would not have written there."""
    return sorted(e.name for e in folder.iterdir() if not _written_by_lenskit(e))


def check_run_dir(out: Path, force: bool, is_run) -> Path:
    """Refuse an output folder that must not be (re)placed; ``is_run(folder)`` tells a lenskit run folder.

    Returns the folder as an absolute path with ``..`` resolved lexically (``-o a/missing/..`` is ``a``)."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        raise OutputError(f"-o {out} is a symbolic link; name a real folder")
    if not out.exists():
        if out.parent.exists() and not out.parent.is_dir():
            raise OutputError(f"cannot write to {out.parent}: it is not a folder")
        return out
    if not out.is_dir():
        raise OutputError(f"-o {out} exists and is not a folder")
    why = protected(out)
    if why:
        raise OutputError(f"-o {out} {why}; lenskit writes a run into a folder of its own: name a new one")
    try:
        empty = not any(out.iterdir())
    except OSError as e:
        raise OutputError(f"cannot read {out}: {e.strerror or e}") from None
    if empty:
        return out
    if not is_run(out):
        raise OutputError(f"-o {out} exists and is not a lenskit run folder (no trace.safetensors of lenskit's); "
                          "--force replaces only run folders: name a new folder")
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise OutputError(f"-o {out} holds files lenskit did not write ({shown}); --force would delete them: "
                          "move them or name a new folder")
    if not force:
        raise OutputError(f"output folder {out} already exists; use --force to replace it")
    return out


def new_run_dir(out: Path) -> Path:
    """A fresh temporary folder beside ``out``, where the new run is built."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        tmp.chmod(default_mode(0o777))
        return tmp
    except OSError as e:
        raise OutputError(f"cannot write to {out.parent}: {e.strerror or e}") from None


def _flock(fd: int) -> bool:
    """Try ``flock(fd, LOCK_EX)`` without waiting; False when another process holds it. A file system without locks
    (some network mounts) or a platform without ``fcntl`` counts as locked: lenskit works as it did without them."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EINVAL: no locks here
        return True
    return True


LOCK_WAIT = 60.0  # seconds a short critical section waits for another's lock before it goes on without it


@contextlib.contextmanager
def locked(folder: Path):
    """Hold an exclusive lock on ``folder`` (an existing folder, typically a target's parent) for a short critical
    section, waiting for another lenskit command's (they hold it for milliseconds). An unreadable folder is not
    locked, and after LOCK_WAIT seconds the section runs without the lock: a lock someone else holds for ever (any
    user can lock ``/tmp``) must not hang a finished command."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        end = time.monotonic() + LOCK_WAIT
        while not _flock(fd) and time.monotonic() < end:
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def hold_folder(folder: Path, busy: str):
    """Create ``folder`` if needed and hold an exclusive lock on it while the block runs; OutputError ``busy`` at
    once when another process holds it (a second ``fit-lens`` or ``survey`` into the same folder). The folder
    opened is checked to still be the one at that path (another process may have just removed it). A folder made
    here and still empty when the block fails or is interrupted is removed."""
    created = not folder.exists()
    for _ in range(5):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise OutputError(f"cannot write to {folder}: {e.strerror or e}") from None
        try:
            if not _flock(fd):
                raise OutputError(busy)
            if os.path.samestat(os.fstat(fd), os.stat(folder)):
                break
        except FileNotFoundError:  # removed by the process that held it: make it again
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        raise OutputError(busy)
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C, SIGTERM and SIGHUP back while the block runs, then deliver them again: a replacement is finished
    or not begun, never cut between renaming the old run aside and deleting it (which left a ``.NAME.*.old`` folder).
    Only the main thread handles signals; elsewhere the block just runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        num = getattr(signal, name, None)
        handler = signal.getsignal(num) if num is not None else None
        if handler not in (None, signal.SIG_IGN):  # None: not set from Python, cannot be put back
            saved[num] = handler
            signal.signal(num, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for num, handler in saved.items():
            signal.signal(num, handler)
        if caught:
            os.kill(os.getpid(), caught[0])  # to its own handler now


def replace_run_dir(tmp: Path, out: Path, check=None) -> None:
    """Move the finished run ``tmp`` to ``out``: the old run (if any) is renamed aside, the new one moved in, then
    the old one deleted. On any failure or interrupt the old run is put back, so ``out`` is complete either way.

    All of it happens under a lock on ``out``'s parent (:func:`locked`), after ``check()`` (the command's checks of
    ``out``, made again now: another command may have written ``out`` or a user put files there since the start),
    so two commands writing one run folder leave the whole run of one of them, never a mix."""
    out = Path(out)
    with locked(out.parent), signals_deferred():
        if check is not None:
            try:
                check()
            except OutputError as e:
                raise OutputError(f"{e} (it changed while this command ran; nothing was written)") from None
        _replace_run_dir(tmp, out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``): at no moment
    does either name point nowhere. False, with nothing changed, where the system or file system lacks it."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):  # not here: the two-rename way
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_run_dir(tmp: Path, out: Path) -> None:
    """:func:`replace_run_dir`'s renames, with the lock held. An existing run is swapped with the new one in one
    step where the system can (:func:`_exchange`: a reader, ``lenskit serve`` say, never finds the folder missing,
    and a power cut leaves one of the two complete runs in place); then the old one, now at ``tmp``, goes with it.
    Elsewhere the old run is renamed aside, the new one moved in, and the old one deleted."""
    if out.is_dir() and not out.is_symlink():
        try:
            if _exchange(tmp, out):
                shutil.rmtree(tmp, ignore_errors=True)  # the old run
                return
        except OSError as e:
            raise OutputError(f"cannot move the run into {out}: {e.strerror or e}") from None
    aside, done = None, False
    try:
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        try:
            if aside is not None:
                os.rename(out, aside / "run")
            os.rename(tmp, out)
            done = True
        except BaseException:
            if aside is not None and (aside / "run").exists():
                os.rename(aside / "run", out)
            raise
    except OSError as e:
        raise OutputError(f"cannot move the run into {out}: {e.strerror or e}") from None
    finally:
        if aside is not None and (done or not (aside / "run").exists()):
            shutil.rmtree(aside, ignore_errors=True)
