"""Adapter conformance checks, public so that a plugin's own test suite is one line.

Example (a plugin test)::

    from lenskit.testing import check_adapter

    def test_my_family():
        check_adapter(MyFamilyConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, ...))

:func:`check_adapter` builds a tiny random float32 model from a config (or takes a model), captures its stages with
the adapter, and checks them against tensors obtained independently of the adapter's ``mid`` declaration:

* S == 2L+1 and every stage is ``[T, D]``;
* stage 0 is what decoder layer 0 receives and stage 2i+2 what layer i returns (plain forward hooks);
* the lens on the last stage reproduces the model's own logits;
* block contributions (skipped for post-LN blocks): with layer i's FFN output zeroed, layer i returns stage 2i+1
  (so ``stage[2i+2] - stage[2i+1]`` is what the FFN adds to the stream, post-norms and multipliers included); with
  its attention output zeroed as well, it returns stage 2i (so ``stage[2i+1] - stage[2i]`` is what attention adds).
  This holds for sequential and parallel blocks alike;
* the CLI (:func:`check_cli`): ``lenskit adapters`` lists the adapter, and ``lenskit trace --adapter NAME`` on the
  model saved with a tiny offline tokenizer writes exactly the stages captured in memory; ``lenskit export`` then
  runs on that trace (when asked, or by default where the command exists).

:func:`verify_layouts` applies the same invariants to a real model on a real prompt, to pick among the candidate
layouts of a model whose architecture no adapter names (``lenskit trace`` on its first prompt, ``lenskit adapters
--check``); block contributions are checked for all layers in one pass there, with every FFN zeroed at once.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from .adapters import (
    Adapter,
    find_adapter,
    get_module,
    model_architecture,
    no_adapter_error,
)
from .capture import capture_stages, first_output, hidden_arg
from .lens import lens_from_model


@dataclass
class ConformanceReport:
    """What :func:`check_adapter` checked: the adapter used, the model, and the captured stages ``[S, T, D]``."""

    adapter: Adapter
    model: torch.nn.Module
    stages: torch.Tensor
    contributions_checked: bool
    traced: bool = False  # `lenskit trace` ran and wrote the same stages
    exported: bool = False  # `lenskit export` ran on that trace


def build_tiny_model(config, seed: int = 0) -> torch.nn.Module:
    """A random float32 causal LM from ``config``, in eval mode, initialized from ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


WORDS = (
    ". , ; : ! ? ' \" - ( ) The A In It This "
    "the a an of to in is was and or not it this that with for on at by from as be are were has have had do "
    "cat dog sat mat ran fast slow big small red blue green one two three four five six seven eight nine ten "
    "capital France Paris city river mountain community involvement mining materials company people work year "
    "model token layer logit lens stage stream block head norm"
).split()


