"""qfcal.tflite on a Keras model qfcal did not build (residual add, max pool, concatenation,
dense head), trained briefly on real Fashion-MNIST: qfcal's ranges end up in the converter's
int8 model, and its accuracy is compared with the converter's own calibration."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
import keras  # noqa: E402
import qfcal  # noqa: E402
import qfcal.distributed  # noqa: E402
import qfcal.tflite as qtflite  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from conftest import int8_tensors  # noqa: E402
from qfcal import _tf_private  # noqa: E402
from qfcal.pipeline import data  # noqa: E402
from readme_examples import run as run_example  # noqa: E402

CALIB = 64  # representative samples


@pytest.fixture(scope="module")
def fmnist():
    ds = data.load("fashion_mnist")
    x = ds.images("train", np.arange(4000)).astype(np.float32) / 255.0
    y = ds.labels("train")[:4000]
    xt = ds.images("test", np.arange(2000)).astype(np.float32) / 255.0
    yt = ds.labels("test")[:2000]
    return x, y, xt, yt


@pytest.fixture(scope="module")
def model(fmnist):
    x, y, _, _ = fmnist
    keras.utils.set_random_seed(5)
    i = keras.Input((28, 28, 1))
    a = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(i)
    b = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(a)
    c = keras.layers.MaxPooling2D(name="pool1")(keras.layers.Add()([a, b]))
    e1 = keras.layers.Conv2D(16, 1, activation="relu", name="branch1")(c)
    e2 = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="branch3")(c)
    g = keras.layers.MaxPooling2D(name="pool2")(keras.layers.Concatenate()([e1, e2]))
    h = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten(name="flatten")(g))
    out = keras.layers.Dense(10)(h)
    m = keras.Model(i, out)
    m.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    m.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return m


@pytest.fixture(scope="module")
def rep(fmnist):
    x = fmnist[0]

    def representative_dataset():
        for k in range(CALIB):
            yield [x[k : k + 1]]

    return representative_dataset


@pytest.fixture(scope="module")
def quantized(model, rep):
    return qtflite.quantize(
        model, rep, method="optimal", inference_input_type=tf.int8, inference_output_type=tf.int8
    )


def _top1(content, xt, yt):
    it = Interpreter(model_content=bytes(content))
    it.allocate_tensors()
    i0, o0 = it.get_input_details()[0], it.get_output_details()[0]
    ok = 0
    for k in range(len(xt)):
        x = xt[k : k + 1]
        if i0["dtype"] == np.int8:
            s, z = i0["quantization"]
            x = np.clip(np.round(x / s) + z, -128, 127).astype(np.int8)
        it.set_tensor(i0["index"], x)
        it.invoke()
        ok += int(np.argmax(it.get_tensor(o0["index"])[0]) == yt[k])
    return ok / len(xt)


def test_every_activation_range_is_qfcals(quantized):
    assert quantized.samples == CALIB
    assert len(quantized.ranges) >= 9  # input, 4 convs, add, 2 pools, concat, dense, output
    params = int8_tensors(quantized)
    ours = {
        (float(np.float32(r.result.scale)), r.result.zero_point) for r in quantized.ranges.values()
    }
    # TFLite's max pool, reshape and concatenation kernels need one scale on both sides: those
    # tensors get one joint range (their merged histograms searched), every other its own; the
    # int8 model holds exactly qfcal's range for every tensor
    for name, r in quantized.ranges.items():
        want = (float(np.float32(r.result.scale)), r.result.zero_point)
        got = params.get(name)
        assert got is not None, f"{name} is not an int8 tensor of the quantized model"
        assert got == want, (name, got, want)
    groups = {frozenset((n, *r.shared_with)) for n, r in quantized.ranges.items() if r.shared_with}
    # add -> pool1; concat(branch1, branch3) -> pool2 -> flatten
    assert len(groups) == 2, groups
    for g in groups:
        merged = qfcal.distributed.merge_bytes(quantized.ranges[n].histogram for n in g)
        joint = qfcal.search(merged, bits=8)
        assert all(quantized.ranges[n].result == joint for n in g)
    assert ours


def test_histograms_saw_the_tensors_the_converter_calibrated(quantized):
    # the converter's min/max come from its own run over the same samples: qfcal's histogram of
    # the same tensor has the same extremes (up to the kernels' last bits)
    for name, r in quantized.ranges.items():
        h = r.histogram
        assert h.total > 0, name
        span = max(1e-6, r.converter_max - r.converter_min)
        # the converter widens the inputs of a shared-scale op to the op's range, so qfcal's
        # extremes sit inside the converter's, never outside
        assert h.min >= r.converter_min - 1e-4 * span, (name, h.min, r.converter_min)
        assert h.max <= r.converter_max + 1e-4 * span, (name, h.max, r.converter_max)
    exact = sum(
        abs(r.histogram.max - r.converter_max) <= 1e-5 * max(1.0, abs(r.converter_max))
        for r in quantized.ranges.values()
    )
    assert exact >= len(quantized.ranges) - 2


def test_accuracy_against_the_converters_own_calibration(model, rep, quantized, fmnist):
    _, _, xt, yt = fmnist
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    default = conv.convert()
    logits = model.predict(xt, verbose=0)
    float_top1 = float(np.mean(np.argmax(logits, axis=1) == yt))
    ours, theirs = _top1(quantized, xt, yt), _top1(default, xt, yt)
    print(
        f"\ntop-1 on {len(xt)} Fashion-MNIST test images: float {float_top1:.4f}, int8 with "
        f"qfcal ranges {ours:.4f}, int8 with the converter's calibration {theirs:.4f}"
    )
    assert float_top1 > 0.7  # the model learned something, so the comparison means something
    # 2,000 images: one image is 0.05 points; int8 may cost about a point at most
    assert ours >= float_top1 - 0.01
    assert ours >= theirs - 0.01


def test_other_entry_points_and_options(model, rep, tmp_path):
    saved = tmp_path / "saved"
    model.export(str(saved), verbose=False)
    a = qtflite.quantize(str(saved), rep, method="minmax", per_channel=False)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    b = qtflite.quantize(conv, rep, method="percentile", percentile=99.9)
    for q, method in ((a, "minmax"), (b, "percentile")):
        assert all(r.result.method == method for r in q.ranges.values())
    # minmax ranges cover the histogram; the file is written atomically and loads
    r = next(iter(a.ranges.values()))
    assert r.result.min <= r.histogram.min and r.result.max >= r.histogram.max
    a.save(tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").read_bytes() == bytes(a)
    # dict samples, by the signature's input name
    it = Interpreter(model_content=bytes(a))
    key = next(iter(it.get_signature_runner().get_input_details()))

    def by_name():
        for s in rep():
            yield {key: s[0]}

    c = qtflite.quantize(model, by_name, method="optimal")
    assert c.samples == CALIB


def test_bad_input(model, rep, fmnist):
    with pytest.raises(ValueError, match="method must be one of"):
        qtflite.quantize(model, rep, method="kl")
    with pytest.raises(ValueError, match="bins must be"):
        qtflite.quantize(model, rep, bins=3)
    with pytest.raises(TypeError, match="model_or_converter must be"):
        qtflite.quantize(42, rep)
    with pytest.raises(FileNotFoundError, match="not a SavedModel directory"):
        qtflite.quantize("/nonexistent/model", rep)
    with pytest.raises(TypeError, match="representative_dataset must be a callable"):
        qtflite.quantize(model, [1, 2, 3])

    def wrong():
        for _ in range(3):
            yield [np.zeros((1, 28, 28, 1), np.float32), np.zeros((1, 3), np.float32)]

    with pytest.raises(ValueError, match="representative_dataset failed: .*expected 1 items got 2"):
        qtflite.quantize(model, wrong)
    with pytest.raises(ValueError, match="gamma"):
        qtflite.quantize(model, rep, method="optimal", gamma=-1.0)


def test_auto_method_chooses_end_to_end_on_samples_left_out(model, rep, quantized, fmnist):
    _, _, xt, yt = fmnist
    totals: list[int] = []
    real = qtflite._search_all
    input_name = min(quantized.ranges, key=lambda n: quantized.ranges[n].index)

    def spy(hists, groups, options, *weighted):
        idx = quantized.ranges[input_name].index
        totals.append(hists[idx].total)
        return real(hists, groups, options, *weighted)

    cands = {
        "optimal": {"method": "optimal"},
        "minmax": {"method": "minmax"},
        "clipped": {"method": "percentile", "percentile": 99.0},
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qtflite, "_search_all", spy)
        # method="auto" and metric="auto" (kl on these logits) are the defaults
        q = qtflite.quantize(
            model, rep, candidates=cands, folds=4,
            inference_input_type=tf.int8, inference_output_type=tf.int8,
        )  # fmt: skip
    sel = q.selection
    assert sel is not None and set(sel.errors) == set(cands) and quantized.selection is None
    assert sel.metric == "kl"  # metric="auto" on this classifier's logits
    # samples dealt round-robin; each fold's ranges come from the other three folds' samples
    assert sel.folds == [list(range(k, CALIB, 4)) for k in range(4)]
    per_sample = 28 * 28
    assert totals[:-1] == [(CALIB - CALIB // 4) * per_sample] * (len(cands) * 4)
    assert totals[-1] == CALIB * per_sample  # the final search: every sample
    assert sel.threshold == 0.0  # 64 samples: the least error wins outright
    assert sel.chosen == min(sel.errors, key=lambda k: sel.errors[k])
    # the per-fold histograms merge into exactly the plain calibration's
    params = int8_tensors(q)
    for name, r in q.ranges.items():
        assert r.histogram == quantized.ranges[name].histogram, name
        assert r.result.method == sel.options["method"]
        assert params[name] == (float(np.float32(r.result.scale)), r.result.zero_point), name
    # a clipping percentile at 99 costs this model output accuracy: it is not chosen
    assert sel.errors["clipped"] > sel.errors["optimal"] and sel.chosen != "clipped"
    float_top1 = float(np.mean(np.argmax(model.predict(xt, verbose=0), axis=1) == yt))
    assert _top1(q, xt, yt) >= float_top1 - 0.01


def test_loss_aware_ranges_are_searched_on_the_matching_keras_layer(model, rep, quantized, fmnist):
    """loss_aware="fisher": each TFLite tensor found among the Keras layer outputs (by value),
    searched on that layer's loss-weighted histogram; the int8 model holds those ranges."""
    import qfcal.keras

    _, _, xt, yt = fmnist
    q = qtflite.quantize(
        model, rep, method="optimal", loss_aware="fisher",
        inference_input_type=tf.int8, inference_output_type=tf.int8,
    )  # fmt: skip
    matched = {n: r for n, r in q.ranges.items() if r.keras_layer is not None}
    # every activation the model computes is a Keras layer's output; the input is not one
    assert len(matched) == len(q.ranges) - 1, sorted(set(q.ranges) - set(matched))
    assert {r.keras_layer for r in matched.values()} >= {"pool1", "branch1", "flatten"}
    want = qfcal.keras.loss_aware_histograms(model, (s for s in rep()), target="fisher")
    params = int8_tensors(q)
    for name, r in q.ranges.items():
        assert r.histogram == quantized.ranges[name].histogram, name  # the plain counts
        assert params[name] == (float(np.float32(r.result.scale)), r.result.zero_point), name
        if r.weighted is None:
            continue
        assert r.weighted == want[r.keras_layer], name
        assert r.weighted.counts.total == r.histogram.total, name
        if not r.shared_with:
            assert r.result == qfcal.search(r.weighted, bits=8), name
    # the weights change the ranges, and the model still works
    assert any(r.result.scale != quantized.ranges[n].result.scale for n, r in matched.items())
    float_top1 = float(np.mean(np.argmax(model.predict(xt, verbose=0), axis=1) == yt))
    assert _top1(q, xt, yt) >= float_top1 - 0.01


