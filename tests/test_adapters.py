"""What the three adapters share: each imports only its own framework, and a histogram from any
of the tools goes straight into qfcal.search (the README's one-liners, run here)."""

import subprocess
import sys

import numpy as np
import pytest
import qfcal
from readme_examples import run as run_example

FRAMEWORKS = ("tensorflow", "keras", "torch", "onnxruntime", "onnx")


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("qfcal", ()),
        ("qfcal.cli", ()),
        ("qfcal.distributed", ()),
        ("qfcal.pipeline", ()),
        ("qfcal.pipeline.data", ()),
        ("qfcal.pipeline.compare", ()),
        ("qfcal.torch", ("torch",)),
        ("qfcal.onnxruntime", ("onnxruntime", "onnx")),
        ("qfcal.tflite", ("tensorflow", "keras")),
    ],
)
def test_each_adapter_imports_only_its_framework(module, allowed):
    name = module.split(".")[-1]
    if name in ("torch", "onnxruntime", "tflite"):
        pytest.importorskip({"tflite": "tensorflow"}.get(name, name))
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {FRAMEWORKS!r} if m in sys.modules and m not in {allowed!r}]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_readme_histograms_from_other_tools():
    torch = pytest.importorskip("torch")
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    rng = np.random.default_rng(4)
    acts = np.maximum(rng.normal(0.5, 1.0, 200_000), 0).astype(np.float32)
    collector = calibrate.HistogramCollector(
        method="percentile", symmetric=False, num_bins=2048, num_quantized_bins=128,
        percentile=99.99, scenario="same",
    )  # fmt: skip
    collector.collect({"relu_out": [acts]})
    ns = run_example(
        "histograms", {"acts": acts, "torch": torch, "collector": collector, "name": "relu_out"}
    )
    exact = qfcal.Histogram()
    exact.update(acts)
    best = qfcal.search(exact)
    for key in ("from_numpy", "from_torch", "from_ort"):
        r = ns[key]
        assert isinstance(r, qfcal.SearchResult), key
        # another tool's 2048 bins give nearly the range of the exact 4096-bin histogram
        assert r.max == pytest.approx(best.max, rel=0.03), (key, r, best)
        assert r.min == 0.0
