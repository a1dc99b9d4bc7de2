"""Range searches: invariants of every method, optimality of ``optimal`` against the other
methods and against a brute-force grid under an independent reference of the cost model,
scale equivariance, and monotonicity in the number of bits (one function under test, one file)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import qfcal
from conftest import (
    FIT_TOLERANCE_STORED,
    data_histograms,
    fitting_windows,
    grid_range,
    hist_of,
    make_data,
    reference_loss,
    reference_loss_grid,
    reference_mean_square,
    run_isolated,
    search_density,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

METHODS = qfcal.methods()
OTHERS = [m for m in METHODS if m != "optimal"]


@st.composite
def search_options(draw, max_bits: int = 10, min_percentile: float = 50.0, min_levels: int = 2):
    """Keyword arguments for ``search`` (without ``method``): grid options, gamma, percentile."""
    bits = draw(st.integers(2, max_bits))
    signed = draw(st.booleans())
    symmetric = draw(st.booleans())
    narrow_range = draw(st.booleans())
    kw = {"bits": bits, "signed": signed, "symmetric": symmetric, "narrow_range": narrow_range}
    lo, hi = grid_range(bits, signed, narrow_range)
    explicit = draw(st.sampled_from(["none", "none", "qmin", "qmax", "both"]))
    if explicit == "qmin":
        kw["qmin"] = draw(st.integers(max(hi - 300, -65536), hi - min_levels + 1))
    elif explicit == "qmax":
        kw["qmax"] = draw(st.integers(lo + min_levels - 1, lo + 300))
    elif explicit == "both":
        qmin = draw(st.integers(-300, 300))
        kw["qmin"] = qmin
        kw["qmax"] = qmin + draw(st.integers(min_levels - 1, 300))
    kw["gamma"] = draw(st.one_of(st.just(1.0), st.floats(0.05, 20.0)))
    kw["percentile"] = draw(st.one_of(st.just(100.0), st.floats(min_percentile, 100.0)))
    return kw


def data_range(counts, edges, zeros, atoms) -> tuple[float, float]:
    """Least and greatest value of a density (zeros included)."""
    ends = [x for x, _ in atoms] + ([0.0] if zeros else [])
    nz = np.flatnonzero(np.asarray(counts) > 0)
    if len(nz):
        ends += [float(edges[nz[0]]), float(edges[nz[-1] + 1])]
    return (min(ends), max(ends)) if ends else (0.0, 0.0)


def check_result(r: qfcal.SearchResult, hist, kw: dict, method: str, values=None) -> None:
    """Every documented invariant of a SearchResult, and its loss against the reference
    (`values`: the data a Histogram holds, for its exact extremes)."""
    gamma = kw.get("gamma", 1.0)
    qmin, qmax = grid_range(
        kw.get("bits", 8),
        kw.get("signed", True),
        kw.get("narrow_range", False),
        kw.get("qmin"),
        kw.get("qmax"),
    )
    assert isinstance(r, qfcal.SearchResult)
    assert r.method == method
    assert r.gamma == gamma
    assert (r.qmin, r.qmax) == (qmin, qmax)
    assert isinstance(r.zero_point, int)
    assert qmin <= r.zero_point <= qmax
    # scale: a positive, finite float32 value
    assert math.isfinite(r.scale) and r.scale > 0
    assert float(np.float32(r.scale)) == r.scale
    # the range is exactly the grid ends and holds zero
    assert r.min == (qmin - r.zero_point) * r.scale
    assert r.max == (qmax - r.zero_point) * r.scale
    assert r.min <= 0.0 <= r.max
    if kw.get("symmetric", False):
        assert r.zero_point == (qmin + qmax + 1) // 2
        if kw.get("signed", True) and "qmin" not in kw and "qmax" not in kw:
            assert r.zero_point == 0
    # the loss decomposition
    assert r.rounding_loss >= 0.0 and r.clipping_loss >= 0.0
    assert r.loss == r.rounding_loss + gamma * r.clipping_loss
    assert r.mse == r.rounding_loss + r.clipping_loss
    # the reported losses agree with an independent reference of the cost model
    counts, edges, zeros, atoms = search_density(hist, values)
    lo, hi = qmin - r.zero_point, qmax - r.zero_point
    rounding, clipping = reference_loss(counts, edges, zeros, r.scale, lo, hi, atoms)
    assert r.rounding_loss == pytest.approx(rounding, rel=1e-9, abs=0.0)
    assert r.clipping_loss == pytest.approx(clipping, rel=1e-9, abs=0.0)
    # no range reaches more than half a step beyond the data (the float32 scale aside)
    d_lo, d_hi = data_range(counts, edges, zeros, atoms)
    if d_lo < d_hi:
        assert fitting_windows(
            [r.scale], [lo], hi - lo, d_lo, d_hi, kw.get("symmetric", False), FIT_TOLERANCE_STORED
        )[0, 0], (r, d_lo, d_hi)
    # SQNR from the signal power of the same density
    power = reference_mean_square(counts, edges, zeros, atoms)
    if r.mse == 0.0:
        assert r.sqnr_db == math.inf
    else:
        assert r.sqnr_db == pytest.approx(10.0 * math.log10(power / r.mse), rel=1e-9, abs=1e-9)


def test_methods_lists_every_method_optimal_first():
    assert METHODS == ["optimal", "greedy", "tf_enhanced", "entropy", "percentile", "minmax"]
    assert qfcal.methods() is not qfcal.methods()  # a fresh list each time


@settings(max_examples=40)
@given(data_histograms(), search_options(), st.sampled_from(METHODS))
def test_search_invariants(hv, kw, method):
    h, values = hv
    r = qfcal.search(h, method=method, **kw)
    check_result(r, h, kw, method, values)


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_search_invariants_high_bits(bits, symmetric):
    rng = np.random.default_rng(bits + symmetric)
    x = make_data("heavy", rng, 20_000)
    h = hist_of(x, 1024)
    for method in METHODS:
        kw = {"bits": bits, "symmetric": symmetric, "gamma": 2.0}
        check_result(qfcal.search(h, method=method, **kw), h, kw, method, x)


def float32_slack(hist) -> float:
    """The loss the stored scale alone can cost: rounding Δ to float32, then to a float32 that
    TensorFlow's FakeQuant reproduces (at most a few float32 steps away; 2 measured over 12,000
    random scales), moves the levels by up to 4·max|x|·2**-24, so losses closer than its square
    are ties. Negligible except for near-point masses, where every loss is that small."""
    edges = hist.edges if isinstance(hist, qfcal.Histogram) else hist[1]
    if len(edges) == 0:
        return 0.0
    return (4.0 * max(abs(edges[0]), abs(edges[-1])) * 2.0**-24) ** 2


# Found by this test: optimal is 63% worse than entropy here (near-constant data).
NEAR_CLUSTER_13 = np.array(
    [-1.5242224, -1.5243399, -1.524609, -1.5244175, -1.5244899, -1.5243996, -1.524605,
     -1.5243887, -1.5243894, -1.5242327, -1.52438, -1.5243573, -1.5245916],
    dtype=np.float32,
)  # fmt: skip
NEAR_CONSTANT = np.array(
    [0.005039671435952187, 0.005041306838393211, 0.005041846539825201, 0.005041580647230148,
     0.005047136917710304, 0.005044884048402309, 0.005047884304076433, 0.005043171811848879,
     0.005044508725404739, 0.005045040510594845, 0.00504675880074501, 0.0050403582863509655,
     0.0050492603331804276],
    dtype=np.float32,
)  # fmt: skip


@pytest.mark.parametrize("method", OTHERS)
@settings(max_examples=25)
@given(hv=data_histograms(), kw=search_options())
@example(
    hv=(hist_of(NEAR_CONSTANT, 64), NEAR_CONSTANT),
    kw={"bits": 4, "signed": False, "symmetric": True, "narrow_range": False, "gamma": 0.1},
)
# Found by this test: optimal is 22% worse than greedy here (two values, 133 levels).
@example(
    hv=(hist_of(np.array([6.5, 38.0], np.float32), 256), np.array([6.5, 38.0], np.float32)),
    kw={"bits": 2, "signed": False, "qmax": 132},
)
def test_optimal_is_never_worse_than_another_method(method, hv, kw):
    # 1e-6 relative is the precision optimal promises: among costs that close it keeps the
    # smallest scale (a near-constant tensor fits many grid points about equally well).
    h, _ = hv
    best = qfcal.search(h, method="optimal", **kw)
    r = qfcal.search(h, method=method, **kw)
    assert best.loss <= r.loss * (1 + 1e-6) + float32_slack(h), (best, r)


def _sparse_case(seed: int, n: int, tail: float) -> None:
    x = (np.random.default_rng(seed).standard_t(tail, n) * 1000).astype(np.float32)
    h = hist_of(x)
    best = qfcal.search(h)
    for kw in ({"gamma": 3.0}, {"gamma": 0.3}, {"method": "greedy"}, {"method": "tf_enhanced"}):
        r = qfcal.search(h, **kw)
        assert best.mse <= r.mse * (1 + 1e-6), (kw, best, r)


@settings(max_examples=80)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(200, 3000), tail=st.sampled_from([3.0, 30.0]))
def test_optimal_on_sparse_histograms_beats_its_own_gamma_3_result(seed, n, tail):
    """A few thousand values over 4096 bins: the cost is a comb of narrow dips. Found by the
    calibration shoot-out: optimal at gamma 1 was 0.6% worse, at gamma 1, than its own gamma-3
    result on a random network's activations (1,600 values)."""
    _sparse_case(seed, n, tail)


