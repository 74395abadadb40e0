"""`lenskit compare` on tiny random models: base vs an "instruct" variant (same tokenizer, other weights), one model on
two prompts, a model with another tokenizer (aligned by characters), export-only data, refusals, and serving."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import assert_clean_error, gpt2_config, llama_config, make_tokenizer, save_model

from lenskit.cli import app
from lenskit.compare import COMPARE_FILE, MISSING_EXPORT, MISSING_VOCAB, decision_stage, json_schema

PROMPT = "the cat sat on the mat and ran to Paris"
OTHER = "the dog sat on the mat and ran to France"  # same token count as PROMPT
SHORT = "Paris is the capital of France ."


def run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


def save_variant(path, config, seed, tokenizer=None):
    """A tiny random model built under another torch seed (the "instruct" variant of the base model)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(path)
    (tokenizer or make_tokenizer(config.vocab_size)).save_pretrained(path)
    return str(path)


def char_tokenizer(vocab_size):
    """A character-level fast tokenizer with BOS (tokenizes text differently from the word-level one)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(set(PROMPT + OTHER + SHORT)):
        vocab.setdefault(ch, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"x{i}", len(vocab))
        i += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Traced runs: base and instruct on PROMPT; base on OTHER; base with PROMPT and SHORT; instruct on SHORT;
    a char-tokenized GPT-2 on PROMPT."""
    root = tmp_path_factory.mktemp("compare")
    base = save_model(root / "model-base", llama_config())
    instruct = save_variant(root / "model-instruct", llama_config(), seed=1)
    chars = save_variant(root / "model-chars", gpt2_config(), seed=2, tokenizer=char_tokenizer(96))
    out = {}
    for name, model, prompts in [("base", base, [PROMPT]), ("instruct", instruct, [PROMPT]), ("other", base, [OTHER]),
                                 ("two", base, [PROMPT, SHORT]), ("instruct_short", instruct, [SHORT]),
                                 ("chars", chars, [PROMPT])]:
        res = run("trace", *prompts, "-m", model, "-o", root / name, "-q")
        assert res.exit_code == 0, res.output
        out[name] = root / name
    out["root"] = root
    return out


def compare(runs, a, b, name, *extra):
    out = runs["root"] / name
    res = run("compare", runs[a], runs[b], "-o", out, "-q", *extra)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / COMPARE_FILE).read_text(encoding="utf-8"))
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json_schema())
    return doc


def export_of(run_dir):
    return json.loads((run_dir / "export.json").read_text(encoding="utf-8"))


def check_ranks_match_export(doc, side, export, prompt=0):
    """Every rank curve compare computed equals the single export's for the tokens that export tracked."""
    entry = next(e for e in export["prompts"] if e["index"] == prompt)
    records = {r["pos"]: r for r in entry["positions"]}
    checked = 0
    for pair in doc["pairs"]:
        rec = records[pair["ab"[side]]]
        ids = [export["token_ids"][r] for r in rec["tracked"]]
        for t in pair["tokens"]:
            if t["id"][side] in ids:
                assert t["rank"][side] == rec["rank"][ids.index(t["id"][side])]
                checked += 1
    assert checked


