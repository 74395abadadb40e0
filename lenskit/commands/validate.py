"""``lenskit validate``: check a trace file against the trace contract (useful before sharing one)."""

from __future__ import annotations

from pathlib import Path

import typer


def validate(
    run: Path = typer.Argument(..., help="Run folder written by `lenskit trace` (or its trace.safetensors)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing; only the exit status tells."),
) -> None:
    """Check RUN's trace.safetensors: metadata present and of a known format, required keys and types, token ids
    within the vocabulary, tensor names, dtypes and shapes matching the metadata, and every stage value finite.

    Prints each violation as one line on stderr and exits 1, or prints "ok" and exits 0. Reads the whole file once;
    loads no model. Example: lenskit validate runs/paris && tar czf paris.tgz runs/paris
    """
    from ..store import trace_path, validate_trace
    from ..tokens import one_line

    problems = validate_trace(run)
    for p in problems:
        if not quiet:  # one line each, however odd the path or the file (store quotes file content cut short)
            typer.echo(f"lenskit: error: {one_line(p, 1000)}", err=True)
    if problems:
        raise typer.Exit(1)
    if not quiet:
        typer.echo(f"{trace_path(run)}: ok")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
