"""The seed's per-tensor weight problem, seen on a model's folded weights."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402
from qfcal.pipeline import inspect_weights  # noqa: E402


def seed_model(name="seed", plant=True):
    """dw -> BN -> ReLU -> pw -> BN -> ReLU -> pool -> logits; with `plant`, the seed's failure
    in dw's batch norm."""
    keras.utils.set_random_seed(3)
    i = keras.Input((16, 16, 16))
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(i)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(i, keras.layers.Dense(4, name="logits")(x), name=name)
    if not plant:
        return m
    # the seed's failure: channel 0's weights shrank and its batch-norm variance with them (a
    # huge folded scale, 1 / sqrt(epsilon)); channel 2 never activated (variance exactly 0)
    bn = m.get_layer("dw_bn")
    gamma, beta, mean, var = (np.asarray(v) for v in bn.get_weights())
    var = np.ones(16, np.float32)
    var[0], var[2] = 1e-7, 0.0
    bn.set_weights([np.ones(16, np.float32), beta, mean, var])
    return m


@pytest.fixture(scope="module")
def model():
    return seed_model()


def test_the_stretched_depthwise_layer_is_the_one_hit(model):
    stats = {s.name: s for s in inspect_weights.weight_stats(model)}
    assert list(stats) == ["dw", "pw", "logits"]
    dw, pw, fc = stats["dw"], stats["pw"], stats["logits"]
    assert (dw.kind, dw.channels, dw.dead) == ("depthwise", 16, 1)
    assert dw.spread > 10 and dw.hit
    assert dw.sqnr_channel[8] - dw.sqnr_tensor[8] > 7  # more than a bit lost
    assert not pw.hit and not fc.hit and pw.dead == 0 and pw.kind == "conv" and fc.kind == "dense"
    # the figures are those of the folded kernel, quantized as TFLite does (symmetric, +-127)
    k = np.asarray(model.get_layer("pw").kernel, np.float64).reshape(-1, 8)
    bn = model.get_layer("pw_bn")
    k = k * (np.asarray(bn.gamma) / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon))
    s = np.abs(k).max() / 127
    expected = 10 * np.log10(
        (k**2).sum() / ((k - np.clip(np.round(k / s), -127, 127) * s) ** 2).sum()
    )
    assert pw.sqnr_tensor[8] == pytest.approx(expected, rel=1e-4)
    # fewer bits, less SQNR, about 6 dB a bit
    assert pw.sqnr_tensor[8] > pw.sqnr_tensor[6] > pw.sqnr_tensor[4]
    assert 9 < pw.sqnr_tensor[8] - pw.sqnr_tensor[6] < 15


def test_a_dead_channel_alone_stretches_the_range_and_is_counted():
    """The recipe the benchmark found (RMSprop, a channel that never activated): the only
    stretched channel has a batch-norm variance of exactly 0, so it is dead, and its folded
    weights (times 1 / sqrt(epsilon)) still set the per-tensor scale: the layer is hit."""
    m = seed_model(plant=False)
    bn = m.get_layer("dw_bn")
    gamma, beta, mean, var = (np.asarray(v) for v in bn.get_weights())
    var = np.ones(16, np.float32)
    var[5] = 0.0
    bn.set_weights([np.ones(16, np.float32), beta, mean, var])
    dw = inspect_weights.weight_stats(m)[0]
    assert dw.dead == 1 and dw.hit and dw.spread > 10
    assert dw.sqnr_channel[8] - dw.sqnr_tensor[8] > 7


def test_bad_bits(model):
    with pytest.raises(ValueError, match=r"bits must be ints in 2..16, got \(8, 1\)"):
        inspect_weights.weight_stats(model, bits=(8, 1))


def _figures(stats):
    return [(s.kind, s.channels, s.spread, s.dead, s.sqnr_tensor, s.sqnr_channel) for s in stats]


def test_nested_models_are_walked_and_folded_in_their_own_graph(model):
    flat = inspect_weights.weight_stats(model)
    inner = seed_model("base")
    seq = keras.Sequential(
        [keras.Input((16, 16, 16)), inner, keras.layers.Dense(2, name="head")], name="seq"
    )
    stats = inspect_weights.weight_stats(seq)
    assert [s.name for s in stats] == ["base/dw", "base/pw", "base/logits", "head"]
    # the nested layers' figures are the flat model's: its batch norms were folded
    assert _figures(stats[:3]) == _figures(flat)
    assert [s.name for s in stats if s.hit] == ["base/dw"]
    # two levels deep, under a functional head
    i = keras.Input((16, 16, 16))
    outer = keras.Model(i, keras.layers.Dense(3, name="top")(seq(i)), name="outer")
    names = [s.name for s in inspect_weights.weight_stats(outer)]
    assert names == ["seq/base/dw", "seq/base/pw", "seq/base/logits", "seq/head", "top"]


