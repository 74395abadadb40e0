"""Token display strings: byte-level partial UTF-8 as escapes, SentencePiece word-start spaces kept."""

import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lenskit.tokens import token_texts


def test_sentencepiece_word_start_space_is_kept():
    vocab = {"<unk>": 0, "\u2581the": 1, "\u2581cat": 2, "s": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert token_texts(t, [1, 2, 3]) == [" the", " cat", "s"]


def test_byte_level_partial_utf8_becomes_escapes():
    # GPT-2 byte-level alphabet: 'âĢ' is the bytes e2 80 (the first two bytes of an em dash), invalid on its own
    vocab = {"<unk>": 0, "\u00e2\u0122": 1, "\u0120Kra": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.decoder = decoders.ByteLevel()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert token_texts(t, [1, 2]) == ["\\xe2\\x80", " Kra"]


def test_ids_beyond_the_tokenizer_are_named_not_empty():
    """A head padded beyond the tokenizer's vocabulary (as Qwen's is): those ids get a visible name."""
    vocab = {"<unk>": 0, "\u2581the": 1}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert token_texts(t, [1, 5, 127]) == [" the", "<id 5: no token>", "<id 127: no token>"]


def _chat_tokenizer(template):
    from conftest import make_tokenizer

    tok = make_tokenizer(96)
    tok.chat_template = template
    return tok


def test_bounded_chat_template_renders_what_transformers_renders():
    """lenskit renders chat templates itself (within budgets): for ordinary templates, exactly apply_chat_template's
    text -- special tokens, trims, loops, namespaces, macros, filters and tojson included."""
    from lenskit.chat_template import render_chat_template

    template = ("{{ bos_token }}{% set ns = namespace(n=0) %}{% macro role(m) %}{{ m.role|upper }}{% endmacro %}"
                "{% for m in messages %}{% set ns.n = ns.n + 1 %}\n  {{ role(m) }}: {{ m.content|trim }} "
                "{{ (m|tojson(indent=2))|length }} {{ '%-4s|' % ns.n }}{{ '{:>3}'.format(loop.index) }}"
                "{{ ' '.join(['a', 'b']) ~ ('-' * 3) }}{% endfor %}{% if add_generation_prompt %}{{ eos_token }}{% endif %}")
    tok = _chat_tokenizer(template)
    for messages in ([{"role": "user", "content": " the cat "}],
                     [{"role": "system", "content": "Paris"}, {"role": "user", "content": "x" * 100000}]):
        for gen in (True, False):
            assert render_chat_template(tok, messages, gen) == tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("template, words", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "runs longer than"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}", "runs longer"),
    ("{{ 'x' * 10**9 }}", "makes a value (*)"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}", "makes more than"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "(~)"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "(+)"),
    ("{% set ns = namespace(n=7) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}", "a number"),
    ("{{ 10 ** (10 ** 10) }}", "a number (**)"),
    ("{{ 'x'.ljust(10**10) }}", "given to ljust"),
    ("{{ 'x'|center(1000000000) }}", "given to center"),
    ("{{ '{:>999999999}'.format(1) }}", "formatted string"),
    ("{{ '%999999999s' % 1 }}", "formatted string"),
    ("{{ ('x' * 1000000)|replace('x', 'y' * 1000000) }}", "(replace)"),
    ("{{ ('x' * 1000000).join(['a'] * 100000) }}", "(join)"),
    ("{{ ('\\n' * 1000000)|indent(1000000) }}", "(indent)"),
    ("{{ ('\\t' * 1000000).expandtabs(1000000) }}", "(expandtabs)"),
    ("{{ ('x' * 1000000).translate({120: 'y' * 1000000}) }}", "(translate)"),
    ("{{ ('x ' * 1000000)|wordwrap(1, wrapstring='y' * 1000000) }}", "(wordwrap)"),
    ("{{ range(100000)|list|tojson(indent=1000000) }}", "(tojson indent)"),
    ("{% set big = 'x' * 4000000 %}{{ [big] * 100000 }}", "makes a value (*)"),  # one item 100000 times
    ("{% set big = 'x' * 4000000 %}{% set b %}{% for i in range(1000) %}{{ big }}{% endfor %}{% endset %}",
     "a block of text"),
    ("{% set big = 'x' * 4000000 %}{{ big ~ big ~ big ~ big ~ big ~ big }}", "makes a value (~)"),
    ("{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s + 'xxxxxxxxxx' %}{% endfor %}",
     "does more work than"),  # each step copies the whole string: quadratic
    ("{% set big = 'x' * 4000000 %}{% for i in range(100000) %}{{ big.count('y') }}{% endfor %}", "more work"),
])
def test_hostile_chat_templates_stop_within_budget(template, words):
    """Templates that would loop for hours or build gigabytes stop at once with a TemplateBudgetError, and
    chat_prompt says so in one line naming the chat template; the tracer is put back."""
    import sys
    import time

    from lenskit.errors import InputError
    from lenskit.chat_template import TemplateBudgetError, render_chat_template
    from lenskit.tokens import chat_prompt

    tok = _chat_tokenizer(template + "{{ messages[0].content }}")
    before = sys.gettrace()
    started = time.perf_counter()
    with pytest.raises(TemplateBudgetError, match=re.escape(words)):
        render_chat_template(tok, [{"role": "user", "content": "the cat"}])
    assert time.perf_counter() - started < 30 and sys.gettrace() is before
    with pytest.raises(InputError, match="^--chat: the model's chat template .*lenskit stopped it") as e:
        chat_prompt(tok, "the cat")
    assert "\n" not in str(e.value)
