"""Batch-norm folding gives the same function (needs the tf extra)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
models = pytest.importorskip("qfcal.pipeline.models")
fold = pytest.importorskip("qfcal.pipeline.fold")


def randomize_batch_norms(model, seed=0):
    """Non-trivial statistics, so that folding has something to do."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n),  # gamma
                    rng.normal(0.0, 0.3, n),  # beta
                    rng.normal(0.0, 0.5, n),  # moving mean
                    rng.uniform(0.2, 3.0, n),  # moving variance
                ]
            )


@pytest.mark.parametrize("arch", ["v1", "v2"])
@pytest.mark.parametrize("variant", ["standard", "qfriendly"])
def test_folded_model_computes_the_same_function(arch, variant):
    m = models.build(arch, variant, alpha=0.25)
    randomize_batch_norms(m)
    f = fold.fold_batch_norm(m)
    bns = [x for x in m.layers if isinstance(x, keras.layers.BatchNormalization)]
    left = [x for x in f.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert bns and not left  # every batch norm in these models follows a convolution
    x = np.random.default_rng(1).uniform(0, 1, (8, 32, 32, 1)).astype(np.float32)
    want = m.predict(x, verbose=0)
    got = f.predict(x, verbose=0)
    scale = np.abs(want).max()
    assert np.max(np.abs(got - want)) <= 1e-5 * scale, np.max(np.abs(got - want)) / scale


def test_depthwise_fold_is_exact_per_channel():
    inp = keras.Input((5, 5, 3))
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")(inp)
    y = keras.layers.BatchNormalization(name="bn")(y)
    m = keras.Model(inp, y)
    randomize_batch_norms(m, seed=4)
    m.get_layer("dw").set_weights([np.random.default_rng(2).normal(size=(3, 3, 3, 2))])
    f = fold.fold_batch_norm(m)
    assert [type(x).__name__ for x in f.layers] == ["InputLayer", "DepthwiseConv2D"]
    x = np.random.default_rng(3).normal(size=(4, 5, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(
        f.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_a_batch_norm_with_two_readers_of_its_input_is_kept():
    inp = keras.Input((4, 4, 2))
    c = keras.layers.Conv2D(2, 1, name="conv")(inp)
    b = keras.layers.BatchNormalization(name="bn")(c)
    out = keras.layers.Add()([b, c])
    m = keras.Model(inp, out)
    assert fold.foldable_pairs(m) == {}
    f = fold.fold_batch_norm(m)
    assert any(isinstance(x, keras.layers.BatchNormalization) for x in f.layers)


def test_not_a_model_is_a_clear_error():
    with pytest.raises(ValueError, match="functional Keras model, got str"):
        fold.fold_batch_norm("model.keras")
