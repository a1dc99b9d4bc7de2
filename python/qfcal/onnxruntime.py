"""qfcal's ranges for ONNX Runtime's static quantization, calibrated by streaming.

One concept in one file (about 650 lines): the ONNX Runtime flow, in the phases of ONNX
Runtime's own calibrator (augment the graph, collect data, compute ranges) and the hand-over
to its quantizer.

ONNX Runtime's own calibrators keep every intermediate output of every calibration batch in
memory until the end (hundreds of GB for a BERT, onnxruntime#10503). Here each float tensor of
the model is histogrammed batch by batch into one :class:`qfcal.Histogram`, and the arrays are
dropped as soon as they are counted, so memory stays that of one batch whatever the number of
batches. qfcal then searches each tensor's range on ONNX Runtime's own integer grid, and
ONNX Runtime's :func:`onnxruntime.quantization.quantize_static` does the quantization from
those ranges through its public calibration cache (``calibration_cache_path``)::

    from qfcal.onnxruntime import quantize_static
    cal = quantize_static("model.onnx", "model.int8.onnx", reader)   # reader: as for ORT

Every scale and zero point ONNX Runtime writes for a calibrated activation is the one qfcal
found (checked against ONNX Runtime's own arithmetic when the ranges are made).

Importing this module imports ``onnx`` and ``onnxruntime``; ``import qfcal`` does not.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantType
from onnxruntime.quantization import quantize_static as _ort_quantize_static
from onnxruntime.quantization.calibrate import TensorsData  # top level only in newer ORTs
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

import qfcal
from qfcal._checks import (
    WEIGHT_METHODS,
    check_bins,
    check_choice,
    check_flags,
    equalize_objective,
)
from qfcal._onnx_placement import fused_outputs, remove_quantizers
from qfcal._onnx_placement import load_model as _load
from qfcal._progress import Progress
from qfcal.equalize import RELU6_MODES, EqualizeReport
from qfcal.selection import (
    CANDIDATE_OPTIONS,
    DEFAULT_FOLDS,
    Selection,
    check_auto_options,
    check_metric,
    check_search_candidates,
    merge_parts,
    metric_name,
    output_error,
    select,
    warn_fallback,
)

__all__ = [
    "WEIGHT_METHODS",
    "Calibration",
    "calibrate",
    "equalize",
    "fused_outputs",
    "quantize_static",
    "remove_quantizers",
    "search_weight_ranges",
    "select_method",
    "weight_overrides",
]

# The element types histogrammed (what ORT's calibrators take, plus double).
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
# Options of ORT's own calibrators; with a calibration cache ORT never reads them.
_ORT_CALIBRATION_OPTIONS = (
    "CalibTensorRangeSymmetric",
    "CalibMovingAverage",
    "CalibMovingAverageConstant",
    "CalibMaxIntermediateOutputs",
    "CalibPercentile",
    "CalibStridedMinMax",
)
_CACHE_PR = "microsoft/onnxruntime#28221"


CROSSVAL = "crossval"
# Folds of method="crossval" (consecutive batches grouped): leave-one-out over many batches
# costs a search per batch and gamma per tensor.
CROSSVAL_FOLDS = 8
# quantize_static(method="auto"): the range method chosen end to end (qfcal.selection).
AUTO = "auto"


def _check_method(method: str, gamma: float, percentile: float) -> None:
    """qfcal's search options, plus ``crossval`` (cross-validated clipping, see
    :class:`Calibration`)."""
    if method == CROSSVAL:
        qfcal.check_search_options(percentile=percentile)
    else:
        qfcal.check_search_options(method=method, gamma=gamma, percentile=percentile)


def _ort_has_cache() -> bool:
    return "calibration_cache_path" in inspect.signature(_ort_quantize_static).parameters


def _require_cache(what: str) -> None:
    if not _ort_has_cache():
        raise RuntimeError(
            f"{what} needs an onnxruntime whose quantize_static takes calibration_cache_path "
            f"(added by {_CACHE_PR}, 2026); installed: onnxruntime {onnxruntime.__version__}. "
            "Upgrade onnxruntime (pip install -U onnxruntime), or use qfcal.onnxruntime.calibrate "
            "and hand Calibration.tensors_data() to ONNX Runtime's quantizer yourself."
        )


def _quant_type(value: object, name: str = "activation_type") -> Any:
    """A QuantType from a QuantType or its name ("QInt8")."""
    if isinstance(value, QuantType):
        return value
    if isinstance(value, str) and value in QuantType.__members__:
        return QuantType[value]
    names = ", ".join(t for t in QuantType.__members__ if "FLOAT" not in t)
    raise ValueError(f"{name} must be a QuantType ({names}), got {value!r}")


def _grid(quant_type: Any, symmetric: bool, reduce_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) exactly as ONNX Runtime's quantizer takes them for an activation."""
    if quant_type == QuantType.QFLOAT8E4M3FN:
        raise ValueError(
            "activation_type QFLOAT8E4M3FN is a float format: qfcal searches integer grids "
            "(QInt8, QUInt8, QInt16, QUInt16, QInt4, QUInt4)"
        )
    qmin, qmax = get_qmin_qmax_for_qType(
        quant_type.tensor_type, reduce_range=reduce_range, symmetric=symmetric
    )
    return int(qmin), int(qmax)


def _ort_params(
    lo: np.float32, hi: np.float32, qmin: int, qmax: int, symmetric: bool
) -> tuple[int, np.float32]:
    """The (zero point, scale) ONNX Runtime's quantizer derives from the range [lo, hi]."""
    dtype = np.int32  # wide enough for every integer grid; ORT's arithmetic is dtype-free here
    zp, scale = compute_scale_zp(
        np.float32(lo), np.float32(hi), np.array(qmin, dtype), np.array(qmax, dtype), symmetric
    )
    return int(np.asarray(zp)), np.float32(np.asarray(scale))


def _ort_bounds(r: qfcal.SearchResult, symmetric: bool) -> tuple[np.float32, np.float32] | None:
    """float32 (lowest, highest) from which ONNX Runtime recomputes exactly r's scale and zero
    point, or None where no nearby float32 pair does (never seen)."""
    s = np.float32(r.scale)
    if symmetric:
        # ORT symmetrizes to [-absmax, absmax] and divides 2 * absmax by qmax - qmin; the grid's
        # own min/max differ in magnitude on even-sized grids (uint8: -128 s .. 127 s).
        x0 = np.float32((r.qmax - r.qmin) / 2.0 * float(s))
        pairs: Iterator[tuple[np.float32, np.float32]] = ((-x, x) for x in _neighbours(x0))
    else:
        lo0, hi0 = np.float32(r.min), np.float32(r.max)
        pairs = ((lo, hi) for hi in _neighbours(hi0) for lo in _neighbours(lo0, 2))
    for lo, hi in pairs:
        if _ort_params(lo, hi, r.qmin, r.qmax, symmetric) == (r.zero_point, s):
            return lo, hi
    return None


def _neighbours(x: np.float32, steps: int = 8) -> Iterator[np.float32]:
    """x, then the float32 values 1, 2, ... steps ulps away on either side."""
    yield x
    up = down = x
    for _ in range(steps):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(-np.inf))
        yield up
        yield down


