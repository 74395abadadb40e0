"""``lenskit trace``: run the model once per prompt with hooks and write ``RUN_DIR/trace.safetensors``.

By default it also writes ``RUN_DIR/export.json`` (what ``lenskit serve`` shows), so trace-then-serve just works.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ..tokens import is_utf8, one_line
from . import options

EXAMPLE = "example.txt"


def example_text() -> str:
    """The standard test paragraph ("Community Involvement. Kraemer Mining ...")."""
    return resources.files("lenskit").joinpath("data", EXAMPLE).read_text(encoding="utf-8").strip()


MAX_PROMPT_BYTES = 64 << 20  # far past any model's context (~16M tokens); stops `-f /dev/zero` or `yes |` early


def _read_prompt_bytes(f: Path) -> bytes:
    """The bytes of prompt file ``f`` (``-`` is stdin): a regular file, a pipe (``-f <(cmd)``) or a device, at most
    MAX_PROMPT_BYTES; InputError for a folder, a missing file or an unreadable one."""
    if str(f) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stdin without bytes (embedding code): its text, re-encoded
            return sys.stdin.read(MAX_PROMPT_BYTES + 1).encode("utf-8", "surrogateescape")
        data = stream.read(MAX_PROMPT_BYTES + 1)
    else:
        if f.is_dir():
            raise InputError(f"prompt file {f} is a folder; name a text file")
        if not f.exists():
            raise InputError(f"prompt file not found: {f}")
        try:  # O_NONBLOCK: a named pipe nobody writes to opens at once and reads as empty, never a hang
            fd = os.open(f, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            os.set_blocking(fd, True)  # a pipe with a writer (`-f <(cmd)`): wait for all it writes
            with open(fd, "rb") as fh:
                data = fh.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise InputError(f"cannot read prompt file {f}: {e.strerror or e}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(f"{'stdin' if str(f) == '-' else f'prompt file {f}'} is larger than {MAX_PROMPT_BYTES >> 20} MiB, "
                         "far longer than any model's context")
    return data


def read_prompts(prompts: list[str], files: list[Path]) -> list[str]:
    """Prompts from arguments and files (``-`` is stdin, read as bytes); the example paragraph if none are given.

    File and stdin text is UTF-8; a leading byte-order mark (Windows editors write one) is not part of the prompt."""
    texts = list(prompts)
    if any(str(f) == "-" for f in files):
        options.require_stream("stdin", "--file -")
    for f in files:
        data = _read_prompt_bytes(f)
        try:
            texts.append(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            where = "stdin" if str(f) == "-" else f"prompt file {f}"
            raise InputError(f"{where} is not valid UTF-8 text (byte {e.start}): re-encode it as UTF-8") from None
    for i, t in enumerate(texts):
        if not is_utf8(t):
            raise InputError(f"prompt {i + 1} is not valid UTF-8 text: re-encode it (or the terminal) as UTF-8")
        if not t.strip():
            raise InputError(f"prompt {i + 1} is empty: give some text, or --file with text in it")
    return texts or [example_text()]


def _check_lens_files(specs: list[str]) -> None:
    """Before the model loads: each ``--lens`` spelled right, and a ``tuned:DIR`` lens's files not a FIFO, device or
    folder (reading a FIFO would wait for ever). The rest of the lens is checked once the model is known."""
    from ..lenses import parse_lens_spec
    from ..lenses.tuned import check_lens_files

    for spec in specs:
        kind, arg = parse_lens_spec(spec)  # an unknown kind is refused here too, before the model loads
        if kind.name == "tuned" and arg:
            try:
                check_lens_files(arg)
            except InputError as e:
                raise InputError(f"--lens {one_line(spec.strip(), 200)}: {e}") from None


def default_run_dir(model: str | None) -> Path:
    name = Path(model).stem if model else "SmolLM2-135M-Instruct"
    return Path("runs") / f"{name.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def trace(
    prompts: Optional[List[str]] = typer.Argument(
        None, help="Prompt texts, one per argument (quote each). None and no --file: the standard test paragraph."
    ),
    file: Optional[List[Path]] = typer.Option(None, "--file", "-f", help="Read a prompt from a file ('-' = stdin). Repeatable. Prompts given as arguments come first, then the files', each in the order given."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=options.MODEL_HELP),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    allow_download: bool = typer.Option(False, "--allow-download", help=options.DOWNLOAD_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder to create. Default: runs/<model>-<time>."),
    force: bool = typer.Option(
        False, "--force", help="Replace the output folder if it is an earlier lenskit run (nothing else is ever replaced)."
    ),
    device: str = typer.Option(
        "auto", "--device", callback=options.device, help="auto | cpu | cuda[:N] | mps (auto: CUDA when present)."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", callback=options.choice("dtype", *options.DTYPES),
        help="auto | float32 | bfloat16 | float16 (auto: float32 on CPU, bfloat16 on GPU).",
    ),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="accelerate device map, e.g. 'auto', for models larger than one device."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Force a registered adapter (see `lenskit adapters`)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model repository's own Python code."),
    export: bool = typer.Option(True, "--export/--no-export", help="Also write RUN_DIR/export.json for the viewer."),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Tokens per position in export.json (final top-k)."),
    track: Optional[List[str]] = typer.Option(None, "--track", help="Extra token to follow in export.json (string or id). Repeatable."),
    stage_top: int = typer.Option(5, "--stage-top", min=0, max=100, help="Each stage's own top-N tokens per position in export.json (the viewer's overview grid); 0 for none."),
    lens: Optional[List[str]] = typer.Option(None, "--lens", help="Lens to compute: logit (the model's own final norm + unembedding, default) or tuned:LENS_DIR (a lens from `lenskit fit-lens`). Repeatable: the export holds each (the first lens's final top-k are followed by all)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap each prompt as the user's message in the model's chat template, with the assistant's turn opened: the last position predicts the first token of the answer. The trace keeps the templated text (special tokens included)."),
    system: Optional[str] = typer.Option(None, "--system", help="With --chat: a system message before the user's. Without it, lenskit adds none (the template may add its own)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Trace the residual stream at all 2L+1 stages (embedding, after every attention and every FFN block).

    Writes RUN_DIR/trace.safetensors (tensor prompt.{i}.stages [S, T, D] and a `lenskit` metadata JSON) and, unless
    --no-export, RUN_DIR/export.json. Example: lenskit trace "The capital of France is" -o runs/paris
    """
    from ..adapters import get_module
    from ..capture import trace_prompts
    from ..files import check_run_dir, new_run_dir, replace_run_dir
    from ..model_folder import model_config, vocab_size
    from ..models import load_model, progress_logger
    from ..store import TRACE_FILE, is_run_folder, write_trace

    log = progress_logger(quiet)
    out = output.expanduser() if output else default_run_dir(model)
    target = check_run_dir(out, force, is_run_folder)
    texts = read_prompts(prompts or [], file or [])
    if system is not None and not chat:
        raise typer.BadParameter("needs --chat (a system message belongs to the chat template)", param_hint="'--system'")
    if system is not None and not system.strip():
        raise InputError("--system is empty: give a message, or leave the option out")
    if system is not None and not is_utf8(system):
        raise InputError("--system is not valid UTF-8 text: re-encode it (or the terminal) as UTF-8")
    _check_lens_files(lens or [])
    # the model folder's files, config.json and sizes, and the export options against its vocabulary: all without
    # loading weights (the check after loading stays, for a hub id not downloaded yet, a .gguf or the default model)
    vocab = vocab_size(model_config(model, revision, trust_remote_code))
    if export and vocab is not None:
        if top_k > vocab:
            raise InputError(f"--top-k {top_k} must be between 1 and the vocabulary size ({vocab})")
        if stage_top > vocab:
            raise InputError(f"--stage-top {stage_top} must be between 0 and the vocabulary size ({vocab})")
    tmp = new_run_dir(target)
    try:
        loaded = load_model(model, revision, device, dtype, trust_remote_code, adapter, device_map, log=log,
                            allow_download=allow_download)
        if export:  # check the export options now, not after the forward passes
            from ..export import check_export_options
            from ..lens import lens_from_model

            from ..capture import stage_names
            from ..lenses import open_lenses

            head = lens_from_model(loaded.model, loaded.adapter)
            check_export_options(loaded.tokenizer, head.vocab_size, top_k, list(track or []), stage_top)
            n_layers = len(get_module(loaded.model, loaded.adapter.layers))
            open_lenses(lens, {"id": loaded.source["id"], "fingerprint": head.fingerprint()}, stage_names(n_layers))
        started = time.perf_counter()
        states, meta = trace_prompts(loaded, texts, log=log, chat=chat, system=system)
        write_trace(tmp / TRACE_FILE, states, meta)
        if log:
            log(f"traced {len(texts)} prompt(s) in {time.perf_counter() - started:.2f}s")
        if export:
            from ..export import ExportOptions, export_run_dir, write_document
            from ..schema import EXPORT_FILE

            opts = ExportOptions(top_k=top_k, track=list(track or []), lenses=list(lens or ["logit"]),
                                 stage_top=stage_top)
            write_document(export_run_dir(tmp, opts, loaded=loaded, states=states, log=log), tmp / EXPORT_FILE)
        replace_run_dir(tmp, target, check=lambda: check_run_dir(target, force, is_run_folder))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
