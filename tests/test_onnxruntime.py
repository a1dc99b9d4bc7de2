"""qfcal.onnxruntime: streaming calibration feeding ONNX Runtime's quantize_static (one module
under test, one file).

A small residual CNN (Conv-Relu-Conv-Relu-Add-Conv-Relu-Flatten-Gemm) is trained for a few
seconds with torch on real Fashion-MNIST images, written with onnx.helper, and quantized by
ONNX Runtime from qfcal's ranges and from ONNX Runtime's own calibrators.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import qfcal  # noqa: E402
import qfcal.crossval  # noqa: E402
import qfcal.distributed  # noqa: E402
import qfcal.onnxruntime as qo  # noqa: E402
import qfcal.selection  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_cnn import build_onnx  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
)
from onnxruntime.quantization import quantize_static as ort_quantize_static  # noqa: E402
from readme_examples import run as run_readme_example  # noqa: E402

N_TRAIN, N_TEST, BATCH, CALIB_BATCHES = 4000, 2000, 64, 10


def test_installed_onnxruntime_takes_a_calibration_cache() -> None:
    # the test extra pins onnxruntime >= 1.32; an older one in CI is a broken install, which a
    # module-wide skip would hide (the quantize_static tests below fail on it with the adapter's
    # error, the calibrate tests still run)
    assert qo._ort_has_cache(), (
        f"onnxruntime {ort.__version__}: quantize_static has no calibration_cache_path; "
        'the test extra needs onnxruntime>=1.32 (pip install ".[test]")'
    )


class Reader(CalibrationDataReader):  # type: ignore[misc]
    """ONNX Runtime's reader protocol over a list of input dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def train(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Three epochs of Adam on CPU (about a second on two cores)."""

    class Net(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 16, 3, stride=2, padding=1)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.c3 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(32 * 7 * 7, 10)

        def forward(self, t: Any) -> Any:
            a = torch.relu(self.c1(t))
            b = torch.relu(self.c2(a))
            return self.fc(torch.relu(self.c3(a + b)).flatten(1))

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        net = Net()
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(3):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                j = perm[i : i + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xt[j]), yt[j]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from qfcal.pipeline import data

    try:
        ds = data.load("fashion_mnist")
    except data.DatasetNotFoundError as e:  # pragma: no cover - machines without the data
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(ds.size("train"), N_TRAIN + BATCH * CALIB_BATCHES, replace=False))

    def nchw(images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2))

    x = nchw(ds.images("train", idx))
    y = ds.labels("train")[idx].astype(np.int64)
    model = build_onnx(train(x[:N_TRAIN], y[:N_TRAIN]))
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    onnx.save(model, str(path))
    calib = x[N_TRAIN:]  # images held out of training
    x_test = nchw(ds.images("test", np.arange(N_TEST)))
    y_test = ds.labels("test")[:N_TEST].astype(np.int64)
    float_pred = predict(path, x_test)
    return {
        "path": path,
        "model": model,
        "batches": [{"input": calib[i : i + BATCH]} for i in range(0, len(calib), BATCH)],
        "x_test": x_test,
        "y_test": y_test,
        "float_pred": float_pred,
    }


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"input": x})[0]).argmax(1)


