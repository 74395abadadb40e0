"""Token display strings: byte-level partial UTF-8 as escapes, SentencePiece word-start spaces kept."""

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
