"""The lens engine against a brute-force reference (full logits + torch.sort), chunk-size invariance, ties."""

import numpy as np
import pytest
import torch
from stats_cases import (
    NATS_TOL,
    SCORE_TOL,
    STAT_TOL,
    D,
    S,
    T,
    V,
    brute,
    make_lens,
    random_stages,
    run,
)
from torch.testing import assert_close

from lenskit.schema import (
    HIST_BINS,
    HIST_SAMPLES,
    HIST_Z_MAX,
    HIST_Z_MIN,
    ROUND_NATS,
    histogram,
    tracked_bins,
)


@pytest.fixture
def data():
    return random_stages()


@pytest.mark.parametrize("ties", [False, True])
def test_topk_ranks_scores_match_brute_force(data, ties):
    stages, token_ids = data
    lens = make_lens(ties)
    doc = run(lens, stages, token_ids, top_k=10, track=["tok7"])
    full = brute(lens, stages)
    table = doc["token_ids"]
    for pos in doc["prompts"][0]["positions"]:
        p = pos["pos"]
        final = full[-1, p]
        order = sorted(range(V), key=lambda v: (-final[v].item(), v))  # score desc, ties by id
        ids = [table[i] for i in pos["tracked"]]
        assert ids[:10] == order[:10]
        if p + 1 < T:
            assert ids[pos["next"]] == token_ids[p + 1]
        assert 7 in ids
        for k, tid in enumerate(ids):
            for s in range(S):
                row = full[s, p]
                assert pos["rank"][k][s] == 1 + int((row > row[tid]).sum())
                assert pos["score"][k][s] == pytest.approx(row[tid].item(), abs=SCORE_TOL)
                # sorting reference too: rank = index of first occurrence of the value in a descending sort
                srt = torch.sort(row, descending=True).values
                assert pos["rank"][k][s] == 1 + int(torch.searchsorted(-srt, -row[tid], right=False))


def test_histograms_match_numpy_and_samples_lie_in_their_bins(data):
    stages, token_ids = data
    lens = make_lens()
    doc = run(lens, stages, token_ids)
    full = brute(lens, stages).double()
    table = doc["token_ids"]
    for pos in doc["prompts"][0]["positions"]:
        all_counts, all_samples = histogram(doc, pos)
        bins_of = tracked_bins(doc, pos)
        for s in range(S):
            row = full[s, pos["pos"]]
            mean, std = pos["mean"][s], pos["std"][s]
            assert mean == pytest.approx(row.mean().item(), abs=STAT_TOL)
            assert std == pytest.approx(row.std().item(), abs=STAT_TOL)
            dense = all_counts[s]
            assert dense.sum() == V and dense[pos["hist"]["lo"][s]] > 0
            z = ((row - row.mean()) / row.std()).numpy()
            ref, _ = np.histogram(np.clip(z, HIST_Z_MIN, HIST_Z_MAX), bins=HIST_BINS, range=(HIST_Z_MIN, HIST_Z_MAX))
            assert np.abs(dense - ref).sum() <= 2  # float32 vs float64 z at a bin edge
            width = (HIST_Z_MAX - HIST_Z_MIN) / HIST_BINS
            # sparse bins (at most HIST_SAMPLES tokens) list all their tokens, each really in that bin; others none
            sparse = {b for b in range(HIST_BINS) if 0 < dense[b] <= HIST_SAMPLES}
            assert set(all_samples[s]) == sparse and any(dense > HIST_SAMPLES)
            for b, refs in all_samples[s].items():
                samples = [table[i] for i in refs]
                assert len(samples) == len(set(samples)) == dense[b] and samples == sorted(samples)  # by id
                for t in samples:
                    zs = min(max(z[t], HIST_Z_MIN), HIST_Z_MAX - 1e-9)
                    assert abs((zs - HIST_Z_MIN) / width - b - 0.5) <= 0.5 + 1e-3
            for k2, tid in enumerate(pos["tracked"]):
                zt = min(max(z[table[tid]], HIST_Z_MIN), HIST_Z_MAX - 1e-9)
                assert abs((zt - HIST_Z_MIN) / width - bins_of[k2][s] - 0.5) <= 0.5 + 1e-3


def test_entropy_kl_lse(data):
    stages, token_ids = data
    lens = make_lens()
    doc = run(lens, stages, token_ids)
    full = brute(lens, stages).double()
    for pos in doc["prompts"][0]["positions"]:
        logp_final = torch.log_softmax(full[-1, pos["pos"]], -1)
        for s in range(S):
            logp = torch.log_softmax(full[s, pos["pos"]], -1)
            assert pos["lse"][s] == pytest.approx(torch.logsumexp(full[s, pos["pos"]], -1).item(), abs=NATS_TOL)
            assert pos["entropy"][s] == pytest.approx(-(logp.exp() * logp).sum().item(), abs=NATS_TOL)
            kl = (logp_final.exp() * (logp_final - logp)).sum().item()
            assert pos["kl"][s] == pytest.approx(kl, abs=NATS_TOL)


