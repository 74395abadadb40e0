"""The ``lenskit`` command: assembles one Typer command per module in :mod:`lenskit.commands`.

Library code raises :class:`lenskit.errors.LenskitError`; this is the only place that catches it, printing one line
on stderr and exiting with status 1.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from .errors import InputError, LenskitError


MAX_ERROR = 2000  # characters of an error line at most


class _Group(TyperGroup):
    """Renders every failure as one ``lenskit: error: ...`` line on stderr, never a traceback.

    LenskitError (a problem with the user's input or files), an error of the file system (OSError: a name too long,
    a full disk), a path Python cannot use (a NUL byte, ``~nosuchuser``), memory the machine does not have (torch's
    out-of-memory errors) and a bad option or argument exit 1;
    anything else is a bug in lenskit, reported on one line too (exit 1; ``LENSKIT_DEBUG=1`` shows the traceback);
    Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129 (once :func:`main` has turned them into :class:`Terminated`: the
    same clean path, temporary files removed); a closed stdout pipe (``| head``) exits 141 quietly, as Unix tools do.
    """

    def invoke(self, ctx):
        try:
            _check_environment()
            return super().invoke(ctx)
        except LenskitError as e:
            _fail(str(e), 1)
        except cx.NoArgsIsHelpError:
            raise
        except cx.UsageError as e:
            _fail(" ".join(e.format_message().split()), 1)
        except Terminated as e:
            _fail(f"terminated ({signal.Signals(e.signum).name}){_hint(e)}", 128 + e.signum)
        except KeyboardInterrupt as e:
            _fail(f"interrupted{_hint(e)}", 130)
        except BrokenPipeError:  # stdout's reader left (`lenskit export RUN -o - | head`): quiet, as Unix tools are
            _quiet_exit(141)
        except OSError as e:  # the file system refused (a name too long, a full disk, permissions): the user's to fix
            _fail(" ".join(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}".split())[:300], 1)
        except Exception as e:
            if isinstance(e, typer.Exit) or type(e).__name__ in ("Exit", "Abort"):  # click's are RuntimeErrors
                raise
            why = _path_problem(e) or _memory_problem(e)
            if why is None:
                _unexpected(e)
            _fail(why, 1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _check_environment() -> None:
    """The environment variables that change how lenskit's libraries run, checked before they are imported: a thread
    count that is not a whole number from 1 (``OMP_NUM_THREADS=0``, ``NUMBA_NUM_THREADS=abc``: OpenMP printed two
    lines of its own, numba a traceback, or failed with a bare ValueError) is dropped with one warning line; an
    unknown ``LENSKIT_KERNELS`` is refused (:func:`lenskit.stats.kernels_setting`). So is a current folder that was
    deleted: torch's MKL then kills the process as it loads (``Intel oneMKL FATAL ERROR``, exit 2), and the relative
    paths (the default ``runs/...``) have nowhere to go."""
    try:
        os.getcwd()
    except OSError as e:
        raise InputError(f"the current folder is gone ({e.strerror or e}: deleted?); cd to a folder that "
                         "exists") from None
    for name in THREAD_VARIABLES:
        raw = os.environ.get(name)
        if raw is None:
            continue
        counts = raw.strip().split(",") if name == "OMP_NUM_THREADS" else [raw.strip()]  # OpenMP: one per level
        if not all(c.isascii() and c.isdigit() and 0 < int(c) <= 1 << 20 for c in counts):
            del os.environ[name]
            if raw.strip():  # empty: the same as unset
                typer.echo(f"lenskit: warning: {name}={raw[:40]!r} is not a number of threads from 1 to "
                           f"{1 << 20}; ignored", err=True)
    if os.environ.get("LENSKIT_KERNELS"):  # stats imports torch: only when there is something to check
        from .stats import kernels_setting

        kernels_setting()


def _escape(e: UnicodeEncodeError):
    """Encoding error handler of stdout and stderr: a lone surrogate (a path's undecodable byte) as that byte, any
    other character the encoding lacks (``PYTHONIOENCODING=latin-1``) as a backslash escape."""
    try:
        return codecs.lookup_error("surrogateescape")(e)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(e)


codecs.register_error("lenskit-escape", _escape)


def _standard_streams() -> None:
    """Make the standard streams safe before anything runs. A closed descriptor 0, 1 or 2 (``<&-``, ``>&-``,
    ``2>&-``) is opened on /dev/null, so no file lenskit opens takes its number (what C libraries write to fd 2 would
    land in a trace); a closed stderr gets a writer there (``print(file=None)`` writes to stdout); stdout and stderr
    escape what their encoding cannot hold (:func:`_escape`) instead of failing after the work is done. A closed
    stdin or stdout stays None: the commands that read or write one say so (``-f -``, ``-o -``)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 -- for the whole process
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="lenskit-escape")


