"""qfcal.equalize: cross-layer equalization, bias absorption and bias correction (numpy core)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qfcal.equalize import (
    Layer,
    Link,
    bias_correction,
    equalize_links,
    equalizing_scales,
    quantize_weights,
    relu6_bounds,
)


def act(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "relu6":
        return np.clip(x, 0, 6)
    return x


def chain(layers: dict[str, Layer], names: list[str], kinds: list[str], x: np.ndarray):
    """Dense layers (kernel (out, in)); depthwise = per-channel gain. Returns every tensor
    between the layers (after the activation) and the output."""
    between = []
    for i, name in enumerate(names):
        la = layers[name]
        if la.depthwise:
            x = x * la.kernel[:, 0] + la.bias
        else:
            x = x @ la.kernel.T + la.bias
        if i < len(kinds):
            x = act(x, kinds[i])
            between.append(x)
    return between, x


def make(rng: np.random.Generator, widths: list[int], spread: float = 30.0) -> dict[str, Layer]:
    out = {}
    for i in range(len(widths) - 1):
        k = rng.normal(size=(widths[i + 1], widths[i]))
        k *= np.exp(rng.uniform(0, np.log(spread), size=(widths[i + 1], 1)))  # uneven channels
        out[f"l{i}"] = Layer(f"l{i}", k, rng.normal(size=widths[i + 1]))
    return out


def links_for(layers, kinds, x, absorb=True):
    names = sorted(layers)
    between, _ = chain(layers, names, kinds, x)
    return [
        Link(names[i], names[i + 1], kinds[i], b.max(0), b.min(0), absorb=absorb)
        for i, b in enumerate(between)
    ]


def test_scales_give_both_channels_the_geometric_mean_range() -> None:
    r1, r2 = np.array([8.0, 1.0, 0.0, 2.0]), np.array([2.0, 4.0, 3.0, 0.0])
    s = equalizing_scales(r1, r2)
    np.testing.assert_allclose((r1 / s)[:2], np.sqrt(r1 * r2)[:2])
    np.testing.assert_allclose((r2 * s)[:2], np.sqrt(r1 * r2)[:2])
    assert s[2] == 1.0 and s[3] == 1.0  # a dead channel on either side is left alone


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    kinds=st.lists(st.sampled_from(["linear", "relu", "relu6"]), min_size=1, max_size=3),
)
def test_the_function_is_kept_on_the_calibration_data(seed: int, kinds: list[str]) -> None:
    rng = np.random.default_rng(seed)
    widths = list(rng.integers(2, 9, size=len(kinds) + 2))
    layers = make(rng, widths)
    x = rng.normal(size=(64, widths[0])) * 2
    links = links_for(layers, kinds, x)
    kept = {n: la.kernel.copy() for n, la in layers.items()}
    new, report = equalize_links(layers, links)
    names = sorted(layers)
    _, y0 = chain(layers, names, kinds, x)
    _, y1 = chain(new, names, kinds, x)
    np.testing.assert_allclose(y1, y0, rtol=1e-7, atol=1e-7 * np.abs(y0).max())
    assert len(report.links) == len(kinds)
    doc = json.loads(json.dumps(report.to_dict()))
    assert [c["activation"] for c in doc["links"]] == kinds
    assert all(np.array_equal(layers[n].kernel, kept[n]) for n in layers)  # inputs untouched


def test_equalization_narrows_the_spread_of_a_dying_channel_layer() -> None:
    rng = np.random.default_rng(0)
    a = Layer("dw", np.abs(rng.normal(size=(16, 1))) + 0.5, np.zeros(16), depthwise=True)
    a.kernel[3] *= 80  # a channel that batch norm blew up
    b = Layer("pw", rng.normal(size=(8, 16)), np.zeros(8))
    x = rng.normal(size=(100, 16))
    new, report = equalize_links({"dw": a, "pw": b}, [Link("dw", "pw", "relu")])
    before = a.out_ranges().max() / np.median(a.out_ranges())
    after = new["dw"].out_ranges().max() / np.median(new["dw"].out_ranges())
    assert before > 30 and after < before / 5
    assert report.links[0].spread_before == pytest.approx(before)
    y0 = act(x * a.kernel[:, 0], "relu") @ b.kernel.T
    y1 = act(x * new["dw"].kernel[:, 0], "relu") @ new["pw"].kernel.T
    np.testing.assert_allclose(y1, y0, rtol=1e-9, atol=1e-9)


def test_relu6_channels_that_reach_the_clip_keep_their_scale() -> None:
    rng = np.random.default_rng(1)
    layers = make(rng, [4, 6, 3], spread=100)
    layers["l0"].kernel[:3] *= 1e-3  # three channels stay far below the clip
    x = rng.normal(size=(200, 4)) * 5  # the others clip at 6
    links = links_for(layers, ["relu6"], x)
    lower, held = relu6_bounds(links[0].data_max)
    assert held.any() and not held.all()
    new, report = equalize_links(layers, links)
    s = layers["l0"].out_ranges() / new["l0"].out_ranges()
    np.testing.assert_allclose(s[held], 1.0)
    assert np.all(s[~held] >= lower[~held] * (1 - 1e-9))
    assert report.links[0].held == held.sum()


def test_headroom_keeps_the_clip_further_from_the_data() -> None:
    m = np.array([1.0, 2.5, 5.0, 6.0])
    lower, held = relu6_bounds(m, headroom=2.0)
    assert list(held) == [False, False, True, True]
    np.testing.assert_allclose(lower[:2], [2 / 6, 5 / 6])
    with pytest.raises(ValueError, match="headroom must be"):
        relu6_bounds(m, headroom=0.5)


def test_relu6_links_without_data_are_left_alone() -> None:
    rng = np.random.default_rng(2)
    layers = make(rng, [3, 5, 2])
    new, report = equalize_links(layers, [Link("l0", "l1", "relu6")])
    np.testing.assert_array_equal(new["l0"].kernel, layers["l0"].kernel)
    assert report.links[0].scaled == 0


def test_absorption_moves_constants_and_keeps_the_function() -> None:
    rng = np.random.default_rng(3)
    layers = make(rng, [4, 6, 3], spread=1.0)
    layers["l0"].bias = np.full(6, 20.0)  # always positive: ReLU is the identity there
    x = rng.normal(size=(50, 4)) * 0.5
    links = links_for(layers, ["relu"], x)
    new, report = equalize_links(layers, links)
    assert report.links[0].absorbed == 6
    between, y1 = chain(new, ["l0", "l1"], ["relu"], x)
    _, y0 = chain(layers, ["l0", "l1"], ["relu"], x)
    np.testing.assert_allclose(y1, y0, rtol=1e-9, atol=1e-9)
    assert between[0].min(0).max() < 1e-9  # the smallest value of each channel is now 0
    no, rep2 = equalize_links(layers, links_for(layers, ["relu"], x, absorb=False))
    assert rep2.links[0].absorbed == 0


def test_bias_correction_cancels_the_mean_shift_of_quantized_weights() -> None:
    rng = np.random.default_rng(4)
    la = Layer("c", rng.normal(size=(8, 32)) * np.exp(rng.uniform(0, 4, (8, 1))), np.zeros(8))
    x = rng.normal(size=(4000, 32)) + 3.0  # a non-zero input mean
    bias, shift = bias_correction(la, x.mean(0), bits=4)
    wq = quantize_weights(la.kernel, 4)
    before = np.abs((x @ wq.T).mean(0) - (x @ la.kernel.T).mean(0)).max()
    after = np.abs((x @ wq.T + bias).mean(0) - (x @ la.kernel.T).mean(0)).max()
    assert shift == pytest.approx(before, rel=1e-6)
    assert before > 0.1 and after < 1e-9


def test_quantize_weights_grids() -> None:
    k = np.array([[1.0, -0.5, 0.26], [0.1, 0.05, -0.02]])
    np.testing.assert_allclose(quantize_weights(k, 2), [[1, 0, 0], [0, 0, 0]])
    pc = quantize_weights(k, 2, per_channel=True)
    np.testing.assert_allclose(pc[1], [0.1, 0.0, 0.0])
    assert np.abs(quantize_weights(k, 8) - k).max() <= 1 / 127 / 2 + 1e-12
    with pytest.raises(ValueError, match="bits must be"):
        quantize_weights(k, 1)


def test_bad_links_are_named() -> None:
    rng = np.random.default_rng(5)
    layers = make(rng, [3, 4, 5])
    with pytest.raises(ValueError, match="activation must be one of"):
        Link("l0", "l1", "gelu")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        equalize_links(layers, [Link("l0", "nope", "relu")])
    with pytest.raises(ValueError, match="4 output channels feed 3 input"):
        equalize_links({"a": layers["l0"], "b": layers["l0"].copy()}, [Link("a", "b", "relu")])
    with pytest.raises(ValueError, match="data_max must have shape"):
        equalize_links(layers, [Link("l0", "l1", "relu6", data_max=np.ones(3))])
    with pytest.raises(ValueError, match="bias must have shape"):
        Layer("x", np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="depthwise kernel"):
        Layer("x", np.ones((3, 2)), np.ones(3), depthwise=True)
