"""The adapter coverage table in the docs is generated: README.md (or docs/adapters.md) must match the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lenskit.adapters import coverage_markdown
from lenskit.cli import app

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- adapters:start -->", "<!-- adapters:end -->"
BLOCK = re.compile(re.escape(START) + r"\n(.*?)" + re.escape(END), re.S)


def table_file() -> Path:
    """README.md if it holds the markers, else docs/adapters.md."""
    for path in (ROOT / "README.md", ROOT / "docs" / "adapters.md"):
        if path.is_file() and START in path.read_text(encoding="utf-8"):
            return path
    pytest.fail(f"neither README.md nor docs/adapters.md has the {START} ... {END} block")


def test_docs_table_matches_registry():
    path = table_file()
    match = BLOCK.search(path.read_text(encoding="utf-8"))
    assert match, f"{path.name}: {START} must be followed, on later lines, by {END}"
    assert match.group(1).strip() == coverage_markdown().strip(), (
        f"the adapter table in {path.relative_to(ROOT)} is stale: replace the lines between {START} and {END} "
        "with the output of `lenskit adapters --markdown`"
    )


def test_cli_prints_the_table():
    result = CliRunner().invoke(app, ["adapters", "--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output == coverage_markdown()
    assert result.output.startswith("| Family | Adapter | Hugging Face architectures | Quirks handled |")


@pytest.mark.parametrize("args,fragment", [
    (["--plugins"], "--plugins only applies with --markdown"),
    (["--json", "--markdown"], "choose one"),
    (["--check", "some-model", "--json"], "--check prints its own table"),
    (["--revision", "main"], "--revision applies only with --check"),
])
def test_adapters_refuses_options_it_would_ignore(args, fragment):
    """Options that would be silently ignored are one error line (exit 1), before any model loads."""
    from conftest import assert_clean_error

    assert_clean_error(CliRunner().invoke(app, ["adapters", *args]), fragment)