def _hint(e: BaseException) -> str:
    """What to do next, when the command that was stopped said (a survey's ``--resume``): ``e.hint``."""
    hint = getattr(e, "hint", None)
    return f"; {hint}" if isinstance(hint, str) and hint else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, CI runners) or SIGHUP (the terminal closed), raised where the
    program is, like Ctrl-C: every ``finally`` and ``except BaseException`` runs, so temporary files and folders are
    removed and a half-replaced run is put back. A KeyboardInterrupt so that code handling Ctrl-C handles it too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    """The handler :func:`main` installs for SIGTERM and SIGHUP."""
    raise Terminated(signum)


def _handle_signals() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (Python's default kills the process at once, leaving
    temporary folders of up to gigabytes beside the target and in the GGUF cache). A signal the parent set to be
    ignored (``nohup``) stays ignored. Only the command line installs this, never an import of the library."""
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _terminate)


def _unexpected(e: Exception):
    """Anything else is a bug in lenskit: one line all the same (``LENSKIT_DEBUG=1`` re-raises it)."""
    if os.environ.get("LENSKIT_DEBUG") == "1":
        raise e
    _fail(f"unexpected {type(e).__name__}: {' '.join(str(e).split())[:300]} (a bug in lenskit; "
          "LENSKIT_DEBUG=1 shows the traceback)", 1)


def _path_problem(e: Exception) -> str | None:
    """The user-facing line for a path Python cannot use at all (None for other errors)."""
    msg = str(e)
    if isinstance(e, ValueError) and "null byte" in msg:
        return "a path holds a null byte (NUL); name a real file or folder"
    if isinstance(e, RuntimeError) and msg.startswith("Could not determine home directory"):
        return "a path starts with ~ of a user that does not exist here; give the folder itself"
    return None


def _memory_problem(e: Exception) -> str | None:
    """The user-facing line for memory this machine does not have: Python's MemoryError, torch's CUDA out-of-memory
    error, its CPU allocator's RuntimeError (None for other errors)."""
    msg = " ".join(str(e).split())
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or (isinstance(e, RuntimeError) and "can't allocate memory" in msg)):
        return None
    size = re.search(r"(?:you tried to allocate|Tried to allocate) ([0-9.]+ ?[A-Za-z]*)", msg)
    asked = f" (an allocation of {size.group(1)})" if size else ""
    return (f"out of memory{asked}: lower --max-memory or --batch-size, or use shorter prompts or a smaller model")


def _quiet_exit(code: int):
    """Exit without writing more to stdout; Python's own flush at exit would hit the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (CliRunner): nothing to redirect
        pass
    raise typer.Exit(code) from None


def _fail(message: str, code: int):
    from .tokens import one_line

    # one line whatever the message quotes (a path holding a newline, a model id of megabytes): MAX_ERROR characters
    try:
        typer.echo(f"lenskit: error: {one_line(message, MAX_ERROR)}", err=True)
    except OSError:  # stderr is gone (SIGHUP: the terminal closed): the exit status still says it
        pass
    raise typer.Exit(code) from None


app = typer.Typer(
    cls=_Group,
    name="lenskit",
    help="See how a language model decides its next token: trace the residual stream, export logit-lens "
    "statistics as JSON, and view them in the browser.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _assemble() -> None:
    from .commands import adapters, compare, export, fit_lens, schema, serve, survey, trace, validate

    for module in (trace, export, validate, serve, adapters, schema, survey, fit_lens, compare):
        module.register(app)
    for info in app.registered_commands:  # `lenskit --help` lists each by its docstring's first paragraph, unwrapped
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            info.short_help = " ".join(info.callback.__doc__.strip().split("\n\n")[0].split())


_assemble()


def main() -> None:
    """Console-script entry point (and ``python -m lenskit``): safe standard streams; SIGTERM and SIGHUP handled
    like Ctrl-C."""
    _standard_streams()
    _handle_signals()
    app()


if __name__ == "__main__":
    main()