def test_base_vs_instruct_same_prompt(runs):
    doc = compare(runs, "base", "instruct", "base-vs-instruct", "--top-k", "3")
    assert (doc["relation"], doc["align"], doc["source"], doc["vocabulary"]) == ("models", "position", "traces", "shared")
    assert doc["kl"]["available"] and doc["kl"]["stage_map"] == list(range(7))
    n = len(doc["runs"][0]["token_ids"])
    assert [(p["a"], p["b"]) for p in doc["pairs"]] == [(i, i) for i in range(n)]
    export_a, export_b = export_of(runs["base"]), export_of(runs["instruct"])
    check_ranks_match_export(doc, 0, export_a)
    check_ranks_match_export(doc, 1, export_b)
    for pair in doc["pairs"]:
        toks = pair["tokens"]
        assert [t["top"][0] for t in toks[:3]] == [1, 2, 3]  # A's final top-3 first, then B's not already there
        assert sorted(t["top"][1] for t in toks if t["top"][1]) == [1, 2, 3]
        for t in toks:  # one vocabulary: every token of the union has a curve in both models
            assert t["rank"][0] and t["rank"][1] and t["missing"] == [None, None]
            assert len(t["rank"][0]) == 7 and min(min(t["rank"][0]), min(t["rank"][1])) >= 1
        for k in (0, 1):
            top1 = next(t for t in toks if t["top"][k] == 1)
            assert top1["rank"][k][-1] == 1
            assert pair["decide"][k] == decision_stage(top1["rank"][k])
            assert all(r == 1 for r in top1["rank"][k][pair["decide"][k]:])
        kl_ab, kl_ba = pair["kl"]
        assert len(kl_ab) == 7 and all(v >= 0 for v in kl_ab + kl_ba)
        assert max(kl_ab) > 0  # different weights, different distributions
    # the last stage's KL is the KL between the two models' own next-token distributions
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([doc["runs"][0]["token_ids"]])
    with torch.inference_mode():
        la, lb = (torch.log_softmax(AutoModelForCausalLM.from_pretrained(runs["root"] / f"model-{m}")(ids).logits[0].float(), -1)
                  for m in ("base", "instruct"))
    want = (la.exp() * (la - lb)).sum(-1)  # [T]
    got = torch.tensor([p["kl"][0][-1] for p in doc["pairs"]])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)


def test_one_model_two_prompts_position_by_position(runs):
    doc = compare(runs, "base", "other", "cat-vs-dog")
    assert (doc["relation"], doc["align"]) == ("prompts", "position")
    assert doc["runs"][0]["text"] == PROMPT and doc["runs"][1]["text"] == OTHER
    first = doc["pairs"][0]  # after "<s>" both see the same text: identical distributions at every stage
    assert max(first["kl"][0] + first["kl"][1]) < 1e-5
    assert any(max(p["kl"][0]) > 1e-3 for p in doc["pairs"][2:])  # after "dog" vs "cat" they differ
    last = doc["pairs"][-1]
    assert last["next"] == [None, None]  # the last position predicts the token after the prompt
    cat_pair = doc["pairs"][1]  # position 1 ("the") predicts "cat" in A and "dog" in B: both are followed
    assert {t["text"] for t in cat_pair["tokens"] if any(t["next"])} == {"cat", "dog"}
    check_ranks_match_export(doc, 0, export_of(runs["base"]))


def test_two_prompts_of_different_lengths(runs, tmp_path):
    out = tmp_path / "out"
    res = run("compare", runs["two"], runs["two"], "--prompt-b", "1", "-o", out, "-q")
    assert_clean_error(res, "--align end", out)
    assert not out.exists()
    doc = compare(runs, "two", "two", "end-aligned", "--prompt-b", "1", "--align", "end")
    ta, tb = len(doc["runs"][0]["token_ids"]), len(doc["runs"][1]["token_ids"])
    assert doc["align"] == "end" and len(doc["pairs"]) == min(ta, tb)
    assert (doc["pairs"][-1]["a"], doc["pairs"][-1]["b"]) == (ta - 1, tb - 1)
    doc = compare(runs, "two", "two", "start-aligned", "--prompt-b", "1", "--align", "start", "--positions", "0-2")
    assert [(p["a"], p["b"]) for p in doc["pairs"]] == [(0, 0), (1, 1), (2, 2)]


def test_pairs_that_cannot_be_aligned(runs, tmp_path):
    out = tmp_path / "out"
    # two models on two texts: refused, one line, exit 1, nothing written
    res = run("compare", runs["base"], runs["instruct_short"], "-o", out, "-q")
    assert_clean_error(res, "cannot align: RUN_A and RUN_B differ in both model", out)
    assert not out.exists()
    # two tokenizations of one text cannot pair by position
    res = run("compare", runs["base"], runs["chars"], "-o", out, "-q", "--align", "position")
    assert_clean_error(res, "--align chars", out)
    # characters need one text
    res = run("compare", runs["base"], runs["other"], "-o", out, "-q", "--align", "chars")
    assert_clean_error(res, "the two prompt texts differ", out)
    res = run("compare", runs["base"], runs["base"], "--prompt-b", "3", "-o", out, "-q")
    assert_clean_error(res, "--prompt-b 3 is out of range", out)
    assert not out.exists()
    # an existing folder that is not a compare output is never replaced
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    res = run("compare", runs["base"], runs["instruct"], "-o", tmp_path / "keep", "-q", "--force")
    assert_clean_error(res, "not a compare folder")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_replacing_an_earlier_comparison_needs_force(runs):
    compare(runs, "base", "instruct", "again")
    res = run("compare", runs["base"], runs["instruct"], "-o", runs["root"] / "again", "-q")
    assert_clean_error(res, "--force")
    compare(runs, "base", "instruct", "again", "--force")


