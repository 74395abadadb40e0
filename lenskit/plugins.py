"""Plugin manager: built-in model families and lenses load through the same hooks as third-party ones
(``register_adapters``, ``register_lenses``).

Third-party packages declare an entry point in the group ``lenskit``; set ``LENSKIT_LOAD_PLUGINS=0`` to skip them
(tests do). Built-ins are the modules in ``DEFAULT_PLUGINS``.

A broken third-party plugin never makes lenskit unusable: an entry point that fails to load, a hook that raises,
an adapter or lens kind with wrong fields or a name unusable on the command line, and an attempt to take a name a
built-in (or an earlier plugin) holds are each one ``lenskit: warning: ...`` line on stderr naming the package, and
what is wrong is left out; the built-ins always win. A command that then names the missing adapter or lens fails
with the usual one-line error.
"""

from __future__ import annotations

import importlib
import os
import sys

import pluggy

from . import hookspecs
from .errors import LenskitError

DEFAULT_PLUGINS = (
    "lenskit.adapters.gpt2",
    "lenskit.adapters.gpt_neo",
    "lenskit.adapters.gptj",
    "lenskit.adapters.codegen",
    "lenskit.adapters.gpt_neox",
    "lenskit.adapters.llama",
    "lenskit.adapters.mixtral",
    "lenskit.adapters.qwen2_moe",
    "lenskit.adapters.qwen3",
    "lenskit.adapters.qwen3_moe",
    "lenskit.adapters.gemma",
    "lenskit.adapters.gemma2",
    "lenskit.adapters.gemma3",
    "lenskit.adapters.phi",
    "lenskit.adapters.phi3",
    "lenskit.adapters.opt",
    "lenskit.adapters.falcon",
    "lenskit.adapters.bloom",
    "lenskit.adapters.stablelm",
    "lenskit.adapters.olmo",
    "lenskit.adapters.olmo2",
    "lenskit.adapters.gpt_bigcode",
    "lenskit.adapters.starcoder2",
    "lenskit.adapters.cohere",
    "lenskit.adapters.granite",
    "lenskit.lenses.logit",
    "lenskit.lenses.tuned",
)

BUILTIN = "lenskit (built-in)"

pm = pluggy.PluginManager("lenskit")
pm.add_hookspecs(hookspecs)

MAX_REGISTERED = 1000  # adapters or lens kinds one plugin may register; more is a broken plugin, not a catalogue

_loaded = False
_providers: dict = {}  # entry-point name -> "project version" of the package that declares it
_collected: dict = {}  # hook name -> (the hook implementations it was collected from, the result)


def warn(message: str) -> None:
    """One ``lenskit: warning: ...`` line on stderr, whatever ``message`` quotes (a plugin's names may hold escapes)."""
    from .tokens import one_line

    print(f"lenskit: warning: {one_line(message, 500)}", file=sys.stderr, flush=True)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}".rstrip(": ")


def load_plugins() -> None:
    """Load the built-in adapters and, unless ``LENSKIT_LOAD_PLUGINS=0``, every ``lenskit`` entry point.

    An entry point that cannot be loaded (its module fails to import, raises, is not a plugin pluggy accepts) is
    skipped with a one-line warning naming it: a broken plugin never makes lenskit or its built-ins unusable.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if third_party_wanted():
        _load_entry_points("lenskit")


def third_party_wanted() -> bool:
    """``LENSKIT_LOAD_PLUGINS``: ``0``, ``false``, ``no`` or ``off`` (any case) skip third-party plugins (``false``
    loaded them before); unset, empty, ``1``, ``true``, ``yes`` or ``on`` load them; another value loads them with a
    one-line warning."""
    raw = os.environ.get("LENSKIT_LOAD_PLUGINS", "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw not in ("", "1", "true", "yes", "on"):
        warn(f"LENSKIT_LOAD_PLUGINS={raw[:40]!r} is not 0 or 1; third-party plugins are loaded")
    return True


def _load_entry_points(group: str) -> None:
    """pluggy's ``load_setuptools_entrypoints``, one entry point at a time, each failure a warning."""
    import importlib.metadata

    try:
        dists = list(importlib.metadata.distributions())
    except Exception as e:  # noqa: BLE001 -- a broken site-packages: lenskit still runs on its built-ins
        warn(f"third-party plugins not loaded: the installed packages could not be listed ({_why(e)})")
        return
    for dist in dists:
        try:
            eps = [ep for ep in dist.entry_points if ep.group == group]
            provider = f"{dist.metadata['Name'] or '?'} {dist.version or '?'}"
        except Exception as e:  # noqa: BLE001 -- its metadata is broken
            warn(f"a package's entry points could not be read; its plugins are skipped ({_why(e)})")
            continue
        for ep in eps:
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            label = f"plugin '{ep.name}' ({provider})"
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except (Exception, SystemExit) as e:  # noqa: BLE001 -- ImportError, SyntaxError, anything its module raises on import
                warn(f"{label} could not be loaded and is skipped: {_why(e)}")
                continue
            _providers[ep.name] = provider


