"""``lenskit adapters``: list the registered model-family adapters and the package providing each."""

from __future__ import annotations

import typer


def adapters(
    as_json: bool = typer.Option(False, "--json", help="Print the full declarations as JSON."),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the coverage table of the built-in adapters (Markdown, as in the README)."
    ),
    plugins: bool = typer.Option(False, "--plugins", help="With --markdown: add plugin adapters and their providers."),
) -> None:
    """List the model families lenskit can open, their Hugging Face architecture names, and who provides them."""
    import orjson

    from ..adapters import coverage_markdown, registry

    if markdown:
        typer.echo(coverage_markdown(builtin_only=not plugins), nl=False)
        return
    reg = registry()
    if as_json:
        rows = [dict(a.describe(), provider=p) for a, p in reg.values()]
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    width = max(len(n) for n in reg)
    fam = max(len(a.family) for a, _ in reg.values())
    for name, (adapter, provider) in sorted(reg.items()):
        typer.echo(f"{name:<{width}}  {adapter.family:<{fam}}  {', '.join(adapter.architectures)}  [{provider}]")


def register(app: typer.Typer) -> None:
    app.command("adapters")(adapters)