def test_loss_aware_bad_input(model, rep, tmp_path):
    with pytest.raises(ValueError, match="loss_aware must be one of fisher, projection"):
        qtflite.quantize(model, rep, method="optimal", loss_aware="kl")
    with pytest.raises(ValueError, match="loss_floor must be a finite number >= 0, got -1"):
        qtflite.quantize(model, rep, method="optimal", loss_aware="fisher", loss_floor=-1)
    with pytest.raises(ValueError, match="pass method='optimal'"):
        qtflite.quantize(model, rep, loss_aware="fisher")  # the default method, auto
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    with pytest.raises(
        ValueError, match=r"needs the Keras model \(its gradients\), got TFLite\w*Converter"
    ):
        qtflite.quantize(conv, rep, method="optimal", loss_aware="projection")


def test_auto_method_bad_input(model, rep):
    with pytest.raises(ValueError, match="candidates= is for method='auto'"):
        qtflite.quantize(model, rep, method="optimal", candidates={"a": {"method": "minmax"}})
    # gamma and percentile belong to one method: the default auto refuses them, naming them
    with pytest.raises(ValueError, match=r"gamma=3.0 / percentile=99.99 .* method='optimal'"):
        qtflite.quantize(model, rep, gamma=3.0)
    with pytest.raises(ValueError, match=r"percentile=99.9 .* method='percentile'"):
        qtflite.quantize(model, rep, percentile=99.9)
    with pytest.raises(ValueError, match="folds must be an int >= 2, got 1"):
        qtflite.quantize(model, rep, method="auto", folds=1)
    with pytest.raises(ValueError, match="metric must be one of"):
        qtflite.quantize(model, rep, method="auto", metric="l1")
    with pytest.raises(TypeError, match=r"candidates\['a'\] has option\(s\) \['bits'\]"):
        qtflite.quantize(
            model, rep, method="auto", candidates={"a": {"method": "minmax", "bits": 4}}
        )
    with pytest.raises(ValueError, match="method must be one of"):
        qtflite.quantize(model, rep, method="auto", candidates={"a": {"method": "auto"}})

    def one():
        yield [np.zeros((1, 28, 28, 1), np.float32)]

    # one sample cannot score ranges on data they were not searched on: optimal, said so
    with pytest.warns(UserWarning, match="representative_dataset gave 1 sample.*'optimal'"):
        q = qtflite.quantize(model, one)
    assert q.selection is None and q.samples == 1
    assert {r.result.method for r in q.ranges.values()} == {"optimal"}


