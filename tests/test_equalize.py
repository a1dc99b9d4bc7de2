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


# -- objective="noise": scales chosen by the predicted output noise ------------------------


def noise_links(layers, kinds, x):
    """Links with every statistic the noise objective reads."""
    names = sorted(layers)
    between, _ = chain(layers, names, kinds, x)
    inputs = [x, *between[:-1]]
    return [
        Link(names[i], names[i + 1], kinds[i], b.max(0), b.min(0), data_mean=b.mean(0),
             data_std=b.std(0), input_power=(inp * inp).mean(0), data_active=(b != 0).mean(0))
        for i, (b, inp) in enumerate(zip(between, inputs, strict=True))
    ]  # fmt: skip


def simulated_noise(layers, kind: str, x: np.ndarray, bits: int = 8) -> float:
    """Output noise of l0 -> kind -> l1 with `bits`-bit per-tensor weights and 8-bit per-tensor
    min/max activations, summed over the output channels, averaged over the samples."""
    a, b = layers["l0"], layers["l1"]

    def first(k: np.ndarray) -> np.ndarray:
        return act((x * k[:, 0] if a.depthwise else x @ k.T) + a.bias, kind)

    h = first(a.kernel)
    y = h @ b.kernel.T + b.bias
    hq = first(quantize_weights(a.kernel, bits))
    lo, hi = min(float(h.min()), 0.0), max(float(h.max()), 0.0)
    step = (hi - lo) / 255
    hq = np.clip(np.round((hq - lo) / step), 0, 255) * step + lo
    yq = hq @ quantize_weights(b.kernel, bits).T + b.bias
    return float(np.mean(np.sum((yq - y) ** 2, axis=1)))


@pytest.mark.parametrize("seed", range(4))
def test_the_noise_model_predicts_the_simulated_output_noise(seed: int) -> None:
    from qfcal.equalize import _noise_model

    rng = np.random.default_rng(seed)
    layers = make(rng, [24, 48, 16], spread=40)
    x = rng.normal(size=(4000, 24))
    (link,) = noise_links(layers, ["relu"], x)
    ones = np.ones(48)
    for t in (ones, np.exp(rng.uniform(-1.5, 1.5, size=48))):
        scaled = {n: la.copy() for n, la in layers.items()}
        scaled["l0"].kernel /= t[:, None]
        scaled["l0"].bias /= t
        scaled["l1"].kernel *= t[None, :]
        model = _noise_model(layers["l0"], layers["l1"], link, ones, np.ones(24), 8)
        predicted = model.noise(t)
        assert 0.6 < simulated_noise(scaled, "relu", x) / predicted < 1.6


def seed_case(seed: int) -> tuple[dict[str, Layer], np.ndarray]:
    """A depthwise layer whose folded batch norm spread its channels' weight ranges 50x because
    their inputs were small (so its outputs are even), then a dense layer."""
    rng = np.random.default_rng(seed)
    gain = np.exp(rng.uniform(0, np.log(50), size=64))
    sign = rng.choice([-1.0, 1.0], size=64)
    a = Layer("l0", (gain * sign)[:, None], rng.normal(size=64) * 0.3, depthwise=True)
    layers = {"l0": a, "l1": Layer("l1", rng.normal(size=(32, 64)), rng.normal(size=32))}
    return layers, rng.normal(size=(3000, 64)) / gain


@pytest.mark.parametrize("kind", ["relu", "relu6", "linear"])
def test_the_noise_objective_beats_both_leaving_alone_and_equal_ranges(kind: str) -> None:
    """The seed's case: a depthwise layer whose folded batch norm spread the channels' weight
    ranges 50x because their inputs were small, so the activations are even. Equal weight
    ranges (cle) shrink the wide channels' activations and cost them levels; the scales of
    least predicted noise give less simulated output noise than both cle and no scaling, on
    most links and on average, and keep the function exactly."""
    wins, ratios = 0, []
    for seed in range(10):
        layers, x = seed_case(200 + seed)
        links = noise_links(layers, [kind], x)
        cle, _ = equalize_links(layers, links, absorb=False)
        noise, _ = equalize_links(layers, links, absorb=False, objective="noise")
        _, y0 = chain(layers, ["l0", "l1"], [kind], x)
        _, y1 = chain(noise, ["l0", "l1"], [kind], x)
        np.testing.assert_allclose(y1, y0, rtol=1e-7, atol=1e-7 * np.abs(y0).max())
        e = {k: simulated_noise(v, kind, x) for k, v in (("none", layers), ("cle", cle),
                                                         ("noise", noise))}  # fmt: skip
        wins += e["noise"] <= min(e["none"], e["cle"]) * 1.05
        ratios.append(e["noise"] / min(e["none"], e["cle"]))
    assert wins >= 8, ratios
    assert float(np.mean(ratios)) < 0.9, ratios


def test_the_noise_objective_needs_its_statistics_and_names_bad_options() -> None:
    rng = np.random.default_rng(5)
    layers = make(rng, [6, 8, 4])
    x = rng.normal(size=(100, 6))
    bare = links_for(layers, ["relu"], x)  # no mean, std or input power: equal ranges
    a, _ = equalize_links(layers, bare, objective="noise")
    b, _ = equalize_links(layers, bare, objective="cle")
    np.testing.assert_array_equal(a["l0"].kernel, b["l0"].kernel)
    with pytest.raises(ValueError, match="objective must be one of cle, noise, got 'snr'"):
        equalize_links(layers, bare, objective="snr")
    with pytest.raises(ValueError, match="weight_bits must be an int >= 2, got 1"):
        equalize_links(layers, bare, objective="noise", weight_bits=1)


