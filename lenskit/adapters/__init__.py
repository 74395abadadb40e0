"""Model-family adapters: *declarations* of where a Hugging Face causal LM keeps each part the logit lens needs.

An adapter is data, not code: module paths (dotted, relative to the model or to one decoder layer) and the family's
quirks. The capture and lens machinery reads these fields; nothing here inspects model classes.

How the three stage kinds are obtained for decoder layer ``i`` (the model's own tensors wherever they exist):

* ``embed`` (stage 0): the input the first decoder layer receives (embeddings, position embeddings, scaling).
* ``L{i}.ffn`` (stage 2i+2): the tensor decoder layer ``i`` returns.
* ``L{i}.attn`` (stage 2i+1): for sequential blocks, the *input* of the module named by ``mid`` -- the first thing
  the layer does with the stream after adding the attention block (e.g. Llama's ``post_attention_layernorm``), so
  post-block norms and residual multipliers are already included. For parallel blocks (attention and FFN read the
  same input) no such tensor exists; it is ``layer input + output of the module named by attn``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..errors import AdapterError


@dataclass(frozen=True)
class Adapter:
    """Where a model family keeps its parts, and its quirks.

    Attributes:
        name: short unique name (``llama``), usable with ``--adapter``.
        family: human-readable family name for listings.
        architectures: Hugging Face architecture names (``config.architectures`` / model class names) it serves.
        layers: path of the decoder-layer list (``model.layers``).
        final_norm: path of the final norm applied before the unembedding (None if the family has none).
        unembed: path of the unembedding linear layer (``lm_head``); its bias, if any, is the output bias.
        embed: path of the token embedding (for documentation and tied-weight detection).
        mid: path, inside a layer, of the module whose input is the stream after attention (sequential blocks).
        attn: path, inside a layer, of the module whose (first) output is the attention block's raw contribution:
            parallel blocks add it to the stream as is; sequential blocks may pass it through a post-norm or a
            multiplier first. The conformance suite (:mod:`lenskit.testing`) zeroes it to isolate the block.
        ffn: path, inside a layer, of the module whose (first) output is the feed-forward block's raw contribution
            (conformance checks zero it; an output of zero must mean "the FFN adds nothing").
        parallel: True if attention and FFN read the same input; or the name of a boolean config attribute that says so.
        parallel_mid: for models whose flag can switch to sequential: the ``mid`` module to use when it is off.
        pre_unembed: path of a projection applied after the final norm and before the unembedding (OPT); skipped
            where the model holds None at that path (OPT checkpoints without a projection).
        softcap: config attribute holding a final logit softcap (``logits = cap * tanh(logits / cap)``).
        logit_scale: config attribute multiplied into the logits (Cohere).
        logit_divide: config attribute the logits are divided by (Granite).
        post_norm: True for post-LN blocks, which normalize the stream *after* adding a block (OPT-350m): stages
            are still the tensors the model passes on, but stage differences are not additive block contributions
            (the conformance suite skips that check).
        variants: config-dependent overrides, ``((config_attribute, value, ((field, new_value), ...)), ...)``:
            when ``config.<attribute> == value`` the listed fields are replaced (see :meth:`for_config`); e.g.
            OPT's post-LN checkpoints (``do_layer_norm_before=False``) have no final norm and another ``mid``.
        quirks: human-readable notes shown in the coverage table.
    """

    name: str
    family: str
    architectures: tuple[str, ...]
    layers: str
    final_norm: str | None
    unembed: str = "lm_head"
    embed: str = ""
    mid: str | None = None
    attn: str | None = None
    ffn: str | None = None
    parallel: bool | str = False
    parallel_mid: str | None = None
    pre_unembed: str | None = None
    softcap: str | None = None
    logit_scale: str | None = None
    logit_divide: str | None = None
    post_norm: bool = False
    variants: tuple = ()
    quirks: tuple[str, ...] = field(default=())

    def for_config(self, config) -> "Adapter":
        """This adapter with the :attr:`variants` that match ``config`` applied (itself if none match)."""
        changes: dict = {}
        for attr, value, overrides in self.variants:
            if getattr(config, attr, None) == value:
                changes.update(dict(overrides))
        return dataclasses.replace(self, **changes) if changes else self

    def is_parallel(self, config) -> bool:
        """Whether this model instance uses parallel attention/FFN blocks."""
        if isinstance(self.parallel, str):
            return bool(getattr(config, self.parallel, False))
        return bool(self.parallel)

    def mid_module(self, config) -> str | None:
        """The module whose input is the post-attention stream, or None for parallel blocks."""
        if self.is_parallel(config):
            return None
        return self.mid or self.parallel_mid

    def describe(self) -> dict:
        """Plain-dict view (for listings and trace metadata)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, (), "")}


