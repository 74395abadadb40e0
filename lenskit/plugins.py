"""Plugin manager: built-in model families and lenses load through the same hooks as third-party ones
(``register_adapters``, ``register_lenses``).

Third-party packages declare an entry point in the group ``lenskit``; set ``LENSKIT_LOAD_PLUGINS=0`` to skip them
(tests do). Built-ins are the modules in ``DEFAULT_PLUGINS``.
"""

from __future__ import annotations

import importlib
import os

import pluggy

from . import hookspecs
from .errors import AdapterError, LenskitError

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

_loaded = False


def load_plugins() -> None:
    """Load the built-in adapters and, unless ``LENSKIT_LOAD_PLUGINS=0``, every ``lenskit`` entry point."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if os.environ.get("LENSKIT_LOAD_PLUGINS", "1") != "0":
        pm.load_setuptools_entrypoints("lenskit")


def provider_of(plugin) -> str:
    """Human-readable name of the package that registered ``plugin``."""
    name = pm.get_name(plugin)
    if name in DEFAULT_PLUGINS:
        return BUILTIN
    for plug, dist in pm.list_plugin_distinfo():
        if plug is plugin:
            return f"{dist.project_name} {dist.version}"
    return name or repr(plugin)


def collect_adapters() -> dict:
    """Call every plugin's ``register_adapters``; return ``{adapter.name: (adapter, provider)}``.

    A plugin may not silently replace a built-in adapter or an architecture another plugin already claims.
    """
    load_plugins()
    found: dict = {}
    claimed: dict = {}
    for impl in reversed(pm.hook.register_adapters.get_hookimpls()):  # registration order
        provider = provider_of(impl.plugin)

        def register(adapter, _provider=provider):
            if adapter.name in found and found[adapter.name][1] != _provider:
                raise AdapterError(
                    f"adapter '{adapter.name}' from {_provider} clashes with the one from {found[adapter.name][1]}; "
                    "give it another name"
                )
            for arch in adapter.architectures:
                if arch in claimed and claimed[arch] != adapter.name:
                    raise AdapterError(
                        f"architecture {arch} is claimed by both adapter '{claimed[arch]}' and '{adapter.name}' "
                        f"(from {_provider}); use --adapter to force one, or drop it from the plugin"
                    )
                claimed[arch] = adapter.name
            found[adapter.name] = (adapter, _provider)

        impl.function(register=register)
    return found


def collect_lenses() -> dict:
    """Call every plugin's ``register_lenses``; return ``{kind.name: (kind, provider)}`` (a clash is an error)."""
    load_plugins()
    found: dict = {}
    for impl in reversed(pm.hook.register_lenses.get_hookimpls()):  # registration order
        provider = provider_of(impl.plugin)

        def register(kind, _provider=provider):
            if kind.name in found and found[kind.name][1] != _provider:
                raise LenskitError(f"lens '{kind.name}' from {_provider} clashes with the one from "
                                   f"{found[kind.name][1]}; give it another name")
            found[kind.name] = (kind, _provider)

        impl.function(register=register)
    return found
