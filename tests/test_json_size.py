"""The export's compact encodings (Base64 VLQ of versions 2 and 3; version 4's Exp-Golomb histogram strings,
stage-delta counts, recomputed tracked bins) and its size on the real default model's test paragraph (goal: the whole
document, overview grid included, <= 3 MB)."""

import gzip
import time

import numpy as np
import pytest

from lenskit.schema import (
    HIST_BINS,
    count_deltas,
    count_orders,
    decode_counts,
    encode_counts,
    encode_samples,
    exp_golomb_decode,
    exp_golomb_encode,
    histogram,
    sample_order,
    tracked_bins,
    unzigzag,
    vlq_decode,
    vlq_encode,
    vlq_encode_many,
    z_bin,
    zigzag,
)


def test_vlq_round_trip_and_source_map_digits():
    assert vlq_encode([0, 1, -1, 15, 16, -16]) == "ACDegBhB"  # as JavaScript source maps write them
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(-(2**40), 2**40, 500), rng.integers(-40, 40, 500), [0, 2**31, -(2**31)]])
    assert vlq_decode(vlq_encode(values)) == values.tolist()
    assert vlq_encode([]) == "" and vlq_decode("") == []


def test_exp_golomb_known_codes():
    """Bit by bit as docs/export-format.md's worked example: order 0 of 0, 1, 2, 3 is 1 010 011 00100."""
    assert exp_golomb_encode([0, 1, 2, 3], 0, [4]) == ["pk"]  # 101001 100100 = digits 41, 36
    assert exp_golomb_encode([10, 4], 0, [2]) == ["Fl"] and exp_golomb_encode([1, 2], [1, 0], [2]) == ["2"]
    assert exp_golomb_encode([0], 5, [1]) == ["g"]  # 1 00000 -> 100000
    assert exp_golomb_encode([], 0, [0, 0]) == ["", ""] and exp_golomb_decode("") == []
    counts = np.zeros((2, HIST_BINS), dtype=np.int64)
    counts[:, 40:42] = [[5, 2], [4, 3]]
    assert encode_counts(counts, np.array([40, 40]), np.array([41, 41])) == ["Fl", "2"]
    assert count_orders([0, 1, 2, 3, 4, 15, 16, 10**6]).tolist() == [0, 0, 0, 1, 1, 2, 2, 9]


def test_exp_golomb_round_trip_random_strings():
    """Many strings in one pass, empty ones among them: small, large (to 2^50) and zero values, any order per value."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 12, 300)
    sizes[::7] = 0
    n = int(sizes.sum())
    values = np.where(rng.random(n) < 0.3, rng.integers(0, 2**50, n), rng.integers(0, 40, n))
    values[::5] = 0
    orders = rng.integers(0, 20, n)
    texts = exp_golomb_encode(values, orders, sizes)
    assert len(texts) == len(sizes)
    starts = np.cumsum(sizes) - sizes
    for text, a, m in zip(texts, starts.tolist(), sizes.tolist()):
        assert exp_golomb_decode(text, orders[a: a + m]) == values[a: a + m].tolist()
        bits = sum(2 * (v + (1 << k)).bit_length() - 1 - k for v, k in zip(values[a: a + m].tolist(),
                                                                          orders[a: a + m].tolist()))
        assert len(text) == -(-bits // 6)  # the codes' bits, padded to a whole digit
    one = exp_golomb_encode(values, 4, [n])[0]  # one order for all
    assert exp_golomb_decode(one, 4) == values.tolist()
    top = 2**53 - 2**3  # the largest value of order 3 (n + 2^k <= 2^53, exact in JavaScript too)
    assert exp_golomb_decode(exp_golomb_encode([top, 0], 3, [2])[0], 3) == [top, 0]


def test_exp_golomb_rejects_what_it_cannot_write_or_read():
    for values, orders in (([-1], 0), ([2**53], 0), ([1], -1)):
        with pytest.raises(ValueError):
            exp_golomb_encode(values, orders, [1])
    with pytest.raises(ValueError):
        exp_golomb_encode([1, 2], 0, [1])  # sizes do not add up
    for bad in ("A", "AA", "p=", "pé", "B"):  # a whole zero digit, not Base64, truncated code (000001 ...)
        with pytest.raises(ValueError):
            exp_golomb_decode(bad, 0)
    with pytest.raises(ValueError):
        exp_golomb_decode("pk", [0, 0, 0])  # four numbers, three orders


def test_zigzag():
    d = np.array([0, -1, 1, -2, 2, -(2**40), 2**40])
    assert zigzag(d).tolist() == [0, 1, 2, 3, 4, 2**41 - 1, 2**41]
    assert unzigzag(zigzag(d)).tolist() == d.tolist()


def test_sample_order_is_the_shortest():
    rng = np.random.default_rng(5)
    for values in (rng.integers(0, 8, 200), rng.geometric(0.01, 500), rng.integers(0, 3000, 50), [0, 0, 0]):
        k = sample_order(values)
        length = [len(exp_golomb_encode(values, j, [len(values)])[0]) for j in range(20)]
        assert length[k] == min(length)
    assert sample_order([]) == 0
    idx = [np.array([3, 0, 17]), np.array([], dtype=int), np.array([250])]
    texts = encode_samples(idx, 2)
    assert texts[1] == "" and [exp_golomb_decode(t, 2) for t in texts] == [[3, 0, 17], [], [250]]


def _histograms(rng, S: int, V: int):
    """``counts [S, HIST_BINS]`` of S stages of V normal z-scores whose spread and centre drift, and their spans."""
    z = rng.normal(0, 1, (S, V)) * np.linspace(0.5, 2, S)[:, None] + np.linspace(-4, 4, S)[:, None]
    bins = np.clip(np.floor((z + 8) / 0.2), 0, HIST_BINS - 1).astype(int)
    counts = np.stack([np.bincount(b, minlength=HIST_BINS) for b in bins])
    nz = counts > 0
    return counts, nz.argmax(1), HIST_BINS - 1 - nz[:, ::-1].argmax(1)


@pytest.mark.parametrize("V", [1, 5000, 2_000_000])
def test_counts_round_trip(V):
    """Version 4's counts: first stage (order 0), spans that move (bins outside the previous span: order 0), negative
    and large changes, a one-token vocabulary; and the same integers as version 3's VLQ."""
    rng = np.random.default_rng(V)
    counts, lo, hi = _histograms(rng, 7, V)
    texts = encode_counts(counts, lo, hi)
    assert (decode_counts(texts, lo, HIST_BINS) == counts).all()
    assert len(texts) == 7 and all(texts)
    deltas = count_deltas(counts, lo, hi)
    assert [len(d) for d in deltas] == (hi - lo + 1).tolist() and (deltas[0] == counts[0, lo[0]: hi[0] + 1]).all()
    prev = np.zeros(HIST_BINS, dtype=np.int64)
    for s, text in enumerate(texts):  # each stage alone: zigzagged changes, the previous stage's counts set the order
        z = exp_golomb_decode(text, count_orders(prev[lo[s]: hi[s] + 1]))
        assert unzigzag(z).tolist() == deltas[s].tolist()
        prev = counts[s]
    doc = {"schema": "lenskit.export/4", "histogram": {"bins": HIST_BINS, "samples": 0, "sample_order": 0}}
    pos = {"hist": {"lo": lo.tolist(), "counts": texts, "samples": [""] * 7}}
    assert (histogram(doc, pos)[0] == counts).all()


