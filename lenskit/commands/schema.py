"""``lenskit schema``: print the published JSON Schema of the export format (or its Markdown reference)."""

from __future__ import annotations

import typer


def schema(
    markdown: bool = typer.Option(False, "--markdown", help="Print the field-by-field Markdown reference instead."),
    survey: bool = typer.Option(False, "--survey", help="Print the schema of `lenskit survey`'s survey.json instead."),
) -> None:
    """Print the JSON Schema that every `lenskit export` document validates against (the current format: see `lenskit export`)."""
    import orjson

    from ..errors import InputError

    if survey and markdown:
        raise InputError("--markdown is the export format's field reference; with --survey only the JSON Schema exists")
    if survey:
        from ..survey_schema import JSON_SCHEMA as SURVEY_SCHEMA

        typer.echo(orjson.dumps(SURVEY_SCHEMA, option=orjson.OPT_INDENT_2).decode())
        return
    from ..schema import JSON_SCHEMA, markdown_reference

    if markdown:
        typer.echo(markdown_reference(), nl=False)
    else:
        typer.echo(orjson.dumps(JSON_SCHEMA, option=orjson.OPT_INDENT_2).decode())


def register(app: typer.Typer) -> None:
    app.command("schema")(schema)
