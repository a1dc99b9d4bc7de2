"""qfcal.WeightedHistogram: counts and exact weight sums; the loss-aware search."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import qfcal


def data(seed: int = 0, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[:50] = rng.uniform(6, 9, 50)  # a few outliers
    x[50:400] = 0
    w = rng.random(n)
    return x, w


def test_counts_are_the_histogram_and_sums_are_exact_whatever_the_batching() -> None:
    x, w = data()
    a = qfcal.WeightedHistogram(512)
    a.update(x, w)
    h = qfcal.Histogram(512)
    h.update(x)
    assert a.counts == h
    # reversed, in uneven batches, merged from two halves
    b, c = qfcal.WeightedHistogram(512), qfcal.WeightedHistogram(512)
    idx = np.arange(len(x))[::-1]
    for k, part in enumerate(np.array_split(idx, 7)):
        (b if k % 2 else c).update(x[part], w[part])
    b.merge(c)
    assert a == b and a != qfcal.WeightedHistogram(512)
    fixed = np.floor(w * 2.0**96)  # each weight rounded down to 2^-96 once
    bins, at_min, at_max, zeros = a.weight_sums()
    assert zeros == pytest.approx(fixed[x == 0].sum() * 2.0**-96, rel=1e-15)
    assert bins.sum() == pytest.approx(fixed[x != 0].sum() * 2.0**-96, rel=1e-12)
    assert at_max == pytest.approx(w[x == x.max()].sum(), rel=1e-12)
    assert at_min == pytest.approx(w[x == x.min()].sum(), rel=1e-12)
    assert a.total_weight == pytest.approx(w.sum(), rel=1e-12)
    assert "WeightedHistogram(bins=512" in repr(a) and a.bins == 512
    assert a.copy() == a


def test_equal_weights_search_as_the_counts() -> None:
    x, _ = data(1)
    wh = qfcal.WeightedHistogram()
    wh.update(x, np.full(x.shape, 0.25))
    for kw in ({}, {"bits": 4}, {"method": "percentile"}, {"symmetric": True}):
        r, s = qfcal.search(wh, **kw), qfcal.search(wh.counts, **kw)
        assert (r.scale, r.zero_point) == (s.scale, s.zero_point), kw


def weighted_error(x: np.ndarray, w: np.ndarray, r: qfcal.SearchResult) -> float:
    q = np.clip(np.rint(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    return float((w * (x - (q - r.zero_point) * r.scale) ** 2).sum())


def test_weights_move_the_range() -> None:
    x, _ = data(2)
    out = x > 5
    for outlier_weight, wider in ((0.0, False), (50.0, True)):
        w = np.where(out, outlier_weight, 1.0)
        wh = qfcal.WeightedHistogram()
        wh.update(x, w)
        plain = qfcal.search(wh.counts, bits=4)
        r = qfcal.search(wh, bits=4)
        assert (r.max > plain.max) == wider, (outlier_weight, r, plain)
        # the weighted search is the better one on the weighted loss, and score agrees
        assert weighted_error(x, w, r) <= weighted_error(x, w, plain) * 1.01
        assert qfcal.score(wh, r).loss <= qfcal.score(wh, plain).loss


@pytest.mark.parametrize(
    ("values", "weights", "match"),
    [
        ([1.0, 2.0], [1.0, np.nan], r"weights\[1\] is NaN"),
        ([1.0, 2.0], [1.0, -1.0], r"weights\[1\] is -1"),
        ([1.0, 2.0], [1.0], "same shape"),
        ([1.0, 2.0], [3e9, 3e9], "beyond 2\\^32"),
    ],
)
def test_bad_weights_name_the_value_and_change_nothing(
    values: list[float], weights: list[float], match: str
) -> None:
    wh = qfcal.WeightedHistogram(64)
    wh.update([0.5], [1.0])
    before = wh.copy()
    with pytest.raises(ValueError, match=match):
        wh.update(values, weights)
    assert wh == before


def test_no_weight_is_a_clear_error() -> None:
    wh = qfcal.WeightedHistogram(64)
    wh.update([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="no weight"):
        qfcal.search(wh)
    with pytest.raises(ValueError, match="bins must be in"):
        qfcal.WeightedHistogram(3)


def test_readme_example_runs() -> None:
    from readme_examples import run

    rng = np.random.default_rng(4)
    x = rng.standard_normal(10_000)
    grad = np.where(x > 0, rng.standard_normal(10_000), 0.0)  # a ReLU after it
    ns = run("weighted", {"qfcal": qfcal, "conv_output": x, "grad": grad})
    r = ns["r"]
    assert r.min >= -r.scale / 2  # the negative values weigh nothing
    assert qfcal.search(ns["wh"].counts, bits=8).min < -1


def test_bytes_and_pickle_round_trip_exactly() -> None:
    rng = np.random.default_rng(3)
    wh = qfcal.WeightedHistogram(512)
    wh.update(rng.standard_normal(5000).astype(np.float32), rng.random(5000).astype(np.float32))
    wh.update(np.zeros(7), np.full(7, 0.5))
    data = wh.to_bytes()
    back = qfcal.WeightedHistogram.from_bytes(data)
    assert back == wh and back.to_bytes() == data
    assert pickle.loads(pickle.dumps(wh)) == wh
    assert qfcal.search(back, bits=6) == qfcal.search(wh, bits=6)
    empty = qfcal.WeightedHistogram()
    assert qfcal.WeightedHistogram.from_bytes(empty.to_bytes()) == empty
    with pytest.raises(ValueError, match="checksum mismatch"):
        qfcal.WeightedHistogram.from_bytes(data[:-3] + bytes(3))
    with pytest.raises(ValueError, match="weighted histogram header"):
        qfcal.WeightedHistogram.from_bytes(wh.counts.to_bytes())
    with pytest.raises(TypeError):
        qfcal.WeightedHistogram.from_bytes("not bytes")  # type: ignore[arg-type]