def test_a_changed_private_api_gives_a_clear_error(monkeypatch):
    from tensorflow.lite.tools import flatbuffer_utils

    monkeypatch.delattr(flatbuffer_utils, "convert_bytearray_to_object")
    with pytest.raises(qtflite.TFPrivateAPIError, match="convert_bytearray_to_object.*checked"):
        _tf_private.read_model(b"")
    monkeypatch.setattr(_tf_private, "_version", lambda: (9, 0))
    with pytest.warns(UserWarning, match="checked with TensorFlow"):
        _tf_private.check_version()


def test_readme_example(model, rep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_example("tflite", {"model": model, "representative_dataset": rep})
    assert (tmp_path / "model_int8.tflite").read_bytes() == bytes(ns["tflite_model"])
    assert isinstance(ns["tflite_model"], qtflite.QuantizedModel)
    assert qfcal.search  # the example uses the package, not a copy


def _weight_params(content):
    """Every int8 constant of a ``.tflite``: name -> (scales, zero points, values)."""
    it = Interpreter(model_content=bytes(content))
    it.allocate_tensors()
    out = {}
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] == np.int8 and len(d["shape"]) >= 2:
            try:
                values = it.get_tensor(d["index"])
            except ValueError:
                continue  # an activation: no data here
            out[d["name"]] = (q["scales"], q["zero_points"], values)
    return out


