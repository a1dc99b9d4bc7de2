"""qfcal.onnxruntime.equalize and quantize_static(equalize=True) on a small MobileNet-like ONNX
graph with the seed's failure planted: one depthwise channel's weights 60x the others'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
qort = pytest.importorskip("qfcal.onnxruntime")


def mobile_block(seed: int = 0, blow_up: float = 60.0) -> Any:
    """Conv3x3 s2 -> ReLU6 -> depthwise 3x3 -> ReLU6 -> Conv1x1 -> Relu -> pool -> Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = {
        "c1.w": rng.normal(size=(8, 3, 3, 3)) * 0.4,
        "c1.b": rng.normal(size=8) * 0.3,
        "dw.w": rng.normal(size=(8, 1, 3, 3)) * 0.3,
        "dw.b": rng.normal(size=8) * 0.2 + 0.5,
        "pw.w": rng.normal(size=(16, 8, 1, 1)) * 0.4,
        "pw.b": rng.normal(size=16) * 0.1,
        "fc.w": rng.normal(size=(5, 16)) * 0.5,
        "fc.b": np.zeros(5),
        "lo": np.array(0.0),
        "hi": np.array(6.0),
    }
    # the seed's dying channel after batch-norm folding: tiny inputs, weights blown up to
    # give them the other channels' size
    w["c1.w"][2] /= blow_up
    w["c1.b"][2] /= blow_up
    w["dw.w"][2] *= blow_up
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "c1.w", "c1.b"], ["c1"], strides=[2, 2], pads=[1] * 4, name="c1"),
        n("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6_1"),
        n("Conv", ["a1", "dw.w", "dw.b"], ["dw"], group=8, pads=[1] * 4, name="dw"),
        n("Clip", ["dw", "lo", "hi"], ["a2"], name="relu6_2"),
        n("Conv", ["a2", "pw.w", "pw.b"], ["pw"], name="pw"),
        n("Relu", ["pw"], ["a3"], name="relu"),
        n("GlobalAveragePool", ["a3"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flat"),
        n("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "mobile_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(size=(4, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def run(model: Any, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in batches])


def test_equalize_keeps_the_function_and_spreads_the_channels_evenly() -> None:
    model = mobile_block()
    calib = feeds(8, 1)
    eq, report = qort.equalize(model, calib)
    assert [(c.first, c.second, c.activation) for c in report.links] == [
        ("c1", "dw", "relu6"),
        ("dw", "pw", "relu6"),
    ]
    dw = next(c for c in report.links if c.first == "dw")
    assert dw.spread_before > 30 and dw.spread_after < dw.spread_before / 5
    y0, y1 = run(model, calib), run(eq, calib)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    assert report.float_drift is not None and report.float_drift < 1e-4 * np.abs(y0).max()
    assert "equalized 2 layer pairs" in report.summary()
    # the model given is not modified
    assert model.SerializeToString() == mobile_block().SerializeToString()


def test_the_noise_objective_keeps_the_function() -> None:
    model = mobile_block()
    calib = feeds(8, 1)
    eq, report = qort.equalize(model, calib, objective="noise")
    assert len(report.links) == 2 and any(c.scaled for c in report.links)
    y0, y1 = run(model, calib), run(eq, calib)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    with pytest.raises(ValueError, match="objective must be one of cle, noise, got 'mse'"):
        qort.equalize(model, calib, objective="mse")


def test_equalized_per_tensor_weights_come_closer_to_float(tmp_path: Path) -> None:
    model = mobile_block()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    calib, held = feeds(16, 2), feeds(16, 3)
    ref = run(str(src), held)
    errs = {}
    for eq in (False, True):
        out = tmp_path / f"q{int(eq)}.onnx"
        cal = qort.quantize_static(
            src, out, calib, method="optimal", per_channel=False, equalize=eq, progress=False
        )
        errs[eq] = float(np.mean((run(str(out), held) - ref) ** 2))
        assert (cal.equalization is not None) == eq
    assert errs[True] < errs[False] / 3, errs


def test_bias_correction_alone_and_bad_input(tmp_path: Path) -> None:
    model = mobile_block()
    eq, report = qort.equalize(model, feeds(4, 4), bias_correction=True)
    assert set(report.bias_corrected) == {"c1", "dw", "pw"}
    with pytest.raises(ValueError, match="no batches"):
        qort.equalize(model, [])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qort.equalize(tmp_path / "missing.onnx", feeds(1, 0))
    with pytest.raises(TypeError, match="absorb must be True or False"):
        qort.equalize(model, feeds(1, 0), absorb="yes")
    with pytest.raises(TypeError, match="equalize must be True, False or one of cle, noise"):
        qort.quantize_static(model, tmp_path / "o.onnx", feeds(2, 0), equalize=1)
    with pytest.raises(ValueError, match="equalize must be one of cle, noise, got 'snr'"):
        qort.quantize_static(model, tmp_path / "o.onnx", feeds(2, 0), equalize="snr")


def wide_feeds(n: int, seed: int, gain: float) -> list[dict[str, np.ndarray]]:
    return [{"input": f["input"] * gain} for f in feeds(n, seed)]


def test_per_channel_clips_equalize_saturated_relu6_and_keep_every_input(tmp_path: Path) -> None:
    """Inputs that drive most channels into the ReLU6 clip: ``bound`` holds them; moving the
    clips per channel scales them, adds one Min per moved clip and stays equal to the original
    on inputs ten times wider than the calibration data."""
    model = mobile_block()
    calib = wide_feeds(8, 1, 4.0)
    _, bound = qort.equalize(model, calib)
    eq, moved = qort.equalize(model, calib, relu6="per-channel")
    assert sum(c.held for c in bound.links) > 0 and not bound.clips
    assert sum(c.held for c in moved.links) == 0 and set(moved.clips) == {"c1", "dw"}
    mins = [n for n in eq.graph.node if n.op_type == "Min"]
    assert [n.output[0] for n in mins] == ["a1", "a2"]
    onnx.checker.check_model(eq)
    for batches in (calib, wide_feeds(4, 9, 40.0)):
        y0, y1 = run(model, batches), run(eq, batches)
        np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4 * np.abs(y0).max())
    assert "2 ReLU6 clips moved per channel" in moved.summary()
    src = tmp_path / "float.onnx"
    onnx.save(model, src)
    held = wide_feeds(16, 3, 4.0)
    ref = run(str(src), held)
    errs = {}
    for mode in ("none", "bound", "per-channel"):
        out = tmp_path / f"q_{mode}.onnx"
        qort.quantize_static(
            src, out, calib, method="optimal", per_channel=False, equalize=mode != "none",
            equalize_relu6="bound" if mode == "none" else mode, progress=False,
        )  # fmt: skip
        errs[mode] = float(np.mean((run(str(out), held) - ref) ** 2))
    assert errs["per-channel"] < min(errs["bound"], errs["none"] / 3), errs
    with pytest.raises(ValueError, match="equalize_relu6 must be one of bound, per-channel"):
        qort.quantize_static(model, tmp_path / "o.onnx", calib, equalize=True, equalize_relu6="x")
    with pytest.raises(ValueError, match="relu6 must be one of bound, per-channel, got 'clip'"):
        qort.equalize(model, calib, relu6="clip")
