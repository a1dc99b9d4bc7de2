"""qfcal.keras.loss_aware_histograms: squared-gradient weights at every Keras layer output."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
import qfcal  # noqa: E402
import qfcal.keras as qkeras  # noqa: E402


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(0)
    i = keras.Input((12, 12, 1))
    c1 = keras.layers.Conv2D(6, 3, name="c1")(i)
    r1 = keras.layers.ReLU(name="r1")(c1)
    c2 = keras.layers.Conv2D(6, 3, name="c2")(r1)
    r2 = keras.layers.ReLU(name="r2")(c2)
    p = keras.layers.GlobalAveragePooling2D(name="pool")(r2)
    return keras.Model(i, keras.layers.Dense(4, name="logits")(p))


def batches():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, 12, 12, 1)).astype(np.float32) for _ in range(3)]


def test_weighs_by_the_gradient(net):
    hists = qkeras.loss_aware_histograms(net, batches())
    assert set(hists) == {"c1", "r1", "c2", "r2", "pool", "logits"}
    probe = keras.Model(net.inputs, [net.get_layer(n).output for n in hists])
    plain = {n: qfcal.Histogram() for n in hists}
    for b in batches():
        for n, out in zip(hists, probe([b], training=False), strict=True):
            plain[n].update(np.asarray(out))
    assert all(hists[n].counts == plain[n] for n in hists)
    # a ReLU passes no gradient to negative inputs: they weigh 0 in the conv outputs
    for conv in ("c1", "c2"):
        assert plain[conv].min < 0
        r, p = qfcal.search(hists[conv]), qfcal.search(plain[conv])
        assert r.min >= -r.scale / 2 and p.min < -p.scale, (conv, r, p)
    proj = qkeras.loss_aware_histograms(net, batches(), layers=["c1"], target="projection")
    assert set(proj) == {"c1"} and proj["c1"].counts == plain["c1"]


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="target must be one of fisher, projection, got 'kl'"):
        qkeras.loss_aware_histograms(net, batches(), target="kl")
    with pytest.raises(ValueError, match="no layer 'nope'"):
        qkeras.loss_aware_histograms(net, batches(), layers=["nope"])
    with pytest.raises(ValueError, match="no batch"):
        qkeras.loss_aware_histograms(net, [])


def test_a_nested_model_is_named_not_a_keras_crash(net):
    """A pretrained base used as one layer (transfer learning): its inner layers are not in
    the outer graph; the outer ones get histograms, with a warning that names the base."""
    i = keras.Input((12, 12, 1))
    outer = keras.Model(i, keras.layers.Dense(3, name="head")(net(i)))
    with pytest.warns(UserWarning, match=r"nested model\(s\) \['functional"):
        hists = qkeras.loss_aware_histograms(outer, batches())
    assert set(hists) == {"head"}
    with pytest.raises(ValueError, match="is a nested model"):
        qkeras.loss_aware_histograms(outer, batches(), layers=[net.name])
