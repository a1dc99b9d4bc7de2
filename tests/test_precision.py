"""qfcal.precision.plan: which tensors get 16 bits, from the histograms alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import qfcal
from qfcal.precision import bulk_power, plan


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


def bulk(x: np.ndarray, quantile: float = 0.99) -> float:
    """E[min(x^2, c^2)], c the quantile of |x|, on the data itself."""
    c = np.quantile(np.abs(x), quantile)
    return float(np.mean(np.minimum(x * x, c * c)))


def simulated(x: np.ndarray, r: qfcal.SearchResult) -> float:
    """mse / bulk power of quantize-dequantize on r's grid, on the data itself."""
    q = np.clip(np.round(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    return float(np.mean(((q - r.zero_point) * r.scale - x) ** 2) / bulk(x))


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


def test_bulk_power_clips_the_outliers_only() -> None:
    data = tensors(3)
    h = hists(data)
    for name, x in data.items():  # the histogram's value against the data's
        assert bulk_power(h[name]) == pytest.approx(bulk(x), rel=0.05), name
    plain = data["plain2"]
    assert bulk_power(h["plain2"]) == pytest.approx(np.mean(plain**2), rel=0.05)
    # the outlier tensor: its E[x^2] is ~200x its bulk's
    assert np.mean(data["outlier"] ** 2) > 50 * bulk_power(h["outlier"])
    assert bulk_power(qfcal.Histogram()) == 0.0
    w = qfcal.WeightedHistogram()
    w.update(plain, np.ones_like(plain))
    assert bulk_power(w) == bulk_power(h["plain2"])


def test_an_outlier_hidden_by_its_own_power_is_still_found() -> None:
    """0.2% of the values at 200 make E[x^2] 80x the bulk's: mse / E[x^2] would rank a plain
    heavy-tailed tensor first; noise over the bulk's power ranks the outlier tensor first."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, size=50000)
    x[rng.choice(x.size, 100, replace=False)] = 200.0
    y = rng.standard_t(3, size=50000)  # heavy tails, no outlier cluster
    h = hists({"hidden": x, "tails": y})
    assert plan(h, tensors=1).high == ["hidden"]

    def over_power(name: str, v: np.ndarray) -> float:
        lo = qfcal.search(h[name], bits=8)
        hi = qfcal.search(h[name], bits=16, symmetric=True, method="minmax")
        return (lo.mse - hi.mse) / float(np.mean(v**2))

    assert over_power("hidden", x) < over_power("tails", y) / 2  # the old ranking's view


def test_loss_weighted_histograms_are_planned_by_their_weights() -> None:
    """With loss weights (qfcal.torch.calibrate_loss_aware's), a tensor whose values cost the
    loss nothing is not worth 16 bits, however noisy."""
    data = tensors(6)
    weighted = {}
    for name, x in data.items():
        w = qfcal.WeightedHistogram()
        w.update(x, np.full(x.shape, 1e-6 if name == "outlier" else 1.0))
        weighted[name] = w
    p = plan(weighted, tensors=1)
    assert p.high and p.high[0] != "outlier" and p.ranked[-1] == "outlier"
    assert plan(hists(data), tensors=1).high == ["outlier"]
    assert p.tensors["relu"].result.min == 0.0  # no negatives: 0 stays the lowest level
    # the predicted error is the loss increase sum(w e^2) / n, simulated on the data
    r, x = p.tensors["plain1"].result, data["plain1"]
    q = np.clip(np.round(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    assert p.tensors["plain1"].error == pytest.approx(
        np.mean(((q - r.zero_point) * r.scale - x) ** 2), rel=0.15
    )
    with pytest.raises(ValueError, match="mixes loss-weighted and plain histograms"):
        plan({**hists(data), "w": weighted["plain0"]}, tensors=1)


def test_free_tensors_get_no_quantizer() -> None:
    h = hists(tensors(5))
    p = plan(h, tensors=1, free=["outlier"])
    assert p.free == ["outlier"] and p.bits["outlier"] is None
    assert p.tensors["outlier"].error == 0.0 and "outlier" not in p.ranked
    assert "outlier" not in p.results and len(p.high) == 1 and p.high[0] != "outlier"
    assert p.predicted_error < plan(h, tensors=1).predicted_error
    assert "1 without a quantizer" in p.summary()
    assert plan(h, tensors=1, free=["outlier", "not_calibrated"]).free == ["outlier"]
    with pytest.raises(TypeError, match="free must be a collection of tensor names"):
        plan(h, tensors=1, free="outlier")


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


def test_readme_mixed_precision_on_a_transformer_like_encoder(tmp_path: Path, monkeypatch) -> None:
    """The README's example on a small MiniLM-like encoder (tests/onnx_encoder.py): the
    feed-forward outputs with an outlier channel are ranked first; 16 bits on them and no
    quantizer on the MatMul outputs before their bias Add (what fused kernels keep internal)
    each bring the embedding closer to float than all-int8."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx_encoder
    import qfcal.onnxruntime as qort
    from readme_examples import run as run_example

    monkeypatch.chdir(tmp_path)
    onnx.save(onnx_encoder.build(onnx_encoder.weights(0)), "encoder.onnx")
    calib = onnx_encoder.sentences(64, seed=1)
    batches = [{"x": calib[i : i + 8]} for i in range(0, 64, 8)]
    held = onnx_encoder.sentences(200, seed=2)  # inputs the calibration never saw

    def cos_error(path: str) -> float:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return s.run(None, {"x": held})[0]

    ref = cos_error("encoder.onnx")

    def error(path: str) -> float:
        out = cos_error(path)
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        return float(1.0 - cos.mean())

    ns = run_example("precision", {"batches": batches})
    p = ns["p"]
    assert set(p.free) == {f"b{b}.mm{k}" for b in range(3) for k in "a12"}
    assert len(p.high) == 2 and not set(p.high) & set(p.free)
    assert "2 of 18 tensors at 16 bits, 9 without a quantizer" in p.summary()  # as README says
    mixed = error("mixed.onnx")
    q = onnx.load("mixed.onnx")
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & set(p.free) and set(p.high) <= quantized

    cal = ns["cal"]
    only16 = plan(cal.histograms, tensors=2)
    assert only16.high == ["b0.mm2", "b1.mm2"]  # the outlier tensors, largest first
    errs = {}
    for name, extra in (("int8", {}), ("16-bit", {"TensorQuantOverrides": only16.ort_overrides()})):
        qort.quantize_static("encoder.onnx", f"{name}.onnx", batches, method="optimal",
                             op_types_to_quantize=["MatMul"], per_channel=True, progress=False,
                             extra_options=extra)  # fmt: skip
        errs[name] = error(f"{name}.onnx")
    errs["mixed"] = mixed
    # the quantized models name the same fused outputs (weights behind DequantizeLinear, the
    # MatMul output read through its quantizer)
    assert qort.fused_outputs("int8.onnx") == qort.fused_outputs("mixed.onnx")
    assert set(qort.fused_outputs("int8.onnx")) == set(p.free)
    print(f"encoder, 1 - cos: {errs}")
    assert errs["16-bit"] < errs["int8"] / 4, errs
    assert errs["mixed"] < errs["16-bit"], errs

    again = qort.remove_quantizers("mixed.onnx", p.free)  # already float: nothing changes
    assert len(again.graph.node) == len(q.graph.node)
    with pytest.raises(ValueError, match="tensors: 'b0.nope' is not a tensor of the model"):
        qort.remove_quantizers("mixed.onnx", ["b0.nope"])


def test_fused_outputs_of_a_cnn() -> None:
    """Conv outputs before their Relu are fused; an output feeding a graph output or a
    non-constant Add is not."""
    pytest.importorskip("onnx")
    import qfcal.onnxruntime as qort
    from onnx_cnn import build_onnx, random_weights

    m = build_onnx(random_weights(0))
    found = qort.fused_outputs(m)
    convs = [n.output[0] for n in m.graph.node if n.op_type == "Conv"]
    assert found == convs, (found, convs)
    with pytest.raises(FileNotFoundError, match="model must be an ONNX model file"):
        qort.fused_outputs("missing.onnx")


def test_fused_layernorm_and_gelu_internals(tmp_path: Path) -> None:
    """LayerNorm and GELU exported as elementwise ops (as all-MiniLM-L6-v2's ONNX export):
    their intermediate tensors are fused-kernel internals; with every op quantized, taking
    their quantizers off (and the MatMul outputs') brings the output closer to float."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import onnx_encoder
    import qfcal.onnxruntime as qort

    model = onnx_encoder.build(onnx_encoder.weights(0), decomposed=True)
    found = qort.fused_outputs(model)
    ln = {f"b{b}.{h}/{t}" for b in range(3) for h in ("h1", "h")
          for t in ("mean", "sub", "pow", "var", "vareps", "std", "norm", "scaled")}  # fmt: skip
    gelu = {f"b{b}.f/{t}" for b in range(3) for t in ("div", "erf", "erf1", "mul")}
    mm = {f"b{b}.mm{k}" for b in range(3) for k in "a12"}
    assert set(found) == ln | gelu | mm, set(found) ^ (ln | gelu | mm)
    path = str(tmp_path / "enc.onnx")
    onnx.save(model, path)
    calib = onnx_encoder.sentences(32, seed=1)
    batches = [{"x": calib[i : i + 8]} for i in range(0, 32, 8)]
    held = onnx_encoder.sentences(100, seed=2)
    cal = qort.quantize_static(path, str(tmp_path / "q.onnx"), batches, method="optimal",
                               per_channel=True, progress=False)  # fmt: skip
    assert qort.fused_outputs(str(tmp_path / "q.onnx")) == found  # read through Q/DQ pairs
    p = plan(cal.histograms, tensors=0, free=found)
    assert p.free and set(p.free) <= set(found)
    qort.remove_quantizers(str(tmp_path / "q.onnx"), p.free, str(tmp_path / "free.onnx"))

    def run(name: str) -> np.ndarray:
        s = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return s.run(None, {"x": held})[0]

    ref = run("enc.onnx")
    errs = {m: float(np.mean((run(m) - ref) ** 2)) for m in ("q.onnx", "free.onnx")}
    q = onnx.load(str(tmp_path / "free.onnx"))
    assert not {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"} & set(p.free)
    assert errs["free.onnx"] < errs["q.onnx"], errs
