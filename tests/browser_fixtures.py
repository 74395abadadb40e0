"""Shared machinery of the browser tests (Debian's headless Chromium driven by Playwright's sync API).

A plain module, not a test module: ``tests/conftest.py`` registers it once with ``pytest_plugins`` (so its fixtures
are available to every test file and its asserts are rewritten like a test module's), and browser test files import
its helpers by name (``from browser_fixtures import ...``), never from one another.

Fixtures:

* ``browser``: one Chromium per test module (module scope, as each browser file launched before); skips the test when
  Chromium or Playwright is missing.
* ``page``: a fresh context and page per test (viewport :data:`VIEWPORT`) whose foreign requests, console errors, page
  errors and dialogs fail the test (:class:`Watch`, also at ``page.watch``).
* ``docs`` / ``served``: two synthetic exports and a server (thread, port 0) over them, per module; a test file may
  override them with its own documents (test_lens_switch_browser.py does).
* ``real_export``: the default model's test-paragraph run folder (``$LENSKIT_VIEWER_REAL_RUN`` or conftest's
  session-scoped ``real_run``, so the model is traced once per session).

Helpers: :func:`require_chromium` (a browser file's module-level skip), :func:`open_view`, :func:`shot`,
:func:`state`, :func:`positions`, :func:`floats`, :func:`check_figures` (the single-prompt viewer's Figures 1–3
against the JSON), :func:`median_ms` (slider-move timings), and the constants below.

Nothing here imports Playwright or lenskit at import time: conftest loads this module for every test.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
ARTIFACTS = Path(__file__).parent / "_artifacts"
READY = "html[data-state=ready]"
HOSTILE_IMG = "<img src=x onerror=alert(1)>"
REAL_RUN_ENV = "LENSKIT_VIEWER_REAL_RUN"  # an existing run folder of the default model, to skip tracing it again
TIMING_MOVES = 12


def require_chromium():
    """Playwright's sync API; skips (the whole module when called at import) unless Chromium and Playwright exist."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")


# ---- fixtures


@pytest.fixture(scope="module")
def browser():
    sync_api = require_chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


class Watch:
    """What a page did that it must not: foreign requests, console errors, page errors, dialogs."""

    def __init__(self):
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def route(self, route):
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "file") or (parts.scheme in ("http", "https") and parts.hostname in LOCAL_HOSTS):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def check(self):
        assert not self.foreign, f"requests outside the machine: {self.foreign}"
        assert not self.errors, f"console/page errors: {self.errors}"
        assert not self.dialogs, f"dialogs fired: {self.dialogs}"


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    watch = Watch()
    context.route("**/*", watch.route)
    pg = context.new_page()
    pg.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: watch.errors.append(str(e)))
    pg.on("dialog", lambda d: (watch.dialogs.append(d.message), d.dismiss()))
    pg.watch = watch
    yield pg
    context.close()
    watch.check()


@pytest.fixture(scope="module")
def docs():
    from viewer_fixture import make_export

    return {"synth": make_export(seed=0), "other": make_export(prompts=1, positions=8, layers=3, seed=1)}