def test_different_tokenizers_align_by_characters(runs):
    doc = compare(runs, "base", "chars", "words-vs-chars")
    assert (doc["relation"], doc["align"], doc["vocabulary"]) == ("models", "chars", "separate")
    assert not doc["kl"]["available"] and "vocabular" in doc["kl"]["why"]
    assert all(p["kl"] is None for p in doc["pairs"])
    words = PROMPT.split()
    ends = [0] + [len(" ".join(words[: i + 1])) for i in range(len(words))]
    assert [p["end"] for p in doc["pairs"]] == ends  # BOS, then every word end
    assert [p["a"] for p in doc["pairs"]] == list(range(len(words) + 1))
    assert [p["b"] for p in doc["pairs"]] == [e for e in ends]  # B reads one character per position after its BOS
    texts_b = doc["runs"][1]["tokens"]
    for p in doc["pairs"][1:]:
        assert "".join(texts_b[1: p["b"] + 1]) == PROMPT[: p["end"]]
        for t in p["tokens"]:
            for k in (0, 1):
                assert (t["rank"][k] is None) == (t["id"][k] is None)
                if t["id"][k] is None:
                    assert t["missing"][k] == MISSING_VOCAB
    single = [t for p in doc["pairs"] for t in p["tokens"] if None not in t["id"]]
    assert single and all(len(t["text"]) == 1 or t["text"] in ("<s>", "</s>", "<unk>") for t in single)  # only
    # one-character words (and the special tokens) are tokens of both vocabularies


def test_exports_only_marks_the_gaps(runs):
    doc = compare(runs, "base", "instruct", "from-exports", "--exports-only")
    assert doc["source"] == "exports" and not doc["kl"]["available"] and "export" in doc["kl"]["why"]
    full = compare(runs, "base", "instruct", "from-traces")
    gaps = 0
    for p, q in zip(doc["pairs"], full["pairs"]):
        assert p["decide"] == q["decide"] and p["kl"] is None
        by_text = {t["text"]: t for t in q["tokens"]}
        for t in p["tokens"]:
            for k in (0, 1):
                if t["rank"][k] is None:
                    assert t["missing"][k] == MISSING_EXPORT
                    gaps += 1
                else:
                    assert t["rank"][k] == by_text[t["text"]]["rank"][k]
    assert gaps  # each export tracks its own top-10 only: some of the other model's tokens have no curve


def test_serve_shows_a_comparison(runs):
    doc = compare(runs, "base", "instruct", "served")
    res = run("serve", runs["root"] / "served", "--get", "/runs.json")
    assert res.exit_code == 0, res.output
    listing = json.loads(res.stdout)
    assert listing["runs"] == [] and listing["compares"] == [{"name": "served", "url": "compares/served/compare.json"}]
    res = run("serve", runs["root"] / "served", "--get", "/compares/served/compare.json")
    assert json.loads(res.stdout) == doc
    assert "compare.js" in run("serve", runs["root"] / "served", "--get", "/").stdout  # opens on the compare page
    res = run("serve", runs["base"], runs["instruct"], "--compare", "--get", "/runs.json")
    assert res.exit_code == 0, res.output
    listing = json.loads(res.stdout)
    assert [r["name"] for r in listing["runs"]] == ["base", "instruct"]
    assert [c["name"] for c in listing["compares"]] == ["base-vs-instruct"]
    res = run("serve", runs["base"], "--compare", "--get", "/runs.json")
    assert_clean_error(res, "--compare needs exactly two run folders")