# The module layout most Hugging Face decoders share (Llama and its descendants): spread it into a declaration
# (``Adapter(name=..., **HF_DECODER, quirks=...)``) and override what differs.
HF_DECODER = dict(
    embed="model.embed_tokens",
    layers="model.layers",
    mid="post_attention_layernorm",
    attn="self_attn",
    ffn="mlp",
    final_norm="model.norm",
    unembed="lm_head",
)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", re.ASCII)  # an adapter's name (``--adapter NAME``)
PATH = re.compile(r"[A-Za-z0-9_.]*", re.ASCII)  # a dotted module path
_TEXTS = ("family",)
_PATHS = ("layers", "unembed", "embed")
_OPTIONAL_PATHS = ("final_norm", "mid", "attn", "ffn", "parallel_mid", "pre_unembed")
_CONFIG_ATTRS = ("softcap", "logit_scale", "logit_divide")


def declaration_problem(adapter: Adapter, _variant: bool = False) -> str | None:
    """What is wrong with an adapter declaration (a plugin's, checked as it registers), or None.

    Every field must have its declared type; the name must be usable as ``--adapter NAME``; texts shown in listings
    (family, quirks) must be printable (no newlines, no terminal escapes); paths must be dotted module paths;
    architectures Python class names; each variant must yield a declaration that passes too.
    """
    name = adapter.name
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return f"an adapter's name must be letters, digits and _ . + - (at most 64), not {_shown(name)}"
    where = f"adapter '{name}'"

    def text(value, limit=200) -> bool:
        return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()

    if not text(adapter.family):
        return f"{where}: family must be printable text of 1 to 200 characters, not {_shown(adapter.family)}"
    archs = adapter.architectures
    if not isinstance(archs, (tuple, list)) or len(archs) > 200 or not all(
            isinstance(a, str) and a.isidentifier() and len(a) <= 200 for a in archs):
        return f"{where}: architectures must be a tuple of Python class names, not {_shown(archs)}"
    for f in _PATHS + _OPTIONAL_PATHS:
        value = getattr(adapter, f)
        if not (value is None and f in _OPTIONAL_PATHS) and not (isinstance(value, str) and len(value) <= 200
                                                                 and PATH.fullmatch(value)):
            return f"{where}: {f} must be a dotted module path{' or None' if f in _OPTIONAL_PATHS else ''}, " \
                   f"not {_shown(value)}"
    for f in _CONFIG_ATTRS:
        value = getattr(adapter, f)
        if value is not None and not (isinstance(value, str) and value.isidentifier()):
            return f"{where}: {f} must be a config attribute name or None, not {_shown(value)}"
    if not (isinstance(adapter.parallel, bool) or isinstance(adapter.parallel, str) and adapter.parallel.isidentifier()):
        return f"{where}: parallel must be True, False or a config attribute name, not {_shown(adapter.parallel)}"
    if not isinstance(adapter.post_norm, bool):
        return f"{where}: post_norm must be True or False, not {_shown(adapter.post_norm)}"
    quirks = adapter.quirks
    if not isinstance(quirks, (tuple, list)) or len(quirks) > 50 or not all(text(q, 500) for q in quirks):
        return f"{where}: quirks must be a tuple of printable texts (at most 500 characters), not {_shown(quirks)}"
    variants = adapter.variants
    if not isinstance(variants, (tuple, list)) or (_variant and variants):
        return f"{where}: variants must be a tuple of (config attribute, value, overrides), not {_shown(variants)}"
    fields = {f.name for f in dataclasses.fields(Adapter)} - {"name", "variants"}
    for variant in variants:
        try:
            attr, _, overrides = variant
            changes = dict(overrides)
        except (TypeError, ValueError):
            return f"{where}: a variant must be (config attribute, value, ((field, value), ...)), not {_shown(variant)}"
        if not (isinstance(attr, str) and attr.isidentifier()) or not set(changes) <= fields:
            return f"{where}: variant {_shown(variant)} names a config attribute or field that cannot be"
        problem = declaration_problem(dataclasses.replace(adapter, variants=(), **changes), _variant=True)
        if problem:
            return f"{problem} (in variant {_shown(variant)})"
    return None