@pytest.mark.parametrize("version", [2, 3, 4])
def test_counts_samples_and_bins_read_back(version):
    rng = np.random.default_rng(1)
    S, V, per = 6, 5000, 3
    counts, lo, hi = _histograms(rng, S, V)
    # sample tokens: all tokens of the sparse bins (here: made-up string-table indices)
    want = [{int(b): rng.integers(0, 900, int(counts[s, b])).tolist() for b in np.flatnonzero((counts[s] > 0) &
             (counts[s] <= per))} for s in range(S)]
    flat = [[t for b in sorted(w) for t in w[b]] for w in want]
    assert sum(map(len, flat)) > 10
    hg = {"bins": HIST_BINS, "z_min": -8.0, "z_max": 12.0, "samples": per}
    if version == 4:
        hg["sample_order"] = sample_order([t for f in flat for t in f])
        hist = {"counts": encode_counts(counts, lo, hi), "samples": encode_samples(flat, hg["sample_order"])}
    else:
        hist = {"counts": vlq_encode_many(count_deltas(counts, lo, hi)), "samples": vlq_encode_many(flat)}
    doc = {"schema": f"lenskit.export/{version}", "histogram": hg}
    pos = {"hist": {"lo": lo.tolist(), **hist}}
    got, samples = histogram(doc, pos)
    assert (got == counts).all() and samples == want
    # tracked bins: recomputed from rounded numbers, exceptions listed
    score = np.round(rng.normal(0, 3, (4, S)), 3)
    mean, std = np.zeros(S), np.ones(S)
    true = z_bin(score, mean, std)
    true[1, 2] += 1
    pos.update(score=score.tolist(), mean=mean.tolist(), std=std.tolist(), bin_edge=[[1, 2, int(true[1, 2])]])
    assert (tracked_bins(doc, pos) == true).all()
    assert z_bin(0.0, 0.0, 0.0) == 40 and z_bin(1e9, 0, 1) == HIST_BINS - 1 and z_bin(-1e9, 0, 1) == 0


@pytest.mark.realmodel
def test_default_export_of_the_test_paragraph_is_at_most_3_mb(real_run):
    """The whole default export (overview grid included) fits 3 MB. Printed: its size, gzipped (as `lenskit serve`
    sends it), the histogram strings' and the grid's parts, and the time to encode all histogram strings again from
    the decoded counts and samples (which must give the same strings)."""
    import orjson

    data = (real_run / "export.json").read_bytes()
    doc = orjson.loads(data)
    P = [x for p in doc["prompts"] for x in p["positions"]]

    def part(get) -> int:
        return sum(len(orjson.dumps(get(x))) for x in P)

    rows = []
    for x in P:
        counts, samples = histogram(doc, x)
        nz = counts > 0
        spans = nz.argmax(1), HIST_BINS - 1 - nz[:, ::-1].argmax(1)
        flat = [np.array([t for b in sorted(st) for t in st[b]], dtype=np.int64) for st in samples]  # [stage]
        rows.append((counts, spans, flat))
    started = time.perf_counter()
    order = sample_order(np.concatenate([f for _, _, flat in rows for f in flat]))
    again = [(encode_counts(c, *spans), encode_samples(flat, order)) for c, spans, flat in rows]
    took = time.perf_counter() - started
    assert order == doc["histogram"]["sample_order"]
    assert again == [(x["hist"]["counts"], x["hist"]["samples"]) for x in P]
    print(f"\n[export.json: {len(data):,} bytes, gzip {len(gzip.compress(data, 6)):,}; hist.counts "
          f"{part(lambda x: x['hist']['counts']):,}, hist.samples {part(lambda x: x['hist']['samples']):,} "
          f"(order {order}), stage_top {part(lambda x: x.get('stage_top')):,}; histogram strings encoded in "
          f"{took * 1000:.0f} ms]")
    assert len(data) <= 3_000_000
    assert took < 1.0  # ~0.13 s on a quiet machine: a loose bound for a shared one
