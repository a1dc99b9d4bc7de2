"""qfcal.pipeline.equalize and qfcal.tflite.quantize(equalize=True): a Keras MobileNet block with
the seed's failure planted (a depthwise channel whose batch norm has a near-zero variance), nested
inside an outer model as pretrained bases are."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402
from qfcal.pipeline import equalize as eq  # noqa: E402
from qfcal.pipeline.inspect_weights import weight_stats  # noqa: E402


def planted(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(inp)
    x = layers.BatchNormalization(name="c1_bn")(x)
    x = layers.ReLU(6.0, name="c1_relu6")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(6.0, name="dw_relu6")(x)
    x = layers.Conv2D(16, 1, use_bias=False, name="pw")(x)
    x = layers.BatchNormalization(name="pw_bn")(x)
    x = layers.ReLU(name="pw_relu")(x)
    base = keras.Model(inp, x, name="base")
    rng = np.random.default_rng(seed)
    for bn in (base.get_layer("c1_bn"), base.get_layer("dw_bn"), base.get_layer("pw_bn")):
        g, b, m, v = bn.get_weights()
        bn.set_weights([g, rng.normal(size=b.shape) * 0.3 + 0.5, m, v])
    g, b, m, v = base.get_layer("c1_bn").get_weights()
    g[2], b[2] = 1e-3, 1e-3  # the channel dies...
    base.get_layer("c1_bn").set_weights([g, b, m, v])
    g, b, m, v = base.get_layer("dw_bn").get_weights()
    v[2] = 1e-6  # ... and the batch norm after the depthwise layer blows it up
    base.get_layer("dw_bn").set_weights([g, b, m, v])
    outer_in = keras.Input((16, 16, 3))
    y = base(outer_in)
    y = layers.GlobalAveragePooling2D(name="gap")(y)
    y = layers.Dense(5, name="fc")(y)
    return keras.Model(outer_in, y, name="outer")


def run_tflite(content: bytes, inputs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The .tflite's outputs, one input at a time, and its operators."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for x in inputs:
        it.set_tensor(i["index"], x[None])
        it.invoke()
        ys.append(it.get_tensor(o["index"])[0].copy())
    return np.stack(ys), [op["op_name"] for op in it._get_ops_details()]


def data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 16, 16, 3)).astype(np.float32)


def test_flatten_inlines_nested_models_and_keeps_the_function() -> None:
    model = planted()
    flat = eq.flatten(model)
    assert not any(isinstance(la, keras.Model) for la in flat.layers)
    assert {"c1", "dw", "pw", "fc"} <= {la.name for la in flat.layers}
    assert all(la.use_bias for la in flat.layers if isinstance(la, layers.Conv2D))
    x = data(8, 1)
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="functional or Sequential"):
        eq.flatten("model.keras")  # type: ignore[arg-type]


def test_equalize_is_float_equivalent_and_fixes_the_planted_channel() -> None:
    model = planted()
    x = data(16, 2)
    before = {w.name: w for w in weight_stats(eq.flatten(model))}
    assert before["dw"].hit  # the seed's problem, as `qfcal inspect` reports it
    new, report = eq.equalize(model, x)
    links = {(c.first, c.second, c.activation) for c in report.links}
    assert ("c1", "dw", "relu6") in links and ("dw", "pw", "relu6") in links
    after = {w.name: w for w in weight_stats(new)}
    assert after["dw"].spread < before["dw"].spread / 10
    assert not after["dw"].hit and after["dw"].sqnr_tensor[8] > before["dw"].sqnr_tensor[8] + 5
    y0, y1 = np.asarray(model(x)), np.asarray(new(x))
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    assert report.float_drift is not None and report.float_drift <= np.abs(y1 - y0).max() + 1e-9
    assert ("pw", "its output is read by several layers") not in report.skipped


def test_correct_bias_records_each_layer() -> None:
    model = planted()
    report = eq.EqualizeReport()
    out = eq.correct_bias(model, data(8, 3), bits=4, per_channel=False, report=report)
    assert set(report.bias_corrected) == {"c1", "dw", "pw", "fc"}
    assert max(report.bias_corrected.values()) > 0
    assert isinstance(out, keras.Model)


def test_tflite_quantize_equalize_brings_per_tensor_weights_closer_to_float() -> None:
    pytest.importorskip("tensorflow")
    import qfcal.tflite

    model = planted()
    calib, held = data(16, 4), data(32, 5)

    def rep():
        for x in calib:
            yield [x[None]]

    ref = np.asarray(model(held))
    errs = {}
    for flag in (False, True):
        q = qfcal.tflite.quantize(model, rep, method="optimal", per_channel=False, equalize=flag)
        errs[flag] = float(np.mean((run_tflite(bytes(q), held)[0] - ref) ** 2))
        assert (q.equalization is not None) == flag
    assert errs[True] < errs[False] / 3, errs
    with pytest.raises(ValueError, match="pass the keras.Model itself"):
        qfcal.tflite.quantize("/no/such/saved_model", rep, equalize=True)
    with pytest.raises(ValueError, match="no samples"):
        eq.equalize(model, [])


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_weights_puts_every_kernel_on_the_grid(per_channel: bool) -> None:
    model = planted()
    flat = eq.fold_batch_norm(eq.flatten(model))
    out = eq.fake_quant_weights(model, 4, per_channel=per_channel)
    for la in out.layers:
        if not isinstance(la, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)):
            continue
        k, b = (np.asarray(w, np.float64) for w in la.get_weights())
        k0, b0 = (np.asarray(w, np.float64) for w in flat.get_layer(la.name).get_weights())
        np.testing.assert_array_equal(b, np.float32(b0))  # biases kept
        out_axis = 2 if isinstance(la, layers.DepthwiseConv2D) else k.ndim - 1
        kk, kk0 = np.moveaxis(k, out_axis, 0), np.moveaxis(k0, out_axis, 0)
        if per_channel:
            m = np.abs(kk0).reshape(len(kk0), -1).max(axis=1)
            scale = (m / 7).reshape((-1,) + (1,) * (kk.ndim - 1))
        else:
            scale = np.abs(kk0).max() / 7
        levels = kk / scale
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)  # 4 bits: 15 levels
        assert np.abs(np.round(levels)).max() <= 7
        assert np.abs(kk - kk0).max() <= np.max(scale) / 2 * (1 + 1e-5)
    with pytest.raises(ValueError, match="bits must be an int in 2..16, got 1"):
        eq.fake_quant_weights(model, 1)


def fused(seed: int = 0, spread: float = 30.0) -> keras.Model:
    """ReLU6 fused into a convolution, then one as a layer of its own; channels spread up to
    `spread` x."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu6", name="c1")(inp)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.ReLU(6.0, name="dw_relu6")(x)
    x = layers.Conv2D(6, 1, name="pw")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, layers.Dense(4, name="fc")(x))
    rng = np.random.default_rng(seed)
    for name in ("c1", "dw"):
        k, b = model.get_layer(name).get_weights()
        gain = np.exp(rng.uniform(0, np.log(spread), size=k.shape[-2 if name == "dw" else -1]))
        shape = (1, 1, -1, 1) if name == "dw" else (1, 1, 1, -1)
        model.get_layer(name).set_weights([k * gain.reshape(shape), b + 0.5])
    return model