@pytest.fixture(autouse=True)
def quiet_ort() -> Any:
    """ONNX Runtime's quantizer logs a pre-processing hint on every call."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# --------------------------------------------------------------------------------------------
# End to end


def test_int8_accuracy_against_onnxruntime_calibrators(cnn: dict[str, Any], tmp_path: Path) -> None:
    y, fp = cnn["y_test"], cnn["float_pred"]
    rows = [("float", float((fp == y).mean()), 1.0)]
    out = tmp_path / "qfcal.onnx"
    cal = qo.quantize_static(
        cnn["path"], out, Reader(cnn["batches"]), method="optimal", progress=False
    )
    assert cal.batches == CALIB_BATCHES
    pred = predict(out, cnn["x_test"])
    rows.append(("qfcal optimal", float((pred == y).mean()), float((pred == fp).mean())))
    for method in (
        CalibrationMethod.MinMax,
        CalibrationMethod.Entropy,
        CalibrationMethod.Percentile,
    ):
        out = tmp_path / f"ort_{method.name}.onnx"
        ort_quantize_static(
            str(cnn["path"]), str(out), Reader(cnn["batches"]), calibrate_method=method
        )
        p = predict(out, cnn["x_test"])
        rows.append((f"ORT {method.name}", float((p == y).mean()), float((p == fp).mean())))
    print(
        f"\nFashion-MNIST, {N_TEST} test images, int8 QDQ (QInt8 activations and weights), "
        f"{CALIB_BATCHES}x{BATCH} calibration images"
    )
    print(f"{'ranges':<16}{'top-1':>8}{'agrees w/ float':>17}")
    for name, acc, agree in rows:
        print(f"{name:<16}{acc:>8.2%}{agree:>17.2%}")
    float_acc, q_acc, agree = rows[0][1], rows[1][1], rows[1][2]
    assert float_acc > 0.75, "the model did not train"
    # int8 rounding only flips images near a decision boundary: on 2000 images a loss of more
    # than one point (20 images), or under 97% agreement, is a calibration failure, not noise
    # (measured: within 0.1 point, 98.8% agreement, on a par with ORT's calibrators).
    assert q_acc >= float_acc - 0.01
    assert agree >= 0.97


def _expected_range_names(model: Any) -> dict[str, str]:
    """Tensor -> the tensor whose range ONNX Runtime's quantizer gives it: a Relu's input takes
    its output's range (ORT folds the Relu into the quantization)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = {}
    for name, nodes in consumers.items():
        single = len(nodes) == 1 and nodes[0].op_type in ("Relu", "Clip")
        out[name] = nodes[0].output[0] if single else name
    for o in model.graph.output:
        out[o.name] = o.name
    return out


