"""FakeQuant graph to int8 .tflite with qfcal's ranges (needs the tf extra)."""

import numpy as np
import pytest
from conftest import int8_tensors

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
models = pytest.importorskip("qfcal.pipeline.models")
fold = pytest.importorskip("qfcal.pipeline.fold")
taps = pytest.importorskip("qfcal.pipeline.taps")
export = pytest.importorskip("qfcal.pipeline.export")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402


@pytest.fixture(scope="module", params=[("v2", "qfriendly"), ("v1", "standard")])
def converted(request):
    m = fold.fold_batch_norm(models.build(*request.param, alpha=0.25))
    models.variance_preserving_init(m)
    x = np.random.default_rng(1).uniform(0, 1, (16, 32, 32, 1)).astype(np.float32)
    results = taps.collect_histograms(m, x).search(bits=8)
    ranges = {k: (r.min, r.max) for k, r in results.items()}
    return m, x, results, export.to_int8_tflite(m, ranges)


def test_every_range_qfcal_chose_is_in_the_tflite(converted):
    _, _, results, tflite = converted
    have = set(int8_tensors(tflite).values())
    missing = {
        name: (r.scale, r.zero_point)
        for name, r in results.items()
        if (float(np.float32(r.scale)), r.zero_point) not in have
    }
    assert not missing, missing


def test_int8_tflite_runs_and_follows_the_fake_quant_model(converted):
    m, x, results, tflite = converted
    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    fq = export.fake_quant_function(m, {k: (r.min, r.max) for k, r in results.items()})
    want = fq(x).numpy()
    got = []
    for img in x:
        q = np.clip(np.round(img / s_in) + z_in, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        got.append((it.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out)
    got = np.concatenate(got)
    # int8 kernels round at every layer (int32 biases, requantization) where the FakeQuant graph
    # computes in float: on these random-weight networks they stay within a few output steps on
    # average (measured: 0.75 and 3.3) and agree on most top-1 predictions (1.0 and 0.875).
    steps = np.abs(got - want) / s_out
    assert steps.mean() <= 4.0, steps.mean()
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.8


def test_bad_export_arguments(converted):
    m, _, results, _ = converted
    ranges = {k: (r.min, r.max) for k, r in results.items()}
    with pytest.raises(ValueError, match="weights must be one of per-tensor, per-channel"):
        export.fake_quant_function(m, ranges, weights="per-row")
    some = dict(list(ranges.items())[1:])
    with pytest.raises(ValueError, match="no entry for tapped tensors"):
        export.fake_quant_function(m, some)


def test_weight_ranges_minmax_and_optimal():
    rng = np.random.default_rng(5)
    w = rng.standard_t(3, (3, 3, 8, 16)).astype(np.float32)
    w[..., 4] = 0.0  # an all-zero output channel
    per_tensor = export.weight_peaks(w, None, "minmax")
    assert per_tensor.shape == (1,) and per_tensor[0] == np.max(np.abs(w))
    per_channel = export.weight_peaks(w, 3, "minmax")
    want = np.max(np.abs(w.reshape(-1, 16)), axis=0)
    assert per_channel.shape == (16,)
    np.testing.assert_array_equal(per_channel[want > 0], want[want > 0])
    assert per_channel[4] > 0  # a usable range even for an all-zero channel

    def mse(x, peak):
        s = peak / 127.0
        return float(np.mean((x - np.clip(np.round(x / s), -127, 127) * s) ** 2))

    best = export.weight_peaks(w, None, "optimal")[0]
    assert best < per_tensor[0]  # heavy tails: clipping a few weights pays off
    assert mse(w, best) < mse(w, per_tensor[0])
    # per channel: each channel's own search (the optimum of the histogram cost may lie a
    # little past a channel's largest weight: the grid need not end on it)
    opt = export.weight_peaks(w, 3, "optimal")
    for c in range(16):
        if want[c] > 0:
            assert opt[c] == export.weight_peaks(w[..., c], None, "optimal")[0]
    with pytest.raises(ValueError, match="weight_method must be one of minmax, optimal"):
        export.weight_peaks(w, None, "entropy")


def test_per_channel_export_covers_dense_layers(converted):
    m, _, results, _ = converted
    ranges = {k: (r.min, r.max) for k, r in results.items()}
    tflite = export.to_int8_tflite(m, ranges, weights="per-channel", weight_method="optimal")
    it = Interpreter(model_content=tflite)
    per_channel = [
        d for d in it.get_tensor_details() if len(d["quantization_parameters"]["scales"]) > 1
    ]
    classes = m.outputs[0].shape[-1]
    assert any(len(d["quantization_parameters"]["scales"]) == classes for d in per_channel)
