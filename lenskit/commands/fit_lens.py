"""``lenskit fit-lens``: fit a tuned lens for all 2L+1 stages on a text corpus, or import a tuned-lens package lens.

Writes ``LENS_DIR/lens.safetensors`` and ``LENS_DIR/lens.json``; use it with ``lenskit trace/export --lens
tuned:LENS_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import options


def fit_lens(
    corpus: Optional[List[str]] = typer.Argument(
        None, help="Text files, folders, JSONL/Parquet files with a `text` field, or '-' for stdin. "
        "Not with --import."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=options.MODEL_HELP),
    allow_download: bool = typer.Option(False, "--allow-download", help=options.DOWNLOAD_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Lens folder to write (lens.safetensors + lens.json)."),
    import_dir: Optional[Path] = typer.Option(
        None, "--import", help="Convert a tuned-lens folder (config.json + params.pt) instead of fitting."
    ),
    steps: int = typer.Option(250, "--steps", min=0, help="KL optimizer steps."),
    seq_len: int = typer.Option(128, "--seq-len", min=8, help="Tokens per training sequence."),
    batch: int = typer.Option(8, "--batch", min=1, max=4096, help="Sequences per step."),
    lr: float = typer.Option(1e-4, "--lr", min=0.0, max=1.0, help="Adam learning rate (1e-4 suits the least-squares start)."),
    init: str = typer.Option(
        "lstsq", "--init", callback=options.choice("init", "lstsq", "identity"),
        help="lstsq: start from a least-squares fit of the final stage (fast on CPU); identity: the logit lens.",
    ),
    init_tokens: int = typer.Option(16384, "--init-tokens", min=1, max=1 << 24, help="Tokens of the least-squares start (at most 16,777,216)."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Stages to fit, e.g. '0-20,40'. Default: all but the last."),
    heldout_tokens: int = typer.Option(2048, "--heldout-tokens", min=8, help="Held-out tokens (every 10th sequence)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Read at most this many corpus tokens."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Held-out evaluation every N steps (0: at the end)."),
    checkpoint_every: int = typer.Option(25, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    device: str = typer.Option("auto", "--device", callback=options.device, help="auto | cpu | cuda[:N] | mps."),
    seed: int = typer.Option(0, "--seed", min=-(1 << 63), max=(1 << 63) - 1, help="Shuffling seed (a 64-bit integer)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Fit per-stage affine translators (h + A_s h + b_s) minimising KL(final || lens) on held-out-checked text.

    Streaming: stages are captured batch by batch and never stored. Running the same command again resumes from
    LENS_DIR/checkpoint.safetensors. Example: lenskit fit-lens notes.txt -o lenses/smollm2 && lenskit trace --lens
    logit --lens tuned:lenses/smollm2
    """
    from ..errors import InputError
    from ..models import load_model, progress_logger

    log = progress_logger(quiet)
    out = output.expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is a file; name a folder")
    from ..lenses.fit import check_lens_dir

    check_lens_dir(out)
    from ..testing import verify_inferred

    if import_dir is not None and corpus:
        raise InputError("give a CORPUS to fit or --import DIR to convert, not both")
    if import_dir is None and not corpus:
        raise InputError("give a CORPUS to fit on (files, '-' for stdin) or --import DIR")
    if import_dir is not None:
        from ..lenses.fit import check_tuned_lens_folder, import_tuned_lens

        check_tuned_lens_folder(import_dir)  # a wrong folder is named before the model loads
        loaded = load_model(model, device=device, dtype="float32", log=log, allow_download=allow_download)
        verify_inferred(loaded)  # an architecture without an adapter: settle the inferred layout first
        from ..lenses.fit import hold_lens_dir

        with hold_lens_dir(out):  # two imports at once would leave one's lens.json beside the other's weights
            import_tuned_lens(import_dir, loaded, out, log=log)
        typer.echo(str(out))
        return
    from ..corpus import expand_sources, iter_documents
    from ..lenses.fit import FitOptions, fit_lens as run_fit

    sources = expand_sources(list(corpus))
    if "-" in sources:
        options.require_stream("stdin", "the corpus '-'")
    loaded = load_model(model, device=device, dtype="float32", log=log, allow_download=allow_download)
    verify_inferred(loaded)  # an architecture without an adapter: settle the inferred layout first
    from ..tokens import context_length

    ctx = context_length(loaded.model.config)
    if ctx is not None and seq_len > ctx:  # learned positions would fail with an IndexError mid-fit
        raise InputError(f"--seq-len {seq_len} is longer than the model's context ({ctx} tokens)")
    texts = (d.text for d in iter_documents(sources) if d.text and d.text.strip())
    opts = FitOptions(steps=steps, seq_len=seq_len, batch=batch, lr=lr, init=init, init_tokens=init_tokens,
                      stages=stages, heldout_tokens=heldout_tokens, max_tokens=max_tokens, eval_every=eval_every,
                      checkpoint_every=checkpoint_every, seed=seed)
    fit = run_fit(loaded, texts, out, opts, log=log, quiet=quiet)
    if log:
        kl = fit["heldout_kl"]
        n = len(kl["logit"]) - 1
        logit, tuned = (sum(kl[k][:n]) / max(1, n) for k in ("logit", "tuned"))
        log(f"held-out KL(final || stage), mean over {n} stages: logit lens {logit:.3f}, tuned lens {tuned:.3f} nats")
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("fit-lens")(fit_lens)