def _written_params(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tensor -> (scale, zero point) initializers ONNX Runtime wrote for it."""
    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    out = {}
    for name, value in inits.items():
        if name.endswith("_scale") and name[: -len("_scale")] + "_zero_point" in inits:
            tensor = name[: -len("_scale")].removesuffix("_QuantizeLinear_Input")
            out[tensor] = (value, inits[name[: -len("_scale")] + "_zero_point"])
    return out


@pytest.mark.parametrize(
    ("activation_type", "symmetric", "quant_format", "method"),
    [
        (QuantType.QInt8, False, QuantFormat.QDQ, "optimal"),
        (QuantType.QUInt8, True, QuantFormat.QDQ, "optimal"),  # zero point 128: -128s..127s
        (QuantType.QInt8, True, QuantFormat.QDQ, "percentile"),
        (QuantType.QUInt8, False, QuantFormat.QOperator, "tf_enhanced"),
    ],
)
def test_written_scales_are_qfcal_ranges(
    cnn: dict[str, Any],
    tmp_path: Path,
    activation_type: Any,
    symmetric: bool,
    quant_format: Any,
    method: str,
) -> None:
    out = tmp_path / "q.onnx"
    cal = qo.quantize_static(
        cnn["path"],
        out,
        cnn["batches"],
        method=method,
        progress=False,
        quant_format=quant_format,
        activation_type=activation_type,
        per_channel=True,
        extra_options={"ActivationSymmetric": symmetric},
    )
    lo_q, hi_q = {QuantType.QInt8: (-128, 127), QuantType.QUInt8: (0, 255)}[activation_type]
    if symmetric and activation_type == QuantType.QInt8:
        lo_q = -127
    expected = _expected_range_names(cnn["model"])
    written = _written_params(out)
    checked = 0
    for tensor, (scale, zero_point) in written.items():
        if tensor not in expected or expected[tensor] not in cal.ranges:
            continue  # weights and biases
        r = cal.ranges[expected[tensor]]
        assert (r.qmin, r.qmax, r.method) == (lo_q, hi_q, method)
        assert scale.dtype == np.float32 and scale.shape == ()
        assert scale == np.float32(r.scale), tensor
        assert int(zero_point) == r.zero_point, tensor
        checked += 1
    # input, the activations of three convolutions, the Add, Flatten and the logits
    assert checked >= 6, written.keys()


def test_cache_route_and_research(cnn: dict[str, Any], tmp_path: Path) -> None:
    """calibrate() + save_cache() + ORT's own quantize_static give the same model; search()
    redoes the ranges from the histograms without inference."""
    cal = qo.calibrate(cnn["path"], Reader(cnn["batches"]), progress=False)
    cache = cal.save_cache(tmp_path / "cache.json")
    ort_quantize_static(
        str(cnn["path"]),
        str(tmp_path / "a.onnx"),
        None,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=cache,
    )
    qo.quantize_static(
        cnn["path"], tmp_path / "b.onnx", cnn["batches"], method="optimal", progress=False
    )
    a, b = _written_params(tmp_path / "a.onnx"), _written_params(tmp_path / "b.onnx")
    assert a.keys() == b.keys() and all(a[k][0] == b[k][0] and a[k][1] == b[k][1] for k in a)
    td = cal.tensors_data()
    assert td.calibration_method == CalibrationMethod.MinMax
    assert set(td.keys()) == set(cal.ranges)
    # every float tensor of the graph is calibrated (graph input included), nothing skipped
    assert set(cal.ranges) == {
        "input", "conv1", "relu1", "conv2", "relu2", "add", "conv3", "relu3", "flat", "logits"
    }  # fmt: skip
    assert not cal.skipped
    other = cal.search(activation_type="QUInt8", method="minmax")
    assert other.histograms is not cal.histograms and other.histograms == cal.histograms
    h = cal.histograms["logits"]
    r = other.ranges["logits"]
    assert (r.qmin, r.qmax, r.method) == (0, 255, "minmax")
    # min/max as ONNX Runtime's own MinMax places it: each end within half a step of the data's
    half = r.scale * (0.5 + 1e-3)
    assert abs(r.min - min(h.min, 0.0)) <= half and abs(r.max - max(h.max, 0.0)) <= half


def test_histograms_are_exact_and_batching_free(cnn: dict[str, Any]) -> None:
    """Streaming loses nothing: the histograms equal histograms of the whole arrays, and any
    batching gives bit-identical histograms (so identical ranges)."""
    batches = cnn["batches"]
    before = cnn["model"].SerializeToString()
    cal = qo.calibrate(cnn["model"], batches, progress=False)
    # the ModelProto given is left as it was (its weights were once left pointing at external
    # data in a deleted temporary folder)
    assert cnn["model"].SerializeToString() == before
    everything = np.concatenate([b["input"] for b in batches])
    rebatched = [{"input": everything[i : i + 160]} for i in range(0, len(everything), 160)]
    cal2 = qo.calibrate(cnn["path"], iter(rebatched), progress=False)
    assert cal.histograms == cal2.histograms
    assert {k: (r.scale, r.zero_point) for k, r in cal.ranges.items()} == {
        k: (r.scale, r.zero_point) for k, r in cal2.ranges.items()
    }
    # the float model's own output, computed as calibration runs it (graph optimizations off:
    # ORT's fused kernels round differently in the last bit)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(cnn["path"]), options, providers=["CPUExecutionProvider"])
    logits = s.run(None, {"input": everything})[0]
    for name, values in (("input", everything), ("logits", logits)):
        h = qfcal.Histogram()
        h.update(values)
        assert cal.histograms[name] == h, name
    assert cal.histograms["relu1"].total == len(everything) * 16 * 14 * 14


# --------------------------------------------------------------------------------------------
# Memory: one batch at a time

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import numpy as np
    import qfcal.onnxruntime as qo
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    which, model, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    class Reader:  # fresh arrays each batch: the data itself is streamed too
        def __init__(self):
            self.i, self.rng = 0, np.random.default_rng(0)
        def get_next(self):
            if self.i == n:
                return None
            self.i += 1
            return {"input": self.rng.random((batch, 1, 28, 28), dtype=np.float32)}

    tmp = tempfile.mkdtemp()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    base = status("VmRSS")
    if which == "qfcal":
        qo.calibrate(model, Reader(), progress=False)
    else:
        c = create_calibrator(
            model, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=CalibrationMethod[which],
        )
        c.collect_data(Reader())
    print("PEAK", status("VmHWM") - base)
    """
)


