"""Notebooks: lenskit.show / Export._repr_html_ (the single-file viewer in a sandboxed iframe) and the DataFrame API.

The end-to-end test executes a real notebook with nbclient (a kernel started by the test), takes the HTML outputs the
kernel produced, puts them in a page as a notebook frontend would, and loads it in Debian's headless Chromium: the
figures must be drawn inside the frame, the frame sized to the viewer, nothing fetched, no console error. A
``realmodel`` test times the test paragraph's export from cell execution to figures drawn (printed, goal <= 1.5 s).
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_fixtures import ARTIFACTS, REAL_RUN_ENV  # noqa: E402
from viewer_fixture import HOSTILE, make_export, write_run  # noqa: E402

import lenskit  # noqa: E402
from lenskit.errors import InputError, LenskitError, TraceFileError  # noqa: E402
from lenskit.notebook import DEFAULT_HEIGHT, Export, InlineViewer, viewer_iframe  # noqa: E402
from lenskit.report import build_html  # noqa: E402
from lenskit.schema import histogram, tracked_bins  # noqa: E402

TESTS = Path(__file__).parent
CELL_WIDTH_PX = 980  # about a JupyterLab output area on a laptop


@pytest.fixture(scope="module")
def doc():
    return make_export(seed=0)


# ---- the DataFrame API, against the JSON


def test_dataframes_match_the_json(doc):
    pd = pytest.importorskip("pandas")
    e = Export(doc)
    P = doc["prompts"][1]["positions"][7]
    names = doc["stages"]["name"]
    texts = [doc["tokens"][t] for t in P["tracked"]]
    r = e.ranks(1, 7)
    assert list(r.columns) == names and list(r.index) == texts and r.index.name == "token"
    assert r.values.tolist() == P["rank"]
    assert r.attrs["token_ids"] == [doc["token_ids"][t] for t in P["tracked"]]
    assert r.attrs["roles"][:3] == ["#1", "#2", "#3"]
    if P["next"] is not None and P["next"] >= doc["lens"]["top_k"]:
        assert r.attrs["roles"][P["next"]] == "next"
    assert e.scores(1, 7).values.tolist() == P["score"]
    lp = e.scores(1, 7, mode="logprob")
    assert lp.iloc[0, 3] == pytest.approx(P["score"][0][3] - P["lse"][3])
    z = e.scores(1, 7, mode="z")
    assert z.iloc[2, 4] == pytest.approx((P["score"][2][4] - P["mean"][4]) / P["std"][4])
    st = e.stats(1, 7)
    assert list(st.index) == names and list(st.columns) == ["mean", "std", "lse", "entropy", "kl"]
    assert st["kl"].tolist() == P["kl"] and st["mean"].tolist() == P["mean"]
    # Histogram at a stage given by index or name: counts, edges, the sparse bins' tokens, tracked tokens.
    counts, samples = histogram(doc, P)
    bins_of = tracked_bins(doc, P)
    for stage in (3, names[3], 3 - len(names)):
        h = e.histogram(1, 7, stage)
        assert h["count"].tolist() == counts[3].tolist() and h.index.name == "bin"
        assert len(h) == doc["histogram"]["bins"] and h.attrs["stage"] == names[3]
    assert h["z_lo"].iloc[0] == doc["histogram"]["z_min"] and h["z_hi"].iloc[-1] == pytest.approx(doc["histogram"]["z_max"])
    for b, ids in samples[3].items():
        assert h.loc[b, "samples"] == [doc["tokens"][t] for t in ids]
    for j, t in enumerate(P["tracked"]):
        assert doc["tokens"][t] in h.loc[int(bins_of[j][3]), "tracked"]
    # Defaults: prompt 0, the last exported position, the last stage; negative positions count from the end.
    last = doc["prompts"][0]["positions"][-1]
    assert e.ranks().values.tolist() == last["rank"]
    assert e.ranks(0, -1).attrs["pos"] == last["pos"]
    assert e.histogram().attrs["stage"] == names[-1]
    assert isinstance(r, pd.DataFrame)


def test_dataframe_errors_are_one_line(doc, monkeypatch):
    pytest.importorskip("pandas")
    e = Export(doc)
    with pytest.raises(InputError, match="was not exported"):
        e.ranks(0, 999)
    with pytest.raises(InputError, match="prompts 0..1"):
        e.stats(5)
    with pytest.raises(InputError, match="no stage named"):
        e.histogram(0, 0, "L99.ffn")
    with pytest.raises(InputError, match="mode"):
        e.scores(0, 0, mode="prob")
    with pytest.raises(TraceFileError):
        Export({"schema": "something/else"})
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(LenskitError, match="needs pandas"):
        e.ranks()


def test_load_accepts_run_folders_and_files(doc, tmp_path):
    run = write_run(tmp_path / "myrun", doc)
    for path in (run, run / "export.json", str(run)):
        e = Export.load(path)
        assert e.doc == doc and e.name == "myrun"
    with pytest.raises(TraceFileError, match="no export.json"):
        Export.load(tmp_path)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(TraceFileError, match="cannot read"):
        Export.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="run folder"):
        lenskit.show(42)


class _Outline(HTMLParser):
    """Top-level elements of an output and their attributes (srcdoc unescaped by the parser)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_iframe_is_sandboxed_and_holds_the_report_exactly(doc):
    out = viewer_iframe(doc, name="synth")
    parsed = _Outline()
    parsed.feed(out)
    assert [t for t, _ in parsed.tags] == ["iframe", "script"]  # no token text became an element of the notebook
    attrs = parsed.tags[0][1]
    assert attrs["sandbox"] == "allow-scripts"
    assert attrs["srcdoc"] == build_html(doc, run_name="synth")
    assert f"height:{DEFAULT_HEIGHT}px" in attrs["style"] and "width:100%" in attrs["style"]
    assert "srcdoc" not in out.split("srcdoc='", 1)[1].rsplit("'></iframe>", 1)[0]
    fixed = viewer_iframe(doc, height=700)
    assert "height:700px" in fixed and fixed.endswith("</iframe>")  # a fixed height needs no resizer
    with pytest.raises(InputError):
        viewer_iframe(doc, height=10)
    # Outside IPython, show() returns what a notebook displays.
    shown = lenskit.show(doc)
    assert isinstance(shown, InlineViewer) and shown._repr_html_().startswith("<iframe")
    assert Export(doc)._repr_html_().startswith("<iframe")
    assert all(h not in out for h in ("<img src=x", "</script><script>alert"))
    # a hand-made document JSON cannot hold (a lone surrogate, a non-string key): one InputError, not orjson's TypeError
    for bad in ({**doc, "tokens": ["\ud800"] * len(doc["tokens"])}, {**doc, 1: "x"}):
        with pytest.raises(InputError, match="cannot be written as JSON"):
            lenskit.show(bad)