def test_a_nested_keras_application():
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False
    )
    bn = base.get_layer("block_3_depthwise_BN")
    gamma, beta, mean, var = bn.get_weights()
    var[:] = 1.0
    var[0], var[1] = 1e-7, 0.0  # one channel's weights died, one never activated
    bn.set_weights([np.ones_like(gamma), beta, mean, var])
    m = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.Dense(3, name="head")])
    stats = {s.name: s for s in inspect_weights.weight_stats(m)}
    assert len(stats) == 53 and list(stats)[-1] == "head"
    hit = stats[f"{base.name}/block_3_depthwise"]
    assert (hit.kind, hit.channels, hit.dead) == ("depthwise", 48, 1) and hit.spread > 20
    assert [n for n, s in stats.items() if s.hit] == [hit.name]
    # the batch norm was folded: the layer's per-tensor 8-bit SQNR is that of the folded kernel
    k = np.asarray(base.get_layer("block_3_depthwise").kernel, np.float64).reshape(9, 48)
    k = k / np.sqrt(var + bn.epsilon)
    s = np.abs(k).max() / 127
    want = 10 * np.log10((k**2).sum() / ((k - np.round(k / s) * s) ** 2).sum())
    assert hit.sqnr_tensor[8] == pytest.approx(want, rel=1e-4)


class _Subclassed(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(2, 1, name="conv")
        self.bn = keras.layers.BatchNormalization(name="bn")

    def call(self, x):
        return self.bn(self.conv(x))


def test_models_without_a_graph_are_a_clear_error():
    sub = _Subclassed(name="custom")
    sub(np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="batch norms of 'custom': a _Subclassed model"):
        inspect_weights.weight_stats(sub)
    i = keras.Input((4, 4, 2))
    outer = keras.Model(i, sub(i), name="outer")
    with pytest.raises(ValueError, match="batch norms of 'custom'"):
        inspect_weights.weight_stats(outer)
    unbuilt = keras.Sequential([keras.layers.Dense(3)], name="lazy")
    with pytest.raises(ValueError, match="batch norms of 'lazy': a Sequential model"):
        inspect_weights.weight_stats(unbuilt)
    with pytest.raises(ValueError, match="functional Keras model, got str"):
        inspect_weights.weight_stats("model.keras")


def test_table_names_the_hit_layers(model):
    text = inspect_weights.format_table(inspect_weights.weight_stats(model))
    lines = text.splitlines()
    assert lines[0].split() == [
        "layer", "kind", "ch", "spread", "dead", "8-bit", "t/c", "dB",
        "6-bit", "t/c", "dB", "4-bit", "t/c", "dB", "hit",
    ]  # fmt: skip
    rows = {ln.split()[0]: ln for ln in lines[2:5]}
    assert list(rows) == ["dw", "pw", "logits"]
    dw = rows["dw"].split()
    assert dw[1:3] == ["depthwise", "16"] and dw[4] == "1" and dw[-1] == "HIT"
    assert not rows["pw"].endswith("HIT") and not rows["logits"].endswith("HIT")
    summary = " ".join(text.split("hit: 1 of 3 layers")[1].split())
    assert (
        summary.startswith("(1 depthwise) have a channel 4x or more")
        and "dw (depthwise, 1 dead" in summary
    )
    assert "pw" not in summary
    healthy = inspect_weights.format_table(inspect_weights.weight_stats(seed_model(plant=False)))
    assert not [ln for ln in healthy.splitlines() if ln.endswith("HIT")]
    assert "no layer is hit" in healthy and "\nhit: " not in healthy


def test_json_form_and_infinities(model):
    stats = inspect_weights.weight_stats(model, bits=(6, 4))
    doc = json.loads(json.dumps(inspect_weights.stats_json(stats), allow_nan=False))
    assert doc["bits"] == [8, 6, 4] and doc["hit"] == ["dw"] and doc["hit_spread"] == 4.0
    dw = doc["layers"][0]
    assert dw["name"] == "dw" and dw["hit"] is True and dw["dead"] == 1
    assert dw["sqnr_tensor"]["4"] == stats[0].sqnr_tensor[4] and dw["spread"] == stats[0].spread
    # all-zero weights: every channel dead, nothing to measure; None in JSON, inf in the table
    i = keras.Input((3,))
    zero = keras.Model(i, keras.layers.Dense(2, kernel_initializer="zeros", name="z")(i))
    [z] = inspect_weights.weight_stats(zero)
    assert z.dead == 2 and math.isinf(z.spread) and not z.hit
    d = z.to_dict()
    assert d["spread"] is None and d["sqnr_tensor"]["8"] is None
    json.dumps(inspect_weights.stats_json([z]), allow_nan=False)
    assert inspect_weights.format_table([z]).splitlines()[2].split()[3] == "infx"


def test_plot(model, tmp_path):
    pytest.importorskip("matplotlib")
    stats = inspect_weights.weight_stats(model)
    path = inspect_weights.plot_weight_stats(stats, tmp_path / "w.png", title="seed")
    assert path == str(tmp_path / "w.png")
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
