"""Per-tensor calibration taps and streamed histograms (needs the tf extra)."""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
models = pytest.importorskip("qfcal.models")
fold = pytest.importorskip("qfcal.fold")
calibrate = pytest.importorskip("qfcal.calibrate")

import qfcal  # noqa: E402


@pytest.fixture(scope="module")
def folded_v2():
    return fold.fold_batch_norm(models.build("v2", "qfriendly", alpha=0.25))


def test_taps_are_the_tensors_an_int8_model_holds(folded_v2):
    names = calibrate.tap_names(folded_v2)
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
    whole = calibrate.calibrate(folded_v2, x, batch_size=12)
    streamed = calibrate.calibrate(folded_v2, [x[:5], x[5:7], x[7:]])
    assert list(whole.histograms) == calibrate.tap_names(folded_v2)
    for name, h in whole.histograms.items():
        assert h == streamed.histograms[name], name
        assert h.total == 12 * int(np.prod(folded_v2.get_layer(name).output.shape[1:]))
    # the input tap holds the images exactly
    img = qfcal.Histogram()
    img.update(x)
    assert whole.histograms["image"] == img


def test_ranges_json_and_atomic_write(folded_v2, tmp_path):
    x = np.random.default_rng(1).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    results = calibrate.calibrate(folded_v2, x).search(bits=8)
    doc = calibrate.ranges_json(results)
    for name, r in doc.items():
        assert r["qmin"] <= r["zero_point"] <= r["qmax"]
        assert r["min"] == (r["qmin"] - r["zero_point"]) * r["scale"]
        assert r["method"] == "optimal", name
    path = tmp_path / "ranges.json"
    calibrate.write_json_atomic(path, doc)
    assert json.loads(path.read_text()) == doc
    assert [p.name for p in tmp_path.iterdir()] == ["ranges.json"]


def test_bad_images_are_clear_errors(folded_v2):
    with pytest.raises(
        ValueError, match=r"images must have shape \(n, 32, 32, 1\), got \(2, 28, 28, 1\)"
    ):
        calibrate.calibrate(folded_v2, np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="images is empty"):
        calibrate.calibrate(folded_v2, np.zeros((0, 32, 32, 1), np.float32))
