"""The ``lenskit`` command: assembles one Typer command per module in :mod:`lenskit.commands`.

Library code raises :class:`lenskit.errors.LenskitError`; this is the only place that catches it, printing one line
on stderr and exiting with status 1.
"""

from __future__ import annotations

import os
import re
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from .errors import LenskitError


MAX_ERROR = 2000  # characters of an error line at most


class _Group(TyperGroup):
    """Renders every failure as one ``lenskit: error: ...`` line on stderr, never a traceback.

    LenskitError (a problem with the user's input or files), an error of the file system (OSError: a name too long,
    a full disk), a path Python cannot use (a NUL byte, ``~nosuchuser``), memory the machine does not have (torch's
    out-of-memory errors) and a bad option or argument exit 1;
    anything else is a bug in lenskit, reported on one line too (exit 1; ``LENSKIT_DEBUG=1`` shows the traceback);
    Ctrl-C exits 130; a closed stdout pipe (``| head``) exits 141 quietly, as Unix tools do.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LenskitError as e:
            _fail(str(e), 1)
        except cx.NoArgsIsHelpError:
            raise
        except cx.UsageError as e:
            _fail(" ".join(e.format_message().split()), 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
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
    typer.echo(f"lenskit: error: {one_line(message, MAX_ERROR)}", err=True)
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
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
