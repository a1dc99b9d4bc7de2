"""Cross-layer equalization of a Keras model, without retraining (issue 13, "fix it").

:func:`equalize` returns a float-equivalent copy of a Keras model whose consecutive weighted
layers (depthwise -> pointwise first, any convolution or dense pair linked by identity, ReLU or
ReLU6) have equalized channel ranges, with ReLU6 kept exact (the algebra, the ReLU6 bound and
the moved clips: :mod:`qfcal.equalize`).
:func:`correct_bias` cancels the mean output shift that the quantized weights will cause.
``qfcal.tflite.quantize(..., equalize=True)`` runs both before the converter.

Nested models (a pretrained base used as one layer) are inlined and batch norms folded first,
as the TFLite converter folds them; the returned model is that flat, folded graph. With
``relu6="per-channel"`` (the default) each moved ReLU6 becomes a ReLU followed by a
:class:`ChannelClip` layer (a per-channel minimum: TFLite's RELU stays fused into the
convolution, one MINIMUM follows). Imports TensorFlow and Keras.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import layers

from qfcal.equalize import (
    ChannelStats,
    EqualizeReport,
    Layer,
    Link,
    bias_correction,
    equalize_links,
    quantize_weights,
)
from qfcal.pipeline.fold import fold_batch_norm
from qfcal.pipeline.taps import layer_inputs

__all__ = ["ChannelClip", "correct_bias", "equalize", "flatten", "model_links"]

#: Largest |output difference| over the output's largest |value| that still counts as equal.
DRIFT_WARN = 1e-3
#: Default safety factor of the ReLU6 and range bounds (qfcal.equalize.relu6_bounds).
HEADROOM = 2.0
#: Calibration samples run through Keras in one call.
BATCH = 32

_WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)


# -- the graph ---------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="qfcal")
class ChannelClip(layers.Layer):  # type: ignore[misc]
    """``min(x, clips)``, channels last: the clip of a ReLU6 (now a ReLU before it) that moved
    per channel (equalization with ``relu6="per-channel"``)."""

    def __init__(self, clips: Iterable[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clips = [float(c) for c in clips]

    def call(self, x: Any) -> Any:
        c = keras.ops.convert_to_tensor(np.asarray(self.clips, np.float32), dtype=x.dtype)
        return keras.ops.minimum(x, c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "clips": list(self.clips)}


@dataclass(frozen=True)
class _Swap:
    """How :func:`_inline` rebuilds one layer: `config` changes of its copy, then `then`
    applied to the result."""

    then: Any
    config: dict[str, Any] = field(default_factory=dict)


def _clone(layer: Any, names: set[str], changes: dict[str, Any] | None = None) -> Any:
    config = {**layer.get_config(), **(changes or {})}
    if isinstance(layer, _WEIGHTED):
        config["use_bias"] = True
    name = config.get("name", layer.name)
    base, i = name, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    config["name"] = name
    names.add(name)
    return layer.__class__.from_config(config)


def _copy_weights(old: Any, new: Any) -> None:
    weights = old.get_weights()
    if isinstance(old, _WEIGHTED) and not old.use_bias:
        units = new.bias.shape[0]
        weights = [*weights, np.zeros(units, dtype=np.float32)]
    new.set_weights(weights)


def _inline(
    model: Any, args: Sequence[Any], names: set[str], swaps: dict[str, _Swap] | None = None
) -> list[Any]:
    """Call fresh copies of `model`'s layers on `args` (tensors for its inputs), nested models
    inlined, layers named in `swaps` rebuilt as they say; returns the tensors for its outputs."""
    tmap: dict[int, Any] = {id(t): a for t, a in zip(model.inputs, args, strict=True)}
    by_depth = model._nodes_by_depth  # keras private: the graph's nodes, topologically
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            op = node.operation
            if isinstance(op, layers.InputLayer):
                continue
            ins = [tmap[id(t)] for t in node.input_tensors]
            swap = (swaps or {}).get(op.name)
            if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
                outs = _inline(op, ins, names, swaps)
            else:
                new = _clone(op, names, swap.config if swap else None)
                call_args, call_kwargs = node.arguments.fill_in(
                    {id(t): a for t, a in zip(node.input_tensors, ins, strict=True)}
                )
                result = new(*call_args, **call_kwargs)
                _copy_weights(op, new)
                if swap is not None:
                    result = swap.then(result)
                outs = list(result) if isinstance(result, (list, tuple)) else [result]
            for t, o in zip(node.output_tensors, outs, strict=True):
                tmap[id(t)] = o
    return [tmap[id(t)] for t in model.outputs]


def flatten(model: keras.Model, swaps: dict[str, _Swap] | None = None) -> keras.Model:
    """A copy of the functional or Sequential `model` with every nested model inlined (layer
    names kept, a suffix added on a clash) and a bias on every convolution and dense layer
    (zero where it had none). Computes the same function.

    Raises:
        ValueError: `model` is not a built functional or Sequential Keras model.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(
            f"model must be a built functional or Sequential Keras model, got "
            f"{type(model).__name__}"
        )
    if not hasattr(model, "_nodes_by_depth"):
        raise ValueError(f"model {model.name!r} is a subclassed model: its graph is not known")
    names: set[str] = set()
    inputs = [
        keras.Input(shape=t.shape[1:], dtype=t.dtype, name=f"{model.name}_in{i}")
        for i, t in enumerate(model.inputs)
    ]
    names.update(t.name for t in inputs)
    outs = _inline(model, inputs, names, swaps)
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        outs if len(outs) > 1 else outs[0],
        name=f"{model.name}_flat",
    )