def test_serve_without_arguments_finds_runs_and_comparisons(runs, monkeypatch):
    """`lenskit serve` in a folder: the runs (export.json) and the comparisons (compare.json) below it."""
    compare(runs, "base", "instruct", "found")
    monkeypatch.chdir(runs["root"])
    res = run("serve", "--get", "/runs.json")
    assert res.exit_code == 0, res.output
    listing = json.loads(res.stdout)
    assert {"base", "instruct"} <= {r["name"] for r in listing["runs"]}
    assert "found" in [c["name"] for c in listing["compares"]]


def test_compare_html_report_alone_and_beside_the_folder(runs, tmp_path):
    """--html writes one self-contained file (the compare page's modules bundled, the document inlined, no network);
    alone it writes nothing else; with -o both hold the same document; an unrelated file is never overwritten."""
    import html as html_mod
    import re

    report = tmp_path / "cmp.html"
    res = run("compare", runs["base"], runs["instruct"], "--html", report, "-q")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.html"]
    text = report.read_text(encoding="utf-8")
    assert "// ---- js/compare.js" in text and "// ---- js/main.js" not in text
    assert 'src="js/' not in text and "http://" not in text.split("<script>", 1)[0]
    embedded = re.search(r'<script type="application/json" id="lenskit-data"[^>]*>(.*?)</script>', text, re.S).group(1)
    doc = json.loads(html_mod.unescape(embedded))
    folder_doc = compare(runs, "base", "instruct", "with-html", "--html", tmp_path / "both.html", "--force")
    assert doc["pairs"] == folder_doc["pairs"] and doc["schema"] == folder_doc["schema"]
    mine = tmp_path / "notes.html"
    mine.write_text("<p>mine</p>")
    res = run("compare", runs["base"], runs["instruct"], "--html", mine, "-q")
    assert_clean_error(res, "not a lenskit report")
    assert mine.read_text() == "<p>mine</p>"
    assert_clean_error(run("compare", runs["base"], runs["instruct"], "-q"), "-o OUT")


@pytest.mark.parametrize("export", ["other", "minimal"])
def test_exports_only_refuses_an_export_that_is_not_of_the_trace(runs, tmp_path, export):
    """--exports-only aligns by the trace and reads values from export.json: they must be of the same run."""
    import shutil

    side = tmp_path / "instruct"
    shutil.copytree(runs["instruct"], side)
    if export == "other":  # another model's export (same text) beside this trace
        shutil.copy(runs["base"] / "export.json", side / "export.json")
    else:
        (side / "export.json").write_text('{"schema":"lenskit.export/4"}')
    res = run("compare", runs["base"], side, "-o", tmp_path / "cmp", "--exports-only", "-q")
    assert_clean_error(res, "another model" if export == "other" else "export schema", tmp_path / "cmp")


def test_html_that_is_the_output_folder_is_refused_first(runs, tmp_path):
    """`--html` naming the `-o` folder (also spelled differently) is one line naming --html, before anything is read."""
    out = tmp_path / "cmp"
    assert_clean_error(run("compare", runs["base"], runs["instruct"], "-o", out, "--html", out, "-q"), "--html")
    assert not out.exists()
    res = run("compare", runs["base"], runs["instruct"], "-o", out, "--html", f"{tmp_path}/./cmp")
    assert_clean_error(res, "Invalid value for '--html': is the -o folder", out)


