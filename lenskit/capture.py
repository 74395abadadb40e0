"""Stage capture: one forward pass with hooks, returning the residual stream at all S = 2L+1 stages.

Stage 0 is what the first decoder layer receives, stage 2i+2 what layer i returns, stage 2i+1 the stream after
layer i's attention block (see :mod:`lenskit.adapters` for how each adapter says where that lives). Hooks only
read tensors the model computes anyway, so the capture reproduces the model's own arithmetic.
"""

from __future__ import annotations

import torch

from .adapters import Adapter, get_module
from .errors import AdapterError, InputError


def stage_names(n_layers: int) -> list[dict]:
    """``[{name, kind, layer}]`` for the 2L+1 stages of an L-layer decoder."""
    stages = [{"name": "embed", "kind": "embed", "layer": -1}]
    for i in range(n_layers):
        stages.append({"name": f"L{i}.attn", "kind": "attn", "layer": i})
        stages.append({"name": f"L{i}.ffn", "kind": "ffn", "layer": i})
    return stages


def first_output(x):
    """A module's main output: the first item when it returns a tuple or list."""
    return x[0] if isinstance(x, (tuple, list)) else x


def hidden_arg(args, kwargs):
    """The hidden-state argument a hooked module was called with (positional or keyword)."""
    if args:
        return args[0]
    for key in ("hidden_states", "x", "input"):
        if key in kwargs:
            return kwargs[key]
    raise AdapterError("a hooked module was called without a hidden-state argument")


@torch.inference_mode()
def capture_stages(model, adapter: Adapter, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``model`` on ``input_ids`` ([T] or [1, T]) and return the stages, ``[S, T, D]``, on the CPU.

    The stream is kept in the model's dtype (no rounding); the lens upcasts. With ``attention_mask`` (``[B, T]``,
    ``input_ids`` ``[B, T]``) the batch runs as one forward pass and the result is ``[S, B*T, D]`` (row b*T + t);
    :func:`capture_batch` is the convenient form.
    """
    adapter = adapter.for_config(model.config)  # config-dependent variants (e.g. OPT post-LN)
    layers = get_module(model, adapter.layers)
    n = len(layers)
    parallel = adapter.is_parallel(model.config)
    mid_name = adapter.mid_module(model.config)
    if not parallel and not mid_name:
        raise AdapterError(f"adapter '{adapter.name}' declares neither a mid-layer module nor parallel blocks")
    if parallel and not adapter.attn:
        raise AdapterError(f"adapter '{adapter.name}' is parallel but declares no attention module")
    S = 2 * n + 1
    stages: list = [None]  # the [S, T, D] CPU result, allocated at the first hook (T, D, dtype known then)
    filled = [False] * S
    inputs: list = [None] * n  # parallel blocks: layer input, kept on its device until attention has added to it
    handles = []

    def store(k: int, t: torch.Tensor) -> None:  # stage k <- t ([1, T, D], or [T, D]: OPT flattens before its FFN)
        t = t.detach().reshape(-1, t.shape[-1])  # [T, D]
        if stages[0] is None:
            stages[0] = torch.empty(S, *t.shape, dtype=t.dtype)
        stages[0][k].copy_(t)  # straight to the CPU: no device memory grows with the number of stages
        filled[k] = True

    try:
        for i, layer in enumerate(layers):

            def pre(mod, args, kwargs, i=i):
                h = hidden_arg(args, kwargs)
                if i == 0:
                    store(0, h)
                if parallel:
                    inputs[i] = h.detach()

            def post(mod, args, kwargs, out, i=i):
                store(2 * i + 2, first_output(out))

            if i == 0 or parallel:
                handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layer.register_forward_hook(post, with_kwargs=True))
            if parallel:

                def attn_hook(mod, args, out, i=i):
                    attn = first_output(out).reshape(inputs[i].shape)  # the attention contribution
                    store(2 * i + 1, inputs[i] + attn)  # the stream after attention, in the model's own dtype
                    inputs[i] = None

                handles.append(get_module(layer, adapter.attn).register_forward_hook(attn_hook))
            else:

                def mid_hook(mod, args, kwargs, i=i):
                    if not filled[2 * i + 1]:  # first call only (a norm module is never reused, but be safe)
                        store(2 * i + 1, hidden_arg(args, kwargs))

                handles.append(get_module(layer, mid_name).register_forward_pre_hook(mid_hook, with_kwargs=True))
        dev = _input_device(model)
        if attention_mask is None:
            model(input_ids=input_ids.reshape(1, -1).to(dev), use_cache=False)
        else:
            model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not all(filled):
        raise AdapterError(f"adapter '{adapter.name}' hooks did not fire for every layer; check its module paths")
    return stages[0]  # [S, T, D]


def capture_batch(model, adapter: Adapter, sequences: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Stages of several token sequences in one forward pass, ``[S, B, T, D]`` (T = the longest; CPU).

    Sequences are padded on the right with an attention mask: a real position attends only to itself and earlier
    real tokens (causal masking already hides every later one, padding included) and keeps its position ids
    ``0..n-1``, so its stages are those of the sequence run alone up to the rounding of differently shaped kernels
    (``tests/test_survey_capture.py`` bounds it). Rows past a sequence's length are padding: never read them.
    """
    B, T = len(sequences), max(len(s) for s in sequences)
    ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros(B, T, dtype=torch.long)  # [B, T]
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
    h = capture_stages(model, adapter, ids, attention_mask=mask)  # [S, B*T, D]
    return h.view(h.shape[0], B, T, h.shape[-1])  # [S, B, T, D]


def _input_device(model) -> torch.device:
    emb = model.get_input_embeddings()
    return emb.weight.device if emb is not None and emb.weight.device.type != "meta" else next(model.parameters()).device


