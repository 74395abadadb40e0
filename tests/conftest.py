"""Shared fixtures: tiny random models built from configs in code (never downloaded), saved with a tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LENSKIT_LOAD_PLUGINS", "0")  # third-party plugins installed on the machine stay out of tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# The browser tests' fixtures (browser, page, docs, served, real_export), registered once; their helpers are imported
# from this plain module by name, never from another test module. tests/ on sys.path: importable in any import mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ["browser_fixtures"]

def _loopback_or_literal(host) -> bool:
    """A host a test may reach without the network: loopback, unspecified, or a local socket path."""
    import ipaddress

    if not isinstance(host, str) or host in ("", "localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Tests never use the network (the brief's rule, enforced): a name lookup or a connection to anything but this
    machine fails the calling code at once with an OSError naming the host (subprocesses inherit HF_HUB_OFFLINE=1)."""
    import socket

    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(host):
        return OSError(f"a test tried to reach {host!r} over the network; tests must stay offline")

    def connect(self, address, *a):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback_or_literal(address[0]):
            raise refuse(address[0])
        return real_connect(self, address, *a)

    def connect_ex(self, address, *a):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback_or_literal(address[0]):
            raise refuse(address[0])
        return real_connect_ex(self, address, *a)

    def getaddrinfo(host, *a, **k):
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _loopback_or_literal(h) and not _is_ip(h):
            raise socket.gaierror(socket.EAI_NONAME, f"a test tried to look up {h!r}; tests must stay offline")
        return real_getaddrinfo(host, *a, **k)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    yield
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real_connect, real_connect_ex, real_getaddrinfo


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "to", "Paris", "is", "capital", "of", "France", "."]


def assert_clean_error(res, fragment, out_dir=None):
    """A CLI result that failed the lenskit way: exit 1, one `lenskit: error:` line last on stderr, no traceback,
    and (given ``out_dir``) no output folder or temporary file left behind."""
    assert res.exit_code == 1, res.output
    err = res.stderr.strip().splitlines()[-1]  # earlier lines are progress messages
    assert err.startswith("lenskit: error:") and "Traceback" not in res.output, res.output
    assert res.stderr.count("lenskit: error:") == 1
    assert fragment in err, err
    if out_dir is not None:
        assert not out_dir.exists() or out_dir.is_dir() and not any(out_dir.iterdir())
        assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; intra-op threads spin-wait for a busy second core (3-10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_entry_points(monkeypatch):
    """Third-party plugins installed on the machine stay out of every test."""
    monkeypatch.setenv("LENSKIT_LOAD_PLUGINS", "0")


def make_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with BOS, whose vocabulary fills ``vocab_size`` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def gpt2_config(**kw):
    from transformers import GPT2Config

    base = dict(vocab_size=96, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return GPT2Config(**base)


def build(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def save_model(path, config):
    """Save a tiny random model and a matching tokenizer into ``path``; return the path as str."""
    model = build(config)
    model.save_pretrained(path)
    make_tokenizer(config.vocab_size).save_pretrained(path)
    return str(path)


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request):
    """(name, model) for a tiny random Llama and GPT-2."""
    cfg = llama_config() if request.param == "llama" else gpt2_config()
    return request.param, build(cfg)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama (with tokenizer) usable as ``--model``."""
    return save_model(tmp_path_factory.mktemp("tiny-llama"), llama_config())


@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tmp_path_factory):
    """A run folder traced from ``tiny_dir`` (two prompts), with export.json."""
    from typer.testing import CliRunner

    from lenskit.cli import app

    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = CliRunner().invoke(
        app, ["trace", "the cat sat on the mat and ran to Paris", "Paris is the capital of France .", "-m", tiny_dir,
              "-o", str(out), "-q", "--track", "France"]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def default_model_available():
    from lenskit.errors import ModelError
    from lenskit.models import default_model_path

    try:
        default_model_path()
    except ModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def real_run(default_model_available, tmp_path_factory):
    """`lenskit trace` of the standard test paragraph on the embedded default model (trace + export.json)."""
    from typer.testing import CliRunner

    from lenskit.cli import app

    out = tmp_path_factory.mktemp("real") / "smollm2"
    res = CliRunner().invoke(app, ["trace", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out
