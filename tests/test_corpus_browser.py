"""The Corpus page of a `lenskit survey` run in headless Chromium: every figure drawn from survey.json, the example
list linking to the single-prompt viewer, no console errors, nothing fetched from outside the machine."""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from browser_fixtures import HOSTILE_IMG, require_chromium, shot  # noqa: E402

require_chromium()

from conftest import WORDS  # noqa: E402

from lenskit.cli import app  # noqa: E402
from lenskit.server import Server, Site, find_runs  # noqa: E402

pytestmark = pytest.mark.browser

# Fixtures from browser_fixtures (registered in conftest.py): page (fails on foreign requests, console/page errors
# and dialogs).


@pytest.fixture(scope="module")
def survey_run(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-browser")
    rnd = random.Random(1)
    with open(root / "docs.jsonl", "w") as f:
        for _ in range(12):
            f.write(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 60)))}) + "\n")
    out = root / "survey"
    res = CliRunner().invoke(app, ["survey", str(root / "docs.jsonl"), "-m", tiny_dir, "-o", str(out), "-q",
                                   "--max-tokens", "24", "-b", "3", "--block-docs", "4", "--examples", "3"])
    assert res.exit_code == 0, res.output
    return out


def test_corpus_page_draws_the_survey(survey_run, page):
    doc = json.loads((survey_run / "survey.json").read_text())
    srv = Server(Site(find_runs([survey_run])), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page.goto(srv.url + "corpus.html")
        page.wait_for_selector("#curves svg path.curve", timeout=15000)
        S = len(doc["stages"]["name"])
        assert page.locator("#curves .corpus-card").count() >= 5  # CE, agreement, KL, entropy, next-token rank
        marks = page.locator("#curves .corpus-card").first.locator("path.mark").count()
        assert marks == S  # one mark per stage, attention and FFN stages drawn apart
        assert page.locator("#curves .corpus-card").first.locator("path.mark-attn").count() == sum(
            k == "attn" for k in doc["stages"]["kind"])
        assert page.locator("#decision svg rect").count() > 0 and page.locator("#blocks svg rect").count() > 0
        n_examples = sum(len(v) for v in doc["examples"].values())
        links = page.locator("#examples a")
        assert links.count() >= n_examples > 0
        assert "index.html#" in links.first.get_attribute("href")
        shot(page, "corpus-tiny.png")
    finally:
        srv.shutdown()
        srv.server_close()


def test_broken_surveys_say_why_and_others_stay_usable(survey_run, page, tmp_path):
    """Hand-edited survey.json documents ("NaN" in a curve, a stage list that is not one, markup in the model id) get
    one clear message naming the field and nothing half drawn; the picker still switches to a good survey and back,
    with no uncaught error; texts stay text."""
    doc = json.loads((survey_run / "survey.json").read_text())
    variants = {"nan": json.loads(json.dumps(doc)), "nostages": json.loads(json.dumps(doc))}
    variants["nan"]["per_stage"]["ce_bits"]["mean"][1] = "NaN"
    variants["nostages"]["stages"] = "embed"
    dirs = [survey_run]
    for name, variant in variants.items():
        shutil.copytree(survey_run, tmp_path / name)
        (tmp_path / name / "survey.json").write_text(json.dumps(variant))
        dirs.append(tmp_path / name)
    hostile = json.loads(json.dumps(doc))
    hostile["model"]["id"] = HOSTILE_IMG
    shutil.copytree(survey_run, tmp_path / "hostile")
    (tmp_path / "hostile" / "survey.json").write_text(json.dumps(hostile))
    dirs.append(tmp_path / "hostile")
    srv = Server(Site(find_runs(dirs)), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page.goto(srv.url + "corpus.html#run=nan")
        page.wait_for_selector("#status.error:not([hidden])", timeout=15000)
        assert page.text_content("#status") == 'Cannot show the survey nan: per_stage.ce_bits.mean[1]: not a number or null: "NaN"'
        assert page.locator("#curves svg, #decision svg, #blocks svg, #examples .example").count() == 0
        page.select_option("#survey-select", survey_run.name)
        page.wait_for_selector("#curves svg path.curve", timeout=15000)
        assert page.is_hidden("#status")
        page.select_option("#survey-select", "nostages")
        page.wait_for_selector("#status.error:not([hidden])", timeout=15000)
        assert page.text_content("#status") == "Cannot show the survey nostages: stages: missing or not an object"
        assert page.locator("#curves svg, #decision svg, #blocks svg, #examples .example").count() == 0
        page.select_option("#survey-select", "hostile")
        page.wait_for_selector("#curves svg path.curve", timeout=15000)
        assert page.text_content("#model-info").startswith(HOSTILE_IMG) and page.locator("img").count() == 0
        # drawn four times: one frame per figure, not one per survey shown
        assert page.locator("#decision > .corpus-card").count() == 1 and page.locator("#blocks > .corpus-card").count() == 1
        assert page.locator("#blocks .legend").count() == 1
        shot(page, "corpus-hostile.png")
    finally:
        srv.shutdown()
        srv.server_close()