def test_a_report_that_cannot_be_written_leaves_the_output_folder_as_it_was(runs, tmp_path, monkeypatch):
    """`--html` is written before the `-o` folder moves in: when the report fails, the earlier comparison stays."""
    import lenskit.report
    from lenskit.errors import OutputError

    out = tmp_path / "cmp"
    assert run("compare", runs["base"], runs["instruct"], "-o", out, "-q").exit_code == 0
    before = (out / COMPARE_FILE).read_bytes()

    def full_disk(*a, **k):
        raise OutputError("cannot write the report: No space left on device")

    monkeypatch.setattr(lenskit.report, "write_html", full_disk)
    res = run("compare", runs["instruct"], runs["base"], "-o", out, "--force", "--html", tmp_path / "r.html", "-q")
    assert_clean_error(res, "No space left on device")
    assert (out / COMPARE_FILE).read_bytes() == before and not (tmp_path / "r.html").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_a_comparison_too_big_to_hold_is_refused_before_it_is_computed(runs, tmp_path, monkeypatch):
    """`--top-k` near the vocabulary (49,152 over 16 pairs of the default model: 384 million numbers, minutes to
    hours) is one line naming the size before any statistic is computed; nothing is written."""
    import lenskit.compare
    import lenskit.export

    def boom(*a, **k):
        raise AssertionError("computed before the document size was checked")

    monkeypatch.setattr(lenskit.export, "MAX_DOCUMENT_VALUES", 2_000)
    monkeypatch.setattr(lenskit.compare, "compare_from_traces", boom)
    res = run("compare", runs["base"], runs["instruct"], "-o", tmp_path / "cmp", "--top-k", "50")
    assert_clean_error(res, "this comparison would hold", tmp_path / "cmp")
    assert "lower --top-k, or compare fewer --positions" in res.stderr


def test_output_inside_a_compared_run_is_refused(runs):
    out = runs["base"] / "cmp"
    assert_clean_error(run("compare", runs["base"], runs["instruct"], "-o", out, "-q"), "inside one")
    assert not out.exists()
    # -o that is a compared run itself: said so (not "not a lenskit run folder"), with or without --force
    for extra in ((), ("--force",)):
        res = run("compare", runs["base"], runs["instruct"], "-o", runs["instruct"], "-q", *extra)
        assert_clean_error(res, "one of the compared runs")
    assert sorted(p.name for p in runs["instruct"].iterdir()) == ["export.json", "trace.safetensors"]


def test_two_models_on_texts_that_differ_invisibly_say_how(runs, tmp_path):
    """Two models, texts that differ only in whitespace, line endings, NFC vs NFD, a BOM or a zero-width joiner: still
    refused (each model read another text), but the one line says what differs."""
    from lenskit.compare import text_difference

    assert text_difference(PROMPT, PROMPT.replace(" ", "  ", 1)).startswith(" (the texts differ only in whitespace")
    assert "CRLF" in text_difference("a\r\nb", "a\nb")
    assert "NFC" in text_difference("caf\u00e9", "cafe\u0301")
    assert "byte-order" in text_difference("\ufeffthe cat", "the cat")
    assert "zero-width" in text_difference("a\u200db", "ab")
    assert text_difference("the cat", "the dog") == ""
    res = run("trace", PROMPT.replace(" mat", "  mat"), "-m", runs["root"] / "model-instruct", "-o", tmp_path / "ws",
              "-q")
    assert res.exit_code == 0, res.output
    res = run("compare", runs["base"], tmp_path / "ws", "-o", tmp_path / "cmp", "-q")
    assert_clean_error(res, "differ only in whitespace", tmp_path / "cmp")


def test_top_k_beyond_the_vocabulary_is_refused_before_the_weights_load(runs, tmp_path, monkeypatch):
    import lenskit.compare as compare_mod

    def boom(*a, **k):
        raise AssertionError("weights loaded before --top-k was checked")

    monkeypatch.setattr(compare_mod, "load_lenses", boom)
    for k in ("97", "9" * 40):
        res = run("compare", runs["base"], runs["instruct"], "-o", tmp_path / "cmp", "-q", "--top-k", k)
        assert_clean_error(res, "larger than the vocabulary", tmp_path / "cmp")


def hand_edit(doc, what):
    """One hand edit of an export document (see test_exports_only_refuses_hand_edited_exports)."""
    entry = doc["prompts"][0]
    row = entry["positions"][0]
    if what == "text":
        entry["text"] = 5
    elif what == "negative-token":
        entry["tokens"][1] = -1  # Python would read the table's last entry
    elif what == "id-as-text":
        doc["token_ids"][0] = str(doc["token_ids"][0])
    elif what == "id-too-big":
        doc["token_ids"][0] = 10**30
    elif what == "no-stages":
        doc["stages"] = {"name": [], "kind": [], "layer": []}
    elif what == "twice":
        entry["positions"][1]["pos"] = row["pos"]
    elif what == "tracked-negative":
        row["tracked"][0] = -1
    elif what == "short-rank":
        row["rank"][0] = row["rank"][0][:2]
    elif what == "rank-text":
        row["rank"][0][0] = "1"
    elif what == "rank-zero":
        row["rank"][0][0] = 0
    elif what == "rank-past-vocab":
        row["rank"][1][0] = doc["model"]["vocab_size"] + 1
    elif what == "index-bool":
        entry["index"] = False
    elif what == "future-schema":
        doc["schema"] = "lenskit.export/99"
    elif what == "no-prompts":
        doc["prompts"] = []
    return doc


