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
