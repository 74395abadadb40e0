"""``lenskit export``: a trace -> exact logit-lens statistics -> compact, versioned JSON (file or stdout) and/or a
single-file HTML report.

Writes exactly what it is asked to: ``-o FILE`` (``-`` = stdout), ``--html FILE``, or, with neither, the run's own
``export.json``. Every output path and every option that depends only on the trace is checked before the lens
weights load; each file is written under a temporary name and renamed into place, and only over lenskit's own files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer

from . import options


def export(
    run: Path = typer.Argument(
        ..., help="Run folder written by `lenskit trace` (or its trace.safetensors)."
    ),
    output: str | None = typer.Option(
        None, "--output", "-o",
        help="Output JSON file, '-' for stdout. Default: RUN/export.json, unless only --html is given.",
    ),
    html: Path | None = typer.Option(
        None, "--html", dir_okay=False, help="Write a single self-contained HTML report (viewer + data) to this file."
    ),
    positions: str | None = typer.Option(None, "--positions", "-p", help="Positions to export, e.g. '3,10-20' (negative counts from the end). Default: all."),
    prompt: int | None = typer.Option(None, "--prompt", min=0, help="Export only this prompt (0-based). Default: all."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Final top-k tokens followed per position."),
    stage_top: int = typer.Option(5, "--stage-top", min=0, max=100, help="Each stage's own top-N tokens (with their surprisals, -log p) per position: the viewer's overview grid. 0 for none (a smaller JSON)."),
    track: list[str] | None = typer.Option(None, "--track", help="Extra token to follow: its text (one token, e.g. ' Paris') or id (ASCII digits). Repeatable."),
    samples: int = typer.Option(3, "--samples", min=0, max=100, help="Histogram bins holding at most N tokens list them all as hover samples (the sparse tails); denser bins list none. 0 for none; more = bigger JSON."),
    norm: bool = typer.Option(True, "--norm/--no-norm", help="Apply the model's final norm (the logit lens) or project the raw stream."),
    precision: str = typer.Option(
        "auto", "--precision", callback=options.choice("precision", *options.PRECISIONS),
        help="auto | float32 | fast | bf16. fast: bfloat16 matmul with an exact float32 re-check (identical top-k and "
        "ranks; 16-45x slower than float32 on the CPUs and GPU measured). bf16: scores from bfloat16 inputs with "
        "float32 accumulation and output, every statistic exact for those scores (the GPU's full-speed mode; "
        "near-ties may order differently from float32). auto: the fastest mode identical to float32 measured for "
        "the device: float32 (see README).",
    ),
    max_memory: str | None = typer.Option(
        None, "--max-memory", callback=options.size,
        help="Working-memory budget per chunk, e.g. 256M or 2G; a chunk is at least one matmul block of scores "
        "(up to 192 MiB on CPU, 1 GiB on CUDA). Default: 256 MiB on CPU, 1/8 of free GPU memory.",
    ),
    device: str = typer.Option("auto", "--device", callback=options.device, help="auto | cpu | cuda[:N] | mps: where the unembedding runs."),
    allow_download: bool = typer.Option(
        False, "--allow-download",
        help="Let the hub download the traced model's weights when they are not on this machine (default: never; "
        "or set HF_HUB_OFFLINE=0).",
    ),
    lens: list[str] | None = typer.Option(None, "--lens", help="Lens to compute: logit (the model's own final norm + unembedding, default) or tuned:LENS_DIR (a lens from `lenskit fit-lens`). Repeatable: the export holds each (the first lens's final top-k are followed by all)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Compute, for every position and stage, the final top-k tokens' scores and exact ranks (comparison counting),
    z-score histograms with sample tokens, entropy and KL to the final distribution; write compact JSON.

    Only the lens weights (final norm, unembedding, bias) are loaded, from where the trace says the model is on this
    machine, and their fingerprint is checked against the trace. Example:
    lenskit export runs/paris -o - | jq '.prompts[0].positions[-1].rank[0]'
    """
    from ..errors import OutputError
    from ..export import ExportOptions, export_run_dir, write_document
    from ..files import check_output_file
    from ..lenses import parse_lens_spec
    from ..models import progress_logger
    from ..schema import EXPORT_FILE
    from ..store import trace_path

    for spec in lens or []:  # the spelling, before anything is read
        parse_lens_spec(spec)
    from ..models import resolve_device

    resolve_device(device)  # cuda:N or mps that this machine lacks: refused before the lens weights load
    log = progress_logger(quiet or output == "-")
    note = progress_logger(quiet)
    source = trace_path(run)
    html = html.expanduser() if html is not None else None
    if output == "-":
        options.require_stream("stdout", "-o -")
    if output not in (None, "-"):
        output = str(Path(output).expanduser())
    if output is None and html is None:
        output = str(source.parent / EXPORT_FILE)
    if output not in (None, "-"):
        check_output_file(Path(output), "export", others=(source,))
    if html is not None:
        check_output_file(html, "report", others=(source,) + ((Path(output),) if output not in (None, "-") else ()))
    opts = ExportOptions(
        top_k=top_k, track=list(track or []), positions=positions, prompt=prompt, norm=norm, precision=precision,
        max_memory=max_memory, device=device, samples=samples, lenses=list(lens or ["logit"]), stage_top=stage_top,
    )
    traced = _identity(source)
    doc = export_run_dir(run, opts, log=log, allow_download=allow_download)
    if output is not None:
        try:
            with _same_run(source, traced, output):
                write_document(doc, output)
        except OSError as e:  # stdout on a full disk or /dev/full (a file's failures are OutputErrors already)
            if output != "-" or isinstance(e, BrokenPipeError):  # `| head`: the CLI's quiet exit 141
                raise
            raise OutputError(f"cannot write the export to stdout: {e.strerror or e}") from None
        if note and output != "-":
            note(f"wrote {output}")
    if html is not None:
        from ..report import write_html

        with _same_run(source, traced, html):
            write_html(doc, html)
        if note:
            note(f"wrote {html}")


def _identity(path: Path):
    """What tells one file from its replacement: device, inode, size and modification time (None: unreadable)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _same_run(source: Path, traced, output):
    """Around writing ``output``: when it goes into the run folder of trace ``source`` (``RUN/export.json``), hold
    the lock that ``trace --force`` replaces that folder under (:func:`lenskit.files.locked`) and refuse when the
    trace is no longer the one exported -- another command replaced the run meanwhile; writing would put this
    export beside another trace."""
    from ..errors import OutputError
    from ..files import locked

    run = Path(os.path.abspath(source.parent))
    if str(output) == "-" or Path(output).resolve().parent != run.resolve():
        yield
        return
    with locked(run.parent):
        if _identity(source) != traced:
            raise OutputError(f"{source} was replaced while it was exported (another lenskit command wrote {run}); "
                              f"nothing was written: export it again")
        yield


def register(app: typer.Typer) -> None:
    app.command("export")(export)
