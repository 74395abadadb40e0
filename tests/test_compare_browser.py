"""The compare page (viewer/compare.html) in Debian's headless Chromium: figures drawn against compare.json, URL state,
hostile token texts, and load/redraw times on the default model (printed, not asserted).

Every request must stay on the machine; any console error, page error or dialog fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from browser_fixtures import (  # noqa: E402
    HOSTILE_IMG,
    TIMING_MOVES,
    median_ms,
    open_view,
    require_chromium,
    shot,
)

require_chromium()

from conftest import llama_config, save_model  # noqa: E402
from test_compare import PROMPT, save_variant  # noqa: E402

from lenskit.cli import app  # noqa: E402
from lenskit.compare import COMPARE_FILE  # noqa: E402
from lenskit.server import Server, Site  # noqa: E402

pytestmark = pytest.mark.browser

# Fixtures from browser_fixtures (registered in conftest.py): browser, page (fails on foreign requests, console/page
# errors and dialogs).

REAL_ENV = "LENSKIT_COMPARE_REAL"  # an existing compare folder of the default model to time instead of France/Italy


def invoke(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp-browser")
    base = save_model(root / "model-base", llama_config())
    instruct = save_variant(root / "model-instruct", llama_config(), seed=1)
    for name, model in (("base", base), ("instruct", instruct)):
        invoke("trace", PROMPT, "-m", model, "-o", root / name, "-q")
    invoke("compare", root / "base", root / "instruct", "-o", root / "base-vs-instruct", "-q")
    return root / "base-vs-instruct"


def serve(folders):
    srv = Server(Site({}, compares={Path(f).name: Path(f) / COMPARE_FILE for f in folders}), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@contextlib.contextmanager
def compare_page(page, doc, folder, state="ready"):
    """``doc`` written as ``folder/compare.json``, served alone, and the compare page opened until it is ``state``."""
    folder.mkdir()
    (folder / COMPARE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    srv = serve([folder])
    try:
        page.goto(srv.url + "compare.html")
        page.wait_for_selector(f"html[data-state={state}]", state="attached", timeout=15000)
        yield
    finally:
        srv.shutdown()
        srv.server_close()


def url_state(page) -> dict:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(page.url).fragment))


def check_figures(page, doc, i, stage):
    """The drawn rank curves, stage marks, KL marks and decision lines of pair i equal the document's."""
    pair = doc["pairs"][i]
    curves = sum(1 for t in pair["tokens"] for k in (0, 1) if t["rank"][k])
    assert page.locator("#fig-cmp-ranks path.cmp-curve").count() == curves
    assert page.locator("#fig-cmp-ranks path.cmp-curve.side-b").count() == sum(1 for t in pair["tokens"] if t["rank"][1])
    marks = page.eval_on_selector_all(
        "#fig-cmp-ranks circle.at-stage",
        "els => els.map(e => [+e.dataset.token, e.dataset.side, +e.dataset.stage, +e.dataset.rank])")
    want = sorted([j, "ab"[k], stage, t["rank"][k][stage]] for j, t in enumerate(pair["tokens"]) for k in (0, 1) if t["rank"][k])
    assert sorted(marks) == want
    kl = page.eval_on_selector_all("#fig-cmp-kl circle.kl-mark", "els => els.map(e => +e.dataset.value)")
    assert kl == pytest.approx([pair["kl"][0][stage], pair["kl"][1][stage]])
    decide = page.eval_on_selector_all("#fig-cmp-ranks line.decide-line", "els => els.map(e => +e.dataset.stage)")
    assert decide == pair["decide"]
    assert page.get_attribute("#fig-cmp-ranks svg.chart", "data-pair") == str(i)
    assert page.locator("#strip-a .tok.selected").get_attribute("data-pos") == str(pair["a"])
    assert page.locator("#strip-b .tok.selected").get_attribute("data-pos") == str(pair["b"])