class Calibration:
    """One histogram per calibrated tensor and qfcal's range for each, on ORT's grid.

    Attributes:
        histograms: tensor name -> :class:`qfcal.Histogram` (exact, mergeable, picklable).
        ranges: tensor name -> :class:`qfcal.SearchResult` (``scale``, ``zero_point``, ``min``,
            ``max``, ``loss``, ``sqnr_db``...), on the grid ONNX Runtime uses for the
            activation type (``QInt8``: -128..127, ``QUInt8``: 0..255; symmetric ``QInt8``:
            -127..127 with zero point 0, symmetric ``QUInt8``: zero point 128).
        bounds: tensor name -> ``(lowest, highest)`` float32: what ONNX Runtime is given, from
            which its own arithmetic gives back exactly the scale and zero point in ``ranges``.
        skipped: tensor name -> why it has no range (no finite value seen, ...).
        batch_histograms: tensor name -> each calibration batch's own histogram (kept by
            ``method="crossval"``; empty otherwise).
        crossval_gamma: tensor name -> the clipping weight ``gamma`` cross-validation chose.
        weight_ranges: weight name -> :class:`qfcal.WeightRanges` that :func:`quantize_static`
            gave ONNX Runtime (empty when ORT chose the weight scales itself).
        selection: for ``quantize_static(method="auto")``, the :class:`qfcal.selection.Selection`
            that chose :attr:`method` (every candidate's held-out output error); else None.
        equalization: what ``quantize_static(equalize=True)`` changed in the model (an
            :class:`qfcal.equalize.EqualizeReport`); else None.
        activation_type, symmetric, method, gamma, percentile: the search settings.
        batches: number of calibration batches the histograms hold (0 if built from histograms).

    ``Calibration(histograms, ...)`` builds one from histograms made elsewhere, e.g. merged
    from several processes; :meth:`search` redoes the searches with other settings.
    """

    def __init__(
        self,
        histograms: Mapping[str, qfcal.Histogram],
        *,
        activation_type: QuantType | str = "QInt8",
        symmetric: bool = False,
        method: str = "optimal",
        gamma: float = 1.0,
        percentile: float = 99.99,
        tensor_overrides: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        batches: int = 0,
        batch_histograms: Mapping[str, Sequence[qfcal.Histogram]] | None = None,
    ) -> None:
        self.activation_type: Any = _quant_type(activation_type)
        self.symmetric = bool(symmetric)
        self.method = method
        self.gamma = gamma
        self.percentile = percentile
        self.batches = batches
        self.tensor_overrides: dict[str, list[dict[str, Any]]] = {
            k: [dict(o) for o in v] for k, v in (tensor_overrides or {}).items()
        }
        _check_method(method, gamma, percentile)
        _grid(self.activation_type, self.symmetric)  # rejects float8 up front
        self.histograms: dict[str, qfcal.Histogram] = dict(histograms)
        self.batch_histograms = {k: list(v) for k, v in (batch_histograms or {}).items()}
        if method == CROSSVAL and not self.batch_histograms:
            raise ValueError(
                "method='crossval' needs each batch's histograms (batch_histograms=, as "
                "calibrate(..., method='crossval') keeps them)"
            )
        self.crossval_gamma: dict[str, float] = {}
        self.ranges: dict[str, qfcal.SearchResult] = {}
        self.bounds: dict[str, tuple[np.float32, np.float32]] = {}
        self.skipped: dict[str, str] = {}
        self.weight_ranges: dict[str, qfcal.WeightRanges] = {}
        self.selection: Selection | None = None
        self.equalization: EqualizeReport | None = None
        for name, hist in self.histograms.items():
            if not isinstance(hist, qfcal.Histogram):
                raise TypeError(
                    f"histograms[{name!r}] must be a qfcal.Histogram, got {type(hist).__name__}"
                )
            quant_type, symmetric_t, reduce_range = self._tensor_grid(name)
            qmin, qmax = _grid(quant_type, symmetric_t, reduce_range)
            try:
                r = self._search(name, hist, qmin, qmax, symmetric_t)
            except qfcal.EmptyHistogramError:
                self.skipped[name] = f"no finite value among {hist.total} seen"
                continue
            b = _ort_bounds(r, symmetric_t)
            if b is None:  # pragma: no cover - never seen; kept so nothing is lost silently
                warnings.warn(
                    f"ONNX Runtime will not reproduce qfcal's scale {r.scale!r} and zero point "
                    f"{r.zero_point} for tensor {name!r} exactly (it gets the range "
                    f"[{r.min!r}, {r.max!r}])",
                    stacklevel=2,
                )
                b = (np.float32(r.min), np.float32(r.max))
            self.ranges[name] = r
            self.bounds[name] = b
        if self.skipped:
            warnings.warn(
                f"no range for {len(self.skipped)} tensor(s), ONNX Runtime gets none for them: "
                + "; ".join(f"{k!r}: {v}" for k, v in self.skipped.items()),
                stacklevel=2,
            )

    def _search(
        self, name: str, hist: qfcal.Histogram, qmin: int, qmax: int, symmetric: bool
    ) -> qfcal.SearchResult:
        """One tensor's range: the search, or for ``crossval`` the cross-validated one (the
        batches in up to ``CROSSVAL_FOLDS`` folds of consecutive batches; `gamma` chosen per
        tensor, kept in :attr:`crossval_gamma`), falling back
        to ``optimal`` where fewer than two batches hold finite values of the tensor."""
        if self.method != CROSSVAL:
            return qfcal.search(
                hist,
                qmin=qmin,
                qmax=qmax,
                symmetric=symmetric,
                method=self.method,
                gamma=self.gamma,
                percentile=self.percentile,
            )
        parts = [h for h in self.batch_histograms.get(name, []) if h.finite]
        if len(parts) < 2:
            return qfcal.search(hist, qmin=qmin, qmax=qmax, symmetric=symmetric)
        folds = min(len(parts), CROSSVAL_FOLDS)
        r = qfcal.cross_validate(parts, folds=folds, qmin=qmin, qmax=qmax, symmetric=symmetric)
        self.crossval_gamma[name] = r.gamma
        return r

    def _tensor_grid(self, name: str) -> tuple[Any, bool, bool]:
        """(quant type, symmetric, reduce_range) of a tensor: ORT's per-tensor overrides
        (``TensorQuantOverrides``: quant_type, symmetric, reduce_range), else the defaults."""
        over = self.tensor_overrides.get(name) or [{}]
        o = over[0] if len(over) == 1 else {}
        quant_type = _quant_type(
            o.get("quant_type", self.activation_type),
            f"TensorQuantOverrides[{name!r}]['quant_type']",
        )
        return quant_type, bool(o.get("symmetric", self.symmetric)), bool(o.get("reduce_range"))

    def search(
        self,
        *,
        activation_type: QuantType | str | None = None,
        symmetric: bool | None = None,
        method: str | None = None,
        gamma: float | None = None,
        percentile: float | None = None,
    ) -> Calibration:
        """A new Calibration from the same histograms with other settings (no inference)."""
        return Calibration(
            self.histograms,
            activation_type=self.activation_type if activation_type is None else activation_type,
            symmetric=self.symmetric if symmetric is None else symmetric,
            method=self.method if method is None else method,
            gamma=self.gamma if gamma is None else gamma,
            percentile=self.percentile if percentile is None else percentile,
            tensor_overrides=self.tensor_overrides,
            batches=self.batches,
            batch_histograms=self.batch_histograms,
        )

    def tensors_data(self) -> Any:
        """The ranges as ONNX Runtime's ``TensorsData`` (labelled ``CalibrationMethod.MinMax``:
        plain lowest/highest pairs, what ORT's quantizer reads)."""
        return TensorsData(CalibrationMethod.MinMax, dict(self.bounds))

    def save_cache(self, path: str | os.PathLike[str]) -> Path:
        """Write the ranges as an ONNX Runtime calibration cache (JSON, written atomically),
        for ``onnxruntime.quantization.quantize_static(model, out, None,
        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=path)``."""
        _require_cache("Calibration.save_cache")
        from onnxruntime.quantization import save_tensors_data

        p = Path(path)
        save_tensors_data(self.tensors_data(), p)
        return p

    def __repr__(self) -> str:
        return (
            f"Calibration({len(self.ranges)} tensors, {self.batches} batches, "
            f"activation_type={self.activation_type.name}, symmetric={self.symmetric}, "
            f"method={self.method!r})"
        )


