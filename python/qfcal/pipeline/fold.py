"""Batch-norm folding, as the TFLite converter does it.

A ``BatchNormalization`` whose only input is a ``Conv2D`` or ``DepthwiseConv2D`` (with no
activation of its own) and that is that convolution's only consumer is folded into it:

    W' = W * gamma / sqrt(var + eps)   (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

The folded model computes the same function in inference mode; its weights are what an 8-bit
model holds, so calibration and weight ranges are taken on it. TensorFlow is imported by this
module only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import keras
import numpy as np
from keras import layers

from qfcal.pipeline.taps import layer_inputs

_CONVS = (layers.Conv2D, layers.DepthwiseConv2D)


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def foldable_pairs(model: keras.Model) -> dict[str, Any]:
    """``{convolution name: the batch norm folded into it}`` for `model`."""
    consumers: dict[int, list[Any]] = defaultdict(list)
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        for t in layer_inputs(layer):
            consumers[id(t)].append(layer)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        src = layer.input
        conv = _producer(src)
        if (
            isinstance(conv, _CONVS)
            and len(consumers[id(src)]) == 1
            and conv.activation is keras.activations.linear
            and src not in model.outputs
        ):
            pairs[conv.name] = layer
    return pairs


def _folded_weights(conv: Any, bn: Any) -> list[np.ndarray]:
    kernel = np.asarray(conv.kernel)
    bias = np.asarray(conv.bias) if conv.use_bias else 0.0
    gamma = np.asarray(bn.gamma) if bn.scale else 1.0
    beta = np.asarray(bn.beta) if bn.center else 0.0
    mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    scale = gamma / np.sqrt(var + bn.epsilon)
    if isinstance(conv, layers.DepthwiseConv2D):
        kh, kw, cin, mult = kernel.shape
        kernel = kernel * scale.reshape(1, 1, cin, mult)
    else:
        kernel = kernel * scale.reshape(1, 1, 1, -1)
    new_bias = (bias - mean) * scale + beta
    return [kernel.astype(np.float32), np.asarray(new_bias, dtype=np.float32)]


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of the functional `model` with every foldable batch norm folded into its
    convolution; every other layer is copied with its weights.

    Raises:
        ValueError: `model` is not a functional model with one call per layer.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            f"model must be a built functional Keras model, got {type(model).__name__}"
        )
    pairs = foldable_pairs(model)
    folded_bns = {id(bn) for bn in pairs.values()}
    new_inputs = [
        keras.Input(shape=t.shape[1:], dtype=t.dtype, name=_producer(t).name) for t in model.inputs
    ]
    tmap = {id(t): n for t, n in zip(model.inputs, new_inputs, strict=True)}
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        if id(layer) in folded_bns:
            tmap[id(layer.output)] = tmap[id(layer.input)]
            continue
        try:
            args = [tmap[id(t)] for t in layer_inputs(layer)]
        except KeyError as e:
            raise ValueError(
                f"cannot fold {model.name!r}: layer {layer.name!r} reads tensors from "
                "outside its graph"
            ) from e
        arg = args if isinstance(layer.input, (list, tuple)) else args[0]
        if layer.name in pairs:
            config = layer.get_config()
            config["use_bias"] = True
            new = layer.__class__.from_config(config)
            out = new(arg)
            new.set_weights(_folded_weights(layer, pairs[layer.name]))
        else:
            # A fresh copy, not the shared layer: every layer of the folded model is then called
            # once, so its input and output are unambiguous.
            new = layer.__class__.from_config(layer.get_config())
            out = new(arg)
            new.set_weights(layer.get_weights())
        tmap[id(layer.output)] = out
    outputs = [tmap[id(t)] for t in model.outputs]
    return keras.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=f"{model.name}_folded",
    )