@pytest.mark.parametrize("what,words", [
    ("text", "text is not text"), ("negative-token", "indices into the token table"),
    ("id-as-text", "token_ids holds"), ("id-too-big", "token_ids holds"), ("no-stages", "stages.name"),
    ("twice", "listed twice"), ("tracked-negative", "tracked is not"), ("short-rank", "one number per stage"),
    ("rank-text", "one number per stage"), ("rank-zero", "ranks from 1 to"), ("rank-past-vocab", "ranks from 1 to"),
    ("index-bool", "whole-number index"), ("future-schema", "export/99"),
    ("no-prompts", "no prompts"),
])
@pytest.mark.parametrize("beside_trace", [False, True])
def test_exports_only_refuses_hand_edited_exports(runs, tmp_path, what, words, beside_trace):
    """A hand-edited export.json (wrong types, negative indices, positions twice, curves of the wrong length, another
    schema) is refused in one line -- alone in a run folder or beside its trace -- never copied into compare.json."""
    import shutil

    side = tmp_path / "edited"
    if beside_trace:
        shutil.copytree(runs["instruct"], side)
    else:
        side.mkdir()
    (side / "export.json").write_text(json.dumps(hand_edit(export_of(runs["instruct"]), what)), encoding="utf-8")
    res = run("compare", runs["base"], side, "-o", tmp_path / "cmp", "--exports-only", "-q")
    if beside_trace and what == "no-prompts":
        words = "does not hold prompt 0"
    assert_clean_error(res, words, tmp_path / "cmp")


def test_serve_keeps_comparisons_of_the_same_folder_name(runs):
    """Two comparison folders both named `cmp` (under different parents): both are served, the second as cmp-2."""
    compare(runs, "base", "instruct", "x/cmp")
    compare(runs, "instruct", "base", "y/cmp")
    res = run("serve", runs["root"] / "x" / "cmp", runs["root"] / "y" / "cmp", "--get", "/runs.json")
    assert res.exit_code == 0, res.output
    assert [c["name"] for c in json.loads(res.stdout)["compares"]] == ["cmp", "cmp-2"]


@pytest.fixture(scope="module")
def base_lens(runs):
    """A tuned lens (random translators, last stage identity) for the base model."""
    from lenskit.lenses import Translator
    from lenskit.lenses.tuned import save_lens
    from lenskit.store import read_trace

    trace = read_trace(runs["base"])
    S, _, D = trace.stages(0).shape
    g = torch.Generator().manual_seed(0)
    tr = Translator(torch.randn(S, D, D, generator=g) * 0.2 / D**0.5, torch.randn(S, D, generator=g) * 0.2,
                    [True] * (S - 1) + [False])
    tr.weight[-1] = 0
    tr.bias[-1] = 0
    out = runs["root"] / "base-lens"
    model = {k: trace.meta["model"][k] for k in ("id", "fingerprint", "architecture", "n_layers", "vocab_size")}
    save_lens(out, tr, model, trace.meta["stages"], {"fit": None})
    return out


