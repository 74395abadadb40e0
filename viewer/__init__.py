"""The lenskit viewer: static files (index.html, style.css, js/, vendor/) served by ``lenskit serve``."""
