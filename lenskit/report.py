"""One self-contained HTML file: the viewer (CSS, D3, its JS modules) and one export document, for file:// and e-mail.

ES modules cannot be imported from file://, so :func:`bundle_modules` joins ``viewer/js/*.js`` into one module script:
each module becomes a function scope whose exports are returned as an object, and each
``import { a, b } from "./x.js";`` line becomes ``const { a, b } = x;``. The modules keep to that subset (single-line
named imports from sibling files, ``export`` only before a declaration); anything else is refused here, so the bundle
cannot silently differ from what the served viewer runs.

The data goes in ``<script type="application/json">`` with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX``:
no token text (``</script>`` included) can end the element. A Content-Security-Policy allows only the two inline
scripts (by hash) and no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path

from . import __version__
from .errors import InputError, LenskitError
from .server import viewer_root

DATA_ID = "lenskit-data"
STYLE_TAG = '<link rel="stylesheet" href="style.css">'
D3_TAG = '<script src="vendor/d3.min.js"></script>'
PAGES = {"index.html": "main", "compare.html": "compare"}  # page -> its entry module (corpus.html has no report)
ENTRY_MODULE = "main"
JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_IMPORT_RE = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([A-Za-z0-9_-]+)\.js";?\s*$')
_EXPORT_RE = re.compile(r"^export\s+((?:async\s+)?function\*?|class|const|let)\s+([A-Za-z_$][\w$]*)")
_NAME_RE = re.compile(r"^[A-Za-z_$][\w$]*$")


def json_for_script(doc: dict) -> str:
    """``doc`` as JSON that is safe inside a ``<script>`` element (and still the same JSON to JSON.parse)."""
    import orjson  # as lenskit.export.dumps does, without importing lenskit.export (and torch: seconds in a notebook)

    try:
        text = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")
    except orjson.JSONEncodeError as e:  # a hand-made dict (lenskit.show, build_html): a lone surrogate, a non-str key
        raise InputError(f"this document cannot be written as JSON: {e}") from None
    return re.sub("[<>&\u2028\u2029]", lambda m: JSON_ESCAPES[m.group(0)], text)


def _script_safe(code: str, what: str) -> str:
    """Code for an inline ``<script>``/``<style>``: ``</script``, ``</style`` and ``<!--`` cannot appear literally."""
    code = re.sub(r"<(/(?:script|style))", r"<\\\1", code, flags=re.IGNORECASE).replace("<!--", "<\\!--")
    if re.search(r"</(script|style)|<!--", code, flags=re.IGNORECASE):
        raise LenskitError(f"cannot inline {what}: it contains a closing tag")
    return code


def bundle_modules(js_dir, entry: str = ENTRY_MODULE) -> str:
    """A page's ES modules -- its ``entry`` module (``main``: the single-prompt viewer; ``compare``) and what it
    imports -- as one module script (dependencies first, the entry last)."""
    sources: dict[str, str] = {}
    for item in js_dir.iterdir():
        if item.name.endswith(".js"):
            sources[item.name[:-3]] = item.read_text(encoding="utf-8")
    if entry not in sources:
        raise LenskitError(f"viewer files incomplete: js/{entry}.js is missing")

    bodies: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for name, src in sources.items():
        out, exports, needs = [], [], []
        for n, line in enumerate(src.splitlines(), 1):
            m = _IMPORT_RE.match(line)
            if m:
                dep = m.group(2)
                if dep not in sources:
                    raise LenskitError(f"viewer js/{name}.js:{n}: imports missing module ./{dep}.js")
                needs.append(dep)
                names = [part.strip() for part in m.group(1).split(",") if part.strip()]
                binds = []
                for part in names:
                    src_name, _, alias = (p.strip() for p in part.partition(" as "))
                    if not _NAME_RE.match(src_name) or (alias and not _NAME_RE.match(alias)):
                        raise LenskitError(f"viewer js/{name}.js:{n}: cannot bundle import {part!r}")
                    binds.append(f"{src_name}: {alias}" if alias else src_name)
                out.append(f"const {{ {', '.join(binds)} }} = {_var(dep)};")
                continue
            m = _EXPORT_RE.match(line)
            if m:
                exports.append(m.group(2))
                out.append(line[len("export") :].lstrip())
                continue
            if re.match(r"^\s*(import|export)\b", line):
                raise LenskitError(f"viewer js/{name}.js:{n}: cannot bundle this import/export form: {line.strip()!r}")
            out.append(line)
        bodies[name] = "\n".join(out) + f"\nreturn {{ {', '.join(exports)} }};\n"
        deps[name] = needs

    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise LenskitError(f"viewer modules import each other in a cycle through js/{name}.js")
        visiting.add(name)
        for dep in deps[name]:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    if any(entry in d for d in deps.values()):
        raise LenskitError(f"viewer js/{entry}.js must not be imported by another module")
    visit(entry)  # the entry and what it imports: other pages' modules stay out of the report
    parts = [f"// ---- js/{name}.js\nconst {_var(name)} = (() => {{\n{bodies[name]}}})();\n" for name in order]
    return "".join(parts)


def _var(module: str) -> str:
    return "__lenskit_" + module.replace("-", "_")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def build_html(doc: dict, run_name: str | None = None, page_name: str = "index.html") -> str:
    """The single-file viewer for ``doc`` as an HTML string: ``index.html`` for an export document, ``compare.html``
    for a comparison (``lenskit compare --html``)."""
    root = viewer_root()
    entry = PAGES[page_name]
    main_tag = f'<script type="module" src="js/{entry}.js"></script>'
    page = root.joinpath(page_name).read_text(encoding="utf-8")
    css = _script_safe(root.joinpath("style.css").read_text(encoding="utf-8"), "style.css")
    d3 = _script_safe(root.joinpath("vendor", "d3.min.js").read_text(encoding="utf-8"), "vendor/d3.min.js")
    app = "\n" + _script_safe(bundle_modules(root.joinpath("js"), entry), "the viewer modules")
    for tag in (STYLE_TAG, D3_TAG, main_tag):
        if page.count(tag) != 1:
            raise LenskitError(f"viewer {page_name}: expected one {tag}")
    page = re.sub(r'<link rel="modulepreload" href="[^"]*">\n?', "", page)
    name = run_name or str(doc.get("model", {}).get("id", "report"))
    csp = (
        f"default-src 'none'; script-src {_sha256(d3)} {_sha256(app)}; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'"
    )
    head = (
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        f'<meta name="generator" content="lenskit {html.escape(__version__)}">\n'
    )
    page = page.replace('<meta charset="utf-8">\n', '<meta charset="utf-8">\n' + head, 1)
    page = page.replace(STYLE_TAG, f"<style>\n{css}</style>")
    page = page.replace(D3_TAG, f"<script>{d3}</script>")
    data = f'<script type="application/json" id="{DATA_ID}" data-run="{html.escape(name, quote=True)}">{json_for_script(doc)}</script>'
    page = page.replace(main_tag, f'{data}\n<script type="module">{app}</script>')
    return page


def write_html(doc: dict, path, page_name: str = "index.html") -> Path:
    """Write the self-contained viewer for ``doc`` (an export; a comparison with ``page_name="compare.html"``) to
    ``path`` (atomically); return the path. The commands' refusals hold here too (library callers): a folder, a
    symbolic link, a FIFO or another program's file at ``path`` is refused, never replaced."""
    from .files import atomic_write, check_output_file

    path = check_output_file(Path(path), "report")
    text = build_html(doc, run_name=path.stem, page_name=page_name)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