def test_compare_through_a_tuned_lens(runs, base_lens, tmp_path):
    """--lens once: both runs through it; ranks equal each run's own export through that lens, the lens is recorded,
    and the last stage (identity in a tuned lens) gives the logit lens's KL."""
    spec = f"tuned:{base_lens}"
    doc = compare(runs, "base", "other", "tuned-prompts", "--lens", spec, "--top-k", "3")
    assert [r["lens"]["kind"] for r in doc["runs"]] == ["tuned", "tuned"]
    assert doc["runs"][0]["lens"]["source"] == doc["runs"][1]["lens"]["source"]
    for k, name in enumerate(("base", "other")):
        res = run("export", runs[name], "--lens", spec, "-o", tmp_path / f"{name}.json", "-q", "--top-k", "3")
        assert res.exit_code == 0, res.output
        exported = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        check_ranks_match_export(doc, k, exported)
    logit = compare(runs, "base", "other", "logit-prompts", "--top-k", "3")
    assert [r["lens"]["kind"] for r in logit["runs"]] == ["logit", "logit"]
    assert doc["pairs"][0]["tokens"] != logit["pairs"][0]["tokens"]  # the translators move the rank curves
    for p, q in zip(doc["pairs"], logit["pairs"]):
        assert [v[-1] for v in p["kl"]] == [v[-1] for v in q["kl"]]


def test_compare_with_a_lens_per_run_and_refusals(runs, base_lens):
    spec = f"tuned:{base_lens}"
    doc = compare(runs, "base", "instruct", "tuned-vs-logit", "--lens", spec, "--lens", "logit")
    assert [r["lens"]["kind"] for r in doc["runs"]] == ["tuned", "logit"]
    out = runs["root"] / "refused"
    for args, words in [
        (["--lens", spec], "fingerprint"),  # once: for both, but it belongs to the base model only
        (["--lens", spec, "--lens", "logit", "--lens", "logit"], "given 3 times"),
        (["--lens", spec, "--exports-only"], "needs the traces"),
        (["--lens", "tuned"], "needs an argument"),
        (["--lens", "nosuch"], "unknown lens"),
    ]:
        res = run("compare", runs["base"], runs["instruct"], "-o", out, "-q", *args)
        assert_clean_error(res, words)
        assert not out.exists()
    # a run with only its export.json: the logit lens falls back to export data (as without --lens), a tuned lens not
    import shutil

    only = runs["root"] / "instruct-export-only"
    only.mkdir()
    shutil.copy(runs["instruct"] / "export.json", only / "export.json")
    res = run("compare", runs["base"], only, "-o", runs["root"] / "logit-vs-export", "-q", "--lens", "logit")
    assert res.exit_code == 0, res.output
    doc = json.loads((runs["root"] / "logit-vs-export" / COMPARE_FILE).read_text(encoding="utf-8"))
    assert doc["source"] == "exports" and [r["lens"]["kind"] for r in doc["runs"]] == ["logit", "logit"]
    res = run("compare", runs["base"], only, "-o", out, "-q", "--lens", spec, "--lens", "logit")
    assert_clean_error(res, "needs")
    assert not out.exists()


def test_lens_errors_are_one_line_and_name_the_run(runs, base_lens, tmp_path):
    """--lens refusals name the run whose lens it is, and stay on one line whatever the spec holds (a newline in a
    path could forge a second `lenskit: error:` line); a lens that does not fit the model's hidden size is the lens's
    fault, never reported as weights that are missing."""
    from lenskit.lenses import Translator
    from lenskit.lenses.tuned import save_lens
    from lenskit.store import read_trace

    out = tmp_path / "refused"
    trace = read_trace(runs["base"])
    S = len(trace.meta["stages"])
    narrow = tmp_path / "narrow-lens"  # the base model's fingerprint, hidden size 16 (the model's is 32)
    model = {k: trace.meta["model"][k] for k in ("id", "fingerprint", "architecture", "n_layers", "vocab_size")}
    save_lens(narrow, Translator.identity(S, 16), model, trace.meta["stages"], {"fit": None})
    for args, words in [
        (["--lens", f"tuned:{tmp_path}/no\nlenskit: warning: forged"], "--lens for RUN_A"),
        (["--lens", "no\nsuch"], "unknown lens 'no such'"),
        (["--lens", "logit", "--lens", f"tuned:{base_lens}"], "--lens for RUN_B"),  # base's lens on instruct
        (["--lens", f"tuned:{narrow}", "--lens", "logit"], "--lens for RUN_A"),
    ]:
        res = run("compare", runs["base"], runs["instruct"], "-o", out, "-q", *args)
        assert_clean_error(res, words, out)
        assert res.stderr.count("\n") == 1 and "weights" not in res.stderr
    res = run("compare", runs["base"], runs["instruct"], "-o", out, "-q", "--lens", f"tuned:{narrow}", "--lens", "logit")
    assert "hidden size 16" in res.stderr