# ---- a real notebook, executed by nbclient, its output loaded in Chromium


def _notebook(cells):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _execute(nb, cwd):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", record_timing=True,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _html_outputs(cell):
    return [o["data"]["text/html"] for o in cell.outputs if o.get("output_type") in ("display_data", "execute_result")
            and "text/html" in o.get("data", {})]


def _cell_seconds(cell):
    """Kernel time of a cell: execute_input -> execute_reply (what nbclient records)."""
    from datetime import datetime

    t = cell.metadata["execution"]
    a = datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
    b = datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
    return (b - a).total_seconds()


def _host_page(path: Path, outputs: list[str]) -> Path:
    """A page laid out like a notebook's output area, holding the outputs' HTML as a frontend inserts it."""
    body = "\n".join(f'<div class="output" style="width:{CELL_WIDTH_PX}px;margin:8px">{o}</div>' for o in outputs)
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>notebook</title></head><body>{body}</body></html>",
                    encoding="utf-8")
    return path


# `browser` (one Chromium per module; skips the test without Chromium or Playwright) is browser_fixtures' fixture,
# registered in conftest.py.


class _Page:
    """A page whose foreign requests, console errors, page errors and dialogs (any frame) fail the test."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": CELL_WIDTH_PX + 40, "height": 900})
        self.foreign, self.errors = [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append("dialog: " + d.message), d.dismiss()))

    def _route(self, route):
        scheme = urlsplit(route.request.url).scheme
        if scheme in ("file", "data", "blob", "about"):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def close(self):
        self.context.close()
        assert not self.foreign, f"requests outside the machine: {self.foreign}"
        assert not self.errors, f"console/page errors: {self.errors}"


def _viewer_frames(page, count, timeout_ms=20000):
    """The viewer frames of the page once each has drawn its figures."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        frames = [f for f in page.frames if f != page.main_frame]
        if len(frames) >= count:
            ready = [f.evaluate("document.documentElement.dataset.state || ''") for f in frames]
            if all(r == "ready" for r in ready):
                return frames
            assert "error" not in ready, ready
        assert time.monotonic() < deadline, "the viewer frames did not become ready"
        page.wait_for_timeout(20)


