"""``lenskit export``: a trace -> exact logit-lens statistics -> compact, versioned JSON (file or stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def parse_size(text: str | None) -> int | None:
    """``"512M"``, ``"2G"``, ``"1000000"`` -> bytes."""
    from ..errors import InputError

    if not text:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise InputError(f"bad --max-memory '{text}': use e.g. 512M or 2G") from None


def export(
    run: Path = typer.Argument(..., help="Run folder written by `lenskit trace` (or its trace.safetensors)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output JSON file, '-' for stdout. Default: RUN/export.json."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a single self-contained HTML report (viewer + data)."),
    positions: Optional[str] = typer.Option(None, "--positions", "-p", help="Positions to export, e.g. '3,10-20' (negative counts from the end). Default: all."),
    prompt: Optional[int] = typer.Option(None, "--prompt", help="Export only this prompt (0-based). Default: all."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Final top-k tokens followed per position."),
    track: Optional[List[str]] = typer.Option(None, "--track", help="Extra token to follow: its text (one token, e.g. ' Paris') or id. Repeatable."),
    samples: int = typer.Option(3, "--samples", help="Sample tokens stored per histogram bin (0 for none; fewer = smaller JSON)."),
    norm: bool = typer.Option(True, "--norm/--no-norm", help="Apply the model's final norm (the logit lens) or project the raw stream."),
    precision: str = typer.Option("float32", "--precision", help="float32 | fast: bfloat16 matmul with an exact float32 re-check (identical top-k and ranks; slower than float32 on CPUs, see README)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Working-memory budget per chunk, e.g. 256M. Default: 64M on CPU, 1/8 of free GPU memory."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N] | mps: where the unembedding runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Compute, for every position and stage, the final top-k tokens' scores and exact ranks (comparison counting),
    z-score histograms with sample tokens, entropy and KL to the final distribution; write compact JSON.

    Only the lens weights (final norm, unembedding, bias) are loaded, and their fingerprint is checked against the
    trace. Example: lenskit export runs/paris -o - | jq '.prompts[0].positions[-1].rank[0]'
    """
    from ..export import ExportOptions, export_run_dir
    from ..models import progress_logger

    log = progress_logger(quiet or output == "-")
    opts = ExportOptions(
        top_k=top_k, track=list(track or []), positions=positions, prompt=prompt, norm=norm, precision=precision,
        max_memory=parse_size(max_memory), device=device, samples=samples,
    )
    doc = export_run_dir(run, opts, output=output, log=log)
    if html is not None:
        from ..report import write_html

        write_html(doc, html)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