def _activation_kind(fn: Any) -> str | None:
    if fn is keras.activations.linear or fn is None:
        return "linear"
    if fn is keras.activations.relu:
        return "relu"
    if fn is keras.activations.relu6:
        return "relu6"
    return None


def _relu_layer_kind(layer: Any) -> str | None:
    if isinstance(layer, layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if isinstance(layer, layers.Activation):
        return _activation_kind(layer.activation)
    return None


def _core_layer(layer: Any) -> Layer:
    k = np.asarray(layer.kernel, dtype=np.float64)
    b = np.asarray(layer.bias, dtype=np.float64)
    if isinstance(layer, layers.DepthwiseConv2D):
        return Layer(layer.name, np.transpose(k, (2, 3, 0, 1)), b, depthwise=True)
    if isinstance(layer, layers.Conv2D):
        return Layer(layer.name, np.transpose(k, (3, 2, 0, 1)), b)
    return Layer(layer.name, k.T, b)


def _set_core_layer(layer: Any, core: Layer) -> None:
    k = core.kernel
    if isinstance(layer, layers.DepthwiseConv2D):
        k = np.transpose(k, (2, 3, 0, 1))
    elif isinstance(layer, layers.Conv2D):
        k = np.transpose(k, (2, 3, 1, 0))
    else:
        k = k.T
    layer.set_weights([k.astype(np.float32), core.bias.astype(np.float32)])


def _eligible(layer: Any) -> str | None:
    """Why `layer` cannot take part in a link (None: it can)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        if layer.depth_multiplier != 1:
            return f"depth multiplier {layer.depth_multiplier}"
    elif isinstance(layer, layers.Conv2D):
        if layer.groups != 1:
            return f"grouped convolution ({layer.groups} groups)"
    elif not isinstance(layer, layers.Dense):
        return "not a convolution or dense layer"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "channels_first"
    if not layer.use_bias:
        return "no bias"
    return None


@dataclass(frozen=True)
class _Candidate:
    first: Any
    second: Any
    activation: str
    between: Any  # the tensor `second` reads
    absorb: bool
    act_layer: str | None = None  # the layer applying `activation` (None: `first` itself)


def model_links(model: keras.Model) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """The links of a flat, folded functional model (consecutive weighted layers joined by
    one activation at most, through padding or dropout, every tensor between read once and
    not a model output), and ``(layer, reason)`` for weighted layers that start none."""
    readers: dict[int, list[Any]] = defaultdict(list)
    for layer in model.layers:
        if not isinstance(layer, layers.InputLayer):
            for t in layer_inputs(layer):
                readers[id(t)].append(layer)
    outputs = {id(t) for t in model.outputs}
    links: list[_Candidate] = []
    skipped: list[tuple[str, str]] = []
    for first in model.layers:
        if not isinstance(first, _WEIGHTED):
            continue
        why = _eligible(first)
        act = _activation_kind(first.activation)
        if why is None and act is None:
            why = f"activation {first.activation.__name__}"
        t, padded, second, act_layer = first.output, False, None, None
        while why is None:
            r = readers[id(t)]
            if id(t) in outputs or len(r) != 1:
                why = "its output is read by several layers" if len(r) > 1 else "model output"
                break
            nxt = r[0]
            kind = _relu_layer_kind(nxt)
            if kind is not None:
                if act != "linear" and kind != "linear":
                    why = "two activations in a row"
                    break
                if kind != "linear":
                    act, act_layer = kind, nxt.name
            elif isinstance(nxt, layers.ZeroPadding2D):
                padded = True
            elif isinstance(nxt, layers.Dropout):
                pass
            elif isinstance(nxt, _WEIGHTED):
                why = _eligible(nxt)
                if why is not None:
                    why = f"next layer {nxt.name}: {why}"
                    break
                second = nxt
                break
            else:
                why = f"followed by {type(nxt).__name__}"
                break
            t = nxt.output
        if second is None:
            skipped.append((first.name, why or "no next layer"))
            continue
        one_by_one = isinstance(second, layers.Dense) or tuple(second.kernel_size) == (1, 1)
        assert act is not None
        links.append(
            _Candidate(first, second, act, t, absorb=one_by_one and not padded, act_layer=act_layer)
        )
    return links, skipped


# -- the data ----------------------------------------------------------------------------------


def _samples(data: Any) -> Iterator[Any]:
    items = data() if callable(data) else data
    if isinstance(items, np.ndarray):
        items = [items]
    for item in items:
        if isinstance(item, dict):
            yield {k: np.asarray(v) for k, v in item.items()}
        elif isinstance(item, (list, tuple)):
            arrays = [np.asarray(v) for v in item]
            yield arrays[0] if len(arrays) == 1 else arrays
        else:
            yield np.asarray(item)


def batches(data: Any, size: int = BATCH) -> Iterator[Any]:
    """`data` (an array batch, an iterable of samples or a callable returning one, as the
    TFLite converter's representative dataset gives them) as model inputs, single-array
    samples of equal shape stacked up to `size` at a time."""
    pending: list[np.ndarray] = []
    for s in _samples(data):
        if isinstance(s, np.ndarray):
            if pending and pending[0].shape[1:] != s.shape[1:]:
                yield np.concatenate(pending)
                pending = []
            pending.append(s)
            if sum(len(p) for p in pending) >= size:
                yield np.concatenate(pending)
                pending = []
        else:
            if pending:
                yield np.concatenate(pending)
                pending = []
            yield s
    if pending:
        yield np.concatenate(pending)


def _collect(model: keras.Model, tensors: Sequence[Any], data: Any) -> list[ChannelStats]:
    ins = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(ins, list(tensors))
    stats = [ChannelStats() for _ in tensors]
    n = 0
    for x in batches(data):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for st, o in zip(stats, outs, strict=True):
            st.update(np.asarray(o))
        n += 1
    if n == 0:
        raise ValueError("data gave no samples: equalization needs calibration data")
    return stats


def _outputs(model: keras.Model, data: Any) -> list[np.ndarray]:
    res = []
    for x in batches(data):
        y = model(x, training=False)
        ys = y if isinstance(y, (list, tuple)) else [y]
        res.append(np.concatenate([np.asarray(v).reshape(len(v), -1) for v in ys], axis=1))
    return res


def drift(original: keras.Model, other: keras.Model, data: Any) -> float:
    """Largest |output difference| between two models on `data`."""
    worst = 0.0
    for a, b in zip(_outputs(original, data), _outputs(other, data), strict=True):
        worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


# -- the steps ---------------------------------------------------------------------------------


def equalize(
    model: keras.Model,
    data: Any,
    *,
    headroom: float = HEADROOM,
    absorb: bool = False,
    max_iterations: int = 20,
    check: bool = True,
    objective: str = "noise",
    weight_bits: int = 8,
    relu6: str = "per-channel",
) -> tuple[keras.Model, EqualizeReport]:
    """Cross-layer equalization (and bias absorption) of `model` on calibration `data`.

    `data`: an array batch, an iterable of samples or a callable returning one (the TFLite
    converter's representative dataset works as is). `objective`, `weight_bits` and `relu6`:
    see :func:`qfcal.equalize.equalize_links` (``noise`` also measures each link's input;
    ``relu6="per-channel"``, the default, makes each moved ReLU6 a ReLU followed by a
    :class:`ChannelClip`, exact on every input; ``"bound"`` keeps the layers). Returns
    the flat, batch-norm-folded, equalized model and the report; with `check`, the report's
    ``float_drift`` is the largest |output difference| to `model` on `data`, and a warning
    says when it exceeds :data:`DRIFT_WARN` of the output's magnitude.

    Raises:
        ValueError: `model` is not a functional or Sequential Keras model, or `data` is empty.
    """
    flat = fold_batch_norm(flatten(model))
    candidates, skipped = model_links(flat)
    tensors = [c.between for c in candidates]
    if objective == "noise":  # the first layers' inputs too, for the noise model
        tensors += [c.first.input for c in candidates]
    stats = _collect(flat, tensors, data) if candidates else []
    inputs: list[ChannelStats | None] = [*stats[len(candidates) :]] or [None] * len(candidates)
    core = {}
    links = []
    for c, between, inp in zip(candidates, stats[: len(candidates)], inputs, strict=True):
        core[c.first.name] = _core_layer(c.first)
        core[c.second.name] = _core_layer(c.second)
        links.append(
            Link.measured(c.first.name, c.second.name, c.activation, between, inp, absorb=c.absorb)
        )
    new, report = equalize_links(
        core,
        links,
        max_iterations=max_iterations,
        absorb=absorb,
        headroom=headroom,
        objective=objective,
        weight_bits=weight_bits,
        relu6=relu6,
    )
    report.skipped = skipped
    for name, layer in new.items():
        _set_core_layer(flat.get_layer(name), layer)
    if report.clips:
        flat = _place_clips(flat, candidates, report.clips)
    if check:
        report.float_drift = drift(model, flat, data)
        scale = max(float(np.max(np.abs(o))) for o in _outputs(model, data))
        if report.float_drift > DRIFT_WARN * max(scale, 1e-12):
            warnings.warn(
                f"equalization moved the float model's outputs by up to {report.float_drift:.3g} "
                f"on the calibration data (outputs up to {scale:.3g})",
                stacklevel=2,
            )
    return flat, report


def _place_clips(
    flat: keras.Model, candidates: Sequence[_Candidate], clips: dict[str, np.ndarray]
) -> keras.Model:
    """`flat` with each moved ReLU6 made a ReLU (the first layer's fused activation or the
    activation layer) and followed by a :class:`ChannelClip`."""
    swaps: dict[str, _Swap] = {}
    for c in candidates:
        if c.first.name not in clips:
            continue
        clip = ChannelClip(clips[c.first.name], name=f"{c.first.name}_clip")
        if c.act_layer is None:
            swaps[c.first.name] = _Swap(clip, config={"activation": "relu"})
        elif isinstance(flat.get_layer(c.act_layer), layers.ReLU):
            swaps[c.act_layer] = _Swap(clip, config={"max_value": None})
        else:
            swaps[c.act_layer] = _Swap(clip, config={"activation": "relu"})
    out = flatten(flat, swaps)
    out.name = flat.name
    return out


def correct_bias(
    model: keras.Model,
    data: Any,
    *,
    bits: int = 8,
    per_channel: bool = False,
    report: EqualizeReport | None = None,
) -> keras.Model:
    """A copy of `model` (flat, batch norms folded) whose every convolution and dense layer
    has the bias that cancels the mean output shift of its weights quantized at `bits` (per
    tensor or per output channel, symmetric, as TFLite and ONNX Runtime quantize weights), the
    input means measured on `data`. This changes the float model on purpose; apply it for the
    weight quantization the converter will use. With `report`, the shifts are recorded there.
    """
    flat = fold_batch_norm(flatten(model))
    weighted = [la for la in flat.layers if isinstance(la, _WEIGHTED) and la.use_bias]
    stats = _collect(flat, [la.input for la in weighted], data)
    for la, st in zip(weighted, stats, strict=True):
        core = _core_layer(la)
        bias, shift = bias_correction(core, st.mean, bits=bits, per_channel=per_channel)
        core.bias = bias
        _set_core_layer(la, core)
        if report is not None:
            report.bias_corrected[la.name] = shift
    return flat


def fake_quant_weights(model: keras.Model, bits: int, *, per_channel: bool = False) -> keras.Model:
    """A copy of `model` (flat, batch norms folded) whose every convolution and dense kernel is
    on the `bits`-bit symmetric grid (:func:`qfcal.equalize.quantize_weights`), the biases
    kept: the weights of a `bits`-bit deployment, simulated in float. A converter that stores
    them in int8 rounds them once more, by at most (2^(bits-1) - 1) / 254 of a `bits`-bit step
    (0.12 at 6 bits)."""
    flat = fold_batch_norm(flatten(model))
    for la in flat.layers:
        if isinstance(la, _WEIGHTED):
            core = _core_layer(la)
            core.kernel = quantize_weights(core.kernel, bits, per_channel)
            _set_core_layer(la, core)
    return flat


def representative(data: Any) -> Callable[[], Iterable[Any]]:
    """`data` as a callable the converter can call more than once (lists are kept; a one-shot
    iterator is read once and kept)."""
    if callable(data):
        return data  # type: ignore[no-any-return]
    items = list(data)
    return lambda: iter(items)
