"""qfcal.onnxruntime.quantize_static on an ONNX Runtime older than the calibration cache (before
1.32): the ranges reach ORT as TensorQuantOverrides. Runs where such an ORT is installed (.ci/wheel
installs 1.20 beside the wheel); on a newer one it runs the same route by hiding the cache."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import qfcal.onnxruntime as qo  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx_cnn import build_onnx, random_weights  # noqa: E402


def f32(x: float) -> bytes:
    return struct.pack("<f", x)


def test_ranges_reach_onnx_runtime_without_a_calibration_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if qo._ort_has_cache():  # a newer ORT: take the route an older one takes
        monkeypatch.setattr(qo, "_ort_has_cache", lambda: False)
    model = tmp_path / "cnn.onnx"
    onnx.save(build_onnx(random_weights(0)), str(model))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_t(3, (4, 1, 28, 28)).astype(np.float32)} for _ in range(6)]
    out = tmp_path / "int8.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = qo.quantize_static(model, out, iter(batches), progress=False)  # method auto
    assert any("gets method 'optimal'" in str(w.message) for w in caught)
    assert cal.batches == 6 and {r.method for r in cal.ranges.values()} == {"optimal"}
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    seen = 0
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in cal.ranges:
            r = cal.ranges[node.input[0]]
            assert f32(float(inits[node.input[1]])) == f32(r.scale), node.input[0]
            assert int(inits[node.input[2]]) == r.zero_point, node.input[0]
            seen += 1
    assert seen >= 5, seen
    # the scales are qfcal's, not ORT's min/max of the one batch its calibrator saw
    first = batches[0]["input"]
    ort_scale = (max(float(first.max()), 0.0) - min(float(first.min()), 0.0)) / 255
    assert not np.isclose(cal.ranges["input"].scale, ort_scale, rtol=1e-2)