# --------------------------------------------------------------------------------------------
# Streaming calibration


def _batches(data_reader: object, arg: str = "data_reader") -> Iterator[Mapping[str, Any]]:
    """The batches of an ORT CalibrationDataReader (get_next() until None) or an iterable."""
    get_next = getattr(data_reader, "get_next", None)
    if callable(get_next):

        def read() -> Iterator[Mapping[str, Any]]:
            while True:
                batch = get_next()
                if batch is None:
                    return
                yield batch

        return read()
    if isinstance(data_reader, Mapping):
        raise TypeError(
            f"{arg} must yield input dicts; got one dict (keys {list(data_reader)[:5]}): "
            "pass a list of dicts or a CalibrationDataReader"
        )
    if isinstance(data_reader, Iterable) and not isinstance(data_reader, str | bytes):
        return iter(data_reader)
    raise TypeError(
        f"{arg} must be an onnxruntime CalibrationDataReader (get_next() -> dict or None) or an "
        f"iterable of input dicts, got {type(data_reader).__name__}"
    )


def calibrate(
    model: str | os.PathLike[str] | Any,
    data_reader: Any,
    *,
    method: str = "optimal",
    activation_type: QuantType | str = "QInt8",
    symmetric: bool = False,
    gamma: float = 1.0,
    percentile: float = 99.99,
    bins: int = qfcal.DEFAULT_BINS,
    op_types: Sequence[str] | None = None,
    providers: Sequence[Any] | None = None,
    tensor_overrides: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    progress: bool = True,
    keep: list[Mapping[str, Any]] | None = None,
) -> Calibration:
    """Histogram every float activation of `model` over the calibration batches, streaming,
    and search each tensor's range with qfcal.

    Args:
        model: an ONNX model file or an ``onnx.ModelProto`` (not modified).
        data_reader: an ``onnxruntime.quantization.CalibrationDataReader`` (``get_next()``
            returns an input dict, then None) or any iterable of input dicts
            ``{input name: numpy array}``. Read once.
        method: a qfcal search method (:func:`qfcal.methods`): ``optimal`` (default),
            ``greedy``, ``tf_enhanced``, ``entropy``, ``percentile``, ``minmax``; or
            ``crossval``: each batch's histograms are kept too, and each tensor's range is
            :func:`qfcal.cross_validate`'s over them (the batches in up to 8 folds: the
            clipping weight ``gamma`` of least held-out error, per tensor), for a clip that
            generalizes beyond the calibration batches.
        activation_type: ORT's ``QuantType`` of the activations (or its name); sets the grid.
        symmetric: ORT's ``extra_options["ActivationSymmetric"]``.
        gamma, percentile: passed to :func:`qfcal.search`.
        bins: bins of each :class:`qfcal.Histogram`.
        op_types: histogram only the inputs and outputs of nodes of these op types (default:
            of every node, as ONNX Runtime's calibrators do).
        providers: execution providers of the calibration session (default CPU).
        tensor_overrides: ORT's ``extra_options["TensorQuantOverrides"]``; a tensor's
            ``quant_type``, ``symmetric`` and ``reduce_range`` set its grid.
        progress: a progress bar over the batches (a live line on a terminal's stderr; logged
            at INFO under ``qfcal`` every 30 s and at the end otherwise).
        keep: a list the batches are appended to as they are read (for a second use of a
            reader that can be read once, as :func:`select_method` needs); each batch's
            histograms are then kept too (:attr:`Calibration.batch_histograms`).

    ``method="auto"`` is :func:`quantize_static`'s (it needs the quantized model's outputs).

    The model gets every float tensor that is an input or output of a node (initializers
    excepted) as an extra graph output; one ONNX Runtime session (graph optimizations off, as
    ORT's calibrators run) computes them batch by batch, each is added to its histogram and
    dropped. Graph inputs are histogrammed straight from the batch. Memory is the model, one
    batch of activations and a few kB per histogram.

    Raises:
        FileNotFoundError: `model` is a path to no file.
        ValueError: unknown method, bad gamma/percentile/bins/activation_type, a batch naming
            an input the model does not have or missing one, or no batch at all.
        TypeError: `data_reader` or a batch of the wrong kind.
        RuntimeError: ONNX Runtime failed on a batch (the batch number and shapes are named).
    """
    if method == AUTO:
        raise ValueError(
            "method='auto' chooses the range method by the quantized model's outputs: use "
            "quantize_static(..., method='auto'), or calibrate(..., method='crossval') (which "
            "keeps each batch's histograms) and select_method()"
        )
    _check_method(method, gamma, percentile)
    at = _quant_type(activation_type)
    _grid(at, bool(symmetric))
    bins = check_bins(bins)
    proto = _load(model)
    if proto is model:  # saved below as external data, which rewrites it: work on a copy
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    batches = _batches(data_reader)
    keep_parts = method == CROSSVAL or keep is not None
    per_batch: dict[str, list[qfcal.Histogram]] | None = {} if keep_parts else None
    with tempfile.TemporaryDirectory(prefix="qfcal-ort-") as tmp:
        session, graph_inputs, fetch = _augmented_session(proto, tmp, op_types, providers)
        hists, count = _stream(
            session, graph_inputs, fetch, batches, bins, progress, per_batch=per_batch, keep=keep
        )
    _warn_non_finite(hists)
    return Calibration(
        hists,
        activation_type=at,
        symmetric=symmetric,
        method=method,
        gamma=gamma,
        percentile=percentile,
        tensor_overrides=tensor_overrides,
        batches=count,
        batch_histograms=per_batch,
    )