def test_compare_page_draws_the_document(page, tiny_compare):
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    srv = serve([tiny_compare])
    try:
        open_view(page, srv.url)  # a server with only comparisons opens on the compare page
        S = len(doc["runs"][0]["stages"]["name"])
        last = len(doc["pairs"]) - 1
        assert url_state(page) == {"cmp": tiny_compare.name, "pair": str(last), "stage": str(S - 1), "view": "overlay"}
        check_figures(page, doc, last, S - 1)
        shot(page, "compare-tiny.png")
        # keys: ← moves the pair, Shift+← the stage; the URL follows
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("Shift+ArrowLeft")
        check_figures(page, doc, last - 1, S - 2)
        assert url_state(page)["pair"] == str(last - 1) and url_state(page)["stage"] == str(S - 2)
        # a click on a token of B selects its pair
        page.locator("#strip-b .tok[data-pos='2']").click()
        check_figures(page, doc, 2, S - 2)
        # the legend hides a token's curves (dimmed, marks gone)
        page.locator("#fig-cmp-ranks .legend-item[data-token='0']").click()
        assert page.locator("#fig-cmp-ranks path.cmp-curve.dim").count() == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_comparison_without_pairs_says_so(page, tiny_compare, tmp_path):
    """A compare document with no aligned positions (not one `lenskit compare` writes) gets a clear message, not a
    TypeError's."""
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    doc["pairs"] = []
    with compare_page(page, doc, tmp_path / "no-pairs", "error"):
        assert "no aligned positions" in page.text_content("#status")


BROKEN_COMPARES = {  # hand-edited compare.json documents, and the words of their message
    "one-run": (lambda d: d.__setitem__("runs", d["runs"][:1]), "runs: 1 entries, expected 2"),
    "no-model": (lambda d: d["runs"][0].__setitem__("model", None), "runs[0].model: missing or not an object"),
    "rank-text": (lambda d: d["pairs"][-1]["tokens"][0].__setitem__("rank", "x"), "tokens[0].rank: not an array"),
    "logp-nan": (lambda d: d["pairs"][-1]["tokens"][0]["logp"][0].__setitem__(0, "NaN"), 'logp[0][0]: not a number or null: "NaN"'),
    "decide": (lambda d: d["pairs"][-1].__setitem__("decide", [99, 0]), "decide[0]: not a stage of side A"),
    "stage-map": (lambda d: d["kl"].__setitem__("stage_map", []), "kl.stage_map: 0 entries, expected 7"),
    "next": (lambda d: d["pairs"][-1].__setitem__("next", [{"x": 1}, None]), 'next[0]: not a token text or null: {"x":1}'),
    "no-tokens": (lambda d: d["pairs"][0].__setitem__("tokens", []), "pairs[0].tokens: empty"),
}


def test_broken_comparisons_say_why_and_others_stay_usable(page, tiny_compare, tmp_path):
    """Hand-edited compare.json documents (one run, no model, ranks as text, "NaN", stages out of range, a next token
    that is an object, a pair without tokens) are refused when they load with the field that is wrong: a link to one
    shows the next comparison with the message, and the picker still lists them all; alone, the page says why. A pair
    whose side has no top-1 among its tokens says so instead of throwing."""
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    folders = []
    for name, (edit, _) in {"good": (lambda d: None, ""), **BROKEN_COMPARES}.items():
        variant = json.loads(json.dumps(doc))
        edit(variant)
        (tmp_path / name).mkdir()
        (tmp_path / name / COMPARE_FILE).write_text(json.dumps(variant), encoding="utf-8")
        folders.append(tmp_path / name)
    srv = serve(folders)
    try:
        for name, (_, words) in BROKEN_COMPARES.items():
            page.goto("about:blank")
            open_view(page, srv.url + f"compare.html#cmp={name}")
            assert page.text_content("#status").startswith(f"{name}: ") and words in page.text_content("#status"), name
            assert page.text_content("#status").endswith(" — showing good") and url_state(page)["cmp"] == "good"
            assert page.input_value("#cmp-select") == "good"
            assert page.locator("#cmp-select option").count() == len(folders)
        check_figures(page, doc, len(doc["pairs"]) - 1, len(doc["runs"][0]["stages"]["name"]) - 1)
        shot(page, "compare-broken-refused.png")
    finally:
        srv.shutdown()
        srv.server_close()
    edit, words = BROKEN_COMPARES["logp-nan"]
    variant = json.loads(json.dumps(doc))
    edit(variant)
    with compare_page(page, variant, tmp_path / "alone", "error"):  # nothing else to show: the reason alone
        assert page.text_content("#status") == f"Cannot show the comparison: pairs[{len(doc['pairs']) - 1}].tokens[0].{words}"
    variant = json.loads(json.dumps(doc))
    for t in variant["pairs"][-1]["tokens"]:
        t["top"][1] = None if t["top"][1] == 1 else t["top"][1]
    with compare_page(page, variant, tmp_path / "no-top1"):
        assert "top-1 not listed" in page.text_content("#summary")


