"""qfcal.encodings and `qfcal export-ranges`: ranges out in the formats deploy toolchains read,
each read back by its real reader where one installs (ONNX Runtime; AIMET where aimet-onnx is
installed) and against the published format otherwise, scales bit for bit in float32."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qfcal
from qfcal import encodings as enc
from qfcal.cli import main as cli


def f32_bits(x: float) -> bytes:
    return struct.pack("<f", x)


def some_ranges(seed: int = 0) -> dict[str, qfcal.SearchResult]:
    """Ranges of several kinds: asymmetric int8, symmetric (wide and narrow), uint8, int16."""
    rng = np.random.default_rng(seed)
    out = {}
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("conv1/out", {}),
        ("relu:0", {"signed": False}),
        ("sym", {"symmetric": True}),
        ("sym_narrow", {"symmetric": True, "narrow_range": True}),
        ("wide16", {"bits": 16}),
        ("minmax", {"method": "minmax"}),
    ]
    for name, opts in kinds:
        h = qfcal.Histogram()
        x = rng.standard_t(4, size=5000) * rng.uniform(0.1, 5) + rng.uniform(-1, 2)
        h.update(np.maximum(x, 0) if opts.get("signed") is False else x)
        out[name] = qfcal.search(h, **opts)
    return out


def test_qfcal_json_reads_back_equal_results(tmp_path: Path) -> None:
    ranges = some_ranges()
    doc = json.loads(json.dumps(enc.to_qfcal(ranges), allow_nan=False))
    assert doc["format"] == "qfcal-ranges" and doc["version"] == 1
    back = enc.read_qfcal(doc)
    assert back == ranges
    for name, r in ranges.items():
        assert f32_bits(back[name].scale) == f32_bits(r.scale)
        assert (back[name].min, back[name].max, back[name].loss) == (r.min, r.max, r.loss)
    path = enc.write(ranges, tmp_path / "r.json", "qfcal")
    assert enc.read(path, "qfcal") == ranges
    assert enc.ranges_of(path) == ranges  # a ranges file is a source too
    with pytest.raises(ValueError, match="reads version 1"):
        enc.read_qfcal({**doc, "version": 9})
    with pytest.raises(ValueError, match="not a qfcal ranges document"):
        enc.read_qfcal({"tensors": {}})


def test_sources_run_folder_results_and_bad_input(tmp_path: Path) -> None:
    from qfcal.pipeline.steps import ranges_json

    ranges = some_ranges(1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "ranges.json").write_text(json.dumps(ranges_json(ranges)))
    assert enc.ranges_of(run) == ranges
    assert enc.ranges_of(run / "ranges.json") == ranges

    class Result:  # what qfcal.tflite's TensorRange looks like: the result under .result
        def __init__(self, r: qfcal.SearchResult) -> None:
            self.result = r

    class Model:
        def __init__(self) -> None:
            self.ranges = {n: Result(r) for n, r in ranges.items()}

    assert enc.ranges_of(Model()) == ranges
    with pytest.raises(FileNotFoundError, match="has no ranges.json"):
        enc.ranges_of(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        enc.ranges_of(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a qfcal ranges file"):
        enc.ranges_of(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"t": {"scale": 1}}')
    with pytest.raises(ValueError, match="tensor 't' is not a qfcal range"):
        enc.ranges_of(tmp_path / "broken.json")
    with pytest.raises(TypeError, match="got int"):
        enc.ranges_of(3)
    with pytest.raises(TypeError, match="mapping of tensor names to qfcal.SearchResult"):
        enc.ranges_of({"t": (0.0, 1.0)})
    with pytest.raises(ValueError, match="fmt must be one of qfcal, aimet, tensorrt, ort"):
        enc.write(ranges, tmp_path / "x", "qnn")


def test_aimet_encodings_follow_the_published_schema() -> None:
    """AIMET 0.6.1 / QNN quantization overrides: activation_encodings maps each tensor to a
    list of {bitwidth, dtype, is_symmetric ("True"/"False"), max, min, offset, scale}, with a
    value (q + offset) * scale for q in [0, 2^bitwidth - 1]."""
    ranges = some_ranges(2)
    doc = json.loads(json.dumps(enc.to_aimet(ranges), allow_nan=False))
    assert doc["version"] == "0.6.1"
    assert set(doc) >= {"activation_encodings", "param_encodings"}
    for name, r in ranges.items():
        (e,) = doc["activation_encodings"][name]
        assert set(e) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}
        assert e["dtype"] == "int" and e["is_symmetric"] in ("True", "False")
        assert isinstance(e["bitwidth"], int) and isinstance(e["offset"], int)
        assert e["bitwidth"] == (16 if name == "wide16" else 8)
        assert f32_bits(e["scale"]) == f32_bits(r.scale)
        assert e["offset"] * e["scale"] == r.min  # the grid's lowest value, exactly
        levels = r.qmax - r.qmin
        assert (e["offset"] + levels) * e["scale"] == r.max
        assert 2 ** e["bitwidth"] - 1 >= levels
        assert (e["is_symmetric"] == "True") == (r.zero_point == 0 and r.qmin < 0)
    back = enc.read_aimet(doc)
    for name, r in ranges.items():
        assert f32_bits(back[name]["scale"]) == f32_bits(r.scale)
        assert back[name]["offset"] == r.qmin - r.zero_point


def test_tensorrt_cache_format_and_round_trip(tmp_path: Path) -> None:
    ranges = {k: v for k, v in some_ranges(3).items() if k in ("sym", "sym_narrow")}
    text = enc.to_tensorrt(ranges)
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    for ln, (name, r) in zip(lines[1:], ranges.items(), strict=True):
        key, hexbits = ln.split(": ")
        assert key == name and len(hexbits) == 8
        assert bytes.fromhex(hexbits) == struct.pack(">f", r.scale)  # big-endian float32 bits
    back = enc.read_tensorrt(text)
    assert {n: f32_bits(s) for n, s in back.items()} == {
        n: f32_bits(r.scale) for n, r in ranges.items()
    }
    path = enc.write(ranges, tmp_path / "calib.cache", "tensorrt", header="TRT-100300-MinMax")
    assert path.read_text().startswith("TRT-100300-MinMax\n")
    assert enc.read(path, "tensorrt") == back
    asym = some_ranges(3)["conv1/out"]
    with pytest.raises(ValueError, match="tensor 'conv1/out': TensorRT's int8 is symmetric"):
        enc.to_tensorrt({"conv1/out": asym})
    widened = enc.read_tensorrt(enc.to_tensorrt({"conv1/out": asym}, widen=True))
    assert widened["conv1/out"] == pytest.approx(max(-asym.min, asym.max) / 127, rel=1e-6)
    with pytest.raises(ValueError, match=r"grid is \[-127, 127\], got \[0, 255\]"):
        enc.to_tensorrt({"u": some_ranges(3)["relu:0"]})
    with pytest.raises(ValueError, match="cannot be written in a TensorRT cache"):
        enc.to_tensorrt({"a: b": ranges["sym"]})
    with pytest.raises(ValueError, match="first line must start with TRT-"):
        enc.read_tensorrt("conv: 3c010a14\nx: 3c010a14\n")


def test_ort_overrides_are_what_onnx_runtime_applies(tmp_path: Path) -> None:
    """The real reader: ONNX Runtime's quantize_static with the overrides puts exactly these
    scales and zero points on the activations' QuantizeLinear nodes."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper
    from onnx_cnn import build_onnx, random_weights
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    qort = pytest.importorskip("qfcal.onnxruntime")
    model = tmp_path / "cnn.onnx"
    onnx.save(build_onnx(random_weights(0)), model)
    rng = np.random.default_rng(0)
    batches = [{"input": rng.random((4, 1, 28, 28), dtype=np.float32)} for _ in range(4)]
    cal = qort.calibrate(model, batches, method="optimal", progress=False)
    ranges = enc.ranges_of(cal)
    assert set(ranges) >= {"input", "relu1", "relu3"}
    path = enc.write(cal, tmp_path / "overrides.json", "ort")
    overrides = enc.read(path, "ort")
    direct = enc.to_ort(ranges)
    assert overrides.keys() == direct.keys()
    for name, (e,) in overrides.items():
        (d,) = direct[name]
        assert e["quant_type"] == d["quant_type"] == QuantType.QInt8
        assert e["scale"].dtype == np.float32 and f32_bits(e["scale"]) == f32_bits(d["scale"])
        assert e["zero_point"].dtype == np.int8 and e["zero_point"] == d["zero_point"]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> Any:
            return next(self.it, None)

    out = tmp_path / "int8.onnx"
    quantize_static(
        str(model), str(out), Reader(), activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, extra_options={"TensorQuantOverrides": overrides},
    )  # fmt: skip
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    seen = set()
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ranges:
            r = ranges[node.input[0]]
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            assert scale.dtype == np.float32 and f32_bits(float(scale)) == f32_bits(r.scale)
            assert int(zp) == r.zero_point and zp.dtype == np.int8
            seen.add(node.input[0])
    assert seen >= {"input", "relu1", "relu3"}, seen