def _augmented_session(
    proto: Any, tmp: str, op_types: Sequence[str] | None, providers: Sequence[Any] | None
) -> tuple[Any, dict[str, bool], list[str]]:
    """A session computing every float node tensor; (session, {graph input: histogrammed?
    (float)}, names of the extra outputs to fetch)."""
    if op_types is not None and (
        isinstance(op_types, str) or not all(isinstance(t, str) for t in op_types)
    ):
        raise TypeError(f"op_types must be a sequence of op type names, got {op_types!r}")
    # Shape inference on a file, so models over 2 GB work too (weights as external data).
    src = os.path.join(tmp, "model.onnx")
    onnx.save_model(proto, src, save_as_external_data=True, location="model.data")
    onnx.shape_inference.infer_shapes_path(src, src)
    m = onnx.load(src, load_external_data=False)
    g = m.graph
    inits = {i.name for i in g.initializer}
    types: dict[str, Any] = {vi.name: vi for vi in g.value_info}
    types.update({vi.name: vi for vi in g.output})
    types.update({vi.name: vi for vi in g.input})

    def is_float(name: str) -> bool:
        vi = types.get(name)
        return (
            vi is not None
            and vi.type.HasField("tensor_type")
            and vi.type.tensor_type.elem_type in _FLOAT_TYPES
        )

    graph_inputs = {i.name: is_float(i.name) for i in g.input if i.name not in inits}
    wanted: list[str] = []
    seen: set[str] = set()
    untyped: list[str] = []
    ops = None if op_types is None else set(op_types)
    for node in g.node:
        if ops is not None and node.op_type not in ops:
            continue
        for name in list(node.input) + list(node.output):
            if not name or name in seen or name in inits or name in graph_inputs:
                continue
            seen.add(name)
            if name not in types:
                untyped.append(name)
            elif is_float(name):
                wanted.append(name)
    if untyped:
        warnings.warn(
            f"{len(untyped)} tensor(s) have no type after ONNX shape inference and are not "
            f"calibrated (ONNX Runtime's calibrators skip them too): {untyped[:10]}",
            stacklevel=3,
        )
    outputs = {o.name for o in g.output}
    for name in wanted:
        if name not in outputs:
            g.output.append(types[name])
    aug = os.path.join(tmp, "augmented.onnx")
    onnx.save_model(m, aug)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        aug,
        sess_options=options,
        providers=list(providers) if providers is not None else ["CPUExecutionProvider"],
    )
    return session, graph_inputs, wanted


def _stream(
    session: Any,
    graph_inputs: dict[str, bool],
    fetch: list[str],
    batches: Iterator[Mapping[str, Any]],
    bins: int,
    progress: bool,
    per_batch: dict[str, list[qfcal.Histogram]] | None = None,
    keep: list[Mapping[str, Any]] | None = None,
) -> tuple[dict[str, qfcal.Histogram], int]:
    """The histograms of every tensor over the batches, and the batch count; with `per_batch`,
    also each batch's own histogram of each tensor, appended there (the totals are their exact
    merge)."""
    required = set(graph_inputs)
    hists: dict[str, qfcal.Histogram] = {}
    for name, floating in graph_inputs.items():
        if floating:
            hists[name] = qfcal.Histogram(bins)
    for name in fetch:
        hists[name] = qfcal.Histogram(bins)
    with Progress(
        None, f"qfcal: calibrating {len(hists)} tensors", unit="batches", enabled=progress
    ) as bar:
        count = 0
        for batch in batches:
            if not isinstance(batch, Mapping):
                raise TypeError(
                    f"calibration batch {count} must be a dict {{input name: array}}, "
                    f"got {type(batch).__name__}"
                )
            unknown = sorted(set(batch) - required)
            if unknown:
                raise ValueError(
                    f"calibration batch {count} names input(s) {unknown} that the model does not "
                    f"have; its inputs are {sorted(required)}"
                )
            missing = sorted(required - set(batch))
            if missing:
                raise ValueError(
                    f"calibration batch {count} lacks model input(s) {missing} "
                    f"(it has {sorted(batch)})"
                )
            try:
                outs = session.run(fetch, dict(batch))
            except Exception as e:
                shapes = {k: getattr(v, "shape", type(v).__name__) for k, v in batch.items()}
                raise RuntimeError(
                    f"onnxruntime failed on calibration batch {count} (inputs {shapes}): {e}"
                ) from e
            values = [(n, np.asarray(batch[n])) for n, f in graph_inputs.items() if f]
            for name, value in values + list(zip(fetch, outs, strict=True)):
                if per_batch is None:
                    hists[name].update(value)
                else:
                    own = qfcal.Histogram(bins)
                    own.update(value)
                    hists[name].merge(own)
                    per_batch.setdefault(name, []).append(own)
            del outs, values  # drop the activations: only the histograms are kept
            if keep is not None:
                keep.append(batch)
            count += 1
            bar.update()
        if count == 0:
            raise ValueError("data_reader yielded no calibration batch")
        bar.close(
            f"qfcal: calibrated {len(hists)} tensors on {count} batches in "
            f"{time.monotonic() - bar.start:.1f} s"
        )
    return hists, count


def _warn_non_finite(hists: Mapping[str, qfcal.Histogram]) -> None:
    bad = {k: (h.nan, h.pos_inf + h.neg_inf) for k, h in hists.items() if h.finite < h.total}
    if bad:
        warnings.warn(
            "NaN/Inf among calibration activations (counted apart; ranges cover the finite "
            "values): " + "; ".join(f"{k!r}: {n} NaN, {i} Inf" for k, (n, i) in bad.items()),
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# quantize_static


# --------------------------------------------------------------------------------------------
# Weights

# The weight input (index 1) of the ops ONNX Runtime quantizes as weights, and its per-channel
# axis by default (ORT's operators/conv.py, gemm.py, matmul.py); Gemm's depends on transB.
_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "Gemm": None}


def _weight_tensors(
    proto: Any,
    op_types: Sequence[str] | None,
    nodes_to_exclude: Sequence[str] | None,
    axis_overrides: Mapping[str, int],
    user_overrides: Mapping[str, Any],
) -> dict[str, int]:
    """{weight initializer: ORT's per-channel axis} of the weights qfcal may set: the weight
    input of every Conv, ConvTranspose, Gemm and MatMul node ORT quantizes, when every node
    using it agrees on the axis and the user gave no override of their own for it."""
    inits = {i.name: len(i.dims) for i in proto.graph.initializer}
    out: dict[str, int] = {}
    conflicting: set[str] = set()
    excluded = set(nodes_to_exclude or ())
    for node in proto.graph.node:
        if node.op_type not in _WEIGHT_AXIS or len(node.input) < 2:
            continue
        if (op_types and node.op_type not in op_types) or node.name in excluded:
            continue
        w = node.input[1]
        if w not in inits or w in user_overrides or inits[w] < 1:
            continue
        axis = _WEIGHT_AXIS[node.op_type]
        if axis is None:  # Gemm: B is [K, N], or [N, K] with transB
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if trans_b else 1
        axis = int(axis_overrides.get(node.op_type, axis)) % inits[w]
        if out.setdefault(w, axis) != axis:
            conflicting.add(w)
    for w in conflicting:
        del out[w]
    return out