def test_chunk_size_does_not_change_results(data):
    stages, token_ids = data
    lens = make_lens(ties=True)
    one = run(lens, stages, token_ids, max_memory=1)  # one position per chunk
    big = run(lens, stages, token_ids, max_memory=1 << 30)  # everything in one chunk
    assert one == big


def test_positions_subset(data):
    stages, token_ids = data
    doc = run(make_lens(), stages, token_ids, positions="1,3-4,-1")
    assert [p["pos"] for p in doc["prompts"][0]["positions"]] == [1, 3, 4, T - 1]
    assert doc["prompts"][0]["positions"][-1]["next"] is None


def test_no_norm_is_raw_projection(data):
    stages, token_ids = data
    lens = make_lens()
    doc = run(lens, stages, token_ids, norm=False, positions="2")
    raw = stages[:, 2] @ lens.weight.T + lens.bias  # [S, V]
    pos = doc["prompts"][0]["positions"][0]
    tid = doc["token_ids"][pos["tracked"][0]]
    assert_close(torch.tensor(pos["score"][0]), raw[:, tid], atol=SCORE_TOL, rtol=0)


@pytest.mark.parametrize("ties", [False, True])
def test_fast_mode_equals_float32_mode(data, ties):
    """bfloat16 matmul + bound + exact re-check: top-k, ranks and tracked scores identical; the rest close."""
    stages, token_ids = data
    lens = make_lens(ties)
    f32 = run(lens, stages, token_ids, track=["tok7"])
    fast = run(lens, stages, token_ids, track=["tok7"], precision="fast")
    assert fast["lens"]["precision"] == "fast"
    for a, b in zip(f32["prompts"][0]["positions"], fast["prompts"][0]["positions"]):
        assert [f32["token_ids"][i] for i in a["tracked"]] == [fast["token_ids"][i] for i in b["tracked"]]
        assert a["rank"] == b["rank"] and a["score"] == b["score"] and a["next"] == b["next"]
        for key in ("mean", "std", "lse", "entropy"):
            assert_close(torch.tensor(a[key]), torch.tensor(b[key]), atol=0.05, rtol=0.02)
        assert (histogram(fast, b)[0].sum(1) == V).all()


@pytest.mark.parametrize("n", [0, 1, 5, 40])
def test_samples_per_bin_option(data, n):
    """--samples N: bins of at most N tokens list all of them, denser bins none; the lists agree across N."""
    stages, token_ids = data
    doc = run(make_lens(), stages, token_ids, samples=n, positions="2")
    ref = run(make_lens(), stages, token_ids, samples=100, positions="2")
    assert doc["histogram"]["samples"] == n
    pos = doc["prompts"][0]["positions"][0]
    counts, samples = histogram(doc, pos)
    _, ref_samples = histogram(ref, ref["prompts"][0]["positions"][0])
    for s in range(S):
        assert {b: len(x) for b, x in samples[s].items()} == {b: int(c) for b, c in enumerate(counts[s]) if 0 < c <= n}
        assert {b: [doc["token_ids"][i] for i in x] for b, x in samples[s].items()} == {
            b: [ref["token_ids"][i] for i in x] for b, x in ref_samples[s].items() if b in samples[s]}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("precision", ["float32", "fast"])
def test_stage_top_matches_brute_force(data, ties, precision):
    """Each stage's own top-N in the document: the brute-force order (score desc, ties by smaller id), surprisals
    = logsumexp - score, rounded as the schema says; the same tokens in fast mode (whose lse, like every lse there,
    comes from the bfloat16 scores); valid JSON Schema."""
    import jsonschema

    from lenskit.schema import JSON_SCHEMA, ROUND_STAGE_TOP_REST

    stages, token_ids = data
    lens = make_lens(ties)
    doc = run(lens, stages, token_ids, stage_top=5, precision=precision)
    jsonschema.validate(doc, JSON_SCHEMA)
    assert doc["lens"]["stage_top"] == 5
    full = brute(lens, stages).double()
    lse = torch.logsumexp(full, -1)  # [S, T]
    table = doc["token_ids"]
    for pos in doc["prompts"][0]["positions"]:
        p = pos["pos"]
        top = pos["stage_top"]
        assert len(top["tokens"]) == len(top["surprisal"]) == S
        for s in range(S):
            row = full[s, p]
            order = sorted(range(V), key=lambda v: (-row[v].item(), v))[:5]
            assert [table[i] for i in top["tokens"][s]] == order
            for j, v in enumerate(order):
                digits = ROUND_NATS if j == 0 else ROUND_STAGE_TOP_REST
                want = max(0.0, (lse[s, p] - row[v]).item())
                got = top["surprisal"][s][j]
                if precision == "float32":
                    assert got == pytest.approx(want, abs=0.5 * 10**-digits + 1e-4)
                else:  # fast mode: lse approximate (as checked above), surprisals clamped at 0
                    assert got == pytest.approx(want, abs=0.5 * 10**-digits + 0.06, rel=0.02) and got >= 0
        # the last stage's own top-N are the final top-k's first N
        assert top["tokens"][-1] == pos["tracked"][:5]


