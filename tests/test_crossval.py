"""Scoring an encoding on another histogram (``qfcal.score``) and choosing the clipping weight by
cross-validation over per-sample histograms (``qfcal.cross_validate``)."""

from __future__ import annotations

import numpy as np
import pytest
import qfcal
from conftest import hist_of, reference_loss, search_density
from qfcal.crossval import DEFAULT_GAMMAS, held_out_errors


def samples(n: int, seed: int = 0, size: int = 2000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_t(3, size).astype(np.float32) for _ in range(n)]


def test_score_is_the_searched_loss_on_the_same_histogram():
    x = samples(1)[0]
    h = hist_of(x)
    for method in qfcal.methods():
        r = qfcal.search(h, method=method, bits=6, gamma=2.0)
        assert qfcal.score(h, r) == r
        again = qfcal.score(h, r, gamma=1.0)
        assert (again.scale, again.zero_point, again.method) == (r.scale, r.zero_point, method)
        assert again.gamma == 1.0 and again.mse == r.mse


def test_score_on_other_data_agrees_with_the_reference_loss():
    a, b = samples(2, seed=1)
    r = qfcal.search(hist_of(a), bits=4)
    hb = hist_of(b)
    s = qfcal.score(hb, r)
    counts, edges, zeros, atoms = search_density(hb, b)
    lo, hi = r.qmin - r.zero_point, r.qmax - r.zero_point
    rounding, clipping = reference_loss(counts, edges, zeros, r.scale, lo, hi, atoms)
    assert s.rounding_loss == pytest.approx(rounding, rel=1e-9)
    assert s.clipping_loss == pytest.approx(clipping, rel=1e-9)
    # a (counts, edges) pair is scored as search reads it
    pair = qfcal.score((hb.counts, hb.edges), r)
    assert pair.scale == r.scale and pair.mse > 0


def test_score_errors_name_the_argument():
    r = qfcal.search(hist_of(samples(1)[0]))
    with pytest.raises(qfcal.EmptyHistogramError):
        qfcal.score(qfcal.Histogram(), r)
    with pytest.raises(ValueError, match="gamma must be a positive finite number, got -1"):
        qfcal.score(hist_of([1.0, 2.0]), r, gamma=-1.0)
    with pytest.raises(TypeError, match="hist must be a qfcal.Histogram or a"):
        qfcal.score(3, r)
    with pytest.raises(TypeError):
        qfcal.score(hist_of([1.0]), "not a result")


def test_held_out_errors_are_leave_one_out_by_hand():
    xs = samples(3, seed=2, size=500)
    hs = [hist_of(x) for x in xs]
    errors = held_out_errors(hs, gammas=[1.0, 4.0], bits=4)
    for gamma, got in errors.items():
        want = 0.0
        for i in range(3):
            train = [h for j, h in enumerate(hs) if j != i]
            r = qfcal.search(train[0] + train[1], gamma=gamma, bits=4)
            want += qfcal.score(hs[i], r, gamma=1.0).mse * hs[i].finite
        assert got == pytest.approx(want, rel=1e-12)


def test_cross_validate_keeps_the_gamma_of_least_held_out_error():
    hs = [hist_of(x) for x in samples(12, seed=3)]
    for bits in (8, 4):
        errors = held_out_errors(hs, bits=bits)
        best = min(errors, key=lambda g: (errors[g], g))
        r = qfcal.cross_validate(hs, bits=bits)
        merged = hs[0].copy()
        for h in hs[1:]:
            merged.merge(h)
        assert r == qfcal.search(merged, gamma=best, bits=bits)
        assert r.gamma == best
    # heavy tails at 8 bits: the plain squared-error optimum clips values unseen samples hold
    e8 = held_out_errors(hs, bits=8)
    assert min(e8, key=e8.__getitem__) > 1.0
    r8 = qfcal.cross_validate(hs, bits=8)
    assert r8.max - r8.min > qfcal.search(merged, bits=8).max - qfcal.search(merged, bits=8).min


def test_folds_group_consecutive_histograms():
    hs = [hist_of(x) for x in samples(6, seed=4, size=300)]
    two = held_out_errors(hs, folds=2, gammas=[1.0], bits=5)
    a, b = hs[0] + hs[1] + hs[2], hs[3] + hs[4] + hs[5]
    want = sum(
        qfcal.score(test, qfcal.search(train, bits=5), gamma=1.0).mse * test.finite
        for train, test in ((b, a), (a, b))
    )
    assert two[1.0] == pytest.approx(want, rel=1e-12)
    assert held_out_errors(hs, folds=6, bits=5) == held_out_errors(hs, bits=5)


def test_ties_keep_the_smallest_gamma():
    # values only at the extremes and zero (point masses), the same in every sample: every
    # gamma finds a grid through them exactly
    values = np.repeat(np.array([-1.0, 0.0, 2.0], np.float32), 10)
    hs = [hist_of(values) for _ in range(4)]
    r = qfcal.cross_validate(hs, bits=2)  # levels -1, 0, 1, 2 at scale 1
    assert set(held_out_errors(hs, bits=2).values()) == {0.0}
    assert r.mse == 0.0 and r.gamma == min(DEFAULT_GAMMAS)


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"hists": qfcal.Histogram()}, TypeError, "sequence of qfcal.Histogram"),
        ({"hists": [qfcal.Histogram(), 3]}, TypeError, r"hists\[1\] must be a qfcal.Histogram"),
        ({"hists": [hist_of([1.0], 64), hist_of([2.0], 128)]}, ValueError, "same bins"),
        ({"hists": [hist_of([1.0]), qfcal.Histogram()]}, ValueError, "at least two"),
        ({"folds": 1}, ValueError, r"folds must be an int in 2..=3 \(the histograms with"),
        ({"folds": 4}, ValueError, "got 4"),
        ({"gammas": []}, ValueError, "gammas must be positive finite"),
        ({"gammas": [1.0, float("nan")]}, ValueError, "gammas must be positive finite"),
        ({"gamma": 2.0}, TypeError, "pass the candidates as gammas="),
        ({"bits": 99}, ValueError, "bits must be in 2..=16, got 99"),
        ({"method": "best"}, ValueError, "method must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, exc, message):
    call = {"hists": [hist_of([1.0, -2.0]), hist_of([3.0]), hist_of([0.5, 4.0])], **kwargs}
    with pytest.raises(exc, match=message):
        qfcal.cross_validate(**call)


def test_readme_example_runs():
    from readme_examples import run

    rng = np.random.default_rng(5)
    acts = [rng.standard_t(3, 1000).astype(np.float32) for _ in range(6)]
    ns = run("crossval", {"qfcal": qfcal, "activations_per_image": acts})
    r = ns["r"]
    assert isinstance(r, qfcal.SearchResult) and r.gamma in DEFAULT_GAMMAS
