"""lenskit: see how a language model decides its next token.

Data flow: model -> adapter -> capture -> stage store (safetensors) -> lens -> stats -> schema/export -> server -> viewer.
"""

__version__ = "0.1.0"


def show(run_or_doc, height=None):
    """Show the viewer inline in a notebook cell: see :func:`lenskit.notebook.show`."""
    from .notebook import show as _show

    return _show(run_or_doc, height=height)