def test_the_page_names_the_lenses(page, tiny_compare, tmp_path):
    """The note under the title says which lens each side was compared through (`compare --lens`): nothing for the
    logit lens on both, one phrase for one lens on both, A's and B's otherwise; a document from before the field
    reads as the logit lens."""
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    assert [r["lens"]["kind"] for r in doc["runs"]] == ["logit", "logit"]
    cases = [(("tuned", "tuned"), "Both through the tuned lens."),
             (("tuned", "logit"), "A through the tuned lens, B through the logit lens."),
             ((None, None), None)]
    for kinds, words in cases:
        variant = json.loads(json.dumps(doc))
        for run, kind in zip(variant["runs"], kinds):
            if kind is None:
                del run["lens"]
            else:
                run["lens"]["kind"] = kind
        with compare_page(page, variant, tmp_path / f"lens-{kinds[0]}-{kinds[1]}"):
            note = page.text_content("#align-note")
            assert (words in note) if words else ("lens" not in note), note


HOSTILE_LENSES = [  # runs[k].lens as a hand-edited compare.json may hold it: (A's, B's, words in the note or None)
    ({"kind": HOSTILE_IMG}, {"kind": HOSTILE_IMG}, f"Both through the {HOSTILE_IMG} lens."),  # text, never markup
    ({"kind": {"toString": 1}}, {"kind": "tuned"}, "A through an unnamed lens, B through the tuned lens."),
    ({"kind": 7}, {"kind": ["tuned"]}, "Both through an unnamed lens."),
    ({"kind": "tuned\n\u202e" + "x" * 10000}, {"kind": ""}, "A through the tuned"),
    ("tuned", None, "A through an unnamed lens, B through the logit lens."),
    ([], {"kind": None}, "Both through an unnamed lens."),
    ({"toString": 1}, {"kind": "logit", "source": {"valueOf": 2}}, "A through an unnamed lens, B through the logit"),
]


def test_hostile_lens_entries(page, tiny_compare, tmp_path):
    """A hand-edited runs[k].lens (kind an object, a number, markup, 10k characters, a lens that is not an object):
    the page still draws, the note shows a string kind as text (shortened, one line) and any other as "unnamed"."""
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    for n, (la, lb, words) in enumerate(HOSTILE_LENSES):
        variant = json.loads(json.dumps(doc))
        for run, lens in zip(variant["runs"], (la, lb)):
            if lens is None:
                del run["lens"]
            else:
                run["lens"] = lens
        with compare_page(page, variant, tmp_path / f"hostile-lens-{n}"):
            note = page.text_content("#align-note")
            assert words in note, note
            assert len(note) < 1000 and "\n" not in note and "\u202e" not in note
            assert page.locator("#align-note img, #align-note *").count() == 0
            check_figures(page, variant, len(doc["pairs"]) - 1, len(doc["runs"][0]["stages"]["name"]) - 1)
    variant = json.loads(json.dumps(doc))  # the model id and run name beside it, as objects that cannot be text
    variant["runs"][0]["model"]["id"], variant["runs"][1]["name"] = {"toString": 1}, [{"valueOf": 1}]
    with compare_page(page, variant, tmp_path / "hostile-ids"):
        assert "A = ?, B = " in page.text_content("#align-note") and "B: ?:" in page.text_content("#model-info")
    variant = json.loads(json.dumps(doc))  # `trace --chat` prompts: labelled by the message, as text; a bad one ignored
    variant["relation"] = "prompts"
    variant["runs"][0]["chat"], variant["runs"][1]["chat"] = {"user": HOSTILE_IMG, "system": None}, {"user": 5}
    with compare_page(page, variant, tmp_path / "chat-labels"):
        info = page.text_content("#model-info")
        assert f"A: {variant['runs'][0]['name']}: “{HOSTILE_IMG}” (chat)" in info, info
        assert f"B: {variant['runs'][1]['name']}: “{PROMPT}” ·" in info, info  # the text: no valid message
        assert page.locator("#model-info *").count() == 0


def test_single_file_compare_report_from_file_url(page, tiny_compare, tmp_path):
    """`lenskit compare --html`: the page opens from file:// with no server and no network (the page fixture fails
    on any request leaving the file), draws the same figures, and keeps its state in the URL."""
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    root = tiny_compare.parent
    report = tmp_path / "base-vs-instruct.html"
    invoke("compare", root / "base", root / "instruct", "--html", report, "-q")
    S = len(doc["runs"][0]["stages"]["name"])
    open_view(page, report.as_uri() + "#pair=1&stage=2&view=side")
    check_figures(page, doc, 1, 2)
    assert page.locator("#fig-cmp-ranks g.panel").count() == 2
    page.locator("#strip-b .tok[data-pos='2']").click()
    check_figures(page, doc, 2, 2)
    open_view(page, report.as_uri())
    check_figures(page, doc, len(doc["pairs"]) - 1, S - 1)
    assert page.locator("#single-runs").is_hidden()  # no other pages beside a single file
    shot(page, "compare-report-file.png")