def fingerprint_info(loaded) -> dict:
    """The ``model`` section of a trace's metadata."""
    from .lens import lens_from_model

    lens = lens_from_model(loaded.model, loaded.adapter)
    return {
        "id": loaded.source["id"],
        "revision": loaded.source.get("revision"),
        "source": loaded.source,
        "fingerprint": lens.fingerprint(),
        "architecture": loaded.architecture,
        "adapter": loaded.adapter.name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "n_layers": len(get_module(loaded.model, loaded.adapter.layers)),
        "vocab_size": lens.vocab_size,
    }


def _check_ids(ids: list, n_embed: int | None, which: str) -> None:
    """InputError unless the tokenizer gave ``which`` at least one token id, each one the model embeds (a tokenizer of
    another model failed as an IndexError inside the embedding, no ids as a dtype error)."""
    if not ids:
        raise InputError(f"{which}: the tokenizer gave no tokens for it")
    top = max(ids)
    if n_embed is not None and top >= n_embed:
        raise InputError(f"{which}: the tokenizer gave token id {top}, past the model's {n_embed} embeddings: "
                         "is loaded.tokenizer another model's?")


def trace_prompts(loaded, texts: list[str], log=None, chat: bool = False,
                  system: str | None = None) -> tuple[list[torch.Tensor], dict]:
    """Capture every prompt; return the ``[S, T, D]`` stage tensors and the trace metadata document.

    ``chat``: each text is the user's message in the model's chat template, the assistant's turn opened
    (:func:`lenskit.tokens.chat_prompt`; ``system``: a system message first); the trace keeps the templated text as
    the prompt's ``text`` and the message as ``chat.user``."""
    from .progress import Progress
    from .store import build_metadata
    from .tokens import chat_prompt, check_callback, check_flag, context_length, is_utf8, token_texts, tokenize

    if not all(hasattr(loaded, k) for k in ("model", "tokenizer", "adapter", "source")):
        raise InputError(f"loaded must be what lenskit.models.load_model returns (a LoadedModel), not "
                         f"{type(loaded).__name__}")
    check_flag(chat, "chat")
    check_callback(log, "log")
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):  # a str would be traced letter by letter
        raise InputError(f"texts must be a list of prompt strings (e.g. [\"The capital of France is\"]), "
                         f"not {type(texts).__name__}")
    if not texts:
        raise InputError("no prompts to trace: give at least one prompt string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] must be a string (a prompt), not {type(t).__name__}")
        if not is_utf8(t):  # lone surrogates: no tokenizer takes them
            raise InputError(f"prompt {i + 1} is not valid UTF-8 text (it holds lone surrogates)")
    if system is not None and not chat:
        raise InputError("--system needs --chat (a system message belongs to the chat template)")
    if system is not None and not isinstance(system, str):
        raise InputError(f"system must be a string, not {type(system).__name__}")
    if system is not None and not system.strip():
        raise InputError("--system is empty: give a message, or leave the option out")
    if system is not None and not is_utf8(system):
        raise InputError("--system is not valid UTF-8 text (it holds lone surrogates)")
    users = list(texts)
    if chat:
        for i, t in enumerate(users):
            if not t.strip():
                raise InputError(f"prompt {i + 1} is empty: give some text, or --file with text in it")
        texts = []
        for i, t in enumerate(users):
            try:
                texts.append(chat_prompt(loaded.tokenizer, t, system))
            except InputError as e:
                raise InputError(f"prompt {i + 1}: {e}" if len(users) > 1 else str(e)) from None
    max_len = context_length(loaded.model.config)
    emb = loaded.model.get_input_embeddings()
    n_embed = getattr(emb, "num_embeddings", None) or getattr(loaded.model.config, "vocab_size", None)
    # validate every prompt before running any
    encoded = []
    for i, t in enumerate(texts):
        ids = tokenize(loaded.tokenizer, t, None, special=not chat)
        if max_len is not None and len(ids) > max_len:
            which = f"prompt {i + 1}" if len(texts) > 1 else "the prompt"
            if chat:  # the template's turns and --system may be what pushes it past the context
                parts = f"the message alone is {len(tokenize(loaded.tokenizer, users[i], None, special=False))}"
                if system is not None:
                    parts += f", --system {len(tokenize(loaded.tokenizer, system, None, special=False))}"
                raise InputError(f"{which} is {len(ids)} tokens long in the chat template ({parts}); the model's "
                                 f"context is {max_len} tokens")
            raise InputError(f"{which} is {len(ids)} tokens long; the model's context is {max_len} tokens")
        _check_ids(ids, n_embed, f"prompt {i + 1}" if len(texts) > 1 else "the prompt")
        encoded.append(ids)
    states, prompts = [], []
    # a bar over the tokens on a terminal (prompt i/n beside it), else today's line per prompt; nothing if log is None
    with Progress(sum(len(ids) for ids in encoded), "trace", "tokens", log, every=None) as progress:
        for i, (text, ids) in enumerate(zip(texts, encoded)):
            progress.note(f"prompt {i + 1}/{len(texts)}: {len(ids)} tokens")
            if i == 0 and getattr(loaded, "inferred", ()):  # no registered adapter: pick and verify a layout here
                from .testing import capture_inferred

                states.append(capture_inferred(loaded, torch.tensor(ids)))
            else:
                states.append(capture_stages(loaded.model, loaded.adapter, torch.tensor(ids)))
            prompts.append({"text": text, "token_ids": ids, "tokens": token_texts(loaded.tokenizer, ids)})
            if chat:
                prompts[-1]["chat"] = {"user": users[i], "system": system}
            progress.update(len(ids))
    n_layers = len(get_module(loaded.model, loaded.adapter.layers))
    return states, build_metadata(fingerprint_info(loaded), stage_names(n_layers), prompts)