def _peak_rss(which: str, model: Path, batches: int) -> int:
    r = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, which, str(model), str(batches), str(BATCH)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split("PEAK")[-1])


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs"
)
def test_peak_memory_stays_flat(cnn: dict[str, Any]) -> None:
    """Peak resident memory of calibration over n and 4n batches, each in a fresh process.

    Resident memory, not tracemalloc: ONNX Runtime's output arrays live in its own allocator,
    which tracemalloc does not see (five 4 MB outputs held show as 3 kB traced).
    """
    n = 8
    peaks = {
        (which, k): _peak_rss(which, cnn["path"], k)
        for which in ("qfcal", "Entropy", "MinMax")
        for k in (n, 4 * n)
    }
    per_batch = BATCH * 4 * (784 + 5 * 16 * 14 * 14 + 3 * 32 * 7 * 7 + 10)  # every float tensor
    print(
        f"\npeak resident memory of calibration (MB; one batch of activations: "
        f"{per_batch / 1e6:.1f} MB)"
    )
    print(f"{'calibrator':<14}{f'{n} batches':>12}{f'{4 * n} batches':>12}")
    for which in ("qfcal", "Entropy", "MinMax"):
        a, b = peaks[(which, n)], peaks[(which, 4 * n)]
        label = which if which == "qfcal" else f"ORT {which}"
        print(f"{label:<14}{a / 1e6:>12.1f}{b / 1e6:>12.1f}")
    q1, q4 = peaks[("qfcal", n)], peaks[("qfcal", 4 * n)]
    e1, e4 = peaks[("Entropy", n)], peaks[("Entropy", 4 * n)]
    assert q4 <= 1.5 * q1, "qfcal's calibration memory grows with the number of batches"
    # ORT's histogram calibrators keep every activation of every batch: 3n more batches
    # hold at least half their size more, and more than qfcal's whole peak
    assert e4 - e1 > 0.5 * 3 * n * per_batch
    assert q4 < e4
    # (ORT's MinMax is flat too: it reduces in the graph and keeps two numbers per tensor.)


# --------------------------------------------------------------------------------------------
# Errors and small cases


def tiny_model(op: str = "Relu") -> Any:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def batches(n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(n)]


