"""qfcal's ranges in Google's LiteRT quantizer, ``ai-edge-quantizer`` (AEQ).

AEQ, the successor of the TFLite converter's quantization, calibrates activations by their
running min/max (its ``Quantizer.calibrate``) and turns each tensor's ``{"min", "max"}`` into
a scale and zero point. :func:`calibrate` runs the same float ``.tflite`` over the same
calibration data, histograms every tensor AEQ calibrates (exactly, in qfcal's Rust core),
searches each tensor's range, and returns a calibration result in AEQ's own format with
qfcal's ranges, for ``quantizer.quantize(...)``::

    from ai_edge_quantizer import quantizer, recipe
    import qfcal.litert

    q = quantizer.Quantizer("float.tflite")
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    cal = qfcal.litert.calibrate(q, {"serving_default": samples})   # AEQ's data format
    q.quantize(cal.result).export_model("int8.tflite")

The min/max handed over sit exactly on each range's grid (float64: AEQ's ``(max - min) /
(qmax - qmin)`` and ``qmin - min / scale`` give back qfcal's float32 scale and zero point bit
for bit); for a symmetric activation config (AEQ's 16-bit default) the range is
``[-max, max]``. Needs ``ai-edge-quantizer`` (or its renamed successor ``litert-quantizer``)
and its LiteRT interpreter; ``import qfcal`` does not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import qfcal
from qfcal._checks import check_bins
from qfcal._progress import Progress

__all__ = ["LiteRTCalibration", "activation_config", "calibrate"]


def _aeq() -> Any:
    """The quantizer package: ``ai_edge_quantizer``, or ``litert_quantizer`` (its new name)."""
    try:
        import ai_edge_quantizer as aeq
    except ImportError:
        try:
            import litert_quantizer as aeq  # the same API under its new name (2026-11)
        except ImportError as e:
            raise ImportError(
                "qfcal.litert needs Google's LiteRT quantizer: pip install ai-edge-quantizer "
                "(or litert-quantizer)"
            ) from e
    return aeq


@dataclass
class LiteRTCalibration:
    """What :func:`calibrate` found.

    Attributes:
        result: AEQ's calibration result with qfcal's ranges: ``{tensor: {"min", "max"}}``
            (float64 arrays of AEQ's shapes), for ``Quantizer.quantize``.
        ranges: tensor -> :class:`qfcal.SearchResult` (on the recipe's activation grid).
        histograms: tensor -> :class:`qfcal.Histogram` over the calibration data.
        minmax: AEQ's own result (its running min/max) on the same data, for comparison.
        kept: tensors AEQ calibrated that qfcal left with AEQ's min/max, and why (not float,
            no finite value).
        bits, symmetric: the activation grid searched (from the recipe).
    """

    result: dict[str, dict[str, np.ndarray]]
    ranges: dict[str, qfcal.SearchResult]
    histograms: dict[str, qfcal.Histogram]
    minmax: dict[str, dict[str, np.ndarray]]
    kept: dict[str, str] = field(default_factory=dict)
    bits: int = 8
    symmetric: bool = False


def activation_config(quantizer: Any) -> tuple[int, bool]:
    """``(num_bits, symmetric)`` of the activations in `quantizer`'s recipe.

    Raises:
        ValueError: the recipe has no static (activation-quantizing) config, or its configs
            quantize activations differently (pass ``activation_bits`` and ``symmetric`` to
            :func:`calibrate`).
    """
    seen = set()
    for entry in quantizer.get_quantization_recipe() or []:
        act = (entry.get("op_config") or {}).get("activation_tensor_config")
        if act:
            seen.add((int(act["num_bits"]), bool(act.get("symmetric", False))))
    if len(seen) != 1:
        raise ValueError(
            "the quantizer's recipe must quantize activations one way to read the grid from it "
            f"(found {sorted(seen) or 'none'}): pass activation_bits= and symmetric="
        )
    return seen.pop()


def _samples(data: Any, signatures: list[str]) -> dict[str, list[Mapping[str, Any]]]:
    """AEQ's ``{signature: [inputs]}``, or one signature's iterable of inputs."""
    if isinstance(data, Mapping) and data and all(k in signatures for k in data):
        return {k: list(v) for k, v in data.items()}
    if isinstance(data, Mapping):
        raise ValueError(
            f"calibration_data's keys {sorted(data)} are not signatures of the model "
            f"({signatures}): give {{signature: [inputs, ...]}} as AEQ's calibrate takes"
        )
    if len(signatures) != 1:
        raise ValueError(
            f"the model has {len(signatures)} signatures {signatures}: give calibration_data as "
            "{signature: [inputs, ...]}"
        )
    return {signatures[0]: list(data)}


def calibrate(
    quantizer: Any,
    calibration_data: Mapping[str, Iterable[Mapping[str, Any]]] | Iterable[Mapping[str, Any]],
    *,
    method: str = "optimal",
    gamma: float = 1.0,
    percentile: float = 99.99,
    bins: int = qfcal.DEFAULT_BINS,
    activation_bits: int | None = None,
    symmetric: bool | None = None,
    progress: bool = True,
) -> LiteRTCalibration:
    """qfcal's ranges for every activation AEQ calibrates, as AEQ's calibration result.

    Args:
        quantizer: an ``ai_edge_quantizer.quantizer.Quantizer`` holding the float model and a
            static recipe (``quantizer.need_calibration``).
        calibration_data: what ``Quantizer.calibrate`` takes, ``{signature: [inputs]}`` with
            inputs ``{input name: array}``; for a one-signature model, the list alone.
        method, gamma, percentile, bins: :func:`qfcal.search`'s.
        activation_bits, symmetric: the activation grid; default: the recipe's.
        progress: a progress bar over the samples (plain lines when not a terminal).

    Raises:
        ImportError: ai-edge-quantizer is not installed.
        ValueError: bad search options, data that does not fit the signatures, no samples,
            or a recipe that quantizes no activations (or several ways, without the grid).
    """
    import importlib

    tiu = importlib.import_module(_aeq().__name__ + ".utils.tfl_interpreter_utils")
    qfcal.check_search_options(method=method, gamma=gamma, percentile=percentile)
    bins = check_bins(bins)
    if not getattr(quantizer, "need_calibration", False):
        raise ValueError(
            "the quantizer's recipe needs no calibration (no static config): load one such as "
            "ai_edge_quantizer.recipe.static_wi8_ai8()"
        )
    if activation_bits is None or symmetric is None:
        bits0, sym0 = activation_config(quantizer)
        activation_bits = bits0 if activation_bits is None else activation_bits
        symmetric = sym0 if symmetric is None else symmetric
    if not isinstance(activation_bits, int) or not 2 <= activation_bits <= 16:
        raise ValueError(f"activation_bits must be an int in 2..16, got {activation_bits!r}")
    model = quantizer._float_model_buffer  # AEQ keeps the float model here (no public getter)
    interp = tiu.create_tfl_interpreter(bytes(model), num_threads=os.cpu_count() or 1)
    signatures = list(interp.get_signature_list())
    data = _samples(calibration_data, signatures)
    total = sum(len(v) for v in data.values())
    if total == 0:
        raise ValueError("calibration_data gave no samples")
    # AEQ's own pass decides which tensors carry a range (and gives their QSV shapes)
    minmax = quantizer.calibrate(data)
    wanted = set(minmax)
    hists: dict[str, qfcal.Histogram] = {}
    bar = Progress(total, "LiteRT calibration", unit="samples", enabled=progress)
    for sig, samples in data.items():
        sub = tiu.get_signature_main_subgraph_index(interp, sig)
        details = [
            d
            for d in interp.get_tensor_details(sub)
            if d["name"] in wanted and d["dtype"] == np.float32
        ]
        for sample in samples:
            tiu.invoke_interpreter_signature(interp, dict(sample), sig)
            for d in details:
                h = hists.get(d["name"])
                if h is None:
                    h = hists[d["name"]] = qfcal.Histogram(bins)
                h.update(interp.get_tensor(d["index"], sub))
            bar.update(1)
    bar.close()
    result: dict[str, dict[str, np.ndarray]] = {}
    ranges: dict[str, qfcal.SearchResult] = {}
    kept: dict[str, str] = {}
    for name, qsv in minmax.items():
        h = hists.get(name)
        if h is None:
            kept[name] = "not a float tensor of the signatures' main subgraphs"
        elif h.max is None:
            kept[name] = "no finite value"
            h = None
        if h is None:
            result[name] = dict(qsv)
            continue
        r = qfcal.search(
            h, bits=activation_bits, symmetric=bool(symmetric), signed=True, method=method,
            gamma=gamma, percentile=percentile,
        )  # fmt: skip
        ranges[name] = r
        lo, hi = (-r.max, r.max) if symmetric else (r.min, r.max)
        result[name] = {
            "min": np.full(np.shape(qsv["min"]), lo, dtype=np.float64),
            "max": np.full(np.shape(qsv["max"]), hi, dtype=np.float64),
        }
    return LiteRTCalibration(
        result=result,
        ranges=ranges,
        histograms=hists,
        minmax=dict(minmax),
        kept=kept,
        bits=activation_bits,
        symmetric=bool(symmetric),
    )
