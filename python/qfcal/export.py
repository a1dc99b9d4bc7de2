"""FakeQuant graph with qfcal's ranges, converted to a fully int8 ``.tflite``.

The folded Keras model is re-expressed as a TensorFlow function in which every tapped tensor
(see :mod:`qfcal.calibrate`) passes through ``tf.quantization.fake_quant_with_min_max_args``
with the min/max qfcal chose, and every weight through a symmetric narrow-range int8 FakeQuant,
per tensor (as 2018's TFLite did, which is what broke the standard MobileNets) or per output
channel. qfcal's ranges have zero exactly on the grid, so TensorFlow's nudging leaves them as
they are and the converter's int8 tensors carry exactly qfcal's scales and zero points.
TensorFlow is imported by this module only.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from qfcal.calibrate import tap_names

WEIGHT_MODES = ("per-tensor", "per-channel")


def _weight_fq(w: np.ndarray, channel_axis: int | None) -> tf.Tensor:
    """Symmetric narrow-range int8 FakeQuant of a weight, per tensor or per channel."""
    w = np.asarray(w, dtype=np.float32)
    if channel_axis is None:
        m = float(np.max(np.abs(w))) or 1e-8
        return tf.quantization.fake_quant_with_min_max_args(
            w, min=-m, max=m, num_bits=8, narrow_range=True
        )
    moved = np.moveaxis(w, channel_axis, -1)
    peak = np.max(np.abs(moved.reshape(-1, moved.shape[-1])), axis=0)
    peak = np.where(peak > 0, peak, 1e-8).astype(np.float32)
    q = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        moved, -peak, peak, num_bits=8, narrow_range=True
    )
    return tf.experimental.numpy.moveaxis(q, -1, channel_axis)


def _inputs(layer: Any) -> list[Any]:
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def fake_quant_function(
    model: keras.Model, ranges: dict[str, tuple[float, float]], weights: str = "per-tensor"
) -> Any:
    """A ``tf.function`` of one image batch computing `model` with FakeQuant nodes.

    Raises:
        ValueError: `weights` is not a weight mode, a tapped tensor has no range, or the model
            has a layer this exporter does not handle.
    """
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}")
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
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

    def run(image: tf.Tensor) -> tf.Tensor:
        values: dict[int, tf.Tensor] = {}
        for layer in order:
            if isinstance(layer, layers.InputLayer):
                values[id(layer.output)] = fq(layer.name, image)
                continue
            xs = [values[id(t)] for t in _inputs(layer)]
            x = xs[0]
            p = params[layer.name]
            if isinstance(layer, layers.Conv2D):
                w = _weight_fq(p[0], 3 if per_channel else None)
                y = tf.nn.conv2d(x, w, strides=layer.strides, padding=layer.padding.upper())
                if layer.use_bias:
                    y = y + p[1]
            elif isinstance(layer, layers.DepthwiseConv2D):
                k = p[0]
                kh, kw, cin, mult = k.shape
                if per_channel:
                    w = tf.reshape(_weight_fq(k.reshape(kh, kw, 1, cin * mult), 3), k.shape)
                else:
                    w = _weight_fq(k, None)
                y = tf.nn.depthwise_conv2d(
                    x, w, strides=(1, *layer.strides, 1), padding=layer.padding.upper()
                )
                if layer.use_bias:
                    y = y + p[1]
            elif isinstance(layer, layers.Dense):
                w = _weight_fq(p[0], 1 if per_channel else None)
                y = tf.matmul(x, w) + (p[1] if layer.use_bias else 0.0)
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
    int8_io: bool = True,
) -> bytes:
    """Convert the FakeQuant graph to a fully int8 ``.tflite`` (int8 input and output by
    default, float with ``int8_io=False``)."""
    fn = fake_quant_function(model, ranges, weights)
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
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