def search_weight_ranges(
    model: str | os.PathLike[str] | Any,
    *,
    per_channel: bool = False,
    weight_type: QuantType | str = "QInt8",
    reduce_range: bool = False,
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
) -> dict[str, qfcal.WeightRanges]:
    """qfcal's scale for each weight (per channel or per tensor) ONNX Runtime will quantize,
    searched on the exact values (:func:`qfcal.search_weights`) on the grid ORT applies to a
    weight whose scale it is given: the weight type's full range with ORT's symmetric zero
    point (``QInt8``: ``[-128, 127]``, zero point 0; ORT's own max |w| scales use
    ``[-127, 127]``, but it clamps given scales to the type's range).

    The arguments are ``quantize_static``'s. Weights with the user's own
    ``TensorQuantOverrides``, or shared by nodes that want different channel axes, are left
    to ONNX Runtime. :func:`weight_overrides` turns the result into ORT's overrides.
    """
    proto = _load(model)
    wt = _quant_type(weight_type, "weight_type")
    if reduce_range:
        raise ValueError(
            "reduce_range=True keeps weights within 7 bits, which ONNX Runtime does not apply to "
            "the weight scales it is given: leave the weights to ONNX Runtime "
            "(weight_method='minmax')"
        )
    qmin, qmax = get_qmin_qmax_for_qType(wt.tensor_type, symmetric=False)
    extra = dict(extra_options or {})
    tensors = _weight_tensors(
        proto,
        op_types,
        nodes_to_exclude,
        extra.get("QDQOpTypePerChannelSupportToAxis") or {},
        extra.get("TensorQuantOverrides") or {},
    )
    arrays = {i.name: i for i in proto.graph.initializer if i.name in tensors}
    out: dict[str, qfcal.WeightRanges] = {}
    for name, axis in tensors.items():
        w = numpy_helper.to_array(arrays[name])
        if w.dtype.kind != "f":
            continue
        out[name] = qfcal.search_weights(
            w, axis=axis if per_channel else None, qmin=int(qmin), qmax=int(qmax)
        )
    return out


def weight_overrides(ranges: Mapping[str, qfcal.WeightRanges]) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime ``TensorQuantOverrides`` entries giving each weight qfcal's scales
    (``{"scale", "zero_point"}``, with ``"axis"`` per channel). A channel of zeros keeps ORT's
    own choice for it (scale 1)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, r in ranges.items():
        entries = []
        for s in r.scale:
            e: dict[str, Any] = {"scale": float(s) if s > 0 else 1.0, "zero_point": r.zero_point}
            if r.axis is not None:
                e["axis"] = r.axis
            entries.append(e)
        out[name] = entries
    return out


def quantize_static(
    model_input: str | os.PathLike[str] | Any,
    model_output: str | os.PathLike[str],
    calibration_data_reader: Any,
    *,
    method: str = AUTO,
    gamma: float = 1.0,
    percentile: float = 99.99,
    bins: int = qfcal.DEFAULT_BINS,
    progress: bool = True,
    weight_method: str = "minmax",
    candidates: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int = DEFAULT_FOLDS,
    z: float | None = None,
    metric: Any = "auto",
    equalize: bool | str = False,
    bias_correction: bool | None = None,
    equalize_relu6: str = "bound",
    **ort_kwargs: Any,
) -> Calibration:
    """``onnxruntime.quantization.quantize_static`` with qfcal's ranges, calibrated streaming.

    Calibrates with :func:`calibrate` (grid from ``activation_type`` and
    ``extra_options["ActivationSymmetric"]``, per-tensor grids from
    ``extra_options["TensorQuantOverrides"]``), writes the ranges as an ONNX Runtime
    calibration cache and calls ONNX Runtime's own ``quantize_static`` with it and
    ``calibration_data_reader=None``, so ORT runs no calibration of its own.

    Args:
        model_input, model_output, calibration_data_reader: as for ONNX Runtime (the reader may
            also be any iterable of input dicts).
        method, gamma, percentile, bins, progress: qfcal's, see :func:`calibrate`; and
            ``method="auto"`` (the default): the calibration batches are kept (in memory)
            with each one's histograms, and :func:`select_method` chooses among `candidates`
            (default :data:`qfcal.selection.DEFAULT_CANDIDATES`: optimal, minmax, entropy,
            percentile 99.999, 99.99 and 99.9) the one whose quantized model's outputs come
            closest to float (`metric`; ``auto``: KL for class logits, pooled cosine for hidden
            states, else relative squared error) on batches its ranges were not searched on
            (`folds` folds of consecutive batches; ``z > 0``: ``optimal`` stays unless
            another beats it by `z` standard errors; ``z=None``: 0 from 32 batches on, 2
            below); :attr:`Calibration.selection`
            says what each scored. It costs one ONNX Runtime quantization, and per candidate
            and fold a search, a session and a pass over the fold's batches (2-7x one
            method's time on BENCHMARKS.md's models). With one calibration batch it warns and
            searches ``optimal``. `gamma` and
            `percentile` are for a fixed method (``optimal``: the exact histogram optimum).
        candidates, folds, z, metric: for ``method="auto"`` only, see :func:`select_method`.
        equalize: first equalize the model's consecutive convolutions (:func:`equalize`:
            ReLU6 kept exact on the calibration batches, biases absorbed), which makes
            per-tensor weights (``per_channel=False``) lose far less; the batches are kept in
            memory. :attr:`Calibration.equalization` reports what changed. True or
            ``"noise"``: the scales of least predicted output noise, activations included;
            ``"cle"``: equal weight ranges (:func:`equalize`'s `objective`).
        equalize_relu6: how `equalize` keeps ReLU6 exact (:func:`equalize`'s `relu6`):
            ``"bound"`` (default: the graph keeps its operations) or ``"per-channel"``
            (clips moved per channel: far more equalization where ReLU6 channels reach the
            clip, one ``Min`` more per moved clip, which ONNX Runtime runs in float).
        bias_correction: subtract from each convolution's bias the mean shift its int8
            weights (per channel or per tensor, as `per_channel` says) cause on the
            calibration batches; default: with `equalize`.
        weight_method: how the weight scales are chosen. ``optimal``: qfcal's least squared
            error per channel (or per tensor) on the grid ORT applies to given scales
            (``[-128, 127]``), given to ORT as ``TensorQuantOverrides``
            (:func:`search_weight_ranges`); ``minmax`` (default): ONNX Runtime's own
            (max |w| / 127), which measured as well in exact semantics and better on ORT's int8
            kernels of an AVX2 CPU (BENCHMARKS.md). ``optimal`` is refused with
            ``reduce_range`` (which ORT does not apply to given scales).
        **ort_kwargs: every other argument of ONNX Runtime's ``quantize_static``
            (``quant_format``, ``per_channel``, ``activation_type``, ``weight_type``,
            ``op_types_to_quantize``, ``nodes_to_exclude``, ``calibration_providers``,
            ``extra_options``, ...), passed through. ``calibration_cache_path``, if given, is
            where the cache is written (overwriting a file there) and kept for reuse; by default
            a temporary file. ``calibrate_method`` is not accepted: qfcal picks the ranges
            (``method``). ``extra_options["MinimumRealRange"]`` still widens ranges narrower
            than it, as ORT documents; ORT's own calibrator options (``Calib*``) are ignored,
            with a warning.

    Returns:
        The :class:`Calibration` (histograms and ranges) the model was quantized with.

    Raises:
        TypeError: an argument ONNX Runtime's quantize_static does not take, or
            ``calibrate_method``.
        ValueError: options that would make ORT change qfcal's ranges
            (``ActivationRestrictedAsymmetric`` on uint8, ``SmoothQuant``), and what
            :func:`calibrate` raises.
    On an ONNX Runtime older than the calibration cache (before 1.32), the ranges reach ORT as
    ``TensorQuantOverrides`` instead (a scale and zero point per activation, user overrides
    kept), ORT's own calibrator runs on the first batch only (its ranges are replaced), and
    ``method="auto"`` (which needs the cache) searches ``optimal`` with a warning.
    """
    legacy = not _ort_has_cache()
    if legacy and method == AUTO:
        warnings.warn(
            f"method='auto' needs onnxruntime's calibration cache ({_CACHE_PR}, onnxruntime "
            f"1.32); onnxruntime {onnxruntime.__version__} gets method 'optimal', as "
            "TensorQuantOverrides",
            stacklevel=2,
        )
        method = "optimal"
    accepted = set(inspect.signature(_ort_quantize_static).parameters)
    if "calibrate_method" in ort_kwargs:
        raise TypeError(
            f"calibrate_method={ort_kwargs['calibrate_method']!r}: qfcal computes the ranges, "
            f"choose them with method= (one of {', '.join(qfcal.methods())})"
        )
    unknown = sorted(
        set(ort_kwargs) - (accepted - {"model_input", "model_output", "calibration_data_reader"})
    )
    if unknown:
        raise TypeError(
            f"onnxruntime.quantization.quantize_static takes no argument {unknown[0]!r} "
            f"(onnxruntime {onnxruntime.__version__})"
        )
    extra = dict(ort_kwargs.get("extra_options") or {})
    activation_type = _quant_type(ort_kwargs.get("activation_type", QuantType.QInt8))
    symmetric = bool(extra.get("ActivationSymmetric", False))
    if extra.get("SmoothQuant", False):
        raise ValueError(
            "extra_options['SmoothQuant']=True rewrites the model before ONNX Runtime "
            "calibrates it; qfcal's ranges are for the model as given. Apply SmoothQuant first "
            "(or quantize with ONNX Runtime's own calibration)."
        )
    if (
        extra.get("ActivationRestrictedAsymmetric", False)
        and activation_type == QuantType.QUInt8
        and not symmetric
    ):
        raise ValueError(
            "extra_options['ActivationRestrictedAsymmetric']=True makes ONNX Runtime move every "
            "uint8 zero point to 0 or 128 and recompute the scale, replacing qfcal's ranges; "
            "use ActivationSymmetric=True (qfcal then searches the symmetric grid) or drop it"
        )
    ignored = [k for k in _ORT_CALIBRATION_OPTIONS if k in extra]
    if ignored:
        warnings.warn(
            f"extra_options {ignored} configure ONNX Runtime's own calibrators, which qfcal "
            "replaces; they are ignored",
            stacklevel=2,
        )
    check_choice(weight_method, "weight_method", WEIGHT_METHODS)
    auto = method == AUTO
    if auto:
        check_auto_options(gamma, percentile)
        candidates = _check_candidates(candidates)
        check_metric(metric)
    elif candidates is not None:
        raise ValueError(f"candidates= is for method='auto', got method={method!r}")
    per_channel = bool(ort_kwargs.get("per_channel", False))
    op_types = ort_kwargs.get("op_types_to_quantize") or None
    objective = equalize_objective(equalize)
    check_choice(equalize_relu6, "equalize_relu6", RELU6_MODES)
    if bias_correction is None:
        bias_correction = objective is not None
    with tempfile.TemporaryDirectory(prefix="qfcal-eq-") as eq_tmp:
        eq_report = None
        if objective is not None or bias_correction:
            check_flags(bias_correction=bias_correction)
            from qfcal._onnx_equalize import as_list, equalize_onnx

            calibration_data_reader = as_list(calibration_data_reader)
            eq_model, eq_report = equalize_onnx(
                _load(model_input, "model_input"),
                calibration_data_reader,
                equalize=objective is not None,
                objective=objective or "cle",
                bias_correction_bits=8 if bias_correction else None,
                per_channel=per_channel,
                relu6=equalize_relu6,
            )
            model_input = os.path.join(eq_tmp, "equalized.onnx")
            onnx.save_model(eq_model, model_input, save_as_external_data=True, location="eq.data")
        cal = _quantize_static(
            model_input, model_output, calibration_data_reader, auto, method, gamma,
            percentile, bins, progress, weight_method, candidates, folds, z, metric,
            per_channel, op_types, extra, activation_type, symmetric, ort_kwargs,
        )  # fmt: skip
    cal.equalization = eq_report
    return cal


