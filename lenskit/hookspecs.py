"""Plugin hook specifications (pluggy project name "lenskit", entry-point group "lenskit")."""

import pluggy

hookspec = pluggy.HookspecMarker("lenskit")
hookimpl = pluggy.HookimplMarker("lenskit")


@hookspec
def register_adapters(register):
    """Register model-family adapters.

    Args:
        register: call ``register(adapter)`` once per :class:`lenskit.adapters.Adapter`.
    """


@hookspec
def register_lenses(register):
    """Register lens kinds (``lenskit trace/export --lens NAME[:ARG]``).

    Args:
        register: call ``register(kind)`` once per :class:`lenskit.lenses.LensKind`.
    """
