"""``python -m lenskit``: the same command as ``lenskit``."""

from .cli import main

main()