def _quantize_static(
    model_input: Any,
    model_output: Any,
    calibration_data_reader: Any,
    auto: bool,
    method: str,
    gamma: float,
    percentile: float,
    bins: int,
    progress: bool,
    weight_method: str,
    candidates: Any,
    folds: int,
    z: float | None,
    metric: Any,
    per_channel: bool,
    op_types: Any,
    extra: dict[str, Any],
    activation_type: Any,
    symmetric: bool,
    ort_kwargs: dict[str, Any],
) -> Calibration:
    kept: list[Mapping[str, Any]] | None = [] if auto else None
    legacy = not _ort_has_cache()
    first: list[Mapping[str, Any]] = []  # ORT < 1.32 calibrates too: on this batch only
    if legacy:
        calibration_data_reader = _keep_first(calibration_data_reader, first)
    cal = calibrate(
        model_input,
        calibration_data_reader,
        method="optimal" if auto else method,
        activation_type=activation_type,
        symmetric=symmetric,
        gamma=gamma,
        percentile=percentile,
        bins=bins,
        op_types=op_types,
        providers=ort_kwargs.get("calibration_providers"),
        tensor_overrides=extra.get("TensorQuantOverrides"),
        progress=progress,
        keep=kept,
    )
    kwargs = dict(ort_kwargs)
    if weight_method == "optimal":
        cal.weight_ranges = search_weight_ranges(
            model_input,
            per_channel=per_channel,
            weight_type=ort_kwargs.get("weight_type", QuantType.QInt8),
            reduce_range=bool(ort_kwargs.get("reduce_range", False)),
            op_types=op_types,
            nodes_to_exclude=ort_kwargs.get("nodes_to_exclude"),
            extra_options=extra,
        )
        overrides = dict(extra.get("TensorQuantOverrides") or {})
        overrides.update(weight_overrides(cal.weight_ranges))
        kwargs["extra_options"] = {**extra, "TensorQuantOverrides": overrides}
    cache = kwargs.pop("calibration_cache_path", None)
    if auto and cal.batches < 2:
        warn_fallback(f"calibration_data_reader gave {cal.batches} batch", stacklevel=3)
        auto = False
    if auto:
        assert kept is not None
        sel = select_method(
            model_input, cal, kept, candidates=candidates, folds=folds, z=z, metric=metric,
            progress=progress, **kwargs,
        )  # fmt: skip
        del kept
        chosen = _search_with(cal, sel.options)
        chosen.weight_ranges = cal.weight_ranges
        chosen.selection = sel
        cal = chosen
    if legacy:
        _ort_quantize_with_overrides(cal, model_input, model_output, first, kwargs)
        return cal
    with tempfile.TemporaryDirectory(prefix="qfcal-ort-") as tmp:
        path = Path(cache) if cache is not None else Path(tmp) / "qfcal-calibration.json"
        _ort_quantize_with(cal, model_input, model_output, path, kwargs)
    return cal


