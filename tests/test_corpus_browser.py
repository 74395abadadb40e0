"""The Corpus page of a `lenskit survey` run in headless Chromium: every figure drawn from survey.json, the example
list linking to the single-prompt viewer, no console errors, nothing fetched from outside the machine."""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from browser_fixtures import require_chromium, shot  # noqa: E402

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
