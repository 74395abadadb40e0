"""The CUDA path end to end, skipped without a GPU (``bench/gpu.sh`` runs it on a lent one).

On the GPU the scores come from cuBLAS and the statistics from the Triton kernels (float32, bf16) or the torch
path (fast mode's re-checks), so this compares whole documents rather than kernels (``test_kernels_triton.py``
does those): the GPU's exports against brute force on the same scores, fast == float32 on the GPU, and the CLI's
``--device cuda`` against ``--device cpu``.
"""

import pytest
import torch
from stats_cases import S, V, brute, make_lens, random_stages, run

from lenskit.schema import histogram

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def data():
    return random_stages()


def _ids(doc, pos):
    return [doc["token_ids"][i] for i in pos["tracked"]]


def _same_integers(a, b):
    for pa, pb in zip(a["prompts"][0]["positions"], b["prompts"][0]["positions"], strict=True):
        assert _ids(a, pa) == _ids(b, pb) and pa["rank"] == pb["rank"] and pa["next"] == pb["next"]
        ca, sa = histogram(a, pa)
        cb, sb = histogram(b, pb)
        assert (ca == cb).all()
        assert [{k: [a["token_ids"][i] for i in v] for k, v in x.items()} for x in sa] == \
            [{k: [b["token_ids"][i] for i in v] for k, v in x.items()} for x in sb]
        if "stage_top" in pa:
            assert [[a["token_ids"][i] for i in r] for r in pa["stage_top"]["tokens"]] == \
                [[b["token_ids"][i] for i in r] for r in pb["stage_top"]["tokens"]]
        for key in ("mean", "std", "lse", "entropy"):
            torch.testing.assert_close(torch.tensor(pa[key]), torch.tensor(pb[key]), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("ties", [False, True])
def test_cuda_float32_ranks_equal_brute_force(data, ties):
    stages, token_ids = data
    lens = make_lens(ties)
    doc = run(lens, stages, token_ids, track=["tok7"], device="cuda", precision="float32", stage_top=3)
    full = brute(lens.to("cuda"), stages.cuda()).cpu()  # [S, T, V] float32 on the GPU
    for pos in doc["prompts"][0]["positions"]:
        p = pos["pos"]
        assert _ids(doc, pos)[:10] == sorted(range(V), key=lambda v: (-full[-1, p, v].item(), v))[:10]
        for k, tid in enumerate(_ids(doc, pos)):
            assert pos["rank"][k] == [1 + int((full[s, p] > full[s, p, tid]).sum()) for s in range(S)]
        assert (histogram(doc, pos)[0].sum(1) == V).all()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("precision", ["float32", "fast", "bf16"])
def test_cuda_document_equals_cpu(data, ties, precision):
    """Same integers on both devices (near-ties aside, which these seeds do not have), floats close."""
    stages, token_ids = data
    lens = make_lens(ties)
    cpu = run(lens, stages, token_ids, track=["tok7"], device="cpu", precision=precision, stage_top=3)
    gpu = run(lens, stages, token_ids, track=["tok7"], device="cuda", precision=precision, stage_top=3)
    assert gpu["lens"]["precision"] == precision
    _same_integers(cpu, gpu)


@pytest.mark.parametrize("ties", [False, True])
def test_cuda_fast_mode_equals_float32(data, ties):
    stages, token_ids = data
    lens = make_lens(ties)
    f32 = run(lens, stages, token_ids, track=["tok7"], device="cuda", precision="float32", stage_top=3)
    fast = run(lens, stages, token_ids, track=["tok7"], device="cuda", precision="fast", stage_top=3)
    for a, b in zip(f32["prompts"][0]["positions"], fast["prompts"][0]["positions"], strict=True):
        assert _ids(f32, a) == _ids(fast, b) and a["rank"] == b["rank"] and a["score"] == b["score"]


def test_cli_export_on_cuda(tiny_run, tmp_path):
    """``lenskit export --device cuda`` on a traced tiny model: the same ranks and tokens as ``--device cpu``."""
    import orjson
    from typer.testing import CliRunner

    from lenskit.cli import app

    docs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / f"{dev}.json"
        res = CliRunner().invoke(app, ["export", str(tiny_run), "-o", str(out), "-q", "--device", dev])
        assert res.exit_code == 0, res.output
        docs[dev] = orjson.loads(out.read_bytes())
    assert docs["cuda"]["prompts"][0]["tokens"] == docs["cpu"]["prompts"][0]["tokens"]
    _same_integers(docs["cpu"], docs["cuda"])
