"""``lenskit compare``: two runs of one prompt text (two models) or of one model (two prompts), aligned, scored with
both lenses and written as ``OUT/compare.json`` (``lenskit.compare/1``), which ``lenskit serve OUT`` shows.

Everything that can refuse (the output folder, the prompts, the alignment) is checked before anything is computed or
written: a pair that cannot be aligned is one line and exit 1, and nothing is created.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import typer

from . import options


def compare(
    run_a: Path = typer.Argument(..., metavar="RUN_A", help="Run folder written by `lenskit trace` (model/prompt A: solid lines)."),
    run_b: Path = typer.Argument(..., metavar="RUN_B", help="Run folder written by `lenskit trace` (model/prompt B: dashed lines)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder to create, holding compare.json (`lenskit serve OUT` shows it). Needed unless --html is given."),
    html: Optional[Path] = typer.Option(None, "--html", dir_okay=False, help="Also (or only) write a single self-contained HTML file: the compare page with the data inlined, for file:// and e-mail."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it is an earlier compare folder (nothing else is ever replaced)."),
    prompt_a: int = typer.Option(0, "--prompt-a", min=0, help="Which prompt of RUN_A (0-based)."),
    prompt_b: int = typer.Option(0, "--prompt-b", min=0, help="Which prompt of RUN_B (0-based)."),
    align: str = typer.Option(
        "auto", "--align", callback=options.choice("alignment", "auto", "position", "chars", "start", "end"),
        help="auto | position | chars | start | end. auto: one text on two models pairs positions one by one when "
        "both tokenize it the same way, else by character offsets (chars); two prompts on one model pair one by one "
        "when their token counts match (else choose start or end: the first or the last tokens together).",
    ),
    positions: Optional[str] = typer.Option(None, "--positions", "-p", help="Only these positions of RUN_A's prompt, e.g. '3,10-20' or -1 (the last: the next-token prediction); without it, every aligned position."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Final top-k tokens of each side; their union (plus each side's actual next token) is followed in both."),
    lens: Optional[list[str]] = typer.Option(
        None, "--lens",
        help="Lens to compare through: logit (default) or tuned:LENS_DIR (a lens from `lenskit fit-lens`). Once: for "
        "both runs (one model, two prompts); twice: RUN_A's, then RUN_B's (two models, each its own tuned lens).",
    ),
    exports_only: bool = typer.Option(False, "--exports-only", help="Use only the two export.json files (no lens weights: ranks only where each export tracked the token, no KL)."),
    max_memory: Optional[str] = typer.Option(
        None, "--max-memory", callback=options.size,
        help="Working-memory budget, e.g. 256M or 2G. Default: 256 MiB on CPU, 1/8 of free GPU memory.",
    ),
    device: str = typer.Option("auto", "--device", callback=options.device, help="auto | cpu | cuda[:N] | mps: where the unembeddings run."),
    allow_download: bool = typer.Option(False, "--allow-download", help="Let the hub download a traced model's weights when they are not on this machine."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Compare two runs: rank curves of the union of both final top-k, per-stage KL between the two lens
    distributions, and the stage where each decides, per aligned position.

    Pairs that make sense: the SAME PROMPT TEXT ON TWO MODELS (base vs instruct, before vs after fine-tuning; the
    texts must be identical; different tokenizers are aligned by character offsets, and KL needs one shared
    vocabulary) or TWO PROMPTS ON ONE MODEL (same weights fingerprint; positions pair one by one, or --align
    start/end when the token counts differ). Two models on two different texts are refused: a difference could
    come from either.

    Computed from the two traces with both lenses (the weights must be on this machine; ranks are exact, as in
    `lenskit export`), through the logit lens or a tuned lens (--lens); without the weights, from the two
    export.json files with the gaps marked. Example:
    lenskit compare runs/france runs/italy -o runs/france-vs-italy && lenskit serve runs/france-vs-italy
    (or --html france-vs-italy.html: one file that opens anywhere, no server).
    """
    from ..compare import COMPARE_FILE, lens_specs, run_compare
    from ..export import dumps
    from ..files import atomic_write, check_output_file, new_run_dir, replace_run_dir
    from ..models import progress_logger

    log = progress_logger(quiet)
    if lens and len(lens) > 2:
        raise typer.BadParameter(f"given {len(lens)} times: once (both runs) or twice (RUN_A's, then RUN_B's)",
                                 param_hint="'--lens'")
    lens = lens_specs(lens)  # the spelling, before anything is read (errors on one line: a spec may hold a newline)
    if output is None and html is None:
        raise typer.BadParameter("name the output: -o OUT (a folder for `lenskit serve`) and/or --html FILE",
                                 param_hint="'-o' / '--html'")
    target = check_output_dir(output.expanduser(), force, (run_a, run_b)) if output is not None else None
    if html is not None:
        html = check_output_file(html.expanduser(), "report")
        if target is not None and Path(os.path.abspath(html)) == target:
            raise typer.BadParameter("is the -o folder; name a file beside it", param_hint="'--html'")

    def warn(msg):
        typer.echo(f"lenskit: warning: {msg}", err=True)

    doc = run_compare(run_a, run_b, prompt_a, prompt_b, align, positions, top_k, device, max_memory, exports_only,
                      allow_download, log=log, warn=warn, lenses=lens)
    tmp = new_run_dir(target) if target is not None else None
    try:
        if tmp is not None:
            data = dumps(doc)
            atomic_write(tmp / COMPARE_FILE, lambda t: Path(t).write_bytes(data))
        if html is not None:  # before -o moves in: a report that cannot be written leaves -o as it was
            from ..report import write_html

            write_html(doc, html, page_name="compare.html")
        if tmp is not None:
            replace_run_dir(tmp, target, check=lambda: check_output_dir(target, force, (run_a, run_b)))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"compared {len(doc['pairs'])} aligned position(s) ({doc['relation']}, aligned by {doc['align']}, "
            f"from {doc['source']})")
    for path in (output, html):
        if path is not None:
            typer.echo(str(path))


def check_output_dir(output: Path, force: bool, runs: tuple[Path, Path]) -> Path:
    """The -o folder, refused before anything is read: one of the compared runs or a folder inside one first (the
    generic check would call the run "not a lenskit run folder"), then a folder that is not an earlier comparison
    (worded for compare: --force replaces a compare folder, never a run or a user's folder), then the usual checks."""
    from ..compare import COMPARE_FILE, is_compare_dir
    from ..errors import OutputError
    from ..files import check_run_dir, protected

    target = Path(os.path.abspath(output))
    real = target.resolve()
    for run in runs:
        run_real = Path(run).resolve()
        if run_real == real or run_real in real.parents:
            raise OutputError(f"-o {target} is one of the compared runs or a folder inside one; name a new folder")
    if target.is_dir() and not target.is_symlink() and protected(target) is None and not is_compare_dir(target):
        try:
            empty = not any(target.iterdir())
        except OSError:  # unreadable: check_run_dir says so
            empty = True
        if empty:
            return check_run_dir(target, force, is_compare_dir)
        raise OutputError(f"-o {target} exists and is not a compare folder (no {COMPARE_FILE} of lenskit's); --force "
                          "replaces only an earlier comparison: name a new folder")
    return check_run_dir(target, force, is_compare_dir)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