def _shown(value) -> str:
    """A short, escaped ``repr`` of a plugin's value for a message (no newlines or escapes reach the terminal)."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:79] + "…"


def get_module(root, path: str, optional: bool = False):
    """Resolve a dotted module path (``model.layers``) on ``root``; '' is root itself.

    With ``optional``, a path whose last attribute exists but is None (OPT's ``project_out``) resolves to None.
    """
    obj = root
    parts = [p for p in path.split(".") if p]
    for k, part in enumerate(parts):
        parent = obj
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None and optional and k == len(parts) - 1 and hasattr(parent, part):
            return None
        if obj is None:
            raise AdapterError(f"module path '{path}' does not exist on {type(root).__name__} (stopped at '{part}')")
    return obj


def registry() -> dict:
    """``{name: (adapter, provider)}`` for every registered adapter (built-ins and plugins)."""
    from ..plugins import collect_adapters

    return collect_adapters()


def coverage_markdown(builtin_only: bool = True) -> str:
    """The adapter coverage table in Markdown: family, adapter name, Hugging Face architectures, quirks handled.

    Args:
        builtin_only: list only lenskit's own adapters (the README's table); False adds those from plugins, with
            a column naming the package that provides each.

    Returns:
        The table, one row per adapter sorted by family, ending with a newline.
    """
    from ..plugins import BUILTIN

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = sorted(
        ((a, p) for a, p in registry().values() if p == BUILTIN or not builtin_only),
        key=lambda ap: (ap[0].family.lower(), ap[0].name),
    )
    head = ["Family", "Adapter", "Hugging Face architectures", "Quirks handled"] + ([] if builtin_only else ["Provided by"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, provider in rows:
        cells = [a.family, f"`{a.name}`", ", ".join(f"`{x}`" for x in a.architectures), "; ".join(a.quirks) or "-"]
        if not builtin_only:
            cells.append(provider)
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def model_architecture(model) -> str:
    """The architecture name of a loaded model: its class name (GGUF-loaded configs carry no ``architectures``)."""
    return type(model).__name__


def find_adapter(architecture: str, forced: str | None = None) -> Adapter:
    """The adapter for ``architecture`` (or the one named ``forced``); a one-line error if none fits."""
    reg = registry()
    if forced:
        if forced not in reg:
            raise AdapterError(f"no adapter named '{forced}'; registered: {', '.join(sorted(reg))}")
        return reg[forced][0]
    for adapter, _ in reg.values():
        if architecture in adapter.architectures:
            return adapter
    raise no_adapter_error(architecture)


def no_adapter_error(architecture: str, detail: str = "") -> AdapterError:
    """The one-line error for an architecture no adapter serves; ``detail`` says why no inferred layout fits."""
    families = ", ".join(sorted(a.family for a, _ in registry().values()))
    return AdapterError(
        f"no adapter for architecture {architecture}{detail}; supported families: {families}. "
        "Force a look-alike with --adapter NAME, or add one (README: 'Adding a model family')"
    )
