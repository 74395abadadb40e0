"""The viewer's lens switch and lens comparison (exports with several lenses, ``lenskit.export/3``): the switch shows
only with two or more lenses, redraws the grid and Figures 1–3 with the chosen lens's numbers, lives in the URL
(``lens=1``), and ``cmp=1`` overlays the other lens's ranks as dashed curves in Figure 2."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser_fixtures import (  # noqa: E402
    READY,
    check_figures,
    floats,
    open_view,
    require_chromium,
    state,
)

require_chromium()

from viewer_fixture import make_export  # noqa: E402

# Fixtures from browser_fixtures (registered in conftest.py): browser, page (fails on foreign requests, console/page
# errors and dialogs), served (a server over the module's docs). This module's own docs (a two-lens and a one-lens run)
# override the shared ones.

pytestmark = pytest.mark.browser
PER_LENS = ["score", "rank", "bin_edge", "mean", "std", "lse", "entropy", "kl", "hist", "stage_top"]


def lens_view(doc: dict, k: int) -> dict:
    """`doc` as if lens `k` were its only lens: each position's per-lens fields replaced by lens k's."""
    if k == 0:
        return doc
    out = copy.deepcopy(doc)
    for pr in out["prompts"]:
        for P in pr["positions"]:
            own = P["lenses"][k - 1]
            for key in PER_LENS:
                if key in own:
                    P[key] = own[key]
    return out


@pytest.fixture(scope="module")
def docs():
    """Overrides the shared ``docs``; the shared ``served`` then serves these two runs."""
    return {"two": make_export(prompts=1, positions=10, layers=3, seed=3, lenses=2),
            "one": make_export(prompts=1, positions=8, layers=3, seed=4)}


def test_fixture_is_a_valid_two_lens_export(docs):
    doc = docs["two"]
    assert [entry["kind"] for entry in doc["lens"]["lenses"]] == ["logit", "tuned"]
    P = doc["prompts"][0]["positions"][5]
    assert len(P["lenses"]) == 1 and P["lenses"][0]["rank"] != P["rank"]


def test_switch_shows_only_with_two_lenses(page, served):
    open_view(page, served.url + "#run=one")
    assert page.locator("#lens-picker").is_hidden()
    assert page.locator("#lens-compare").is_hidden()
    assert "lens" not in state(page) and "cmp" not in state(page)
    open_view(page, served.url + "#run=two")
    page.reload()
    page.wait_for_selector(READY, state="attached")
    assert page.locator("#lens-picker").is_visible()
    assert page.locator("#lens-compare").is_visible()
    texts = page.eval_on_selector_all("#lens-select option", "els => els.map(e => e.textContent)")
    assert texts == ["0: logit", "1: tuned (<b>synth-1)"]  # the label is text, not markup
    assert page.locator("#lens-picker b").count() == 0


def test_switching_lens_redraws_all_figures(page, served, docs):
    doc = docs["two"]
    open_view(page, served.url + "#run=two&pos=6&stage=4")
    check_figures(page, doc, 0, 6, 4)
    grid_before = page.evaluate("document.querySelector('#fig-grid canvas').dataset.lens")
    assert grid_before == "0"
    page.select_option("#lens-select", "1")
    assert state(page)["lens"] == "1"
    check_figures(page, lens_view(doc, 1), 0, 6, 4)
    assert page.evaluate("document.querySelector('#fig-grid canvas').dataset.lens") == "1"
    assert page.locator("#fig-grid .grid-lens-note").is_hidden()
    # Other modes and positions stay on the chosen lens.
    page.check("input[name=mode][value=logprob]")
    check_figures(page, lens_view(doc, 1), 0, 6, 4, mode="logprob")
    page.evaluate("document.activeElement.blur()")  # arrows on a focused radio would change the mode
    page.keyboard.press("ArrowLeft")
    check_figures(page, lens_view(doc, 1), 0, 5, 4, mode="logprob")
    page.select_option("#lens-select", "0")
    check_figures(page, doc, 0, 5, 4, mode="logprob")


def test_lens_and_compare_round_trip_through_the_url(page, served, docs):
    doc = docs["two"]
    open_view(page, served.url + "#run=two&pos=3&stage=2&lens=1&cmp=1")
    assert page.input_value("#lens-select") == "1"
    assert page.is_checked("#lens-cmp")
    check_figures(page, lens_view(doc, 1), 0, 3, 2)
    s = state(page)
    assert s["lens"] == "1" and s["cmp"] == "1"
    page.uncheck("#lens-cmp")
    assert "cmp" not in state(page)
    assert page.locator("#fig-ranks path.cmp-curve").count() == 0
    # Out-of-range lenses fall back to the first.
    open_view(page, served.url + "#run=two&pos=3&lens=7")
    assert page.input_value("#lens-select") == "0"
    assert state(page)["lens"] == "0"


def test_compare_overlays_dashed_rank_curves(page, served, docs):
    doc = docs["two"]
    open_view(page, served.url + "#run=two&pos=6&stage=4")
    assert page.locator("#fig-ranks path.cmp-curve").count() == 0
    page.check("#lens-cmp")
    assert state(page)["cmp"] == "1"
    P = next(p for p in doc["prompts"][0]["positions"] if p["pos"] == 6)
    n = len(P["tracked"])
    paths = page.locator("#fig-ranks path.cmp-curve")
    assert paths.count() == n
    for j in range(n):
        sel = f'#fig-ranks path.cmp-curve[data-token="{j}"]'
        assert page.get_attribute(sel, "data-lens") == "1"
        assert page.get_attribute(sel, "stroke-dasharray")
        assert [int(r) for r in page.get_attribute(sel, "data-ranks").split(",")] == P["lenses"][0]["rank"][j]
        assert floats(page, f'#fig-ranks g.curve[data-token="{j}"] circle.pt') == P["rank"][j]
    # Shown the second lens, the comparison is the first.
    page.select_option("#lens-select", "1")
    sel = '#fig-ranks path.cmp-curve[data-token="0"]'
    assert page.get_attribute(sel, "data-lens") == "0"
    assert [int(r) for r in page.get_attribute(sel, "data-ranks").split(",")] == P["rank"][0]
    assert floats(page, '#fig-ranks g.curve[data-token="0"] circle.pt') == P["lenses"][0]["rank"][0]