def test_tiny_model_and_progress(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="qfcal"):
        cal = qo.calibrate(tiny_model(), batches(3))
    assert set(cal.ranges) == {"x", "y"} and cal.batches == 3
    # the progress ends in one INFO record; nothing is printed (not a terminal here)
    assert any("calibrated 2 tensors on 3 batches" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().err == ""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qfcal"):
        qo.calibrate(tiny_model(), batches(3), progress=False)
    assert not caplog.records
    assert "Calibration(2 tensors, 3 batches" in repr(cal)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        # the core's own check, as qfcal.search words it
        (lambda m: qo.calibrate(m, batches(), method="bogus"), ValueError, 'got "bogus"'),
        (lambda m: qo.calibrate(m, batches(), gamma=-1.0), ValueError, "gamma"),
        (lambda m: qo.calibrate(m, batches(), bins=3), ValueError, "bins"),
        (lambda m: qo.calibrate(m, batches(), activation_type="QInt7"), ValueError, "QInt7"),
        (
            lambda m: qo.calibrate(m, batches(), activation_type=QuantType.QFLOAT8E4M3FN),
            ValueError,
            "QFLOAT8E4M3FN",
        ),
        (lambda m: qo.calibrate("nowhere/model.onnx", batches()), FileNotFoundError, "nowhere"),
        (lambda m: qo.calibrate(42, batches()), TypeError, "int"),
        (lambda m: qo.calibrate(m, []), ValueError, "no calibration batch"),
        (lambda m: qo.calibrate(m, Reader([])), ValueError, "no calibration batch"),
        (lambda m: qo.calibrate(m, batches()[0]), TypeError, "one dict"),
        (lambda m: qo.calibrate(m, 3.5), TypeError, "float"),
        (lambda m: qo.calibrate(m, [np.zeros(3)]), TypeError, "batch 0 must be a dict"),
        (
            lambda m: qo.calibrate(m, [{"x": np.zeros((1, 4), np.float32), "z": 1}]),
            ValueError,
            r"\['z'\].*inputs are \['x'\]",
        ),
        (lambda m: qo.calibrate(m, [{}]), ValueError, r"lacks model input\(s\) \['x'\]"),
        (
            lambda m: qo.calibrate(m, [{"x": np.zeros((1, 4), np.float64)}]),
            RuntimeError,
            "batch 0",
        ),
        (
            lambda m: qo.quantize_static(m, "out.onnx", batches(), calibrate_method=1),
            TypeError,
            "method=",
        ),
        (
            lambda m: qo.quantize_static(m, "out.onnx", batches(), per_chanel=True),
            TypeError,
            "'per_chanel'",
        ),
        (
            lambda m: qo.quantize_static(
                m,
                "out.onnx",
                batches(),
                activation_type=QuantType.QUInt8,
                extra_options={"ActivationRestrictedAsymmetric": True},
            ),
            ValueError,
            "ActivationRestrictedAsymmetric",
        ),
        (
            lambda m: qo.quantize_static(
                m, "out.onnx", batches(), extra_options={"SmoothQuant": True}
            ),
            ValueError,
            "SmoothQuant",
        ),
    ],
)
def test_bad_input_names_argument_and_value(call: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(tiny_model())


def test_old_onnxruntime_gets_overrides_or_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An ONNX Runtime whose quantize_static takes no calibration cache (before 1.32) gets the
    ranges as TensorQuantOverrides and its own calibrator one batch (tests/
    test_onnxruntime_legacy.py runs the real 1.20); what needs the cache says so."""
    seen: dict[str, Any] = {}

    def old(
        model_input: Any,
        model_output: Any,
        calibration_data_reader: Any,
        calibrate_method: Any = None,
        extra_options: Any = None,
    ) -> None:
        seen["batches"] = list(iter(calibration_data_reader.get_next, None))
        seen["method"], seen["extra"] = calibrate_method, extra_options

    monkeypatch.setattr(qo, "_ort_quantize_static", old)
    cal = qo.quantize_static(tiny_model(), "out.onnx", batches(), method="optimal")
    assert len(seen["batches"]) == 1 and seen["method"] == CalibrationMethod.MinMax
    overrides = seen["extra"]["TensorQuantOverrides"]
    assert set(overrides) == set(cal.ranges)
    for name, (e,) in overrides.items():
        assert float(e["scale"]) == cal.ranges[name].scale
        assert int(e["zero_point"]) == cal.ranges[name].zero_point
    with pytest.raises(RuntimeError, match="calibration_cache_path.*installed: onnxruntime"):
        cal.save_cache(tmp_path / "cache.json")


def test_non_finite_values_are_reported_not_lost() -> None:
    with pytest.warns(UserWarning, match=r"'y': 6 NaN"):
        cal = qo.calibrate(tiny_model("Sqrt"), [{"x": np.array([[-1, -2, 4, 9]] * 3, "f4")}])
    h = cal.histograms["y"]
    assert (h.nan, h.finite, h.max) == (6, 6, 3.0)


def test_empty_tensor_is_skipped_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"no range for 2 tensor\(s\)"):
        cal = qo.calibrate(tiny_model(), [{"x": np.zeros((0, 4), np.float32)}], progress=False)
    assert set(cal.skipped) == {"x", "y"} and not cal.ranges


def test_import_qfcal_does_not_import_onnxruntime() -> None:
    code = (
        "import qfcal, sys; print(sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# README


def test_readme_example(
    cnn: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(cnn["path"].read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the example runs clean
        ns = run_readme_example("onnxruntime", {"batches": iter(cnn["batches"])})
    assert isinstance(ns["cal"], qo.Calibration)
    agree = (predict(tmp_path / "model.int8.onnx", cnn["x_test"]) == cnn["float_pred"]).mean()
    # against the flow the user has: ONNX Runtime's own MinMax calibration, same options. The
    # absolute figure depends on the model trained on this machine's CPU (98.8% agreement on
    # the Intel machine this was written on; 96.5% for qfcal and 96.85% for ONNX Runtime's
    # MinMax on an AMD EPYC one), so the bar is ONNX Runtime's own, less 20 of 2000 images.
    ort_quantize_static(
        "model.onnx", "ort.onnx", Reader(cnn["batches"]), calibrate_method=CalibrationMethod.MinMax,
        activation_type=QuantType.QUInt8, per_channel=True,
    )  # fmt: skip
    ort_agree = (predict(tmp_path / "ort.onnx", cnn["x_test"]) == cnn["float_pred"]).mean()
    assert agree >= ort_agree - 0.01 and agree >= 0.95, (agree, ort_agree)


@pytest.mark.parametrize("seed", range(4))
def test_onnxruntime_arithmetic_gives_back_every_range(seed: int) -> None:
    """ORT recomputes scale and zero point from (lowest, highest) in its own arithmetic; on every
    grid it can use (and reduce_range per tensor), it gets back exactly qfcal's."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    rng = np.random.default_rng(seed)
    for kind in range(4):
        x = rng.standard_normal(3000) * 10.0 ** rng.uniform(-5, 5)
        x = [x, x + 2 * x.std(), np.maximum(x, 0), np.abs(x) + x.std()][kind]
        h = qfcal.Histogram()
        h.update(x.astype(np.float32))
        method = ["optimal", "minmax", "percentile", "tf_enhanced"][(seed + kind) % 4]
        for at in (QuantType.QInt8, QuantType.QUInt8, QuantType.QInt4, QuantType.QUInt4):
            for symmetric in (False, True):
                for reduce_range in (False, True):
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        cal = qo.Calibration(
                            {"t": h},
                            activation_type=at,
                            symmetric=symmetric,
                            method=method,
                            tensor_overrides={"t": [{"reduce_range": reduce_range}]},
                        )
                    r, (lo, hi) = cal.ranges["t"], cal.bounds["t"]
                    qmin, qmax = get_qmin_qmax_for_qType(at.tensor_type, reduce_range, symmetric)
                    assert (r.qmin, r.qmax) == (int(qmin), int(qmax))
                    zp, scale = compute_scale_zp(lo, hi, qmin, qmax, symmetric)
                    assert scale.dtype == np.float32 and scale == np.float32(r.scale)
                    assert int(zp) == r.zero_point


@pytest.mark.parametrize(
    ("per_channel", "weight_method", "quant_format"),
    [
        (True, "optimal", QuantFormat.QDQ),
        (True, "optimal", QuantFormat.QOperator),
        (False, "optimal", QuantFormat.QDQ),
        (True, "minmax", QuantFormat.QDQ),
    ],
)
def test_weight_scales_are_qfcal_ones(
    cnn: dict[str, Any], tmp_path: Path, per_channel: bool, weight_method: str, quant_format: Any
) -> None:
    out = tmp_path / "q.onnx"
    cal = qo.quantize_static(
        cnn["path"],
        out,
        cnn["batches"],
        method="optimal",
        progress=False,
        quant_format=quant_format,
        per_channel=per_channel,
        weight_method=weight_method,
    )
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    # (from the file: another test saves cnn["model"] with external data, which moves it)
    float_model = onnx.load(str(cnn["path"]))
    floats = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    searched = weight_method == "optimal"  # minmax (the default): ORT's own
    weights = [
        n.input[1] for n in float_model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
    ]
    assert weights and set(cal.weight_ranges) == (set(weights) if searched else set())
    for name in weights:
        w, scale, zp = floats[name], inits[f"{name}_scale"], inits[f"{name}_zero_point"]
        qw = inits[f"{name}_quantized"].astype(np.int32)
        assert not zp.any()
        axis = 0 if per_channel else None
        if searched:
            r = cal.weight_ranges[name]
            # ORT clamps weights quantized with a given scale to the type's range
            assert (r.axis, r.qmin, r.qmax, r.zero_point) == (axis, -128, 127, 0)
            # the scales ORT wrote are qfcal's, bit for bit, and so are the integer weights
            np.testing.assert_array_equal(scale, r.scale.reshape(scale.shape))
            # (QDQ divides in float32, as qfcal's cost does; the QOperator path in float64)
            div = np.float64 if quant_format == QuantFormat.QOperator else np.float32
            s = r.scale if axis is None else r.scale.reshape([-1] + [1] * (w.ndim - 1))
            expected = np.clip(np.rint(w.astype(div) / s.astype(div)), r.qmin, r.qmax)
            np.testing.assert_array_equal(qw, expected.astype(np.int32))
            if div == np.float32:
                np.testing.assert_array_equal((qw * s).astype(np.float32), r.fake_quantize(w))
            # never a larger error than min/max's scale on the same grid; ONNX Runtime's own
            # max |w| / 127 (on [-127, 127]) reaches up to a step past the data, which qfcal
            # does not allow, and on a channel of 9 values its rounding can happen to be
            # better: compared over the whole tensor
            assert (r.mse <= r.minmax_mse).all()
            rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
            own = np.abs(rows).max(axis=1, keepdims=True) / np.float32(127)
            own_mse = ((np.clip(np.rint(rows / own), -127, 127) * own - rows) ** 2).mean(axis=1)
            assert r.mse.sum() < own_mse.sum()
        else:
            # ORT's own: max |w| / 127
            rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
            own = np.abs(rows).max(axis=1) / np.float32(127)
            np.testing.assert_allclose(scale.reshape(-1), own, rtol=1e-6)


def test_crossval_method_end_to_end(cnn: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "cv.onnx"
    cal = qo.quantize_static(cnn["path"], out, cnn["batches"], method="crossval", progress=False)
    assert cal.method == "crossval" and cal.crossval_gamma
    assert set(cal.crossval_gamma.values()) <= set(qfcal.crossval.DEFAULT_GAMMAS)
    for name, parts in cal.batch_histograms.items():
        assert len(parts) == CALIB_BATCHES
        assert qfcal.distributed.merge_bytes(parts) == cal.histograms[name]
    name = next(iter(cal.crossval_gamma))
    parts = [h for h in cal.batch_histograms[name] if h.finite]
    r = cal.ranges[name]
    expected = qfcal.cross_validate(parts, folds=min(8, len(parts)), qmin=r.qmin, qmax=r.qmax)
    assert (r.scale, r.zero_point, r.gamma) == (expected.scale, expected.zero_point, expected.gamma)
    written = _written_params(out)
    assert any(float(s) == np.float32(r.scale) for s, _ in written.values())
    pred = predict(out, cnn["x_test"])
    assert (pred == cnn["float_pred"]).mean() >= 0.97
    # re-searching keeps the batches; without them crossval is a clear error
    assert cal.search(method="optimal").batch_histograms == cal.batch_histograms
    with pytest.raises(ValueError, match="needs each batch's histograms"):
        qo.Calibration(cal.histograms, method="crossval")


def _initializers(model: Any) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_candidate_ranges_written_into_one_model_equal_onnx_runtimes_own(
    cnn: dict[str, Any], tmp_path: Path
) -> None:
    # select_method quantizes once and writes each candidate's scales into that model; the
    # result must be the model ONNX Runtime makes from the candidate's ranges, initializer for
    # initializer, except the int32 biases: their codes stay those of the first quantization
    # (same float values, to int32 rounding), and so the outputs in exact semantics
    cal = qo.calibrate(cnn["path"], cnn["batches"], keep=[], progress=False)
    assert all(len(v) == CALIB_BATCHES for v in cal.batch_histograms.values())
    base, fresh = tmp_path / "base.onnx", tmp_path / "fresh.onnx"
    qo.quantize_static(
        cnn["path"], base, cnn["batches"], method="optimal", progress=False, per_channel=True
    )
    other = cal.search(method="percentile", percentile=99.0)
    assert any(other.ranges[k].scale != cal.ranges[k].scale for k in cal.ranges)
    qo._ort_quantize_with(other, cnn["path"], fresh, tmp_path / "c.json", {"per_channel": True})
    model = onnx.load(str(base))
    index = qo._qparam_initializers(model, cal.histograms)
    assert len(index) >= 6
    rewritten_model = qo._set_qparams(model, index, other.ranges)
    rewritten = _initializers(rewritten_model)
    expected = _initializers(onnx.load(str(fresh)))
    assert rewritten.keys() == expected.keys()
    biases = {
        k.removesuffix("_quantized")
        for k, v in expected.items()
        if v.dtype == np.int32 and k.endswith("_quantized")
    }
    assert len(biases) == 4  # three convolutions and the Gemm
    for name, value in expected.items():
        assert rewritten[name].dtype == value.dtype, name
        if (
            name.removesuffix("_scale").removesuffix("_zero_point").removesuffix("_quantized")
            not in biases
        ):
            np.testing.assert_array_equal(rewritten[name], value, err_msg=name)
    for b in biases:
        old_value = rewritten[b + "_quantized"] * rewritten[b + "_quantized_scale"]
        new_value = expected[b + "_quantized"] * expected[b + "_quantized_scale"]
        step = np.maximum(rewritten[b + "_quantized_scale"], expected[b + "_quantized_scale"])
        assert (np.abs(old_value - new_value) <= step).all(), b
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = {"input": cnn["x_test"][:256]}
    y_new = ort.InferenceSession(str(fresh), exact).run(None, x)[0]
    y_old = ort.InferenceSession(rewritten_model.SerializeToString(), exact).run(None, x)[0]
    # the bias codes' rounding moves an output by one quantization step now and then
    step = max(r.scale for k, r in other.ranges.items() if k == model.graph.output[0].name)
    diff = np.abs(y_old - y_new)
    assert diff.max() <= step * 1.001 and (diff > 0).mean() < 0.02, (diff.max(), step)


def test_auto_method_chooses_by_held_out_output_error(cnn: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "auto.onnx"
    seen: list[dict[str, qfcal.SearchResult]] = []
    real = qo._set_qparams

    def spy(model: Any, index: Any, ranges: Any) -> Any:
        seen.append(dict(ranges))
        return real(model, index, ranges)

    cands = {"optimal": {"method": "optimal"}, "minmax": {"method": "minmax"}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qo, "_set_qparams", spy)
        # method="auto" is the default
        cal = qo.quantize_static(
            cnn["path"], out, cnn["batches"], candidates=cands, folds=2,
            progress=False, per_channel=True,
        )  # fmt: skip
    sel = cal.selection
    assert sel is not None and set(sel.errors) == set(cands)
    assert sel.metric == "kl"  # metric="auto": the CNN's logits
    # ten batches, fewer than FREE_CHOICE_BATCHES: by default a candidate must beat optimal by
    # two standard errors of the paired per-batch differences
    assert sel.threshold == 2.0
    passing = [k for k in sel.errors if k == "optimal" or sel.z[k] <= -2.0]
    assert sel.chosen == min(passing, key=lambda k: sel.errors[k])
    assert len(sel.batch_errors["minmax"]) == CALIB_BATCHES
    assert sel.folds == [list(range(5)), list(range(5, 10))]
    # the model holds the chosen method's ranges searched on all the batches
    assert cal.method == sel.options["method"]
    full = cal.search(method=sel.options["method"])
    assert {k: r.scale for k, r in cal.ranges.items()} == {
        k: r.scale for k, r in full.ranges.items()
    }
    # nothing was scored on data its ranges saw: minmax's ranges in each fold are the extremes
    # of the other fold's batches
    assert len(seen) == len(cands) * 2
    name = "input"
    for i, test in enumerate(sel.folds):
        r = seen[2 + i][name]  # minmax, fold i
        others = [h for j, h in enumerate(cal.batch_histograms[name]) if j not in test]
        assert r.min <= min(h.min for h in others) and r.max >= max(h.max for h in others)
        assert r.max < max(h.max for h in others) + r.scale  # at most a step beyond
    written = _written_params(out)
    assert any(float(s) == np.float32(cal.ranges[name].scale) for s, _ in written.values())
    assert (predict(out, cnn["x_test"]) == cnn["float_pred"]).mean() >= 0.97


def test_auto_method_bad_input(cnn: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match="method='auto' chooses"):
        qo.calibrate(cnn["path"], cnn["batches"], method="auto")
    with pytest.raises(ValueError, match="candidates= is for method='auto'"):
        qo.quantize_static(
            cnn["path"], out, cnn["batches"], method="optimal", candidates={"a": {"method": "m"}}
        )
    with pytest.raises(ValueError, match=r"gamma=2.0 / percentile=99.99 .* method='optimal'"):
        qo.quantize_static(cnn["path"], out, cnn["batches"], gamma=2.0)
    bad: list[tuple[dict[str, Any], type, str]] = [
        ({"a": {"method": "minmax", "bits": 4}}, TypeError, r"candidates\['a'\] has option"),
        ({"a": {"method": "auto"}}, ValueError, "cannot be a candidate"),
        ({"a": {"method": "nope"}}, ValueError, "nope"),
        ({"a": {"gamma": 2.0}}, ValueError, "needs a 'method'"),
    ]
    for cands, error, match in bad:
        with pytest.raises(error, match=match):
            qo.quantize_static(cnn["path"], out, cnn["batches"], method="auto", candidates=cands)
    # one batch cannot score ranges on data they were not searched on: optimal, said so
    with pytest.warns(UserWarning, match="calibration_data_reader gave 1 batch.*'optimal'"):
        one = qo.quantize_static(cnn["path"], out, cnn["batches"][:1], progress=False)
    assert one.selection is None and one.method == "optimal" and one.batches == 1
    plain = qo.calibrate(cnn["path"], cnn["batches"][:3], progress=False)
    with pytest.raises(ValueError, match="one histogram per batch of inputs"):
        qo.select_method(cnn["path"], plain, cnn["batches"][:3])
    with pytest.raises(TypeError, match="calibration must be a qfcal.onnxruntime.Calibration"):
        qo.select_method(cnn["path"], {}, cnn["batches"][:3])


def test_readme_auto_example(
    cnn: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(cnn["path"].read_bytes())
    ns = run_readme_example("auto", {"batches": iter(cnn["batches"][:6])})
    cal = ns["cal"]
    assert isinstance(cal, qo.Calibration) and cal.selection is not None
    assert cal.method == cal.selection.options["method"]
    assert len(cal.selection.folds) == 4 and set(cal.selection.errors) == set(
        qfcal.selection.DEFAULT_CANDIDATES
    )
    agree = (predict(tmp_path / "model.int8.onnx", cnn["x_test"]) == cnn["float_pred"]).mean()
    assert agree >= 0.95
