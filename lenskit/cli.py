"""The ``lenskit`` command: assembles one Typer command per module in :mod:`lenskit.commands`.

Library code raises :class:`lenskit.errors.LenskitError`; this is the only place that catches it, printing one line
on stderr and exiting with status 1.
"""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from .errors import LenskitError


class _Group(TyperGroup):
    """Renders every failure as one ``lenskit: error: ...`` line on stderr, never a traceback.

    LenskitError (a problem with the user's input or files) and a bad option or argument exit 1; anything else is a
    bug in lenskit, reported on one line too (exit 1; ``LENSKIT_DEBUG=1`` shows the traceback); Ctrl-C exits 130.
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
        except Exception as e:
            if isinstance(e, typer.Exit) or type(e).__name__ in ("Exit", "Abort") or os.environ.get("LENSKIT_DEBUG") == "1":
                raise
            _fail(f"unexpected {type(e).__name__}: {' '.join(str(e).split())[:300]} (a bug in lenskit; "
                  "LENSKIT_DEBUG=1 shows the traceback)", 1)


def _fail(message: str, code: int):
    typer.echo(f"lenskit: error: {message}", err=True)
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


_assemble()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