def test_weight_scales_are_qfcals(model, rep, quantized):
    # optimal: qfcal's per-channel weight scales; the converter derives them from the clipped,
    # batch-norm-folded weights, bit for bit
    assert quantized.weight_ranges == {}  # the default keeps the converter's
    searched = qtflite.quantize(model, rep, weight_method="optimal")
    params = _weight_params(searched)
    found = 0
    for name, r in searched.weight_ranges.items():
        assert (r.qmin, r.qmax, r.zero_point) == (-127, 127, 0) and r.axis in (0, 3)
        scales, zps, values = params[name]
        np.testing.assert_array_equal(scales.astype(np.float32), r.scale)
        assert not zps.any() and values.min() >= -127
        assert (r.mse <= r.minmax_mse).all() and (r.scale <= r.minmax_scale).all()
        found += 1
    # 4 convolutions (branch1, branch3 and the two first) and the 2 dense layers
    assert found == 6
    assert sum(float((r.minmax_mse - r.mse).sum()) for r in searched.weight_ranges.values()) > 0
    # the default leaves the converter's own: max |w| / 127 per channel
    own = _weight_params(quantized)
    for name, r in searched.weight_ranges.items():
        np.testing.assert_array_equal(own[name][0].astype(np.float32), r.minmax_scale)
    with pytest.raises(ValueError, match="weight_method must be one of minmax, optimal"):
        qtflite.quantize(model, rep, weight_method="auto")