def tiny_tokenizer(vocab_size: int = 128):
    """An offline word-level tokenizer (``PreTrainedTokenizerFast``) with at most ``vocab_size`` ids.

    Ids 0-3 are ``<pad>``, ``<s>``, ``</s>``, ``<unk>``; then common English words (:data:`WORDS`), then ``w<i>``
    fillers. Unknown words map to ``<unk>``; text is split on whitespace and punctuation.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = specials + [w for w in WORDS if w not in specials]
    words += [f"w{i}" for i in range(max(0, vocab_size - len(words)))]
    vocab = {w: i for i, w in enumerate(words[:vocab_size])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_tiny_model(model_or_config, folder, seed: int = 0) -> torch.nn.Module:
    """Save a (tiny random, if given a config) model and a :func:`tiny_tokenizer` to ``folder`` for the CLI."""
    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else build_tiny_model(model_or_config, seed)
    model.save_pretrained(folder)
    vocab = model.get_output_embeddings().weight.shape[0]
    tiny_tokenizer(min(vocab, 128)).save_pretrained(folder)
    return model


def _resolve_adapter(model, adapter) -> Adapter:
    if isinstance(adapter, Adapter):
        return adapter
    return find_adapter(model_architecture(model), adapter)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """``assert_close`` with an absolute tolerance relative to the largest row norm of ``expected``."""
    actual, expected = actual.float().cpu(), expected.float().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    scale = float(expected.norm(dim=-1).max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * (1.0 + scale), msg=lambda m: f"{what}: {m}")


def _zeroed(out):
    """``out`` (a tensor or a tuple whose first item is the block output) with that output replaced by zeros."""
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]),) + tuple(out[1:])
    if isinstance(out, list):
        return [torch.zeros_like(out[0])] + list(out[1:])
    return torch.zeros_like(out)


def has_command(name: str) -> bool:
    """Whether ``lenskit NAME`` is a command of this installation."""
    import typer

    from .cli import app

    return name in typer.main.get_command(app).commands


def check_cli(model, adapter_name: str, folder, export: bool | None = None, prompt: str = "The cat sat on the mat .") -> bool:
    """Check the CLI on ``model``: listing, ``trace --adapter NAME --no-export`` and (optionally) ``export``.

    Args:
        model: the model; saved to ``folder/model`` (with :func:`tiny_tokenizer`) and reloaded by the CLI.
        adapter_name: a registered adapter's name (forced with ``--adapter``).
        folder: a working folder (the run goes to ``folder/run``).
        export: run ``lenskit export`` on the trace: True, False, or None for "if the command exists".
        prompt: the text to trace.

    Returns:
        Whether ``lenskit export`` ran (and succeeded).
    """
    import json
    from pathlib import Path

    from safetensors import safe_open
    from typer.testing import CliRunner

    from .cli import app

    runner, folder = CliRunner(), Path(folder)
    listing = runner.invoke(app, ["adapters"])
    if listing.exit_code != 0 or adapter_name not in listing.output.split():
        raise AssertionError(f"`lenskit adapters` does not list '{adapter_name}':\n{listing.output}")
    save_tiny_model(model, folder / "model")
    run = folder / "run"
    args = ["trace", prompt, "-m", str(folder / "model"), "-o", str(run), "--adapter", adapter_name]
    result = runner.invoke(app, args + ["--device", "cpu", "--dtype", "float32", "--no-export", "-q"])
    if result.exit_code != 0:
        raise AssertionError(f"`lenskit trace` failed (exit {result.exit_code}): {result.output}{result.stderr}")
    with safe_open(str(run / "trace.safetensors"), framework="pt") as f:
        stored = f.get_tensor("prompt.0.stages")  # [S, T, D]
        meta = json.loads(f.metadata()["lenskit"])
    if meta["model"]["adapter"] != adapter_name:
        raise AssertionError(f"the trace names adapter '{meta['model']['adapter']}', not '{adapter_name}'")
    # AutoTokenizer may pick a family tokenizer class that splits text its own way: use the ids the trace recorded
    ids = torch.tensor(meta["prompts"][0]["token_ids"])  # [T]
    expected = capture_stages(model, find_adapter("", adapter_name), ids)  # [S, T, D]
    _close(stored, expected, "stages in trace.safetensors vs captured in memory")
    if export is None:
        export = has_command("export")
    if export:
        result = runner.invoke(app, ["export", str(run), "-q"])
        if result.exit_code != 0 or not (run / "export.json").is_file():
            raise AssertionError(f"`lenskit export` failed (exit {result.exit_code}): {result.output}{result.stderr}")
    return bool(export)


@contextlib.contextmanager
def _reference(model, layers, zero: tuple = ()):
    """Hooks recording, independently of any adapter's ``mid``, what decoder layer 0 receives, what every layer
    returns and the model's logits, during whatever forward passes run inside the ``with`` block.

    Yields a dict ``{"in0": [T, D], "outs": [[T, D]] * L, "logits": [T, V]}`` (CPU copies) filled by the pass.
    ``zero`` lists modules whose first output is replaced by zeros during the pass.
    """
    got: dict = {"in0": None, "outs": [None] * len(layers), "logits": None}
    handles = []

    def flat(t):  # [1, T, D] -> [T, D]
        return t.detach().reshape(-1, t.shape[-1]).to("cpu", copy=True)

    def first_in(mod, args, kwargs):
        got["in0"] = flat(hidden_arg(args, kwargs))

    def logits_hook(mod, args, out):
        logits = getattr(out, "logits", None)
        got["logits"] = flat(logits if logits is not None else first_output(out))

    handles.append(layers[0].register_forward_pre_hook(first_in, with_kwargs=True))
    for i, layer in enumerate(layers):

        def out_hook(mod, args, out, i=i):
            got["outs"][i] = flat(first_output(out))

        handles.append(layer.register_forward_hook(out_hook))
    for mod in zero:
        handles.append(mod.register_forward_hook(lambda mod, args, out: _zeroed(out)))
    handles.append(model.register_forward_hook(logits_hook))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def _run(model, ids, layers, zero: tuple = ()) -> tuple[torch.Tensor, list, torch.Tensor]:
    """One forward pass; returns (layer-0 input, every layer's output, logits), each ``[T, ...]``.

    ``zero`` lists modules whose first output is replaced by zeros during the pass.
    """
    with _reference(model, layers, zero) as got:
        model(input_ids=ids.reshape(1, -1), use_cache=False)
    return got["in0"], got["outs"], got["logits"]


def _check_stages(stages: torch.Tensor, ref: dict, lens, rtol: float) -> None:
    """Stage 0 is layer 0's input, stage 2i+2 what layer i returns, and the lens on the last stage gives the logits.

    ``stages``: ``[S, T, D]``; ``ref``: what :func:`_reference` recorded on a pass over the same ids.
    """
    _close(stages[0], ref["in0"], "stage 0 (embed) vs the input of decoder layer 0", rtol)
    for i, out in enumerate(ref["outs"]):
        _close(stages[2 * i + 2], out, f"stage {2 * i + 2} (L{i}.ffn) vs the output of decoder layer {i}", rtol)
    _close(lens(stages[-1]), ref["logits"], "lens(last stage) vs the model's logits", rtol)


def _check_attention_stages(model, adapter: Adapter, ids: torch.Tensor, rtol: float) -> None:
    """With every layer's FFN output zeroed (one forward pass), layer i returns its attention stage 2i+1.

    The one-pass form of :func:`check_adapter`'s contribution check (which zeroes one layer at a time): it catches a
    ``mid`` module whose input is not the stream, e.g. a post-attention norm applied to the attention output.
    """
    resolved = adapter.for_config(model.config)
    layers = get_module(model, resolved.layers)
    ffns = tuple(get_module(layer, resolved.ffn) for layer in layers)
    with _reference(model, layers, zero=ffns) as got:
        stages = capture_stages(model, adapter, ids)  # [S, T, D]
    for i, out in enumerate(got["outs"]):
        _close(stages[2 * i + 1], out, f"stage {2 * i + 1} (L{i}.attn) vs layer {i}'s output with every FFN zeroed", rtol)


def check_adapter(
    model_or_config,
    adapter: Adapter | str | None = None,
    input_ids: torch.Tensor | None = None,
    seed: int = 0,
    contributions: bool = True,
    cli: bool = True,
    export: bool | None = None,
    workdir=None,
    rtol: float = 1e-5,
) -> ConformanceReport:
    """Check that ``adapter`` captures exact stages for a model; raise AssertionError on the first failure.

    Args:
        model_or_config: a Hugging Face causal LM (switched to eval mode) or a config to build a tiny random
            float32 model from.
        adapter: an :class:`~lenskit.adapters.Adapter`, a registered adapter's name, or None to look it up from the
            model's architecture as ``lenskit trace`` does.
        input_ids: token ids ``[T]``; default: 7 ids drawn with ``seed``, avoiding ids 0-2 (pad/BOS/EOS).
        seed: seeds the model initialization (configs only) and the default ids.
        contributions: check block contributions by zeroing the adapter's ``attn``/``ffn`` modules.
        cli: also run :func:`check_cli` (only for a registered adapter -- a plugin's, once installed or registered
            on :data:`lenskit.plugins.pm`; skipped for an unregistered :class:`Adapter` object).
        export: passed to :func:`check_cli`: run ``lenskit export`` (None: where the command exists).
        workdir: a folder for the CLI checks (default: a temporary folder, removed afterwards).
        rtol: relative tolerance (the absolute one scales with the stage's largest row norm).

    Returns:
        A :class:`ConformanceReport` (the adapter used, the model and its stages).
    """
    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else build_tiny_model(model_or_config, seed)
    model.eval()  # dropout off: every pass below must compute the same function
    declared = _resolve_adapter(model, adapter)
    resolved = declared.for_config(model.config)
    if input_ids is None:
        vocab = model.get_output_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(min(3, vocab - 1), vocab, (7,), generator=gen)
    dev = model.get_input_embeddings().weight.device
    ids = input_ids.reshape(-1).to(dev)  # [T]
    layers = get_module(model, resolved.layers)
    n, t = len(layers), ids.numel()

    stages = capture_stages(model, declared, ids)  # [S, T, D]
    if stages.ndim != 3 or stages.shape[0] != 2 * n + 1 or stages.shape[1] != t:
        raise AssertionError(f"stages have shape {tuple(stages.shape)}, expected [2L+1={2 * n + 1}, T={t}, D]")

    in0, outs, logits = _run(model, ids, layers)
    _check_stages(stages, {"in0": in0, "outs": outs, "logits": logits}, lens_from_model(model, declared), rtol)

    check = contributions and not resolved.post_norm
    if check:
        if not (resolved.attn and resolved.ffn):
            raise AssertionError(f"adapter '{resolved.name}' must declare attn and ffn modules for the contribution check")
        for i, layer in enumerate(layers):
            attn, ffn = get_module(layer, resolved.attn), get_module(layer, resolved.ffn)
            _, outs_noffn, _ = _run(model, ids, layers, zero=(ffn,))
            _close(
                stages[2 * i + 1], outs_noffn[i],
                f"stage {2 * i + 1} (L{i}.attn) vs layer {i}'s output with its FFN ({resolved.ffn}) zeroed", rtol,
            )
            _, outs_none, _ = _run(model, ids, layers, zero=(attn, ffn))
            _close(
                stages[2 * i], outs_none[i],
                f"stage {2 * i} vs layer {i}'s output with attention ({resolved.attn}) and FFN zeroed", rtol,
            )
    report = ConformanceReport(adapter=resolved, model=model, stages=stages, contributions_checked=check)
    if cli and _registered(declared):
        if workdir is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="lenskit-check-") as tmp:
                report.exported = check_cli(model, declared.name, tmp, export)
        else:
            report.exported = check_cli(model, declared.name, workdir, export)
        report.traced = True
    return report


def _registered(adapter: Adapter) -> bool:
    from .adapters import registry

    entry = registry().get(adapter.name)
    return entry is not None and entry[0] == adapter


# --- verifying an inferred layout on a real model (``lenskit trace`` on an unknown architecture) -------------------

CHECK_PROMPT = "The capital of France is"  # ``lenskit adapters --check``: a short built-in prompt


def _rtol(model) -> float:
    """Verification tolerance: the lens reuses the model's own modules, so only dtype rounding may differ."""
    dtype = next(model.parameters()).dtype
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-3


def _reason(e: BaseException) -> str:
    """One short line: the first line of ``e`` (an ``assert_close`` failure: what differs, and by how much)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    diff = next((line for line in lines if line.startswith("Greatest absolute difference")), None)
    if diff:  # "Greatest absolute difference: 0.83 at index (1, 5) (up to 3e-05 allowed)"
        value = diff.split(":", 1)[1].split(" at ")[0].strip()
        try:
            value = f"{float(value):.3g}"
        except ValueError:
            pass
        first = first.replace("Tensor-likes are not close!", f"differ by up to {value}")
    return " ".join(first.split())[:160]


def verify_layouts(model, candidates, input_ids: torch.Tensor, rtol: float | None = None):
    """Capture ``input_ids`` with the first of ``candidates`` that passes the conformance invariants on this model.

    For each candidate, most likely first: one pass with every FFN zeroed (:func:`_check_attention_stages`,
    skipped for post-LN layouts), then the capture itself with :func:`_reference` hooks on the same pass (stage 0
    == what layer 0 receives, stage 2i+2 == what layer i returns, lens(last stage) == the model's logits). A
    candidate whose lens disagrees with logits already recorded over the same layers is rejected without a pass.
    So the layout that fits costs one forward pass beyond the capture the trace needs anyway, and each layout
    rejected before it at most two (usually one).

    Args:
        model: a loaded causal LM (eval mode).
        candidates: adapters to try, in order (:func:`lenskit.adapters.infer.candidate_layouts`).
        input_ids: token ids ``[T]`` (the user's first prompt).
        rtol: tolerance (default: 1e-5 in float32, 1e-3 in half precision).

    Returns:
        ``(adapter, stages [S, T, D], rejected)``: the adapter that fits, its stages for ``input_ids`` and
        ``{name: reason}`` for the candidates tried before it.

    Raises:
        AdapterError: no candidate fits (the one-line "no adapter for architecture ..." error, with the reasons).
    """
    rtol = rtol if rtol is not None else _rtol(model)
    ids = input_ids.reshape(-1)
    refs: dict = {}  # layers path -> what _reference recorded on a full pass over it
    rejected: dict = {}
    for cand in candidates:
        try:
            resolved = cand.for_config(model.config)
            layers = get_module(model, resolved.layers)
            lens = lens_from_model(model, cand)
            ref = refs.get(resolved.layers)
            if ref is not None:  # free: the last layer's output and the logits do not depend on the layout
                _close(lens(ref["outs"][-1]), ref["logits"], "lens(last stage) vs the model's logits", rtol)
            if not resolved.post_norm:
                _check_attention_stages(model, cand, ids, rtol)  # the one extra pass
            with _reference(model, layers) as ref:
                stages = capture_stages(model, cand, ids)  # [S, T, D]: the capture the trace needs anyway
            refs[resolved.layers] = ref
            _check_stages(stages, ref, lens, rtol)
            return cand, stages, rejected
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 -- any failure (a hook that never fired, a shape, a mismatch) rejects it
            rejected[cand.name] = _reason(e)
    tried = "; ".join(f"'{n}': {r}" for n, r in rejected.items())
    raise no_adapter_error(model_architecture(model), f" (no inferred layout passed verification: {tried})" if tried else "")


def capture_inferred(loaded, input_ids: torch.Tensor, note: str = "your prompt") -> torch.Tensor:
    """Pick and verify the layout of a model loaded without a registered adapter; return ``input_ids``' stages.

    ``loaded`` is a :class:`lenskit.models.LoadedModel` whose ``inferred`` holds the candidate layouts. Its
    ``adapter`` becomes the one that fits, ``inferred`` is emptied, ``source["adapter_inferred"]`` records the
    choice (it goes into the trace's metadata), and a one-line warning goes to stderr.
    """
    adapter, stages, rejected = verify_layouts(loaded.model, loaded.inferred, input_ids)
    loaded.adapter, loaded.inferred = adapter, ()
    loaded.source["adapter_inferred"] = {
        "layout": adapter.name,
        "verified_on": f"{'the first prompt' if note == 'your prompt' else note} ({input_ids.numel()} tokens)",
        "checks": ["stage 0 == layer 0 input", "stage 2i+2 == layer i output", "lens(last stage) == logits"]
        + ([] if adapter.for_config(loaded.model.config).post_norm else ["stage 2i+1 == layer i output, FFNs zeroed"]),
        "rejected": rejected,
    }
    print(
        f"lenskit: warning: no adapter for {loaded.architecture}; using the inferred layout '{adapter.name}' "
        f"(verified on {note}); --adapter {adapter.name} skips the check",
        file=sys.stderr, flush=True,
    )
    return stages


def verify_inferred(loaded, input_ids: torch.Tensor | None = None) -> None:
    """Settle ``loaded.adapter`` now for a model loaded without a registered adapter (no-op otherwise).

    For commands that capture in batches rather than through :func:`lenskit.capture.trace_prompts` (which verifies
    on the first prompt by itself): ``input_ids`` ``[T]`` (default: :data:`CHECK_PROMPT`) costs the capture and one
    more forward pass; the stages are discarded.
    """
    if not getattr(loaded, "inferred", ()):
        return
    note = "your prompt"
    if input_ids is None:
        from .tokens import context_length, tokenize

        ids = tokenize(loaded.tokenizer, CHECK_PROMPT, context_length(loaded.model.config))
        input_ids, note = torch.tensor(ids), "a built-in prompt"
    capture_inferred(loaded, input_ids, note=note)