def _check_frame(frame, doc, prompt):
    pos = doc["prompts"][prompt]["positions"][-1]
    k = doc["lens"]["top_k"]
    S = len(doc["stages"]["name"])
    assert frame.locator("#fig-evolution g.curve.top").count() == k
    assert frame.locator("#fig-ranks g.curve").count() == len(pos["tracked"])
    assert frame.locator('#fig-evolution g.curve[data-token="0"] circle.pt').count() == S
    assert frame.locator("#fig-histogram rect.bin").count() > 0
    assert frame.get_attribute("#fig-evolution svg.chart", "data-pos") == str(pos["pos"])


def test_notebook_shows_the_viewer_inline(browser, doc, tmp_path):
    write_run(tmp_path / "synthrun", make_export(prompts=1, positions=8, layers=3, seed=1))
    nb = _notebook([
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom viewer_fixture import make_export\n"
        "import lenskit\nfrom lenskit.notebook import Export\ndoc = make_export(seed=0)",
        "lenskit.show(doc)",                                    # a document dict, displayed by show()
        "Export.load('synthrun')",                              # a run folder, shown through _repr_html_
        "lenskit.show('synthrun/export.json', height=900)",     # an export file, fixed height
        "e = Export(doc)\nr = e.ranks(1, 7)\nh = e.histogram(1, 7, 'L1.attn')\nst = e.stats(1, 7)\n"
        "print(r.shape, int(h['count'].sum()), st.columns.tolist())\nr.iloc[:3, :4]",
    ])
    _execute(nb, tmp_path)
    cells = nb.cells
    out1, out2, out3 = (_html_outputs(c) for c in cells[1:4])
    assert len(out1) == len(out2) == len(out3) == 1
    assert cells[1].outputs[0]["output_type"] == "display_data"  # show() displays and returns None
    assert cells[2].outputs[0]["output_type"] == "execute_result"
    printed = "".join(o.get("text", "") for o in cells[4].outputs if o["output_type"] == "stream")
    P = doc["prompts"][1]["positions"][7]
    assert printed.split("\n")[0] == (f"({len(P['tracked'])}, {len(doc['stages']['name'])}) {doc['vocab_size']} "
                                      "['mean', 'std', 'lse', 'entropy', 'kl']")
    table = _html_outputs(cells[4])[0]  # pandas' own HTML of the DataFrame
    assert "<table" in table and html.escape(doc["tokens"][P["tracked"][0]]) in table

    host = _host_page(tmp_path / "notebook.html", [out1[0], out2[0], out3[0]])
    pg = _Page(browser)
    try:
        pg.page.goto(host.as_uri())
        frames = _viewer_frames(pg.page, 3)
        frame_of = {f.frame_element().get_attribute("id"): f for f in frames}
        ids = [pg.page.locator("iframe").nth(i).get_attribute("id") for i in range(3)]
        _check_frame(frame_of[ids[0]], doc, 0)
        _check_frame(frame_of[ids[1]], make_export(prompts=1, positions=8, layers=3, seed=1), 0)
        # Hostile token texts stay text inside the frame, and nothing of them reaches the notebook page.
        strip = frame_of[ids[0]].locator("#strip-section .strip .tok")
        assert strip.first.text_content() == "<img␣src=x␣onerror=alert(1)>"
        assert frame_of[ids[0]].locator("img").count() == 0 and pg.page.locator("img").count() == 0
        # The frames are isolated: no access to the notebook page (opaque origin).
        assert frame_of[ids[0]].evaluate("(() => { try { return window.parent.document.title; } catch (e) { return 'blocked'; } })()") == "blocked"
        # Sized to the cell: full width; auto height follows the viewer; a given height is kept.
        pg.page.wait_for_function(
            "id => Math.abs(document.getElementById(id).getBoundingClientRect().height - 1400) > 1", arg=ids[0])
        for i, fid in enumerate(ids):
            box = pg.page.locator(f"#{fid}").bounding_box()
            assert abs(box["width"] - CELL_WIDTH_PX) < 1
            content = frame_of[fid].evaluate("Math.ceil(document.documentElement.getBoundingClientRect().height)")
            if i < 2:
                assert abs(box["height"] - content) <= 2, (box, content)
            else:
                assert box["height"] == 900
        ARTIFACTS.mkdir(exist_ok=True)
        pg.page.screenshot(path=str(ARTIFACTS / "notebook-inline.png"), full_page=False)
    finally:
        pg.close()


