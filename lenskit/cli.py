"""The ``lenskit`` command: assembles one Typer command per module in :mod:`lenskit.commands`.

Library code raises :class:`lenskit.errors.LenskitError`; this is the only place that catches it, printing one line
on stderr and exiting with status 1.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from .errors import LenskitError


class _Group(TyperGroup):
    """Renders LenskitError as ``lenskit: error: ...`` (no traceback) with exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LenskitError as e:
            typer.echo(f"lenskit: error: {e}", err=True)
            raise typer.Exit(1) from None


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
    from .commands import adapters, export, schema, serve, trace

    for module in (trace, export, serve, adapters, schema):
        module.register(app)


_assemble()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