def _logits(content, xs):
    it = Interpreter(model_content=bytes(content))
    it.allocate_tensors()
    i0, o0 = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for k in range(len(xs)):
        it.set_tensor(i0["index"], xs[k : k + 1])
        it.invoke()
        out.append(it.get_tensor(o0["index"])[0].astype(np.float64))
    return np.array(out)


def test_16x8_mode_carries_qfcals_ranges(model, rep, quantized, fmnist):
    """activations='int16': TFLite's whole-model 16x8 mode, every activation int16 with the
    scale of qfcal's symmetric 16-bit range, closer to float than the int8 model."""
    xt = fmnist[2][:300]
    q16 = qtflite.quantize(model, rep, activations="int16")
    it = Interpreter(model_content=bytes(q16))
    params = {}
    for d in it.get_tensor_details():
        q = d["quantization_parameters"]
        if d["dtype"] == np.int16 and len(q["scales"]) == 1:
            params[d["name"]] = (float(q["scales"][0]), int(q["zero_points"][0]))
    assert len(q16.ranges) >= 9
    for name, r in q16.ranges.items():
        assert r.result.zero_point == 0 and r.result.min == -r.result.max, (name, r.result)
        # every calibrated tensor is an int16 activation (a float input's range is that of the
        # int16 tensor the quantizer puts after it, named <input>_int16)
        scale, zp = params.get(name) or params[f"{name}_int16"]
        assert zp == 0
        assert scale == pytest.approx(r.result.max / 32767, rel=1e-6), (name, scale, r.result)
    assert not int8_tensors(q16), "16x8 leaves no int8 activation"
    ref = model.predict(xt, verbose=0).astype(np.float64)
    err16 = float(np.mean((_logits(q16, xt) - ref) ** 2))
    # the int8 fixture takes int8 input: an int8 model with float I/O for the same comparison
    q8 = qtflite.quantize(model, rep, method="optimal")
    err8 = float(np.mean((_logits(q8, xt) - ref) ** 2))
    # the converter's own 16x8 (its min/max ranges): at 16 bits the int8 weights dominate, so
    # qfcal's ranges should match it, not beat it by much; both must beat int8 activations
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ]
    own16 = float(np.mean((_logits(conv.convert(), xt) - ref) ** 2))
    assert err16 < err8 and own16 < err8, (err16, own16, err8)
    assert err16 <= own16 * 1.02, (err16, own16)
    with pytest.raises(ValueError, match="activations must be one of .*got 'int4'"):
        qtflite.quantize(model, rep, activations="int4")