@pytest.mark.realmodel
def test_notebook_render_time_on_the_test_paragraph(browser, request, tmp_path):
    """Cell execution to figures drawn, for the default model's export of the test paragraph (printed)."""
    folder = os.environ.get(REAL_RUN_ENV)
    run = Path(folder) if folder else request.getfixturevalue("real_run")
    if not (run / "export.json").is_file():
        pytest.skip(f"{run} has no export.json")
    nb = _notebook(["import lenskit", f"lenskit.show({str(run)!r})"])
    _execute(nb, tmp_path)
    out = _html_outputs(nb.cells[1])
    assert len(out) == 1
    kernel_s = _cell_seconds(nb.cells[1])
    host = _host_page(tmp_path / "notebook.html", out)
    doc = json.loads((run / "export.json").read_text(encoding="utf-8"))
    pg = _Page(browser)
    try:
        times = []
        for _ in range(3):
            pg.page.goto("about:blank")
            pg.page.goto(host.as_uri())
            frame = _viewer_frames(pg.page, 1)[0]
            # Figures drawn, in the host page's clock: the frame's time origin + its data-ready-at.
            drawn = frame.evaluate("performance.timeOrigin + Number(document.documentElement.dataset.readyAt)")
            times.append((drawn - pg.page.evaluate("performance.timeOrigin")) / 1000)
        _check_frame(frame, doc, 0)
        ARTIFACTS.mkdir(exist_ok=True)
        pg.page.screenshot(path=str(ARTIFACTS / "notebook-real.png"))
    finally:
        pg.close()
    browser_s = sorted(times)[1]
    print(
        f"\n[notebook render, real export {(run / 'export.json').stat().st_size / 1e6:.1f} MB JSON -> output "
        f"{len(out[0]) / 1e6:.1f} MB HTML]\n"
        f"  cell execution (kernel, lenskit.show): {kernel_s:.2f} s\n"
        f"  output page load -> figures drawn in the frame: {', '.join(f'{t:.2f}' for t in times)} s\n"
        f"  total: {kernel_s + browser_s:.2f} s (goal <= 1.5 s)"
    )