def _aimet_sim() -> tuple[Any, Any, Any]:
    """AIMET's QuantizationSimModel of the test CNN, qfcal's calibration of it, and AIMET's
    encodings loader (skips where aimet-onnx does not install: CI, see BENCHMARKS.md)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("aimet_onnx")
    from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim
    from onnx_cnn import build_onnx, random_weights

    qort = pytest.importorskip("qfcal.onnxruntime")
    model = build_onnx(random_weights(0))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.random((4, 1, 28, 28), dtype=np.float32)} for _ in range(4)]
    cal = qort.calibrate(model, batches, method="optimal", progress=False)
    sim = QuantizationSimModel(onnx.load_from_string(model.SerializeToString()))
    return sim, cal, load_encodings_to_sim


def test_aimet_loads_the_encodings(tmp_path: Path) -> None:
    """The real reader, where aimet-onnx installs (not in CI: see BENCHMARKS.md)."""
    sim, cal, load_encodings_to_sim = _aimet_sim()
    names = [n for n in cal.ranges if n in sim.qc_quantize_op_dict]
    assert len(names) >= 3, (list(cal.ranges), list(sim.qc_quantize_op_dict))
    ranges = {n: cal.ranges[n] for n in names}
    path = enc.write(ranges, tmp_path / "model.encodings", "aimet")
    load_encodings_to_sim(sim, str(path), strict=False)
    for n, r in ranges.items():
        e = sim.qc_quantize_op_dict[n].get_encodings()[0]
        assert f32_bits(float(e.delta)) == f32_bits(r.scale), n
        assert int(e.offset) == r.qmin - r.zero_point, n
        assert e.bw == 8


def test_aimet_loads_a_mixed_precision_plan(tmp_path: Path) -> None:
    """A qfcal.precision plan's encodings: AIMET takes each tensor's bit width from them."""
    from qfcal.precision import plan

    sim, cal, load_encodings_to_sim = _aimet_sim()
    names = [n for n in cal.histograms if n in sim.qc_quantize_op_dict]
    p = plan({n: cal.histograms[n] for n in names}, tensors=1)
    path = enc.write(p.results, tmp_path / "mixed.encodings", "aimet")
    load_encodings_to_sim(sim, str(path), strict=False)
    for n, r in p.results.items():
        e = sim.qc_quantize_op_dict[n].get_encodings()[0]
        assert e.bw == p.tensors[n].bits, (n, e.bw)
        assert f32_bits(float(e.delta)) == f32_bits(r.scale), n
    assert [n for n in p.results if p.tensors[n].bits == 16] == p.high


def write_run(folder: Path, hists: dict[str, qfcal.Histogram]) -> dict[str, qfcal.SearchResult]:
    """A run folder as the pipeline leaves it (ranges.json, histograms.npz); its ranges."""
    from qfcal.pipeline.steps import ranges_json

    ranges = {n: qfcal.search(h) for n, h in hists.items()}
    folder.mkdir()
    (folder / "ranges.json").write_text(json.dumps(ranges_json(ranges)))
    blobs = {n: np.frombuffer(h.to_bytes(), dtype=np.uint8) for n, h in hists.items()}
    np.savez(folder / "histograms.npz", **blobs)  # type: ignore[arg-type]
    return ranges


def test_cli_export_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    rng = np.random.default_rng(5)
    hists = {}
    for name in ("a", "b"):
        hists[name] = qfcal.Histogram()
        hists[name].update(rng.normal(0.5, 1.0, size=4000))
    ranges = write_run(run, hists)  # asymmetric ranges
    for fmt in ("qfcal", "aimet", "ort", "tensorrt"):
        out = tmp_path / f"out.{fmt}"
        assert cli(["export-ranges", str(run), "--format", fmt, "--out", str(out)]) == 0
        assert f"2 tensors -> {out} ({fmt})" in capsys.readouterr().out
    assert enc.read(tmp_path / "out.qfcal", "qfcal") == ranges
    trt = enc.read(tmp_path / "out.tensorrt", "tensorrt")
    for n, h in hists.items():  # searched again, symmetric on [-127, 127]
        sym = qfcal.search(h, symmetric=True, narrow_range=True)
        assert f32_bits(trt[n]) == f32_bits(sym.scale)
    assert cli(["export-ranges", str(run / "ranges.json"), "--format", "tensorrt"]) == 2
    assert "TensorRT's int8 is symmetric" in capsys.readouterr().err
    out = tmp_path / "widened.cache"
    assert (
        cli(["export-ranges", str(run / "ranges.json"), "--format", "tensorrt", "--widen",
             "--out", str(out)]) == 0
    )  # fmt: skip
    assert cli(["export-ranges", str(tmp_path / "missing"), "--format", "aimet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["export-ranges", str(run), "--format", "aimet", "--widen"]) == 2
    assert "--widen and --header are for --format tensorrt" in capsys.readouterr().err


def test_a_tflite_result_is_a_source(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    import qfcal.tflite

    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 2))
    y = keras.layers.Conv2D(3, 3, activation="relu")(x)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y)))
    rng = np.random.default_rng(0)
    data = [[rng.normal(size=(1, 6, 6, 2)).astype(np.float32)] for _ in range(8)]
    q = qfcal.tflite.quantize(model, lambda: iter(data), method="optimal")
    ranges = enc.ranges_of(q)
    assert ranges == {name: tr.result for name, tr in q.ranges.items()} and len(ranges) >= 3
    doc = enc.to_aimet(ranges)
    assert set(doc["activation_encodings"]) == set(q.ranges)
