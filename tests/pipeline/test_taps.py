"""Per-tensor calibration taps and streamed histograms (needs the tf extra)."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
models = pytest.importorskip("qfcal.pipeline.models")
fold = pytest.importorskip("qfcal.pipeline.fold")
taps = pytest.importorskip("qfcal.pipeline.taps")

import qfcal  # noqa: E402
from qfcal._io import write_json_atomic  # noqa: E402
from qfcal.pipeline import steps  # noqa: E402


@pytest.fixture(scope="module")
def folded_v2():
    return fold.fold_batch_norm(models.build("v2", "qfriendly", alpha=0.25))


def test_taps_are_the_tensors_an_int8_model_holds(folded_v2):
    names = taps.tap_names(folded_v2)
    assert names[0] == "image" and names[-2:] == ["pool", "logits"]
    # a convolution read only by its activation is fused: its activation is tapped instead
    assert "stem" not in names and "stem_relu" in names
    assert "block2_expand" not in names and "block2_expand_relu" in names
    # a quantization-friendly depthwise output (no BN, no activation) is a tensor of its own
    assert "block2_dw" in names
    # linear projections and residual adds
    assert "block3_project" in names and "block3_add" in names
    assert len(names) == len(set(names))


def test_streaming_gives_the_same_histograms_as_one_batch(folded_v2):
    x = np.random.default_rng(0).uniform(0, 1, (12, 32, 32, 1)).astype(np.float32)
    whole = taps.collect_histograms(folded_v2, x, batch_size=6)
    # an iterable of the same batches: the same activations, so the same histograms, bit for bit
    streamed = taps.collect_histograms(folded_v2, [x[:6], x[6:]])
    assert list(whole.histograms) == taps.tap_names(folded_v2)
    for name, h in whole.histograms.items():
        assert h == streamed.histograms[name], name
        assert h.total == 12 * int(np.prod(folded_v2.get_layer(name).output.shape[1:]))
    # Other batch compositions: TensorFlow's CPU kernels (oneDNN) may round the activations
    # differently in the last bits (seen on AMD EPYC for batches of 5 and 2 against 6 or 12:
    # up to 3e-8 on values near 1), so the counts agree and the extremes agree closely.
    odd = taps.collect_histograms(folded_v2, [x[:5], x[5:7], x[7:]])
    for name, h in whole.histograms.items():
        o = odd.histograms[name]
        assert (o.total, o.zeros, o.finite) == (h.total, h.zeros, h.finite), name
        span = h.max - h.min
        assert abs(o.min - h.min) <= 1e-6 * span and abs(o.max - h.max) <= 1e-6 * span, name
    # the input tap holds the images exactly
    img = qfcal.Histogram()
    img.update(x)
    assert whole.histograms["image"] == img


def test_ranges_json_and_atomic_write(folded_v2, tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    results = taps.collect_histograms(folded_v2, x).search(bits=8)
    doc = steps.ranges_json(results)
    for name, r in doc.items():
        assert r["qmin"] <= r["zero_point"] <= r["qmax"]
        assert r["min"] == (r["qmin"] - r["zero_point"]) * r["scale"]
        assert r["method"] == "optimal", name
    path = tmp_path / "ranges.json"
    write_json_atomic(path, doc)
    assert json.loads(path.read_text()) == doc
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.json"]


def test_bad_images_are_clear_errors(folded_v2):
    with pytest.raises(
        ValueError, match=r"images must have shape \(n, 32, 32, 1\), got \(2, 28, 28, 1\)"
    ):
        taps.collect_histograms(folded_v2, np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="images is empty"):
        taps.collect_histograms(folded_v2, np.zeros((0, 32, 32, 1), np.float32))