def test_stage_top_zero_leaves_the_document_as_before(data):
    stages, token_ids = data
    doc = run(make_lens(), stages, token_ids, stage_top=0)
    assert doc["lens"]["stage_top"] == 0
    assert all("stage_top" not in pos for pos in doc["prompts"][0]["positions"])
    with_top = run(make_lens(), stages, token_ids, stage_top=3)
    for a, b in zip(doc["prompts"][0]["positions"], with_top["prompts"][0]["positions"]):
        assert a["rank"] == b["rank"] and a["score"] == b["score"]  # nothing else changes


@pytest.mark.parametrize("ties", [False, True])
def test_bf16_mode_is_exact_for_its_own_scores(data, ties):
    """--precision bf16: scores = bf16(normed stream) . bf16(weight) in float32; top-k, ranks, stage top-N and
    histogram counts equal brute force on exactly those scores (the mode's definition, on every device)."""
    stages, token_ids = data
    lens = make_lens(ties)
    doc = run(lens, stages, token_ids, track=["tok7"], precision="bf16", stage_top=3)
    assert doc["lens"]["precision"] == "bf16"
    with torch.inference_mode():
        x = lens.normed(stages.reshape(-1, D).float(), True).to(torch.bfloat16).double()
        w = lens.weight.to(torch.bfloat16).double()
        full = (x @ w.t() + lens.bias.double()).float().reshape(S, T, V)  # [S, T, V]
    table = doc["token_ids"]
    for pos in doc["prompts"][0]["positions"]:
        p = pos["pos"]
        order = sorted(range(V), key=lambda v: (-full[-1, p, v].item(), v))
        ids = [table[i] for i in pos["tracked"]]
        assert ids[:10] == order[:10]
        for k, tid in enumerate(ids):
            for s in range(S):
                row = full[s, p]
                assert pos["rank"][k][s] == 1 + int((row > row[tid]).sum())
        for s in range(S):
            row = full[s, p]
            assert [table[i] for i in pos["stage_top"]["tokens"][s]] == sorted(range(V), key=lambda v: (-row[v].item(), v))[:3]
        assert (histogram(doc, pos)[0].sum(1) == V).all()


def test_fast_mode_whole_block_rechecks_equal_float32(data, monkeypatch):
    """Fast mode on GPUs re-checks by recomputing whole float32 blocks (a narrow cuBLAS GEMM may round differently):
    forced here on the CPU, the results still equal float32 mode's."""
    from lenskit import scoring

    init = scoring.Scorer.__init__

    def dense_init(self, *a, **k):
        init(self, *a, **k)
        self.dense_recheck = True

    monkeypatch.setattr(scoring.Scorer, "__init__", dense_init)
    stages, token_ids = data
    lens = make_lens(True)
    f32 = run(lens, stages, token_ids, track=["tok7"], stage_top=3)
    fast = run(lens, stages, token_ids, track=["tok7"], precision="fast", stage_top=3)
    for a, b in zip(f32["prompts"][0]["positions"], fast["prompts"][0]["positions"]):
        ids_a, ids_b = f32["token_ids"], fast["token_ids"]  # (the token tables differ: fast mode's moments move bins)
        assert [ids_a[i] for i in a["tracked"]] == [ids_b[i] for i in b["tracked"]]
        assert a["rank"] == b["rank"] and a["score"] == b["score"]
        assert [[ids_a[i] for i in r] for r in a["stage_top"]["tokens"]] == \
            [[ids_b[i] for i in r] for r in b["stage_top"]["tokens"]]


def test_plan_on_gpu_uses_whole_chunks_for_statistics():
    """CUDA with Triton: one statistics group per chunk (whole GEMM blocks) and no workspace charged; elsewhere
    cache-sized groups."""
    from lenskit.planning import FUSED_ROWS, STATS_ROWS, plan_chunks

    cpu = plan_chunks(61, 49152, 89, 1 << 30)
    fused = plan_chunks(61, 49152, 89, 1 << 30, fused=True)  # the numba kernel: a few positions, no workspace
    gpu = plan_chunks(61, 49152, 89, 1 << 30, gpu=True)
    assert cpu.stats == max(1, STATS_ROWS // 61) and gpu.stats == gpu.chunk and fused.stats == FUSED_ROWS // 61
    assert fused.chunk >= cpu.chunk and gpu.chunk >= cpu.chunk and gpu.chunk % 89 == 0 and gpu.chunk // 89 == (1 << 30) // (89 * 61 * 49152 * 4)
    assert plan_chunks(61, 49152, 89, 1, gpu=True).chunk == 89  # at least one block


def test_column_order_is_a_fixed_permutation_by_the_mean_direction():
    """Columns go by each token's logit along the head's mean row, highest first, equal keys by id: a permutation
    that depends only on the weight."""
    from lenskit.scoring import column_order

    g = torch.Generator().manual_seed(4)
    w = torch.randn(300, 16, generator=g)
    w[7] = w[3]  # equal keys: 3 before 7
    order = column_order(w)
    assert sorted(order.tolist()) == list(range(300)) and torch.equal(order, column_order(w.clone()))
    key = w @ w.mean(0)
    assert (key[order][1:] <= key[order][:-1]).all()
    assert order.tolist().index(3) < order.tolist().index(7)