def test_dataframe_arguments_are_checked(doc):
    """numpy integers work like ints; bools, strings and floats are refused with one InputError; the message names
    the position given; an incomplete document is a TraceFileError, not a KeyError later."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    e = Export(doc)
    assert e.ranks(np.int64(1), np.int64(-1)).attrs["pos"] == e.ranks(1, -1).attrs["pos"]
    assert e.histogram(0, 3, np.int32(2)).attrs["stage"] == doc["stages"]["name"][2]
    for call in (lambda: e.ranks(True), lambda: e.ranks(0, True), lambda: e.ranks(0, "3"), lambda: e.ranks(0, 3.0),
                 lambda: e.histogram(0, 3, True), lambda: e.histogram(0, 3, None)):
        with pytest.raises(InputError):
            call()
    with pytest.raises(InputError, match="position -999 of prompt 0 was not exported"):
        e.ranks(0, -999)
    with pytest.raises(TraceFileError, match="no 'model', 'lens'"):
        Export({"schema": "lenskit.export/4"})
    one = dict(doc, prompts=doc["prompts"][1:])  # as `lenskit export --prompt 1` writes it
    with pytest.raises(InputError, match="the trace's prompt"):
        Export(one).ranks(1)


def _last(d):
    return d["prompts"][0]["positions"][-1]


def _per_stage(field, value):
    return lambda d: _last(d).__setitem__(field, [value] * len(_last(d)[field]))


# Hand-edited documents: wrong types, indices out of the string table, NaN/inf, missing keys, undecodable strings.
HOSTILE_DOCS = {
    "model not an object": lambda d: d.__setitem__("model", "x"),
    "stage names not strings": lambda d: d["stages"].__setitem__("name", [1, 2]),
    "tokens not strings": lambda d: d.__setitem__("tokens", [1] * len(d["tokens"])),
    "token_ids short": lambda d: d.__setitem__("token_ids", []),
    "top_k a string": lambda d: d["lens"].__setitem__("top_k", "10"),
    "bins huge": lambda d: d["histogram"].__setitem__("bins", 10**9),
    "bins a float": lambda d: d["histogram"].__setitem__("bins", 1.5),
    "z_max NaN": lambda d: d["histogram"].__setitem__("z_max", float("nan")),
    "sample_order negative": lambda d: d["histogram"].__setitem__("sample_order", -1),
    "prompt not an object": lambda d: d.__setitem__("prompts", [None]),
    "prompt token out of the string table": lambda d: d["prompts"][0].__setitem__("tokens", [10**9]),
    "prompt token negative": lambda d: d["prompts"][0].__setitem__("tokens", [-1]),
    "positions a string": lambda d: d["prompts"][0].__setitem__("positions", "x"),
    "pos a string": lambda d: _last(d).__setitem__("pos", "3"),
    "tracked out of the string table": _per_stage("tracked", 10**9),
    "tracked negative": _per_stage("tracked", -5),
    "tracked bools": _per_stage("tracked", True),
    "tracked empty": lambda d: _last(d).__setitem__("tracked", []),
    "next huge": lambda d: _last(d).__setitem__("next", 10**30),
    "score NaN": lambda d: _last(d).__setitem__("score", [[float("nan")] * len(r) for r in _last(d)["score"]]),
    "score inf": lambda d: _last(d).__setitem__("score", [[float("inf")] * len(r) for r in _last(d)["score"]]),
    "score strings": lambda d: _last(d).__setitem__("score", [["1"] * len(r) for r in _last(d)["score"]]),
    "score rows short": lambda d: _last(d).__setitem__("score", [r[:2] for r in _last(d)["score"]]),
    "rank None": lambda d: _last(d).__setitem__("rank", None),
    "rank zero": lambda d: _last(d).__setitem__("rank", [[0] * len(r) for r in _last(d)["rank"]]),
    "rank past the vocabulary": lambda d: _last(d).__setitem__("rank", [[d["vocab_size"] + 1] * len(r) for r in _last(d)["rank"]]),
    "vocab_size a string": lambda d: d.__setitem__("vocab_size", "49152"),
    "mean strings": _per_stage("mean", "x"),
    "kl short": lambda d: _last(d).__setitem__("kl", [1.0]),
    "no lse": lambda d: _last(d).pop("lse"),
    "bin_edge out of range": lambda d: _last(d).__setitem__("bin_edge", [[999, 999, 1]]),
    "bin_edge pairs": lambda d: _last(d).__setitem__("bin_edge", [[1, 2]]),
    "hist lo negative": lambda d: _last(d)["hist"].__setitem__("lo", [-5] * len(_last(d)["hist"]["lo"])),
    "hist counts not Base64": lambda d: _last(d)["hist"].__setitem__("counts", ["!!"] * len(_last(d)["hist"]["counts"])),
    "hist counts ints": lambda d: _last(d)["hist"].__setitem__("counts", [1] * len(_last(d)["hist"]["counts"])),
    "hist samples truncated": lambda d: _last(d)["hist"].__setitem__("samples", ["//////"] * len(_last(d)["hist"]["samples"])),
    "hist samples short": lambda d: _last(d)["hist"].__setitem__("samples", []),
}


@pytest.mark.parametrize("name", list(HOSTILE_DOCS))
def test_hostile_documents_are_trace_file_errors(doc, name):
    """A hand-edited export.json that no reader can use: one TraceFileError naming the field (at Export() or at the
    first method that reads the broken position), never a KeyError/TypeError/IndexError/ValueError from deep inside."""
    import copy

    pytest.importorskip("pandas")
    bad = copy.deepcopy(doc)
    HOSTILE_DOCS[name](bad)
    try:
        e = Export(bad)
    except TraceFileError as err:
        assert "\n" not in str(err)
        return
    refused = 0
    for call in (e.ranks, e.scores, lambda: e.scores(mode="z"), e.histogram, e.stats, e.positions, e.prompt_tokens):
        try:
            call()
        except TraceFileError as err:
            assert "prompts[0]" in str(err) and "\n" not in str(err)
            refused += 1
    assert refused, "the broken position was read without complaint"


def test_lone_surrogates_and_huge_arguments_are_handled(doc):
    """A document built in Python may hold lone surrogates (JSON readers refuse them): DataFrames show U+FFFD.
    Ints past Python's 4300-digit str() limit are refused with an InputError, not str()'s ValueError."""
    import copy

    np = pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    bad = copy.deepcopy(doc)
    bad["tokens"] = ["\ud800" + t for t in bad["tokens"]]
    r = Export(bad).ranks()
    assert all(t.startswith("\ufffd") for t in r.index)
    e = Export(doc)
    for call in (lambda: e.ranks(10**5000), lambda: e.ranks(0, 10**5000), lambda: e.histogram(0, None, 10**5000),
                 lambda: e.html(height=10**5000), lambda: e.histogram(0, None, "x" * 10**6)):
        with pytest.raises(InputError) as err:
            call()
        assert len(str(err.value)) < 300
    assert "height:700px" in e.html(height=np.int64(700))
    for path in (None, 3, b"/tmp"):
        with pytest.raises(InputError, match="run folder or an export.json path"):
            Export.load(path)
    with pytest.raises(InputError, match="name"):
        Export(doc, name=3)
