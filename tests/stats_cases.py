"""A tiny engine case shared by test_stats.py and test_cuda.py: a random lens (optionally with exactly tied rows), a
minimal tokenizer, an export of random stages through :func:`lenskit.export.export_document`, and the brute-force
scores [S, T, V]."""

import torch

from lenskit.export import ExportOptions, export_document, plain
from lenskit.lens import Lens
from lenskit.schema import ROUND_NATS, ROUND_SCORE, ROUND_STAT

S, T, D, V = 5, 7, 16, 300
SCORE_TOL = 0.5 * 10**-ROUND_SCORE + 1e-4  # the document's rounding (schema.ROUND_*), plus float32 slack
NATS_TOL = 0.5 * 10**-ROUND_NATS + 1e-4
STAT_TOL = 0.5 * 10**-ROUND_STAT + 1e-4


def make_lens(ties: bool = False, seed: int = 0) -> Lens:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, D, generator=g)
    if ties:  # exact duplicate rows -> exactly tied scores everywhere
        w[100:140] = w[0]
        w[200:210] = w[5]
    norm = torch.nn.LayerNorm(D)
    return Lens(norm=norm, pre=None, weight=w, bias=torch.randn(V, generator=g) * 0.1)


def make_meta(token_ids):
    return {
        "model": {"id": "x", "fingerprint": "f", "architecture": "A", "adapter": "a", "dtype": "float32"},
        "stages": [{"name": f"s{i}", "kind": "embed" if i == 0 else ("attn" if i % 2 else "ffn"), "layer": (i - 1) // 2}
                   for i in range(S)],
        "prompts": [{"text": "t", "token_ids": token_ids, "tokens": [str(t) for t in token_ids]}],
    }


class Tok:
    """Minimal tokenizer: token i <-> text 'tok{i}'."""

    def batch_decode(self, seqs, **kw):
        return [f"tok{s[0]}" for s in seqs]

    def convert_ids_to_tokens(self, i):
        return f"tok{i}"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(text.removeprefix("tok"))] if text.startswith("tok") else [1, 2]}


def run(lens, stages, token_ids, **opts):
    meta = make_meta(token_ids)
    doc = export_document(meta, lens, Tok(), lambda i: (lambda p0, p1: stages[:, p0:p1]), ExportOptions(**opts))
    return plain(doc)


def brute(lens, stages):
    with torch.inference_mode():
        return lens(stages.reshape(-1, D)).reshape(S, T, V)  # [S, T, V]


def random_stages(seed: int = 3):
    """Stages ``[S, T, D]`` and ``T`` token ids (the ``data`` fixture of the tests)."""
    g = torch.Generator().manual_seed(seed)
    stages = torch.randn(S, T, D, generator=g) * 3
    token_ids = torch.randint(0, V, (T,), generator=g).tolist()
    return stages, token_ids