def test_the_noise_objective_bounds_the_requantization_scales() -> None:
    """Neither layer's requantization scale (input step x weight step / output step, min/max
    steps) grows past REQUANT_GROWTH: XNNPACK refuses a convolution past 256."""
    from qfcal.equalize import REQUANT_GROWTH

    for seed in range(6):
        layers, x = seed_case(300 + seed)
        layers["l0"].kernel[0] *= 1e3  # a channel whose weights dwarf the rest ...
        x[:, 0] *= 1e-4  # ... and whose output is nothing: shrinking the rest is tempting
        links = noise_links(layers, ["relu"], x)
        new, _ = equalize_links(layers, links, absorb=False, objective="noise")

        def steps(ls, x=x):
            between, _ = chain(ls, ["l0", "l1"], ["relu"], x)
            act = np.ptp(np.concatenate([between[0].ravel(), [0.0]]))
            return np.abs(ls["l0"].kernel).max(), act, np.abs(ls["l1"].kernel).max()

        (w1, a0, w2), (v1, b0, v2) = steps(layers), steps(new)
        assert (v1 / b0) / (w1 / a0) <= REQUANT_GROWTH * (1 + 1e-6)
        assert (b0 * v2) / (a0 * w2) <= REQUANT_GROWTH * (1 + 1e-6)


@pytest.mark.parametrize("objective", ["cle", "noise"])
def test_a_channel_with_weights_near_zero_keeps_its_bias(objective: str) -> None:
    """A dead stem channel (weights ~1e-20, negative bias) is not scaled: "equalizing" it to
    the others' range would multiply its bias by 1e10 and wreck the int8 bias grid."""
    rng = np.random.default_rng(7)
    layers = make(rng, [8, 16, 6], spread=10)
    layers["l0"].kernel[3] = 1e-20
    layers["l0"].bias[3] = -2.0
    x = rng.normal(size=(500, 8))
    links = noise_links(layers, ["relu6"], x)
    new, _ = equalize_links(layers, links, absorb=False, objective=objective)
    assert new["l0"].bias[3] == pytest.approx(-2.0)
    t = layers["l0"].out_ranges() / new["l0"].out_ranges()
    assert np.all((t >= 1e-4 * (1 - 1e-9)) & (t <= 1e4 * (1 + 1e-9)))


def clipped_chain(layers, clips: np.ndarray, x: np.ndarray) -> np.ndarray:
    """l0 -> ReLU6 with channel c clipped at clips[c] -> l1 (the per-channel mode's graph)."""
    a, b = layers["l0"], layers["l1"]
    h = np.minimum(np.maximum(x @ a.kernel.T + a.bias, 0), clips)
    return h @ b.kernel.T + b.bias


@pytest.mark.parametrize("objective", ["cle", "noise"])
def test_per_channel_clips_scale_the_channels_that_reach_the_clip_exactly(objective: str) -> None:
    """Where ReLU6 channels reach the clip, ``bound`` holds them at scale 1; ``per-channel``
    scales them too and reports clips 6 / s with which the model equals the original on every
    input, far outside the calibration data included."""
    rng = np.random.default_rng(11)
    layers = make(rng, [8, 12, 5], spread=60)
    x = rng.normal(size=(500, 8)) * 4  # most channels reach 6
    links = noise_links(layers, ["relu6"], x)
    bound, rb = equalize_links(layers, links, absorb=False, objective=objective)
    moved, rm = equalize_links(
        layers, links, absorb=False, objective=objective, relu6="per-channel"
    )
    assert rb.links[0].held >= 6 and not rb.clips
    assert f"relu6='per-channel' would scale the {rb.links[0].held} held channels" in rb.summary()
    assert rm.links[0].held == 0 and rm.links[0].scaled > rb.links[0].scaled
    assert moved["l0"].out_ranges().max() / np.median(moved["l0"].out_ranges()) < (
        bound["l0"].out_ranges().max() / np.median(bound["l0"].out_ranges())
    )
    clips = rm.clips["l0"]
    s = layers["l0"].bias / moved["l0"].bias
    np.testing.assert_allclose(clips, 6.0 / s, rtol=1e-9)
    wide = rng.normal(size=(500, 8)) * 40
    for data in (x, wide):
        _, y0 = chain(layers, ["l0", "l1"], ["relu6"], data)
        y1 = clipped_chain(moved, clips, data)
        np.testing.assert_allclose(y1, y0, rtol=1e-9, atol=1e-9 * np.abs(y0).max())
    assert "ReLU6 clips moved per channel" in rm.summary()
    assert json.loads(json.dumps(rm.to_dict()))["clips"]["l0"] == pytest.approx(list(clips))


def test_per_channel_clips_scale_relu6_links_without_data_and_name_bad_modes() -> None:
    rng = np.random.default_rng(12)
    layers = make(rng, [3, 5, 2])
    new, report = equalize_links(layers, [Link("l0", "l1", "relu6")], relu6="per-channel")
    assert report.links[0].scaled > 0 and "l0" in report.clips
    x = rng.normal(size=(50, 3)) * 30
    _, y0 = chain(layers, ["l0", "l1"], ["relu6"], x)
    np.testing.assert_allclose(clipped_chain(new, report.clips["l0"], x), y0, rtol=1e-9, atol=1e-9)
    _, r2 = equalize_links(layers, [Link("l0", "l1", "relu")], relu6="per-channel")
    assert not r2.clips  # only ReLU6 links have a clip to move
    with pytest.raises(ValueError, match="relu6 must be one of bound, per-channel, got 'move'"):
        equalize_links(layers, [Link("l0", "l1", "relu6")], relu6="move")
