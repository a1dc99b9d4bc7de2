"""qfcal.search_weights: each weight channel's least-squared-error scale, from exact values."""

from __future__ import annotations

import numpy as np
import pytest
import qfcal
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


def errors(w: np.ndarray, scale: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per-row mean squared error of quantize-then-dequantize, as the runtimes compute it."""
    s = scale.astype(np.float32).reshape(-1, 1)
    q = np.clip(np.rint(w / s), lo, hi)
    return ((w.astype(np.float64) - q * s.astype(np.float64)) ** 2).mean(axis=1)


weights = arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(1, 40)),
    elements=st.floats(-8, 8, width=32),
)


@settings(max_examples=60, deadline=None)
@given(w=weights, grid=st.sampled_from([(8, True), (8, False), (4, True), (3, False)]))
def test_never_worse_than_min_max_or_the_frameworks_scale(
    w: np.ndarray, grid: tuple[int, bool]
) -> None:
    bits, narrow = grid
    r = qfcal.search_weights(w, axis=0, bits=bits, narrow_range=narrow)
    lo, hi = r.qmin - r.zero_point, r.qmax - r.zero_point
    live = np.abs(w).max(axis=1) > 0
    assert (r.scale[~live] == 0).all() and (r.mse[~live] == 0).all()
    np.testing.assert_allclose(r.mse[live], errors(w, r.scale, lo, hi)[live], rtol=1e-9, atol=0)
    assert (r.mse <= r.minmax_mse).all()
    m = np.abs(w).max(axis=1)
    own = (m / min(-lo, hi)).astype(np.float32)
    assert (r.mse[live] <= errors(w, own, lo, hi)[live] * (1 + 1e-12)).all()
    # no wider than half a step past the largest magnitude (on the grid's symmetric part),
    # where a normal float32 scale can be that small (else the least normal one: values round
    # to 0 and their error is theirs)
    normal = own >= np.finfo(np.float32).tiny
    bound = min(-lo, hi) * r.scale.astype(np.float64) <= m + 0.5 * r.scale * (1 + 1e-6)
    assert bound[normal].all()
    assert (r.scale[live & ~normal] == np.finfo(np.float32).tiny).all()
    s = np.where(r.scale > 0, r.scale, 1).reshape(-1, 1)
    q = np.where(live[:, None], np.clip(np.rint(w / s), lo, hi) * s, w).astype(np.float32)
    np.testing.assert_array_equal(r.fake_quantize(w), q)


def test_close_to_a_dense_brute_force_on_real_shapes() -> None:
    rng = np.random.default_rng(0)
    # a 3x3 depthwise filter (9 values), a pointwise row, a heavy-tailed row
    rows = [
        rng.standard_normal(9),
        rng.standard_normal(256),
        rng.standard_t(3, 1000),
    ]
    for x in rows:
        w = x.astype(np.float32)[None]
        for bits in (8, 4):
            r = qfcal.search_weights(w, axis=0, bits=bits, narrow_range=True)
            lo, hi = r.qmin, r.qmax
            grid = r.minmax_scale[0] * np.linspace(1 / 16, 1.0, 40_000)
            brute = min(errors(w, np.array([s]), lo, hi)[0] for s in grid)
            assert r.mse[0] <= brute * (1 + 1e-3), (len(x), bits, r.mse[0], brute)
            assert r.mse[0] < r.minmax_mse[0] or bits == 8 and len(x) == 9


def test_axes_and_per_tensor() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)  # Keras HWIO
    r = qfcal.search_weights(w, axis=3)
    rows = np.moveaxis(w, 3, 0).reshape(16, -1)
    r2 = qfcal.search_weights(rows, axis=0)
    np.testing.assert_array_equal(r.scale, r2.scale)
    assert qfcal.search_weights(w, axis=-1).scale.tolist() == r.scale.tolist()
    t = qfcal.search_weights(w, axis=None)
    assert t.scale.shape == (1,) and t.axis is None
    assert t.fake_quantize(w).shape == w.shape
    assert "16 channel(s), axis=3" in repr(r)
    assert np.isfinite(r.sqnr_db).all() and r.gain_db >= 0
    # float64 and float16 are read as float32
    r64 = qfcal.search_weights(w.astype(np.float64), axis=3)
    np.testing.assert_array_equal(r64.scale, r.scale)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: qfcal.search_weights(np.array([1.0, np.nan], np.float32)),
            ValueError,
            r"weights\[1\] is .*nan",
        ),
        (
            lambda: qfcal.search_weights(np.ones((2, 2), np.float32), axis=2),
            ValueError,
            "axis must be None or in",
        ),
        (lambda: qfcal.search_weights(np.ones(3, np.int32)), TypeError, "float array"),
        (lambda: qfcal.search_weights(np.zeros((0, 3), np.float32)), ValueError, "non-empty"),
        (lambda: qfcal.search_weights(np.ones(3, np.float32), bits=1), ValueError, "bits"),
    ],
)
def test_bad_input_names_argument_and_value(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_readme_example_runs() -> None:
    from readme_examples import run

    w = np.random.default_rng(3).standard_normal((8, 4, 3, 3)).astype(np.float32)
    ns = run("weights", {"qfcal": qfcal, "conv_weight": w})
    r = ns["r"]
    assert isinstance(r, qfcal.WeightRanges) and r.scale.shape == (8,)
    assert ns["w_int8_view"].shape == w.shape
