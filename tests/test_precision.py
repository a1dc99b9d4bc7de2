"""qfcal.precision.plan: which tensors get 16 bits, from the histograms alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import qfcal
from qfcal.precision import plan


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Residual-stream-like tensors: `outlier` has a few channels up to ~220 where most values
    are near 1 (about 30 dB at 8 bits under any range); the others are plain."""
    rng = np.random.default_rng(seed)
    out = {f"plain{i}": rng.normal(0, 1 + i, size=20000) for i in range(4)}
    x = rng.normal(0, 1, size=20000)
    x[rng.choice(x.size, 100, replace=False)] = rng.uniform(150, 223, size=100)
    out["outlier"] = x
    out["relu"] = np.maximum(rng.normal(0.2, 1, size=20000), 0)
    return out


def hists(data: dict[str, np.ndarray]) -> dict[str, qfcal.Histogram]:
    out = {}
    for name, x in data.items():
        out[name] = qfcal.Histogram()
        out[name].update(x)
    return out


def simulated(x: np.ndarray, r: qfcal.SearchResult) -> float:
    """mse / E[x^2] of quantize-dequantize on r's grid, on the data itself."""
    q = np.clip(np.round(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    return float(np.mean(((q - r.zero_point) * r.scale - x) ** 2) / np.mean(x**2))


def test_the_outlier_tensor_goes_up_first_and_the_prediction_holds() -> None:
    data = tensors()
    p = plan(hists(data), tensors=1)
    assert p.high == ["outlier"] and p.ranked[0] == "outlier"
    assert p.tensors["outlier"].bits == 16 and p.tensors["plain0"].bits == 8
    out = p.tensors["outlier"]
    assert out.base_error > 3 * max(t.base_error for n, t in p.tensors.items() if n != "outlier")
    for name, t in p.tensors.items():  # the histogram's prediction against the data
        assert simulated(data[name], t.result) == pytest.approx(t.error, rel=0.15, abs=1e-9)
    assert p.predicted_error < plan(hists(data), tensors=0).predicted_error / 1.5
    assert "1 of 6 tensors at 16 bits" in p.summary()


def test_budgets_by_bytes_target_and_sensitivity() -> None:
    h = hists(tensors(1))
    sizes = {"outlier": 1000, "plain0": 10, "plain1": 10, "plain2": 10, "plain3": 10, "relu": 10}
    by_bytes = plan(h, share=0.02, sizes=sizes)  # the outlier tensor does not fit
    assert "outlier" not in by_bytes.high and by_bytes.high
    assert sum(sizes[n] for n in by_bytes.high) <= 0.02 * sum(sizes.values())
    everything = plan(h, tensors=6)
    none = plan(h, tensors=0)
    goal = none.predicted_error * 0.3
    reach = plan(h, target=goal)
    assert reach.predicted_error <= goal < plan(h, tensors=len(reach.high) - 1).predicted_error
    assert 0 < len(reach.high) < 6 and reach.high == everything.high[: len(reach.high)]
    loud = plan(h, tensors=1, sensitivity={"plain3": 1e6})
    assert loud.high == ["plain3"]


def test_ort_overrides_carry_16_bits_and_bad_input() -> None:
    h = hists(tensors(2))
    p = plan(h, tensors=2)
    over = p.ort_overrides() if _has_ort() else None
    if over is not None:
        from onnxruntime.quantization import QuantType

        for name, (e,) in over.items():
            want = QuantType.QInt16 if name in p.high else QuantType.QInt8
            assert e["quant_type"] == want
            assert float(e["scale"]) == p.tensors[name].result.scale
    from qfcal.encodings import to_aimet

    aimet = to_aimet(p.results)["activation_encodings"]
    assert {n for n, (e,) in aimet.items() if e["bitwidth"] == 16} == set(p.high)
    with pytest.raises(ValueError, match="exactly one budget"):
        plan(h)
    with pytest.raises(ValueError, match="exactly one budget"):
        plan(h, tensors=1, share=0.1)
    with pytest.raises(ValueError, match="high_bits \\(8\\) must exceed base_bits \\(8\\)"):
        plan(h, tensors=1, high_bits=8)
    with pytest.raises(ValueError, match="share must be in \\[0, 1\\], got 2"):
        plan(h, share=2)
    with pytest.raises(ValueError, match="tensors must be an int >= 0, got -1"):
        plan(h, tensors=-1)
    with pytest.raises(ValueError, match="tensor 'empty'"):
        plan({"empty": qfcal.Histogram()}, tensors=1)


def _has_ort() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_plan_applied_in_onnx_runtime(tmp_path: Path) -> None:
    """End to end: the plan's overrides give the chosen tensors int16 QDQ in ONNX Runtime's
    model, with qfcal's scales, and the output comes closer to float than all-int8."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import qfcal.onnxruntime as qo
    from onnx import numpy_helper
    from onnx_cnn import build_onnx, random_weights

    w = random_weights(0)
    w["c2.weight"][:2] *= 40.0  # two output channels of conv2 far wider: an outlier tensor
    model = tmp_path / "cnn.onnx"
    onnx.save(build_onnx(w), str(model))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.random((8, 1, 28, 28), dtype=np.float32)} for _ in range(4)]
    held = rng.random((32, 1, 28, 28), dtype=np.float32)
    cal = qo.calibrate(model, batches, method="optimal", progress=False)
    p = plan(cal.histograms, tensors=2)
    assert len(p.high) == 2

    def run(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {"input": held})[0]

    ref = run(model)
    errs = {}
    for name, overrides in (("int8", None), ("plan", p.ort_overrides())):
        out = tmp_path / f"{name}.onnx"
        extra = {"TensorQuantOverrides": overrides} if overrides else {}
        qo.quantize_static(model, out, batches, method="optimal", progress=False,
                           extra_options=extra)  # fmt: skip
        errs[name] = float(np.mean((run(out) - ref) ** 2))
        if name == "plan":
            q = onnx.load(str(out))
            inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
            wide = {
                n.input[0]
                for n in q.graph.node
                if n.op_type == "QuantizeLinear" and inits[n.input[2]].dtype == np.int16
            }
            assert wide == set(p.high), (wide, p.high)
    assert errs["plan"] < errs["int8"], errs
