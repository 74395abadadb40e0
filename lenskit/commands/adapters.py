"""``lenskit adapters``: list the registered model-family adapters, or check which one fits a model (``--check``)."""

from __future__ import annotations

import typer

from . import options

HEADER = ("ADAPTER", "FAMILY", "ARCHITECTURES", "PROVIDED BY")


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    """Plain-text table: a header, then one line per row, columns left-aligned two spaces apart (no trailing spaces)."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def adapters(
    as_json: bool = typer.Option(False, "--json", help="Print the full declarations as JSON."),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the coverage table of the built-in adapters (Markdown, as in the README)."
    ),
    plugins: bool = typer.Option(False, "--plugins", help="With --markdown: add plugin adapters and their providers."),
    check: str | None = typer.Option(
        None, "--check", metavar="MODEL",
        help="Load MODEL (hub id, local folder or .gguf file) and verify which adapter or inferred layout fits it, "
        "on a short built-in prompt. Exit 0 if one fits, 1 if none does.",
    ),
    revision: str | None = typer.Option(None, "--revision", help="With --check: hub revision (branch, tag or commit)."),
    allow_download: bool = typer.Option(False, "--allow-download", help="With --check: " + options.DOWNLOAD_HELP),
    device: str = typer.Option(
        "auto", "--device", callback=options.device, help="With --check: auto | cpu | cuda[:N] | mps (auto: CUDA when present)."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", callback=options.choice("dtype", *options.DTYPES),
        help="With --check: auto | float32 | bfloat16 | float16 (auto: float32 on CPU, bfloat16 on GPU).",
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="With --check: allow the model repository's own Python code."
    ),
) -> None:
    """List the model families lenskit can open, their Hugging Face architecture names, and who provides them.

    A model of an architecture no adapter names still works when its modules follow a layout lenskit knows: `lenskit
    trace` infers it and verifies it on the first prompt. `--check MODEL` runs that verification alone.
    """
    import orjson

    from ..adapters import coverage_markdown, registry
    from ..errors import InputError

    listing = [name for name, on in (("--json", as_json), ("--markdown", markdown), ("--plugins", plugins)) if on]
    if check is not None and not check.strip():  # "" would load the current folder as a model
        raise InputError("--check MODEL: give a hub id, a local folder or a .gguf file, not an empty name")
    if check is not None and listing:
        raise InputError(f"--check prints its own table; leave out {', '.join(listing)}")
    checking = [name for name, on in (("--revision", revision is not None), ("--trust-remote-code", trust_remote_code)) if on]
    if check is None and checking:
        raise InputError(f"{', '.join(checking)} {'apply' if len(checking) > 1 else 'applies'} only with --check MODEL")
    if as_json and markdown:
        raise InputError("--json and --markdown are two formats of the list: choose one")
    if plugins and not markdown:
        raise InputError("--plugins only applies with --markdown (the plain list and --json always show plugins)")
    if check is not None:
        _check(check, revision, device, dtype, trust_remote_code, allow_download)
        return
    if markdown:
        typer.echo(coverage_markdown(builtin_only=not plugins), nl=False)
        return
    reg = registry()
    if as_json:
        rows = [dict(a.describe(), provider=p) for a, p in reg.values()]
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    rows = [(name, a.family, ", ".join(a.architectures), p) for name, (a, p) in sorted(reg.items())]
    typer.echo(table(rows), nl=False)


def _check(model: str, revision, device: str, dtype: str, trust_remote_code: bool, allow_download: bool) -> None:
    """``--check MODEL``: the adapter lookup, layout inference and verification of ``lenskit trace``, alone."""
    import torch

    from ..adapters import registry
    from ..models import load_model, progress_logger
    from ..testing import CHECK_PROMPT, verify_layouts
    from ..tokens import context_length, tokenize

    loaded = load_model(model, revision, device, dtype, trust_remote_code, log=progress_logger(False),
                        allow_download=allow_download)
    ids = torch.tensor(tokenize(loaded.tokenizer, CHECK_PROMPT, context_length(loaded.model.config)))
    arch = loaded.architecture
    candidates = loaded.inferred or (loaded.adapter,)
    # raises the one-line "no adapter for architecture ..." error (exit 1) when no candidate verifies
    adapter, _, rejected = verify_layouts(loaded.model, candidates, ids)
    provider = registry().get(adapter.name, (None, "?"))[1]
    rows = [("architecture", f"{arch} ({'no registered adapter' if loaded.inferred else 'registered'})")]
    if loaded.inferred:
        rows.append(("candidates", ", ".join(a.name for a in candidates)))
        rows += [(f"rejected {name}", reason) for name, reason in rejected.items()]
    rows.append(("fits", f"{adapter.name} ({adapter.family} layout, {provider})"))
    rows.append(("verified on", f"{CHECK_PROMPT!r} ({ids.numel()} tokens): stage 0, layer outputs, lens == logits"
                 + ("" if adapter.for_config(loaded.model.config).post_norm else ", attention stages")))
    if loaded.inferred:
        rows.append(("use", f"lenskit trace -m {model} (infers it with a warning), or --adapter {adapter.name}"))
    typer.echo(table(rows, header=("CHECK", "RESULT")), nl=False)


def register(app: typer.Typer) -> None:
    app.command("adapters")(adapters)