def test_optimal_with_a_lone_extreme_outlier():
    """Was a known gap (0.09% behind greedy: the dip where a grid point meets a lone outlier
    was missed, found in CI); closed since the extremes are exact point masses, where a grid
    point can sit."""
    _sparse_case(17080, 272, 1.5)


@st.composite
def small_pairs(draw):
    """A small ``(counts, edges)`` pair: 8..40 bins, uneven widths, empty bins, any offset."""
    n = draw(st.integers(8, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = draw(st.sampled_from(["flat", "peaked", "sparse", "tail"]))
    if shape == "flat":
        counts = rng.integers(0, 20, n)
    elif shape == "peaked":
        x = np.linspace(-3, 3, n) - rng.normal()
        counts = np.round(1000 * np.exp(-0.5 * x * x)).astype(np.int64)
    elif shape == "sparse":
        counts = rng.integers(0, 100, n) * (rng.random(n) < 0.3)
    else:
        counts = np.round(1000 / (1 + np.arange(n)) ** 2).astype(np.int64)[:: rng.choice([-1, 1])]
    counts = counts.astype(np.float64)
    counts[rng.integers(n)] += 1
    widths = rng.uniform(0.2, 1.0, n) if draw(st.booleans()) else np.ones(n)
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    offset = draw(st.sampled_from([0.0, -0.5, -1.0, 0.25])) * edges[-1]
    scale = 10.0 ** draw(st.integers(-3, 3))
    return counts, (edges + offset) * scale


@settings(max_examples=25)
@given(
    small_pairs(),
    st.integers(2, 4),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0.3, 1.0, 1.0, 4.0]),
)
# Found by this test: scale=1.0228279 (float32), zero_point=0 costs 0.0708536, 2.7% below
# what optimal returns (0.0728085).
@example(
    pair=(np.array([0.0] * 8 + [1, 0, 28, 0, 0, 0, 0, 17]), np.arange(17.0)),
    bits=4,
    signed=False,
    symmetric=False,
    narrow=False,
    gamma=0.3,
)
def test_optimal_beats_a_dense_brute_force_grid(pair, bits, signed, symmetric, narrow, gamma):
    counts, edges = pair
    kw = {
        "bits": bits,
        "signed": signed,
        "symmetric": symmetric,
        "narrow_range": narrow,
        "gamma": gamma,
    }
    r = qfcal.search((counts, edges), **kw)
    check_result(r, (counts, edges), kw, "optimal")
    qmin, qmax = grid_range(bits, signed, narrow)
    steps = qmax - qmin
    if symmetric:
        lows = np.array([qmin - (qmin + qmax + 1) // 2])
    else:
        lows = np.arange(-steps, 1)
    max_abs = max(abs(edges[0]), abs(edges[-1]))
    scales = np.geomspace(max_abs / steps / 64, 4 * max_abs, 2500)
    d_lo, d_hi = data_range(counts, edges, 0, [])
    best = math.inf
    for chunk in np.array_split(scales, 10):
        rounding, clipping = reference_loss_grid(counts, edges, 0, chunk, lows, steps)
        cost = rounding + gamma * clipping
        fits = fitting_windows(chunk, lows, steps, d_lo, d_hi, symmetric)
        best = min(best, float(np.where(fits, cost, np.inf).min()))
    assert r.loss <= best * (1 + 1e-6), (r, best)


@settings(max_examples=15)
@given(st.integers(0, 2**32 - 1), st.integers(2, 3), st.booleans(), st.sampled_from([1.0, 2.0]))
def test_optimal_beats_brute_force_on_a_histogram_with_zeros(seed, bits, signed, gamma):
    rng = np.random.default_rng(seed)
    x = make_data(rng.choice(["relu", "bimodal", "normal"]), rng, 300, np.float64)
    x[: rng.integers(0, 150)] = 0.0
    h = hist_of(x, int(rng.integers(16, 33)))
    assume(h.nonzero > 0)
    r = qfcal.search(h, bits=bits, signed=signed, gamma=gamma)
    kw = {"bits": bits, "signed": signed, "gamma": gamma}
    check_result(r, h, kw, "optimal", x)
    qmin, qmax = grid_range(bits, signed)
    steps = qmax - qmin
    counts, edges, zeros, atoms = search_density(h, x)
    max_abs = max(abs(h.edges[0]), abs(h.edges[-1]))
    scales = np.geomspace(max_abs / steps / 64, 4 * max_abs, 2500)
    lows = np.arange(-steps, 1)
    rounding, clipping = reference_loss_grid(counts, edges, zeros, scales, lows, steps, atoms)
    d_lo, d_hi = data_range(counts, edges, zeros, atoms)
    fits = fitting_windows(scales, lows, steps, d_lo, d_hi, False)
    best = float(np.where(fits, rounding + gamma * clipping, np.inf).min())
    assert r.loss <= best * (1 + 1e-6), (r, best)


def test_reference_grid_agrees_with_reference_loss():
    """The two reference implementations used above agree with each other."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 9, 12).astype(np.float64)
    counts[3] = 5
    edges = np.cumsum(np.r_[-2.0, rng.uniform(0.1, 1.0, 12)])
    scales = np.array([0.05, 0.3, 0.77, 2.5])
    lows = np.arange(-7, 1)
    rounding, clipping = reference_loss_grid(counts, edges, 3, scales, lows, 7)
    for i, s in enumerate(scales):
        for j, lo in enumerate(lows):
            want = reference_loss(counts, edges, 3, s, lo, lo + 7)
            assert rounding[i, j] == pytest.approx(want[0], rel=1e-12)
            assert clipping[i, j] == pytest.approx(want[1], rel=1e-12)
    # and a hand-computed case: one bin [0, 1) of 1 value, grid step 1, levels {0, 1}
    r, c = reference_loss([1.0], [0.0, 1.0], 0, 1.0, 0, 1)
    assert (r, c) == (pytest.approx(1 / 12), 0.0)
    # the same bin with one zero, levels {-1, 0, 1} at step 0.5: clipped above 0.5, rounded to
    # 0 on [0, 0.25) and to 0.5 on [0.25, 0.5); averaged over 2 values
    r, c = reference_loss([1.0], [0.0, 1.0], 1, 0.5, -1, 1)
    assert c == pytest.approx((0.5**3 / 3) / 2, rel=1e-12)
    assert r == pytest.approx((2 * 0.25**3 / 3) / 2, rel=1e-12)


@st.composite
def float64_data(draw):
    kind = draw(st.sampled_from(["normal", "relu", "heavy", "bimodal", "uniform", "positive"]))
    seed = draw(st.integers(0, 2**32 - 1))
    x = make_data(kind, np.random.default_rng(seed), draw(st.integers(2, 2000)), np.float64)
    if draw(st.booleans()):
        x[: draw(st.integers(0, len(x) // 2))] = 0.0
    return x


def assert_equivariant(r1, r2, k):
    """``r2`` is ``r1`` for data times 2**k: the same zero point, the scale times 2**k."""
    assert r2.zero_point == r1.zero_point, (r1, r2)
    assert r2.scale == math.ldexp(r1.scale, k), (r1, r2)
    assert r2.min == math.ldexp(r1.min, k) and r2.max == math.ldexp(r1.max, k)
    assert r2.loss == pytest.approx(math.ldexp(r1.loss, 2 * k), rel=1e-12), (r1, r2)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=20)
@given(
    x=float64_data(),
    k=st.integers(-12, 12).filter(bool),
    # two-level grids (which cannot hold both signs) have their own test below
    kw=search_options(max_bits=8, min_percentile=90.0, min_levels=3),
)
# Found by this test: optimal on the doubled data is 41% worse than on the data.
@example(
    x=np.array([0.0, 5.0, 5.0, 5.0, 17.0]),
    k=1,
    kw={"bits": 2, "signed": False, "symmetric": True, "qmin": -273},
)
def test_scale_equivariance_of_histograms(method, x, k, kw):
    h1 = hist_of(x, 512)
    h2 = hist_of(np.ldexp(x, k), 512)
    # at most half zeros: percentile ranges >= 90 never collapse to {0} (tested on its own)
    assume(h1.nonzero > 0 and h1.zeros <= h1.finite // 2)
    # the histogram itself is equivariant
    assert np.array_equal(h1.counts, h2.counts)
    assert h2.bin_width == math.ldexp(h1.bin_width, k)
    assert np.array_equal(h2.edges, np.ldexp(h1.edges, k))
    assert h2.zeros == h1.zeros
    r1 = qfcal.search(h1, method=method, **kw)
    r2 = qfcal.search(h2, method=method, **kw)
    assert_equivariant(r1, r2, k)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=20)
@given(
    pair=small_pairs(),
    k=st.integers(-12, 12).filter(bool),
    kw=search_options(max_bits=8, min_percentile=90.0, min_levels=3),
)
# Found by this test: optimal breaks a tie between two encodings differently after scaling.
@example(
    pair=(np.array([0.0, 0, 0, 1, 0, 0, 0, 1]), np.arange(-8.0, 1.0)),
    k=-1,
    kw={"bits": 2, "signed": False, "symmetric": True},
)
def test_scale_equivariance_of_counts_edges_pairs(method, pair, k, kw):
    counts, edges = pair
    r1 = qfcal.search((counts, edges), method=method, **kw)
    r2 = qfcal.search((counts, np.ldexp(edges, k)), method=method, **kw)
    assert_equivariant(r1, r2, k)


@settings(max_examples=30)
@given(
    data_histograms(),
    st.integers(2, 9),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.floats(1.0, 10.0),
)
# Found by this test once the stored scale had to be one TensorFlow reproduces: a cluster of 13
# values near -1.5244; the 8-bit optimum's window had no reproducible scale nearby, and the
# next windows do (see optimal.rs, `reproducible`).
@example(
    hv=(
        hist_of(NEAR_CLUSTER_13, 2048),
        NEAR_CLUSTER_13,
    ),
    bits=7, signed=False, symmetric=False, narrow=False, gamma=1.0,
)  # fmt: skip
def test_more_bits_never_raise_the_optimal_loss(hv, bits, signed, symmetric, narrow, gamma):
    # The b-bit optimum's window on the grid of b + 1 bits at half its scale (every level of it
    # kept, half a new step more at the top) rounds no value worse and clips none more: when
    # that window fits the data (reaches at most half a step beyond it, as every searched
    # window must), the optimum of b + 1 bits is at most the optimum of b bits. (It need not
    # fit: a few values on a coarse grid that a finer grid may not reach past. Then more bits
    # can cost more on the histogram, and the test says nothing.)
    h, values = hv
    kw = {"signed": signed, "symmetric": symmetric, "narrow_range": narrow, "gamma": gamma}
    lo = qfcal.search(h, bits=bits, **kw)
    qmin, qmax = grid_range(bits + 1, signed, narrow)
    if symmetric:
        low = qmin - (qmin + qmax + 1) // 2
    else:
        low = 2 * (lo.qmin - lo.zero_point)
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    fits = fitting_windows(
        [lo.scale / 2], [low], qmax - qmin, float(v.min()), float(v.max()), symmetric
    )[0, 0]
    covers = low * lo.scale / 2 <= lo.min and (low + qmax - qmin) * lo.scale / 2 >= lo.max
    assume(fits and covers)
    hi = qfcal.search(h, bits=bits + 1, **kw)
    assert hi.loss <= lo.loss * (1 + 1e-9) + float32_slack(h), (lo, hi)


def tf_nudge(lo: float, hi: float, steps: int) -> tuple[float, float, float]:
    """TensorFlow's FakeQuant nudging of the float32 attributes ``min``/``max``, in float32."""
    f = np.float32
    mn, mx = f(lo), f(hi)
    scale = (mx - mn) / f(steps)
    zp = np.round(f(0) - mn / scale)
    return float((f(0) - zp) * scale), float((f(steps) - zp) * scale), float(scale)


def converter_scale(lo: float, hi: float, steps: int) -> tuple[float, int]:
    """The TFLite converter's scale and zero-point offset for a FakeQuant's float32 attributes:
    the same formula in double, rounded once to float32 when written."""
    mn, mx = float(np.float32(lo)), float(np.float32(hi))
    scale = (mx - mn) / steps
    return float(np.float32(scale)), round(-mn / scale)


def tf_reproduces(scale: float, low: int, steps: int) -> bool:
    """Both TensorFlow paths, the FakeQuant kernel's (float32) and the converter's (double),
    turn min/max back into exactly `scale` and the zero point `-low` (above qmin)."""
    lo, hi = low * scale, (low + steps) * scale
    nmin, nmax, nscale = tf_nudge(lo, hi, steps)
    kernel = nscale == scale and nmin == float(np.float32(lo)) and nmax == float(np.float32(hi))
    return kernel and converter_scale(lo, hi, steps) == (scale, -low)


def test_minmax_places_the_data_range_as_tensorflow_and_onnx_runtime_do(sample_histogram):
    """min/max: on an asymmetric grid the scale (max - min) / steps and the zero point rounded
    to an integer (TensorFlow's FakeQuant nudging, ONNX Runtime's MinMax), so each end lies
    within half a step of the data's; on a symmetric grid the range covers max |x| exactly."""
    h = sample_histogram
    lo, hi = min(h.min, 0.0), max(h.max, 0.0)
    for kw in [{}, {"symmetric": True}, {"signed": False}, {"bits": 4, "narrow_range": True}]:
        r = qfcal.search(h, method="minmax", **kw)
        qmin, qmax = grid_range(kw.get("bits", 8), kw.get("signed", True), kw.get("narrow_range"))
        half = r.scale * (0.5 + FIT_TOLERANCE_STORED)
        if kw.get("symmetric"):
            assert r.min <= lo and r.max >= hi
            assert min(-r.min, r.max) <= max(-lo, hi) + half
            continue
        assert abs(r.min - lo) <= half and abs(r.max - hi) <= half
        # the nudged scale, as a float32 value TensorFlow reproduces
        want = (hi - lo) / (qmax - qmin)
        assert r.scale == pytest.approx(want, rel=1e-5)
        assert r.zero_point == qmin + round(-lo / want)
        assert tf_reproduces(r.scale, qmin - r.zero_point, qmax - qmin)


@settings(max_examples=40)
@given(hv=data_histograms(), kw=search_options())
# Found by this test: one value on a 512-level grid; the window with one level below zero had
# no reproducible scale within the 64 float32 steps the core tried (the nearest is 129 away).
@example(
    hv=(hist_of(np.array([83.79055], np.float32), 64), np.array([83.79055], np.float32)),
    kw={"bits": 9, "signed": False, "symmetric": False, "narrow_range": False, "gamma": 0.5},
)
def test_tensorflow_fake_quant_reproduces_every_range(hv, kw):
    h, _ = hv
    for m in qfcal.methods():
        r = qfcal.search(h, method=m, **kw)
        low = r.qmin - r.zero_point
        assert tf_reproduces(r.scale, low, r.qmax - r.qmin), (m, r)


def test_percentile_100_is_minmax(sample_histogram):
    for kw in [{}, {"symmetric": True}, {"signed": False, "bits": 5}]:
        a = qfcal.search(sample_histogram, method="percentile", percentile=100.0, **kw)
        b = qfcal.search(sample_histogram, method="minmax", **kw)
        assert (a.scale, a.zero_point) == (b.scale, b.zero_point), kw


def test_percentile_range_grows_with_the_percentile(sample_histogram):
    spans = [
        qfcal.search(sample_histogram, method="percentile", percentile=p).max
        - qfcal.search(sample_histogram, method="percentile", percentile=p).min
        for p in (90.0, 99.0, 99.9, 100.0)
    ]
    assert spans == sorted(spans) and spans[0] < spans[-1]


def test_zeros_only_histogram_is_searchable_at_no_cost():
    h = hist_of(np.zeros(10, dtype=np.float32), 16)
    for method in METHODS:
        r = qfcal.search(h, method=method)
        check_result(r, h, {}, method)
        assert r.loss == 0.0 and r.mse == 0.0
        assert r.sqnr_db == math.inf


def test_histogram_and_its_counts_edges_give_the_same_result():
    """A histogram's density is its bins cut at the exact extremes, with the values equal to
    those as point masses: the same searches as the (counts, edges) pair of that density
    where it has no point mass (values with distinct extremes inside bins)."""
    x = np.random.default_rng(3).standard_normal(4000).astype(np.float32)
    h = hist_of(x, 300)
    assert h.zeros == 0 and h.at_extremes == (1, 1)
    counts, edges, _, atoms = search_density(h, x)
    for method in METHODS:
        a = qfcal.search(h, method=method, bits=6)
        check_result(a, h, {"bits": 6}, method, x)
        # the pair of the bins alone is the same density but for the two extreme values
        b = qfcal.search((h.counts, h.edges), method=method, bits=6)
        c = qfcal.search([h.counts.tolist(), h.edges.tolist()], method=method, bits=6)
        assert b == c, method
    assert [m for _, m in atoms] == [1.0, 1.0]
    # zeros are part of the histogram's density: the pair without them is a different density
    y = np.concatenate([x, np.zeros(500, np.float32)])
    g = hist_of(y, 300)
    assert qfcal.search(g) != qfcal.search((g.counts, g.edges))


def test_search_is_deterministic_and_leaves_the_histogram_alone(sample_histogram):
    before = sample_histogram.to_bytes()
    for method in METHODS:
        a = qfcal.search(sample_histogram, method=method, bits=5)
        b = qfcal.search(copy.deepcopy(sample_histogram), method=method, bits=5)
        c = qfcal.search(pickle.loads(pickle.dumps(sample_histogram)), method=method, bits=5)
        assert a == b == c
        assert not (a != b)
    assert sample_histogram.to_bytes() == before
    assert qfcal.search(sample_histogram, bits=5) != qfcal.search(sample_histogram, bits=6)


def test_search_result_is_frozen(sample_histogram):
    r = qfcal.search(sample_histogram)
    with pytest.raises(AttributeError):
        r.scale = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.zero_point = 0  # type: ignore[misc]


def test_search_result_repr_is_short_and_informative(sample_histogram):
    for method in METHODS:
        r = qfcal.search(sample_histogram, method=method)
        text = repr(r)
        assert text.startswith("SearchResult(") and text.endswith(")")
        assert len(text) < 200 and "\n" not in text and "[" not in text
        assert method in text
        assert f"zero_point={r.zero_point}," in text
        fields = dict(part.split("=", 1) for part in text[len("SearchResult(") : -1].split(", "))
        for name in ("scale", "min", "max", "loss"):
            assert float(fields[name]) == pytest.approx(getattr(r, name), rel=1e-5), name
        assert float(fields["sqnr_db"]) == pytest.approx(r.sqnr_db, abs=0.006)


@pytest.mark.parametrize("method", METHODS)
def test_searches_of_torch_histc_output(method):
    torch = pytest.importorskip("torch")
    t = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    counts = torch.histc(t, bins=64, min=-4.0, max=4.0)
    edges = torch.linspace(-4.0, 4.0, 65)
    r = qfcal.search((counts, edges), method=method, bits=4)
    want = qfcal.search(
        (counts.numpy().astype(np.float64), edges.numpy().astype(np.float64)),
        method=method,
        bits=4,
    )
    assert r == want
    check_result(r, (counts.numpy(), edges.numpy()), {"bits": 4}, method)


def test_percentile_scale_follows_the_data_when_most_values_are_zero():
    """BUG: with more zeros than the percentile leaves out (sparse activations), the percentile
    range collapses to {0} and the method returns scale=1 whatever the data's magnitude."""
    x = np.zeros(1_000_000, dtype=np.float32)
    x[:50] = np.random.default_rng(0).uniform(0.0, 1e-3, 50)
    r1 = qfcal.search(hist_of(x), method="percentile")
    r2 = qfcal.search(hist_of(x * 1024), method="percentile")
    assert (r2.scale, r2.zero_point) == (1024 * r1.scale, r1.zero_point), (r1, r2)
    # a range of [-127, 128] for values below 1e-3 keeps no signal at all
    assert r1.max <= 1.0, r1


@pytest.mark.parametrize("method", OTHERS)
@pytest.mark.parametrize("kw", [{"qmin": -1, "qmax": 0}, {"qmin": 0, "qmax": 1, "symmetric": True}])
def test_two_level_grids_still_follow_the_data(method, kw):
    """BUG: a two-level grid has the windows {-Δ, 0} and {0, Δ} (free zero point) or only
    {-Δ, 0} (symmetric: the zero point is qmax); no window covers data of both signs, and the
    covering rule then falls back to scale=1 whatever the data's magnitude."""
    x = np.array([-3.0, -1.0, -0.5, 2.0, 0.25], dtype=np.float32)
    r1 = qfcal.search(hist_of(x, 64), method=method, **kw)
    r2 = qfcal.search(hist_of(x * 1024, 64), method=method, **kw)
    assert (r2.scale, r2.zero_point) == (1024 * r1.scale, r1.zero_point), (r1, r2)


def test_search_of_float64_data_beyond_the_float32_scale_range():
    """BUG: float64 data whose range needs a scale above float32's maximum gives scale=inf and
    NaN min/max/loss, and ``optimal`` never returns (it grows memory until the process aborts).
    A search must either raise ValueError or return a valid encoding."""
    code = textwrap.dedent(
        """
        import json, numpy as np, qfcal
        h = qfcal.Histogram(64)
        h.update(np.array([-1e300, 5.0, 2e300]))
        out = {}
        for m in qfcal.methods():
            try:
                r = qfcal.search(h, method=m)
                out[m] = [r.scale, r.min, r.max, r.loss]
            except ValueError as e:
                out[m] = str(e)
            print(json.dumps({m: out[m]}), flush=True)
        """
    )
    proc = run_isolated(code, memory=3 << 29)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-500:])
    for line in proc.stdout.splitlines():
        ((method, got),) = json.loads(line).items()
        if isinstance(got, str):
            continue  # a ValueError is an acceptable answer
        scale, lo, hi, loss = got
        assert math.isfinite(scale) and lo <= 0.0 <= hi and not math.isnan(loss), (method, got)


