"""Other toolkits' own calibrators, run on the activations qfcal histograms, for the shoot-out.

Each peer takes one tensor's calibration batches and the bit width and returns the
:class:`Grid` it would quantize with: PyTorch's ``HistogramObserver`` and ONNX Runtime's
histogram calibrators (entropy, percentile), each imported only when it runs.
:data:`COUNTERPART` names qfcal's reimplementation of each, for the "how far apart, and why"
note of the report.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Grid:
    """An encoding from a peer: integer grid `[qmin, qmax]`, scale and zero point."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def min(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def max(self) -> float:
        return (self.qmax - self.zero_point) * self.scale


def available_peers() -> dict[str, str]:
    """The peers' own calibrators that can run here: ``{label: version or why not}``."""
    out = {}
    try:
        import torch

        out["torch HistogramObserver"] = f"torch {torch.__version__}"
    except ImportError:
        out["torch HistogramObserver"] = "not installed (pip install torch)"
    try:
        import onnxruntime
        from onnxruntime.quantization import calibrate  # noqa: F401

        for k in ("ort entropy", "ort percentile 99.999"):
            out[k] = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        for k in ("ort entropy", "ort percentile 99.999"):
            out[k] = "not installed (pip install onnxruntime onnx)"
    return out


def _torch_histogram_observer(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    import torch
    from torch.ao.quantization import HistogramObserver

    obs = HistogramObserver(quant_min=0, quant_max=2**bits - 1, dtype=torch.quint8)
    for b in batches:
        obs(torch.from_numpy(np.array(b, dtype=np.float32)))  # a writable copy
    scale, zp = obs.calculate_qparams()
    return Grid(float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), 0, 2**bits - 1)


def _ort_collector(method: str) -> Any:
    from onnxruntime.quantization.calibrate import HistogramCollector

    if method == "entropy":  # create_calibrator's defaults for CalibrationMethod.Entropy
        return HistogramCollector("entropy", False, 128, 128, 99.999, "same")
    return HistogramCollector("percentile", True, 2048, 2048, 99.999, "same")


def _ort(batches: list[npt.NDArray[np.float32]], bits: int, method: str) -> Grid:
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        col = _ort_collector(method)
        # the collector stacks its list with np.asarray, which needs batches of one shape (a
        # last, smaller batch fails): one flat array holds the same values
        flat = np.concatenate([np.asarray(b, dtype=np.float32).ravel() for b in batches])
        col.collect({"t": [flat]})
        out = col.compute_collection_result()["t"]
    lo, hi = (out[0], out[1]) if isinstance(out, tuple) else out.range_value
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    zp, scale = compute_scale_zp(
        np.float32(lo), np.float32(hi), np.int32(qmin), np.int32(qmax), symmetric=False
    )
    return Grid(float(scale), int(zp), qmin, qmax)


def _ort_entropy(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    return _ort(batches, bits, "entropy")


def _ort_percentile(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    return _ort(batches, bits, "percentile")


PEERS: dict[str, Callable[[list[npt.NDArray[np.float32]], int], Grid]] = {
    "torch HistogramObserver": _torch_histogram_observer,
    "ort entropy": _ort_entropy,
    "ort percentile 99.999": _ort_percentile,
}
# qfcal's reimplementation of each peer, for the "how far apart and why" note
COUNTERPART = {
    "torch HistogramObserver": (
        "greedy",
        "torch resamples its histogram when the range grows and counts levels as "
        "quant_max - quant_min + 1 in its error estimate; qfcal's walk runs on the exact "
        "histogram",
    ),
    "ort entropy": (
        "entropy",
        "ONNX Runtime's default is 128 bins and 128 levels, which leaves KL one candidate "
        "(the min/max range); qfcal's entropy uses TensorRT's 2048 bins and, as NVIDIA's "
        "calibrators do, gives the zero bin its neighbour's count",
    ),
    "ort percentile 99.999": (
        "percentile 99.999",
        "ONNX Runtime's percentile is symmetric (of |x|) on 2048 bins; qfcal's takes the two "
        "tails apart on the exact histogram",
    ),
}