def provider_of(plugin) -> str:
    """Human-readable name of the package that registered ``plugin`` (one short line: a package's metadata may hold
    newlines or terminal escapes, and this is printed in listings)."""
    from .tokens import one_line

    name = pm.get_name(plugin)
    if name in DEFAULT_PLUGINS:
        return BUILTIN
    if name in _providers:
        return one_line(_providers[name], 100)
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return one_line(f"{dist.project_name} {dist.version}", 100)
    return one_line(name or repr(plugin), 100)


def _collect(hook, what: str, check, kind_of, claims=None) -> dict:
    """Call every implementation of ``hook`` (in registration order, built-ins first); ``{name: (item, provider)}``.

    Once per set of registered plugins: the result is kept until a plugin is registered or unregistered, so a slow
    hook runs once per command. Each plugin's items are checked; what is wrong is a one-line warning naming the
    plugin, and only the plugin's faulty items are left out: a hook that raises or registers more than
    :data:`MAX_REGISTERED` items contributes nothing; an item that is not ``kind_of``, or that ``check`` finds
    wrong (``check(item) -> problem or None``), is skipped; a name already taken (a built-in's, another
    plugin's) keeps its first holder, built-ins first. ``claims(item)``: the keys an item serves (an adapter's
    architectures); a key another item claimed first stays that item's, with a warning.
    """
    load_plugins()
    impls = tuple(hook.get_hookimpls())  # registration order (pluggy calls hooks in the reverse one)
    cached = _collected.get(hook.name)
    if cached and len(cached[0]) == len(impls) and all(a is b for a, b in zip(cached[0], impls)):
        return dict(cached[1])
    found: dict = {}
    claimed: dict = {}  # key -> the name of the first item that claims it
    for impl in impls:
        provider = provider_of(impl.plugin)
        label = f"plugin {provider}" if provider != BUILTIN else BUILTIN
        items: list = []

        def register(item, _items=items):
            _items.append(item)

        try:
            returned = impl.function(register=register)
        except (Exception, SystemExit) as e:  # whatever a plugin's hook raises
            if provider == BUILTIN:
                raise
            warn(f"{label}: its {hook.name} hook failed and its {what}s are skipped: {_why(e)}")
            continue
        problems: list = []
        if len(items) > MAX_REGISTERED and provider != BUILTIN:
            warn(f"{label} registers {len(items)} {what}s (at most {MAX_REGISTERED}); all are skipped")
            continue
        for item in items:
            try:
                problem = (f"registered {type(item).__name__} where {kind_of.__name__} belongs"
                           if not isinstance(item, kind_of) else check(item))
            except Exception as e:  # noqa: BLE001 -- a hostile subclass whose fields raise
                problem = f"registered a {what} that cannot be read ({_why(e)})"
            if problem is None and item.name in found and found[item.name][1] != provider:
                problem = f"{what} '{item.name}' clashes with the one from {found[item.name][1]}, which is kept"
            if problem is not None:
                problems.append(problem if "clashes" in problem else f"{problem}; skipped")
                continue
            found[item.name] = (item, provider)
            for key in claims(item) if claims else ():
                owner = claimed.setdefault(key, item.name)
                if owner != item.name:
                    problems.append(f"{what} '{item.name}' names {key}, which {what} '{owner}' ({found[owner][1]}) "
                                    f"already serves and keeps; --adapter {item.name} forces it")
        if returned is not None:
            problems.append(f"{hook.name} returned a value, which is ignored (call register(...) for each {what})")
        if problems and provider == BUILTIN:
            raise LenskitError(f"{label}: {problems[0]}")
        if problems:  # one line per plugin however many of its items are wrong
            more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''} of its {what}s)"
            warn(f"{label}: {problems[0]}{more if len(problems) > 1 else ''}")
    _collected[hook.name] = (impls, found)
    return dict(found)


def collect_adapters() -> dict:
    """Call every plugin's ``register_adapters``; return ``{adapter.name: (adapter, provider)}``.

    A plugin may not replace a built-in adapter or one another plugin registered first: its adapter of that name is
    skipped with a warning. An architecture two adapters name stays the first one's (built-ins first; a warning
    says so), so :func:`lenskit.adapters.find_adapter` picks it; the other is still usable with ``--adapter NAME``.
    """
    from .adapters import Adapter, declaration_problem

    return _collect(pm.hook.register_adapters, "adapter", declaration_problem, Adapter, lambda a: a.architectures)


def collect_lenses() -> dict:
    """Call every plugin's ``register_lenses``; return ``{kind.name: (kind, provider)}`` (as :func:`collect_adapters`:
    a kind whose name is taken, unusable in ``--lens NAME[:ARG]`` or whose fields are wrong is skipped, warned of)."""
    from .lenses import kind_problem
    from .lenses.protocol import LensKind

    return _collect(pm.hook.register_lenses, "lens kind", kind_problem, LensKind)
