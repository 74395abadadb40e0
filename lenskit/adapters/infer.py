"""Layout inference: candidate adapters for a model whose architecture no registered adapter names.

Many new decoder families keep a layout lenskit already knows (``SmolLM3ForCausalLM`` is laid out like Llama). The
candidates are the *registered* declarations themselves -- no separate table: every registered adapter whose module
paths all exist on the model, one per distinct layout, most likely first. Nothing here runs the model; a candidate
is only a guess until :func:`lenskit.testing.verify_layouts` has checked it on a prompt (``lenskit trace`` does that
on the first prompt, ``lenskit adapters --check MODEL`` on a short built-in one).
"""

from __future__ import annotations

from ..errors import AdapterError
from . import (
    HF_DECODER,
    Adapter,
    find_adapter,
    get_module,
    model_architecture,
    registry,
)

# The fields that say where the parts are and how the lens and the stages are computed (not names, docs or embed).
LAYOUT_FIELDS = (
    "layers", "mid", "attn", "ffn", "parallel", "parallel_mid", "final_norm", "unembed", "pre_unembed",
    "softcap", "logit_scale", "logit_divide", "post_norm", "variants",
)


def layout_key(adapter: Adapter) -> tuple:
    """What two adapters must share to capture the same stages and build the same lens on any model."""
    return tuple(getattr(adapter, f) for f in LAYOUT_FIELDS)


def fits(model, adapter: Adapter) -> bool:
    """Whether every module path of ``adapter`` (for this model's config) exists on ``model``: no forward pass."""
    a = adapter.for_config(model.config)
    try:
        layers = get_module(model, a.layers)
        if not hasattr(layers, "__len__") or len(layers) == 0:
            return False
        if a.final_norm:
            get_module(model, a.final_norm)
        if a.pre_unembed:
            get_module(model, a.pre_unembed, optional=True)
        head = get_module(model, a.unembed)
        if getattr(getattr(head, "weight", None), "ndim", 0) != 2:
            return False
        parallel = a.is_parallel(model.config)
        inside = [a.attn, a.ffn] + ([] if parallel else [a.mid_module(model.config)])
        if None in inside:
            return False
        for layer in layers:
            for path in inside:
                get_module(layer, path)
    except (AdapterError, TypeError, IndexError, ValueError):
        return False
    return True


def _config_quirks(config, adapter: Adapter) -> int:
    """How many of the config attributes ``adapter`` reads (softcap, scales, parallel flag) this config sets."""
    n = 0
    for attr in (adapter.softcap, adapter.logit_scale, adapter.logit_divide):
        if attr and getattr(config, attr, None) not in (None, 0):
            n += 1
    if isinstance(adapter.parallel, str) and hasattr(config, adapter.parallel):
        n += 1
    return n


def effective_layout(adapter: Adapter, config) -> tuple:
    """What ``adapter`` does on a model with ``config``: two adapters with equal effective layouts capture the same
    stages and build the same lens on it (a softcap attribute the config lacks, a parallel flag it lacks, ...)."""
    a = adapter.for_config(config)
    parallel = a.is_parallel(config)

    def value(attr):
        v = getattr(config, attr, None) if attr else None
        return v if v not in (None, 0) else None

    return (a.layers, parallel, None if parallel else a.mid_module(config), a.attn, a.ffn, a.final_norm, a.unembed,
            a.pre_unembed, value(a.softcap), value(a.logit_scale), value(a.logit_divide), a.post_norm)


def _registration_order() -> dict:
    """``{adapter name: index}``: built-ins in :data:`lenskit.plugins.DEFAULT_PLUGINS` order (plugins after them)."""
    import importlib

    from ..plugins import DEFAULT_PLUGINS

    order: dict = {}
    for i, module in enumerate(DEFAULT_PLUGINS):
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, Adapter):
                order.setdefault(value.name, i)
    return order


STANDARD = layout_key(Adapter(name="", family="", architectures=(), **HF_DECODER))


def candidate_layouts(model) -> tuple[Adapter, ...]:
    """The registered adapters whose layout fits ``model``, one per distinct layout on it, most likely first.

    Order: layouts reading config attributes this config sets (a logit softcap, a logit scale, a parallel-block flag)
    first, since the plain layout would fail verification on such a model; then the standard Hugging Face decoder
    layout (:data:`~lenskit.adapters.HF_DECODER`); then the others in registration order. Of several adapters that
    would act alike on this model (Llama, Gemma, OLMo, StarCoder2, ... on a model without their config quirks) only
    the first registered is kept: the standard layout is called ``llama``, GPT-2's ``gpt2``.
    """
    order = _registration_order()
    adapters = [a for a, _ in registry().values()]

    def rank(adapter):
        standard = layout_key(adapter) == STANDARD
        return (-_config_quirks(model.config, adapter), not standard, order.get(adapter.name, len(order)), adapter.name)

    seen, out = set(), []
    for adapter in sorted(adapters, key=rank):
        key = effective_layout(adapter, model.config)
        if key in seen:
            continue
        seen.add(key)
        if fits(model, adapter):
            out.append(adapter)
    return tuple(out)


def adapter_for(model, forced: str | None = None) -> tuple[Adapter, tuple[Adapter, ...]]:
    """The adapter for a loaded ``model``: ``(registered adapter, ())``, or ``(first candidate, candidates)``.

    With ``forced`` (``--adapter NAME``) or a registered architecture nothing is inferred. Otherwise the candidate
    layouts of :func:`candidate_layouts` are returned, unverified; when there are none, the registry's one-line
    "no adapter for architecture ..." error is raised.
    """
    arch = model_architecture(model)
    try:
        return find_adapter(arch, forced), ()
    except AdapterError:
        if forced:
            raise
        candidates = candidate_layouts(model)
        if not candidates:
            raise
        return candidates[0], candidates
