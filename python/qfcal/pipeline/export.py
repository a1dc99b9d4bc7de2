"""FakeQuant graph with qfcal's ranges, converted to a fully int8 ``.tflite``.

The folded Keras model is re-expressed as a TensorFlow function in which every tapped tensor
(see :mod:`qfcal.pipeline.taps`) passes through ``tf.quantization.fake_quant_with_min_max_args``
with the min/max qfcal chose, and every weight through a symmetric narrow-range int8 FakeQuant,
per tensor (as 2018's TFLite did, which is what broke the standard MobileNets) or per output
channel. qfcal's ranges have zero exactly on the grid, so TensorFlow's nudging leaves them as
they are and the converter's int8 tensors carry exactly qfcal's scales and zero points.
TensorFlow is imported by this module only.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf
from keras import layers

import qfcal
from qfcal.pipeline.taps import layer_inputs, tap_names

WEIGHT_MODES = ("per-tensor", "per-channel")


WEIGHT_METHODS = ("minmax", "optimal")


def _peaks(w: np.ndarray, method: str) -> np.ndarray:
    """Symmetric range (the largest magnitude kept) of each row of `w` (one row per channel)."""
    if method == "minmax":
        peaks: np.ndarray = np.max(np.abs(w), axis=1)
        return peaks
    out = np.empty(len(w), dtype=np.float64)
    for i, row in enumerate(w):
        h = qfcal.Histogram()
        h.update(row)
        if h.finite == h.zeros:  # an all-zero channel: any range will do
            out[i] = 0.0
            continue
        r = qfcal.search(h, bits=8, symmetric=True, signed=True, narrow_range=True, method=method)
        out[i] = r.max
    return out


def weight_peaks(
    w: np.ndarray, channel_axis: int | None, method: str = "minmax"
) -> npt.NDArray[np.float32]:
    """The symmetric narrow-range int8 range ``[-peak, peak]`` of a weight: one peak per tensor
    (``channel_axis=None``) or per channel along `channel_axis`, from the min/max of the
    magnitudes or from ``qfcal.search`` on the weight histogram (``method="optimal"``)."""
    if method not in WEIGHT_METHODS:
        raise ValueError(
            f"weight_method must be one of {', '.join(WEIGHT_METHODS)}, got {method!r}"
        )
    w = np.asarray(w, dtype=np.float32)
    rows = (
        w.reshape(1, -1)
        if channel_axis is None
        else np.moveaxis(w, channel_axis, -1).reshape(-1, w.shape[channel_axis]).T
    )
    peak = _peaks(rows, method)
    return np.where(peak > 0, peak, 1e-8).astype(np.float32)


def _weight_fq(w: np.ndarray, channel_axis: int | None, method: str = "minmax") -> tf.Tensor:
    """Symmetric narrow-range int8 FakeQuant of a weight, per tensor or per channel."""
    w = np.asarray(w, dtype=np.float32)
    peak = weight_peaks(w, channel_axis, method)
    if channel_axis is None:
        m = float(peak[0])
        return tf.quantization.fake_quant_with_min_max_args(
            w, min=-m, max=m, num_bits=8, narrow_range=True
        )
    if channel_axis not in (-1, w.ndim - 1):
        raise ValueError(f"channel_axis must be the last axis, got {channel_axis} of {w.ndim}")
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        w, -peak, peak, num_bits=8, narrow_range=True
    )


def fake_quant_function(
    model: keras.Model,
    ranges: dict[str, tuple[float, float]],
    weights: str = "per-tensor",
    weight_method: str = "minmax",
    num_bits: int = 8,
) -> Any:
    """A ``tf.function`` of one image batch computing `model` with FakeQuant nodes: activations
    on a `num_bits` grid (8 for the int8 ``.tflite``; 2..16 to emulate narrower integers),
    weights on the symmetric narrow-range int8 grid.

    Raises:
        ValueError: `weights` is not a weight mode, a tapped tensor has no range, or the model
            has a layer this exporter does not handle.
    """
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
    if not 2 <= num_bits <= 16:
        raise ValueError(f"num_bits must be in 2..16, got {num_bits}")
    if weight_method not in WEIGHT_METHODS:
        raise ValueError(
            f"weight_method must be one of {', '.join(WEIGHT_METHODS)}, got {weight_method!r}"
        )
    taps = set(tap_names(model))
    missing = sorted(taps - set(ranges))
    if missing:
        raise ValueError(f"ranges has no entry for tapped tensors {missing[:5]}")
    per_channel = weights == "per-channel"
    order = list(model.layers)
    # weights as numpy constants, read once outside the traced function
    params = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in order}

    def fq(name: str, x: tf.Tensor) -> tf.Tensor:
        if name not in taps:
            return x
        lo, hi = ranges[name]
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=num_bits)

    def run(image: tf.Tensor) -> tf.Tensor:
        values: dict[int, tf.Tensor] = {}
        for layer in order:
            if isinstance(layer, layers.InputLayer):
                values[id(layer.output)] = fq(layer.name, image)
                continue
            xs = [values[id(t)] for t in layer_inputs(layer)]
            x = xs[0]
            p = params[layer.name]
            if isinstance(layer, layers.Conv2D):
                w = _weight_fq(p[0], 3 if per_channel else None, weight_method)
                y = tf.nn.conv2d(x, w, strides=layer.strides, padding=layer.padding.upper())
                if layer.use_bias:
                    y = y + p[1]
            elif isinstance(layer, layers.DepthwiseConv2D):
                k = p[0]
                kh, kw, cin, mult = k.shape
                if per_channel:
                    w = tf.reshape(
                        _weight_fq(k.reshape(kh, kw, 1, cin * mult), 3, weight_method), k.shape
                    )
                else:
                    w = _weight_fq(k, None, weight_method)
                y = tf.nn.depthwise_conv2d(
                    x, w, strides=(1, *layer.strides, 1), padding=layer.padding.upper()
                )
                if layer.use_bias:
                    y = y + p[1]
            elif isinstance(layer, layers.Dense):
                if per_channel:
                    # as a 1x1 convolution: TFLite's converter cannot carry per-channel
                    # ranges through the transpose it puts before a fully connected layer
                    k = p[0].reshape(1, 1, *p[0].shape)
                    y = tf.nn.conv2d(
                        tf.reshape(x, [-1, 1, 1, k.shape[2]]),
                        _weight_fq(k, 3, weight_method),
                        strides=1,
                        padding="VALID",
                    )
                    y = tf.reshape(y, [-1, k.shape[3]])
                else:
                    y = tf.matmul(x, _weight_fq(p[0], None, weight_method))
                y = y + (p[1] if layer.use_bias else 0.0)
            elif isinstance(layer, layers.ReLU):
                y = tf.nn.relu6(x) if layer.max_value == 6.0 else tf.nn.relu(x)
            elif isinstance(layer, layers.Add):
                y = xs[0] + xs[1] if len(xs) == 2 else tf.add_n(xs)
            elif isinstance(layer, layers.GlobalAveragePooling2D):
                y = tf.reduce_mean(x, axis=[1, 2])
            else:
                raise ValueError(
                    f"export does not handle layer {layer.name!r} ({type(layer).__name__})"
                )
            values[id(layer.output)] = fq(layer.name, y)
        return values[id(model.outputs[0])]

    shape = [None, *model.inputs[0].shape[1:]]
    return tf.function(run, input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])


def to_int8_tflite(
    model: keras.Model,
    ranges: dict[str, tuple[float, float]],
    *,
    weights: str = "per-tensor",
    weight_method: str = "minmax",
    int8_io: bool = True,
) -> bytes:
    """Convert the FakeQuant graph to a fully int8 ``.tflite`` (int8 input and output by
    default, float with ``int8_io=False``); weight ranges per `weights` mode and
    `weight_method` (see :func:`weight_peaks`)."""
    fn = fake_quant_function(model, ranges, weights, weight_method)
    concrete = fn.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # the input's FakeQuant node carries its statistics; the converter warns regardless
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(conv.convert())


def to_float_tflite(model: keras.Model) -> bytes:
    """The float ``.tflite`` of `model`."""
    # Keras prints the whole saved signature while the converter exports the model
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
