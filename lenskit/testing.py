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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import Adapter, find_adapter, get_module, model_architecture
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


@torch.inference_mode()
def _run(model, ids, layers, zero: tuple = ()) -> tuple[torch.Tensor, list, torch.Tensor]:
    """One forward pass; returns (layer-0 input, every layer's output, logits), each ``[T, ...]``.

    ``zero`` lists modules whose first output is replaced by zeros during the pass.
    """
    got: dict = {"outs": [None] * len(layers)}
    handles = []

    def flat(t):  # [1, T, D] -> [T, D]
        return t.reshape(-1, t.shape[-1]).detach().clone()

    def first_in(mod, args, kwargs):
        got["in0"] = flat(hidden_arg(args, kwargs))

    handles.append(layers[0].register_forward_pre_hook(first_in, with_kwargs=True))
    for i, layer in enumerate(layers):

        def out_hook(mod, args, out, i=i):
            got["outs"][i] = flat(first_output(out))

        handles.append(layer.register_forward_hook(out_hook))
    for mod in zero:
        handles.append(mod.register_forward_hook(lambda mod, args, out: _zeroed(out)))
    try:
        logits = model(input_ids=ids.reshape(1, -1), use_cache=False).logits[0]  # [T, V]
    finally:
        for h in handles:
            h.remove()
    return got["in0"], got["outs"], logits.detach().clone()


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
    _close(stages[0], in0, "stage 0 (embed) vs the input of decoder layer 0", rtol)
    for i in range(n):
        _close(stages[2 * i + 2], outs[i], f"stage {2 * i + 2} (L{i}.ffn) vs the output of decoder layer {i}", rtol)
    lens = lens_from_model(model, declared)
    _close(lens(stages[-1]), logits, "lens(last stage) vs the model's logits", rtol)

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
