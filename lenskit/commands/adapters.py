"""``lenskit adapters``: list the registered model-family adapters and the package providing each."""

from __future__ import annotations

import typer


def adapters(
    as_json: bool = typer.Option(False, "--json", help="Print the full declarations as JSON."),
) -> None:
    """List the model families lenskit can open, their Hugging Face architecture names, and who provides them."""
    import orjson

    from ..adapters import registry

    reg = registry()
    if as_json:
        rows = [dict(a.describe(), provider=p) for a, p in reg.values()]
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    width = max(len(n) for n in reg)
    for name, (adapter, provider) in sorted(reg.items()):
        typer.echo(f"{name:<{width}}  {adapter.family:<22} {', '.join(adapter.architectures)}  [{provider}]")


def register(app: typer.Typer) -> None:
    app.command("adapters")(adapters)