def _keep_first(reader: Any, first: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    """The batches of `reader`, the first one also appended to `first`."""
    for batch in _batches(reader, "calibration_data_reader"):
        if not first:
            first.append(dict(batch))
        yield batch


def _ort_quantize_with_overrides(
    cal: Calibration,
    model_input: str | os.PathLike[str] | Any,
    model_output: str | os.PathLike[str],
    first: Sequence[Mapping[str, Any]],
    kwargs: Mapping[str, Any],
) -> None:
    """ONNX Runtime before the calibration cache: `cal`'s ranges as ``TensorQuantOverrides``
    (the user's own overrides of a tensor win), ORT's calibrator on the first batch."""
    from qfcal.encodings import to_ort

    extra = dict(kwargs.get("extra_options") or {})
    overrides = {**to_ort(cal.ranges), **dict(extra.get("TensorQuantOverrides") or {})}
    extra["TensorQuantOverrides"] = overrides

    class _Reader:
        def __init__(self) -> None:
            self.batches = iter(first)

        def get_next(self) -> Mapping[str, Any] | None:
            return next(self.batches, None)

    args = {k: v for k, v in kwargs.items() if k != "extra_options"}
    _ort_quantize_static(
        model_input if not isinstance(model_input, os.PathLike) else str(model_input),
        str(model_output),
        _Reader(),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=extra,
        **args,
    )


def equalize(
    model: str | os.PathLike[str] | Any,
    data_reader: Any,
    *,
    headroom: float = 2.0,
    absorb: bool = False,
    bias_correction: bool = False,
    per_channel: bool = False,
    max_iterations: int = 20,
    objective: str = "noise",
    relu6: str = "bound",
) -> tuple[Any, EqualizeReport]:
    """Cross-layer equalization of an ONNX model on calibration data, without retraining.

    Consecutive convolutions ``Conv -> [Relu | Clip(0, 6)] -> Conv`` (depthwise or regular;
    weights and biases initializers of their own; the tensor between read only by the second)
    get each channel's range equalized (:mod:`qfcal.equalize`): a depthwise channel whose
    folded weights are far wider than its neighbours' (the seed's failure) no longer sets the
    per-tensor scale. ReLU6 is kept exact on the calibration batches (a channel whose data
    reach 6 keeps its scale; the others are scaled only as far as keeps their data below the
    moved clip), never replaced by ReLU; constants of always-positive channels move into the
    next convolution's bias (`absorb`). With `bias_correction`, each convolution's bias then
    cancels the mean shift its int8 weights (per tensor, or per channel with `per_channel`)
    cause on the batches; that one changes the float model on purpose.

    `objective`: ``noise`` (the default) chooses the scales of least predicted output noise of
    both layers' per-tensor weights and the per-tensor activations between them; ``cle`` gives
    both convolutions of a pair equal per-channel weight ranges (Nagel et al. 2019; see
    :data:`qfcal.equalize.OBJECTIVES`).

    `relu6` (:data:`qfcal.equalize.RELU6_MODES`): ``bound`` (the default) keeps ReLU6 exact
    as above and the graph's operations as they are; ``per-channel`` scales ReLU6 channels
    freely and moves each channel's clip to ``6 / s`` instead: the ``Clip`` clips at the
    largest of those and a ``Min`` with the per-channel values follows it, so the model is
    exact on every input. Where many channels reach the clip (pretrained EfficientNet-Lite0),
    only this mode equalizes much; the ``Min`` runs in float in ONNX Runtime's QDQ models
    (measured 1.5-1.9x the latency of EfficientNet-Lite0 on ORT's CPU kernels), so it is for
    targets that need per-tensor weights, where per-channel weights are not an option.

    Returns the new ``onnx.ModelProto`` and the :class:`qfcal.equalize.EqualizeReport` (links,
    scaled and held channels, ``float_drift``: the largest |output difference| to `model` on
    the batches before bias correction).

    Raises:
        FileNotFoundError, TypeError: `model` is not an ONNX file or ModelProto.
        ValueError: `data_reader` gives no batches.
    """
    from qfcal._onnx_equalize import as_list, equalize_onnx

    check_flags(absorb=absorb, bias_correction=bias_correction)
    return equalize_onnx(
        _load(model, "model"),
        as_list(data_reader),
        headroom=headroom,
        absorb=absorb,
        bias_correction_bits=8 if bias_correction else None,
        per_channel=per_channel,
        max_iterations=max_iterations,
        objective=objective,
        relu6=relu6,
    )


def _ort_quantize_with(
    cal: Calibration,
    model_input: str | os.PathLike[str] | Any,
    model_output: str | os.PathLike[str],
    cache: Path,
    kwargs: Mapping[str, Any],
) -> None:
    """ONNX Runtime's quantize_static with `cal`'s ranges as its calibration cache at `cache`."""
    cal.save_cache(cache)
    _ort_quantize_static(
        model_input,
        model_output,
        None,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=cache,
        **kwargs,
    )


def _check_candidates(
    candidates: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """The candidates, each a method the ONNX Runtime flow searches (``crossval`` too; its grid
    comes from ORT's settings, so only method, gamma and percentile)."""

    def check(label: str, o: Mapping[str, Any]) -> None:
        if o["method"] == AUTO:
            raise ValueError(f"candidates[{label!r}]: method 'auto' cannot be a candidate")
        _check_method(o["method"], o.get("gamma", 1.0), o.get("percentile", 99.99))

    return check_search_candidates(
        candidates,
        f"the ONNX Runtime flow takes {', '.join(CANDIDATE_OPTIONS)} (the grid comes from "
        "ONNX Runtime's settings)",
        check,
    )


def _search_with(
    cal: Calibration,
    options: Mapping[str, Any],
    histograms: Mapping[str, qfcal.Histogram] | None = None,
    batch_histograms: Mapping[str, Sequence[qfcal.Histogram]] | None = None,
) -> Calibration:
    """A Calibration on `cal`'s grid searched with `options` (a candidate), on `histograms`
    (default `cal`'s) and `batch_histograms` (for crossval; default `cal`'s)."""
    return Calibration(
        cal.histograms if histograms is None else histograms,
        activation_type=cal.activation_type,
        symmetric=cal.symmetric,
        method=options["method"],
        gamma=options.get("gamma", 1.0),
        percentile=options.get("percentile", 99.99),
        tensor_overrides=cal.tensor_overrides,
        batches=cal.batches,
        batch_histograms=cal.batch_histograms if batch_histograms is None else batch_histograms,
    )


def _qparam_initializers(model: Any, tensors: Iterable[str]) -> dict[str, tuple[str, str]]:
    """tensor -> (scale, zero point) initializer names of its activation quantizer in an ONNX
    Runtime QDQ model: ORT names them ``<tensor>_scale`` and ``<tensor>_zero_point`` and every
    QuantizeLinear/DequantizeLinear pair of the tensor reads them."""
    names = {i.name for i in model.graph.initializer}
    used: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            used.update(node.input[1:3])
    out = {}
    for t in tensors:
        s, z = f"{t}_scale", f"{t}_zero_point"
        if s in names and z in names and s in used:
            out[t] = (s, z)
    return out


def _set_qparams(
    model: Any, index: Mapping[str, tuple[str, str]], ranges: Mapping[str, qfcal.SearchResult]
) -> Any:
    """A copy of `model` whose activation quantizers in `index` hold the scale and zero point of
    `ranges` (a tensor without a range keeps the model's own)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for t, (s, z) in index.items():
        r = ranges.get(t)
        if r is None:
            continue
        old_s = numpy_helper.to_array(inits[s])
        old_z = numpy_helper.to_array(inits[z])
        inits[s].CopyFrom(
            numpy_helper.from_array(np.full(old_s.shape, r.scale, dtype=old_s.dtype), s)
        )
        inits[z].CopyFrom(
            numpy_helper.from_array(np.full(old_z.shape, r.zero_point, dtype=old_z.dtype), z)
        )
    return out


def _float_outputs(outs: Sequence[Any]) -> list[np.ndarray | None]:
    return [
        np.asarray(o, dtype=np.float64)
        if isinstance(o, np.ndarray) and np.issubdtype(o.dtype, np.floating)
        else None
        for o in outs
    ]


def select_method(
    model_input: str | os.PathLike[str] | Any,
    calibration: Calibration,
    inputs: Sequence[Mapping[str, Any]],
    *,
    candidates: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int = DEFAULT_FOLDS,
    z: float | None = None,
    metric: Any = "auto",
    providers: Sequence[Any] | None = None,
    progress: bool = True,
    **ort_kwargs: Any,
) -> Selection:
    """Choose the range method by the quantized model's outputs on batches left out.

    For each candidate and each fold of consecutive calibration batches, every tensor's range
    is searched on the other folds' merged histograms, the model quantized by ONNX Runtime is
    given those ranges, and the fold's batches are run through it; the error compares every
    floating output with the float model's (`metric`). See :mod:`qfcal.selection`.

    ONNX Runtime quantizes the model once; each candidate's scales and zero points are written
    into that model's activation quantizers (the biases keep their float values: their int32
    codes and scales are those of the first quantization, which differs from ONNX Runtime's own
    requantization only by int32 rounding), and it is run in exact quantization semantics
    (graph optimizations off, as ONNX Runtime's calibrators run): the choice is the model's,
    not one CPU's int8 kernels' (an AVX2 CPU without VNNI saturates u8s8 products, see
    BENCHMARKS.md).

    Args:
        model_input: the float ONNX model (file or ``ModelProto``, under 2 GB).
        calibration: a :class:`Calibration` of that model holding each batch's histograms
            (``calibrate(..., method="crossval")``).
        inputs: the same calibration batches, in the same order.
        candidates: ``{label: {"method": ..., "gamma": ..., "percentile": ...}}``; default
            :data:`qfcal.selection.DEFAULT_CANDIDATES`. Ties go to the earlier one.
        folds: folds of consecutive batches (at most the number of batches).
        z: how far (in standard errors of the paired per-batch differences) a candidate must
            beat the first one to replace it; see :func:`qfcal.selection.select`.
        metric: the output error: ``auto`` (default: ``kl`` when every output is a batch of
            class logits, ``pooled`` for batches of vector sequences (hidden states), else
            ``mse``; :func:`qfcal.selection.auto_metric`), ``mse`` (any
            model; relative squared error), ``kl`` (logits: KL divergence of the softmax),
            ``cosine`` (embeddings, hidden states: 1 - cosine per vector), or a callable
            ``metric(float outputs, quantized outputs, batch) -> (error, norm)`` (the batch:
            its input dict); see :func:`qfcal.selection.output_error`. Choose what the model's
            users compare: for a sentence encoder whose graph ends at the hidden states, the
            cosine of the pooled embedding (a callable), not of each token (BENCHMARKS.md).
        providers: execution providers of the evaluation sessions (default
            ``ort_kwargs["calibration_providers"]``, else CPU).
        progress: a progress bar over the evaluations.
        **ort_kwargs: the arguments of ONNX Runtime's ``quantize_static`` the model will be
            quantized with (``per_channel``, ``quant_format``, ``extra_options``, ...).

    Returns:
        The :class:`qfcal.selection.Selection`; ``calibration.search(**selection.options)``
        gives the chosen method's ranges on all the batches.

    Raises:
        TypeError: `calibration` is not a Calibration, or a bad candidate option.
        ValueError: `calibration` holds no per-batch histograms or not one per batch of
            `inputs`, bad candidates or folds.
        RuntimeError: the installed ONNX Runtime has no calibration cache.
    """
    _require_cache("qfcal.onnxruntime.select_method")
    if not isinstance(calibration, Calibration):
        raise TypeError(
            f"calibration must be a qfcal.onnxruntime.Calibration, got {type(calibration).__name__}"
        )
    batches = list(inputs)
    counts = {len(v) for v in calibration.batch_histograms.values()}
    if not calibration.batch_histograms or counts != {len(batches)}:
        raise ValueError(
            "calibration must hold one histogram per batch of inputs for every tensor "
            f"(calibrate(..., method='crossval') keeps them): {len(batches)} input batches, "
            f"histogram counts {sorted(counts) or 'none'}"
        )
    cands = _check_candidates(candidates)
    check_metric(metric)
    for k in ("calibrate_method", "calibration_data_reader"):
        if k in ort_kwargs:
            raise TypeError(f"select_method takes no {k}: qfcal's ranges are given to ORT")
    kwargs = {k: v for k, v in ort_kwargs.items() if k != "calibration_cache_path"}
    provs = list(providers or ort_kwargs.get("calibration_providers") or ["CPUExecutionProvider"])
    proto = _load(model_input, "model_input")
    if isinstance(model_input, onnx.ModelProto):
        model_input = proto.SerializeToString()
    sess = onnxruntime.InferenceSession(
        model_input if isinstance(model_input, bytes) else str(model_input), providers=provs
    )
    reference = [_float_outputs(sess.run(None, dict(b))) for b in batches]
    del sess
    if not callable(metric) and all(f is None for f in reference[0]):
        raise ValueError(
            "the model has no floating-point output to compare with the quantized model's: "
            "choose a method (method='optimal', ...)"
        )
    merged: dict[tuple[int, ...], tuple[dict[str, qfcal.Histogram], dict[str, list[Any]]]] = {}
    exact = onnxruntime.SessionOptions()
    exact.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL

    def train(test: list[int]) -> tuple[dict[str, qfcal.Histogram], dict[str, list[Any]]]:
        key = tuple(test)
        if key not in merged:
            left_out = set(test)
            parts = {
                k: [h for i, h in enumerate(v) if i not in left_out]
                for k, v in calibration.batch_histograms.items()
            }
            merged[key] = (merge_parts(calibration.batch_histograms, left_out), parts)
        return merged[key]

    with tempfile.TemporaryDirectory(prefix="qfcal-ort-select-") as tmp:
        base_path = Path(tmp) / "base.onnx"
        src = model_input if not isinstance(model_input, bytes) else proto
        _ort_quantize_with(calibration, src, base_path, Path(tmp) / "cache.json", kwargs)
        base = onnx.load(str(base_path))
        index = _qparam_initializers(base, calibration.histograms)

        def evaluate(
            options: Mapping[str, Any], test: list[int]
        ) -> tuple[list[float], list[float]]:
            hists, parts = train(test)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tensors with no finite value in a fold
                cal = _search_with(calibration, options, hists, parts)
            model = _set_qparams(base, index, cal.ranges)
            s = onnxruntime.InferenceSession(
                model.SerializeToString(), sess_options=exact, providers=provs
            )
            errs, norms = [], []
            for i in test:
                outs = _float_outputs(s.run(None, dict(batches[i])))
                pairs = [(f, q) for f, q in zip(reference[i], outs, strict=True)
                         if f is not None and q is not None]  # fmt: skip
                err, norm = output_error(
                    metric, [f for f, _ in pairs], [q for _, q in pairs], batches[i]
                )
                errs.append(err)
                norms.append(norm)
            return errs, norms

        sel = select(len(batches), evaluate, candidates=cands, folds=folds, z=z, progress=progress)
    sel.metric = metric_name(metric, [f for f in reference[0] if f is not None])
    return sel