@pytest.fixture(scope="module")
def served(docs, tmp_path_factory):
    """A server (thread, port 0) over the module's ``docs``, one run folder each."""
    from viewer_fixture import write_run

    from lenskit.server import Server, Site, find_runs

    root = tmp_path_factory.mktemp("viewer-runs")
    dirs = [write_run(root / name, doc) for name, doc in docs.items()]
    srv = Server(Site(find_runs(dirs)), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def serve_docs(root: Path, docs: dict):
    """A running server (thread, port 0) over one run folder under ``root`` per ``{name: export document}``, each
    written as its export.json (``json.dumps`` escapes lone surrogates: the viewer parses them from JSON escapes)."""
    import json

    from lenskit.server import Server, Site, find_runs

    dirs = []
    for name, d in docs.items():
        (root / name).mkdir()
        (root / name / "export.json").write_text(json.dumps(d), encoding="utf-8")
        dirs.append(root / name)
    srv = Server(Site(find_runs(dirs)), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@contextlib.contextmanager
def serving(root: Path, docs: dict):
    """:func:`serve_docs` for the length of a ``with`` block."""
    srv = serve_docs(root, docs)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def real_export(request):
    folder = os.environ.get(REAL_RUN_ENV)
    if folder:
        if not (Path(folder) / "export.json").is_file():
            pytest.skip(f"{REAL_RUN_ENV}={folder} has no export.json")
        return Path(folder)
    return request.getfixturevalue("real_run")


# ---- helpers


def open_view(page, url):
    page.goto(url)
    page.wait_for_selector(READY, state="attached", timeout=15000)
    return page


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def state(page) -> dict:
    frag = page.evaluate("location.hash").lstrip("#")
    return dict(p.split("=", 1) for p in frag.split("&") if p)


def positions(doc, prompt=0):
    return doc["prompts"][prompt]["positions"]


def floats(page, selector, attr="data-value"):
    return page.eval_on_selector_all(selector, f"els => els.map(e => Number(e.getAttribute('{attr}')))")


def check_figures(page, doc, prompt, pos, stage, mode="raw"):
    """Figures 1–3 show exactly what the JSON says for (prompt, pos, stage)."""
    from lenskit.schema import histogram, tracked_bins

    P = next(p for p in positions(doc, prompt) if p["pos"] == pos)
    S = len(doc["stages"]["name"])
    k = doc["lens"]["top_k"]
    n = len(P["tracked"])
    for fig in ("#fig-evolution", "#fig-ranks"):
        assert page.locator(f"{fig} g.curve.top").count() == k
        assert page.locator(f"{fig} g.curve").count() == n
        for j in range(n):
            assert page.locator(f'{fig} g.curve[data-token="{j}"] circle.pt').count() == S
    assert page.get_attribute("#fig-evolution svg.chart", "data-pos") == str(pos)
    for j in range(n):
        want = []
        for s in range(S):
            x = P["score"][j][s]
            want.append({"raw": x, "centred": x - P["mean"][s], "z": (x - P["mean"][s]) / P["std"][s],
                         "logprob": x - P["lse"][s]}[mode])
        got = floats(page, f'#fig-evolution g.curve[data-token="{j}"] circle.pt')
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
        assert floats(page, f'#fig-ranks g.curve[data-token="{j}"] circle.pt') == P["rank"][j]
    assert floats(page, "#fig-evolution circle.pt.at-stage", "data-stage") == [stage] * n
    assert set(floats(page, "#fig-ranks .stage-marker", "data-stage")) == {stage}
    # Figure 3: documented bins, non-empty ones drawn with their counts, tracked tokens' bins marked.
    dense = histogram(doc, P)[0][stage]
    counts = {b: c for b, c in enumerate(dense.tolist()) if c > 0}
    assert page.get_attribute("#fig-histogram svg.chart", "data-stage") == str(stage)
    bins = floats(page, "#fig-histogram rect.bin", "data-bin")
    assert all(0 <= b < doc["histogram"]["bins"] for b in bins)
    assert dict(zip(bins, floats(page, "#fig-histogram rect.bin", "data-count"))) == counts
    bins_of = tracked_bins(doc, P)
    assert set(floats(page, "#fig-histogram rect.bin.tracked", "data-bin")) == {int(bins_of[j][stage]) for j in range(n)}
    marks = page.eval_on_selector_all("#fig-histogram circle.mark", "els => els.map(e => [+e.dataset.token, +e.dataset.bin])")
    assert sorted(marks) == sorted([j, int(bins_of[j][stage])] for j in range(n))
    assert page.locator("#fig-histogram circle.mark").count() == n
    assert page.input_value("#stage-slider") == str(stage)


def median_ms(page, selector, moves):
    """Median time of a slider move: synchronous redraw, and until the next frame is ready (includes layout)."""
    return page.evaluate(
        """async ([selector, moves]) => {
            const el = document.querySelector(selector);
            const sync = [], frame = [];
            for (let i = 0; i < moves; i++) {
                const v = Number(el.value), max = Number(el.max);
                el.value = String(v < max ? v + 1 : 0);
                const t0 = performance.now();
                el.dispatchEvent(new Event('input', { bubbles: true }));
                sync.push(performance.now() - t0);
                await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
                frame.push(performance.now() - t0);
            }
            const med = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
            return [med(sync), med(frame)];
        }""",
        [selector, moves],
    )
