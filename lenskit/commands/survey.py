"""``lenskit survey``: logit-lens statistics over every position of a corpus, written to ``RUN_DIR/survey.json``
(plus the examples' single-prompt ``export.json``); sharded under ``torchrun``, resumable with ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import typer

from ..errors import InputError
from . import options

DEFAULT_MAX_TOKENS = 1024
DEMO_DOCS = 16  # --demo surveys this many help topics unless --max-docs says otherwise


def survey(
    corpus: list[str] | None = typer.Argument(
        None, metavar="CORPUS...", help="Text files (one document each), '-' (stdin), .jsonl (a 'text' field per line), "
        ".parquet (a 'text' column), a datasets save_to_disk folder, or folders of those."),
    demo: bool = typer.Option(False, "--demo", help=f"Survey Python's own help topics (pydoc_data.topics, offline); "
                              f"the first {DEMO_DOCS} unless --max-docs."),
    model: str | None = typer.Option(None, "--model", "-m", help=options.MODEL_HELP),
    revision: str | None = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    allow_download: bool = typer.Option(False, "--allow-download", help=options.DOWNLOAD_HELP),
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder to create. Default: runs/survey-<model>-<time>."),
    force: bool = typer.Option(False, "--force", help="Replace the output folder if it is an earlier lenskit survey run."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted survey into the same -o (same corpus, "
                                "model, options and number of processes)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=2, help="Tokens per window (default: the "
                                             f"model's context, at most {DEFAULT_MAX_TOKENS})."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, max=4096, help="Windows per forward pass (right-"
                                   "padded, with an attention mask)."),
    block_docs: int = typer.Option(16, "--block-docs", min=1, help="Documents per block: the unit of sharding and "
                                   "checkpoints."),
    examples: int = typer.Option(8, "--examples", min=0, max=100, help="Example positions kept per class."),
    max_docs: int | None = typer.Option(None, "--max-docs", min=1, help="Survey only the first N documents."),
    max_chars: int = typer.Option(10_000_000, "--max-chars", min=1, max=1 << 40, help="Longer documents are "
                                  "skipped (counted as too_long)."),
    norm: bool = typer.Option(True, "--norm/--no-norm", help="Apply the model's final norm before the unembedding."),
    precision: str = typer.Option("float32", "--precision", callback=options.choice("precision", *options.PRECISIONS),
                                  help="auto | float32 | fast | bf16 (as export's: fast = bfloat16 GEMM with exact "
                                  "re-checks, same ranks; bf16 = bf16 inputs, float32 output)."),
    max_memory: str | None = typer.Option(None, "--max-memory", callback=options.size,
                                             help="Engine working memory, e.g. 256M (default 256 MiB on CPU)."),
    device: str = typer.Option("auto", "--device", callback=options.device, help="auto | cpu | cuda[:N] | mps."),
    dtype: str = typer.Option("auto", "--dtype", callback=options.choice("dtype", *options.DTYPES),
                              help="auto | float32 | bfloat16 | float16."),
    device_map: str | None = typer.Option(None, "--device-map", help="accelerate device map, e.g. 'auto'."),
    adapter: str | None = typer.Option(None, "--adapter", help="Force a registered adapter."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model repository's own code."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages on stderr."),
) -> None:
    """Survey a corpus: per stage, the lens cross-entropy of the next token, agreement with the model's top-1, KL,
    entropy, decision stages and block effects, over every position, without storing any stage.

    Writes RUN_DIR/survey.json (lenskit.survey/1; `lenskit schema --survey`) and RUN_DIR/export.json (the example
    positions, for the single-prompt viewer); `lenskit serve RUN_DIR` shows both. Scale out with
    `torchrun --nproc-per-node N -m lenskit.cli survey ...`. Example: lenskit survey --demo -o runs/demo-survey
    """
    from ..corpus import DEMO_SOURCE, expand_sources
    from ..files import check_run_dir, new_run_dir, replace_run_dir
    from ..models import load_model, progress_logger
    from ..survey import SurveyOptions, init_distributed, partial_dir, process_device, remove_partial, run_survey
    from ..survey_document import build_survey_document, export_examples, is_survey_run, write_survey_run
    from ..tokens import context_length

    if demo and corpus:
        raise InputError("give a CORPUS or --demo, not both")
    if not demo and not corpus:
        raise InputError("no corpus: name files or folders (or '-' for stdin), or use --demo")
    dist_info = init_distributed(device, progress_logger(quiet or os.environ.get("RANK", "0") != "0"))
    log = progress_logger(quiet or dist_info.rank != 0)
    sources = [DEMO_SOURCE] if demo else expand_sources(list(corpus))
    if "-" in sources:
        options.require_stream("stdin", "the corpus '-'")
    if "-" in sources and (dist_info.active or resume):
        raise InputError("stdin ('-') cannot be " + ("shared between processes" if dist_info.active else "read again "
                         "by --resume") + "; save it to a file")
    out = output.expanduser() if output else _default_dir(model)
    target = check_run_dir(out, force, is_survey_run)
    _check_ancestors(target)
    loaded = load_model(model, revision, process_device(device, dist_info), dtype, trust_remote_code, adapter,
                        device_map, log=log, allow_download=allow_download)
    from ..testing import verify_inferred

    verify_inferred(loaded)  # an architecture without an adapter: settle the inferred layout before batching
    ctx = context_length(loaded.model.config)
    mt = max_tokens or min(ctx or DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS)
    if ctx is not None and mt > ctx:
        raise InputError(f"--max-tokens {mt} is longer than the model's context ({ctx} tokens)")
    opts = SurveyOptions(sources=sources, max_tokens=mt, batch_size=batch_size, block_docs=block_docs,
                         examples=examples, max_docs=max_docs if max_docs or not demo else DEMO_DOCS,
                         max_chars=max_chars, norm=norm, precision=precision, max_memory=max_memory,
                         device=process_device(device, dist_info))
    started = time.perf_counter()
    try:
        agg = run_survey(loaded, opts, target, resume=resume, quiet=quiet, dist_info=dist_info)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the checkpoints stay; say how to go on from them
        if any(partial_dir(target).glob("shard-*.json")):
            e.hint = "the checkpoints are kept: rerun the same command with --resume to continue"
        raise
    if agg is None:  # another process's shard: rank 0 writes the run
        return
    elapsed = time.perf_counter() - started
    c = agg.counters
    bad = c["empty"] + c["unreadable"] + c["too_long"]
    if c["positions"] == 0:  # a survey of nothing is no result: say why, write no run
        remove_partial(target)
        raise InputError(f"nothing to survey: {c['documents']} usable document(s) with no position (a position needs "
                         f"a next token), {bad} skipped (empty {c['empty']}, unreadable {c['unreadable']}, too long "
                         f"{c['too_long']}); give documents with text")
    if log:
        log(f"surveyed {c['documents']} document(s), {c['positions']} positions in {elapsed:.1f}s "
            f"({c['positions'] / max(elapsed, 1e-9):.0f} tokens/s); {bad} bad document(s) skipped "
            f"(empty {c['empty']}, unreadable {c['unreadable']}, too long {c['too_long']})")
    tmp = new_run_dir(target)
    try:
        export_doc = export_examples(loaded, agg, opts) if any(agg.examples.values()) else None
        prompts = list(range(sum(len(v) for v in agg.examples.values()))) if export_doc else None
        doc = build_survey_document(agg, loaded, opts, prompts, elapsed, dist_info.world)
        write_survey_run(tmp, doc, export_doc)
        replace_run_dir(tmp, target, check=lambda: check_run_dir(target, force, is_survey_run))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    remove_partial(target)
    typer.echo(str(out))


def _check_ancestors(target: Path) -> None:
    """OutputError when a file stands where a folder above ``target`` must be created (``-o notes.txt/run``):
    :func:`lenskit.files.check_run_dir` looks at the parent only, and the checkpoint folder would fail after the model
    loaded."""
    from ..errors import OutputError

    above = next((p for p in target.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise OutputError(f"cannot write to {target}: {above} is not a folder")


def _default_dir(model: str | None) -> Path:
    name = Path(model).stem if model else "SmolLM2-135M-Instruct"
    return Path("runs") / f"survey-{name.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def register(app: typer.Typer) -> None:
    app.command("survey")(survey)
