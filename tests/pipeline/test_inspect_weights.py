"""The seed's per-tensor weight problem, seen on a model's folded weights."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402
from qfcal.pipeline import inspect_weights  # noqa: E402


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    i = keras.Input((16, 16, 16))
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(i)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="pw")(x)
    x = keras.layers.BatchNormalization(name="pw_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(i, keras.layers.Dense(4, name="logits")(x))
    # the seed's failure: channel 0's weights shrank and its batch-norm variance with them (a
    # huge folded scale, 1 / sqrt(epsilon)); channel 2 never activated (variance exactly 0)
    bn = m.get_layer("dw_bn")
    gamma, beta, mean, var = (np.asarray(v) for v in bn.get_weights())
    var = np.ones(16, np.float32)
    var[0], var[2] = 1e-7, 0.0
    bn.set_weights([np.ones(16, np.float32), beta, mean, var])
    return m


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


def test_bad_bits(model):
    with pytest.raises(ValueError, match=r"bits must be ints in 2..16, got \(8, 1\)"):
        inspect_weights.weight_stats(model, bits=(8, 1))