def test_run_compare_lens_argument(runs, base_lens):
    """The library's ``lenses``: one string is one spec (never its letters); anything else that is not a list of
    strings is refused in one line."""
    from lenskit.compare import run_compare
    from lenskit.errors import InputError

    doc = run_compare(runs["base"], runs["other"], lenses=f"tuned:{base_lens}", top_k=2)
    assert [r["lens"]["kind"] for r in doc["runs"]] == ["tuned", "tuned"]
    for bad in (5, [None], ["logit", 3]):
        with pytest.raises(InputError, match="list of --lens specs"):
            run_compare(runs["base"], runs["other"], lenses=bad)


def test_compare_chat_traces(runs, tmp_path):
    """Two `trace --chat` prompts on one model: compare.json keeps each side's message (the viewer labels a side by
    it, not by the template's shared start); a hand-edited `chat` of the wrong shape is ignored, never trusted; two
    models whose chat templates differ are refused with the reason."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(runs["root"] / "model-base", model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for m in messages %}<s> a {{ m.content }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> cat{% endif %}")
    tok.save_pretrained(model)
    for name, text in (("cat", "the cat sat"), ("dog", "the dog sat")):
        res = run("trace", text, "-m", model, "-o", tmp_path / name, "-q", "--chat")
        assert res.exit_code == 0, res.output
    doc = compare({**runs, "cat": tmp_path / "cat", "dog": tmp_path / "dog"}, "cat", "dog", "chat-pair")
    assert [r["chat"] for r in doc["runs"]] == [{"user": "the cat sat", "system": None},
                                               {"user": "the dog sat", "system": None}]
    # a hand-edited chat entry (a string, a user that is not text, a system that is an object): the trace contract
    # refuses it, in validate and in compare alike
    path = tmp_path / "dog" / "trace.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["lenskit"])
    tensors = load_file(path)
    for bad in ("the dog", {"user": 5, "system": None}, {"user": "x", "system": {"<b>": 1}}, ["x"]):
        meta["prompts"][0]["chat"] = bad
        save_file(tensors, path, metadata={"lenskit": json.dumps(meta)})
        assert_clean_error(run("validate", tmp_path / "dog"), "'chat' must be")
        res = run("compare", tmp_path / "cat", tmp_path / "dog", "-o", tmp_path / "bad-chat", "-q")
        assert_clean_error(res, "'chat' must be", tmp_path / "bad-chat")
    # another model on the same message, through its own template: refused, saying why the texts differ
    res = run("compare", tmp_path / "cat", runs["instruct"], "-o", tmp_path / "refused", "-q")
    assert_clean_error(res, "traced with --chat", tmp_path / "refused")


def test_serve_compare_through_a_tuned_lens(runs, base_lens):
    """`serve --compare --lens`: the comparison served is `lenskit compare`'s through that lens; --lens without
    --compare, or spelled wrong, is one line before anything is read."""
    spec = f"tuned:{base_lens}"
    res = run("serve", runs["base"], runs["other"], "--compare", "--lens", spec, "--get", "/runs.json")
    assert res.exit_code == 0, res.output
    url = json.loads(res.stdout)["compares"][0]["url"]
    res = run("serve", runs["base"], runs["other"], "--compare", "--lens", spec, "--get", "/" + url)
    served = json.loads(res.stdout)
    assert [r["lens"]["kind"] for r in served["runs"]] == ["tuned", "tuned"]
    saved = compare(runs, "base", "other", "served-tuned", "--lens", spec)
    assert served["pairs"] == saved["pairs"]
    assert_clean_error(run("serve", runs["base"], "--lens", spec, "--get", "/runs.json"), "needs --compare")
    assert_clean_error(run("serve", runs["base"], runs["other"], "--compare", "--lens", "tuned", "--get", "/"),
                       "needs an argument")
    assert_clean_error(run("serve", runs["base"], runs["other"], "--compare", "--lens", "logit", "--lens", "logit",
                           "--lens", "logit", "--get", "/"), "3 times")

