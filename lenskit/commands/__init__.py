"""One module per ``lenskit`` command; each exposes ``register(app)``."""