def test_url_state_restores_side_by_side(page, tiny_compare):
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    srv = serve([tiny_compare])
    try:
        open_view(page, srv.url + f"compare.html#cmp={tiny_compare.name}&pair=1&stage=3&view=side")
        assert page.locator("#fig-cmp-ranks g.panel").count() == 2
        assert page.is_checked("input[name=view][value=side]")
        check_figures(page, doc, 1, 3)
        page.check("input[name=view][value=overlay]")
        assert page.locator("#fig-cmp-ranks g.panel").count() == 1
        assert url_state(page)["view"] == "overlay"
    finally:
        srv.shutdown()
        srv.server_close()


def test_hostile_token_text_stays_text(page, tiny_compare, tmp_path):
    doc = json.loads((tiny_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    for p in doc["pairs"]:
        p["tokens"][0]["text"] = HOSTILE_IMG
        p["next"] = [HOSTILE_IMG, "\u202eevil"]
    doc["runs"][0]["tokens"] = [HOSTILE_IMG] * len(doc["runs"][0]["tokens"])
    long = "L" * 500  # cut to 32 characters in the strips, legend and summary (the whole text in their titles)
    doc["runs"][1]["tokens"][0] = long
    doc["pairs"][0]["tokens"][1]["text"] = long
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / COMPARE_FILE).write_text(json.dumps(doc), encoding="utf-8")
    srv = serve([folder])
    try:
        open_view(page, srv.url)
        assert page.locator("img").count() == 0
        shown = HOSTILE_IMG.replace(" ", "\u2423")  # spaces shown as ␣, the markup as text
        assert shown in page.text_content("#fig-cmp-ranks .legend")
        assert shown in page.text_content("#strip-a")
        assert "L" * 31 + "…" in page.text_content("#strip-b") and long not in page.text_content("body")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing widens the page
    finally:
        srv.shutdown()
        srv.server_close()


# ---- the default model: France vs Italy (the README's example); load and redraw times, printed


@pytest.fixture(scope="module")
def real_compare(request, tmp_path_factory):
    folder = os.environ.get(REAL_ENV)
    if folder:
        return Path(folder)
    request.getfixturevalue("default_model_available")
    root = tmp_path_factory.mktemp("cmp-real")
    invoke("trace", "The capital of France is", "-o", root / "france", "-q")
    invoke("trace", "The capital of Italy is", "-o", root / "italy", "-q")
    invoke("compare", root / "france", root / "italy", "-o", root / "france-vs-italy", "-q")
    return root / "france-vs-italy"


@pytest.mark.realmodel
def test_real_compare_load_and_redraw_times(page, real_compare):
    doc = json.loads((real_compare / COMPARE_FILE).read_text(encoding="utf-8"))
    srv = serve([real_compare])
    try:
        loads = []
        for _ in range(3):
            open_view(page, srv.url)
            loads.append(float(page.get_attribute("html", "data-ready-at")))
        S = len(doc["runs"][0]["stages"]["name"])
        check_figures(page, doc, len(doc["pairs"]) - 1, S - 1)
        shot(page, f"compare-real-{real_compare.name}.png")
        pair_ms = median_ms(page, "#pair-slider", TIMING_MOVES)
        stage_ms = median_ms(page, "#stage-slider", TIMING_MOVES)
        print(
            f"\n[compare timing, {real_compare.name}: {len(doc['pairs'])} pairs x {S} stages, "
            f"{(real_compare / COMPARE_FILE).stat().st_size / 1e6:.2f} MB JSON]\n"
            f"  served: navigation start -> figures drawn: {', '.join(f'{t:.0f}' for t in loads)} ms "
            f"(median {statistics.median(loads):.0f} ms; goal <= 1000)\n"
            f"  pair slider move:  redraw {pair_ms[0]:.1f} ms, to next frame {pair_ms[1]:.1f} ms (median of {TIMING_MOVES}; goal <= 50)\n"
            f"  stage slider move: redraw {stage_ms[0]:.1f} ms, to next frame {stage_ms[1]:.1f} ms"
        )
    finally:
        srv.shutdown()
        srv.server_close()