def test_per_channel_clips_replace_saturated_relu6_and_keep_every_input(tmp_path) -> None:
    model = fused()
    x = data(32, 6)[:, :12, :12] * 3  # most channels reach the clip
    _, bound = eq.equalize(model, x, relu6="bound")
    new, moved = eq.equalize(model, x)  # per-channel: the default
    assert sum(c.held for c in bound.links) > 0 and not bound.clips
    assert sum(c.held for c in moved.links) == 0 and set(moved.clips) == {"c1", "dw"}
    clips = [la for la in new.layers if isinstance(la, eq.ChannelClip)]
    assert [la.name for la in clips] == ["c1_clip", "dw_clip"]
    assert new.get_layer("c1").get_config()["activation"] == "relu"
    assert new.get_layer("dw_relu6").max_value is None
    np.testing.assert_allclose(clips[0].clips, moved.clips["c1"], rtol=1e-6)
    wide = data(8, 7)[:, :12, :12] * 30
    for batch in (x, wide):
        y0, y1 = np.asarray(model(batch)), np.asarray(new(batch))
        np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    path = tmp_path / "eq.keras"
    new.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(back(wide)), np.asarray(new(wide)), rtol=1e-6)
    with pytest.raises(ValueError, match="relu6 must be one of bound, per-channel, got 'no'"):
        eq.equalize(model, x, relu6="no")


def test_tflite_quantize_with_per_channel_clips() -> None:
    pytest.importorskip("tensorflow")
    import qfcal.tflite

    model = fused(spread=300.0)
    calib, held = data(16, 8)[:, :12, :12] * 3, data(32, 9)[:, :12, :12] * 3

    def rep():
        for x in calib:
            yield [x[None]]

    ref = np.asarray(model(held))
    errs = {}
    for mode in ("none", "bound", "per-channel"):
        q = qfcal.tflite.quantize(
            model, rep, method="optimal", per_channel=False, equalize=mode != "none",
            equalize_relu6="bound" if mode == "none" else mode,
        )  # fmt: skip
        y, ops = run_tflite(bytes(q), held)
        errs[mode] = float(np.mean((y - ref) ** 2))
        assert ops.count("MINIMUM") == (2 if mode == "per-channel" else 0), ops
    assert errs["per-channel"] < min(errs["bound"] / 2, errs["none"] / 3), errs
    with pytest.raises(ValueError, match="equalize_relu6 must be one of bound, per-channel"):
        qfcal.tflite.quantize(model, rep, equalize=True, equalize_relu6="moved")