def test_search_result_pickles_and_copies_as_a_value():
    h = qfcal.Histogram()
    h.update(np.random.default_rng(2).normal(size=5000))
    for method in qfcal.methods():
        r = qfcal.search(h, bits=6, gamma=2.0, method=method)
        back = pickle.loads(pickle.dumps(r))
        assert back == r and repr(back) == repr(r)
        assert (back.loss, back.mse, back.sqnr_db, back.gamma) == (r.loss, r.mse, r.sqnr_db, 2.0)
        assert copy.copy(r) is r and copy.deepcopy(r) is r
    with pytest.raises(ValueError, match="not a SearchResult's state"):
        qfcal._core._search_result(0.1, 300, -128, 127, 0.0, 0.0, 1.0, 1.0, "optimal")
    with pytest.raises(ValueError, match="method"):
        qfcal._core._search_result(0.1, 0, -128, 127, 0.0, 0.0, 1.0, 1.0, "kl")


def test_optimal_finds_the_narrow_basin_of_a_real_relu_histogram() -> None:
    """A real ReLU output (a Fashion-MNIST MobileNet's head, 53% exact zeros, 2,163 occupied
    bins) whose cost has dips a fraction of a percent wide: the scan's basin is at scale
    1.2938e-4, the deepest dip (which entropy nearly hits) at 1.2826e-4, 0.2% lower. Missed
    until the full-histogram comb around the best point (stage 2a)."""
    data = (Path(__file__).parent / "data" / "relu_head_missed_basin.qfcalhist").read_bytes()
    h = qfcal.Histogram.from_bytes(data)
    best = qfcal.search(h, bits=8)
    for method in qfcal.methods():
        other = qfcal.search(h, bits=8, method=method)
        assert best.loss <= other.loss * (1 + 1e-6), (method, other.scale, best.scale)
