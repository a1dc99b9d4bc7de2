"""Per-tensor calibration of a (folded) Keras model: taps, streamed histograms, ranges.

The taps are the tensors an int8 TFLite model holds: the model input, every layer output that is
not fused into the layer reading it (a convolution's output read only by its activation is
fused: the activation's output is tapped instead), residual adds, pooling and the logits. The
calibration images run through the model batch by batch; each tapped tensor feeds one
``qfcal.Histogram``, so memory stays fixed whatever the number of images, and
``qfcal.search`` then picks each tensor's range.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

import qfcal
from qfcal._io import write_json_atomic as write_json_atomic  # re-exported

_ACTIVATIONS = (layers.ReLU, layers.Activation)


def _inputs(layer: Any) -> list[Any]:
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def tap_names(model: keras.Model) -> list[str]:
    """Names of the tapped tensors, in graph order: the input layer's name, then the name of
    the layer that produces each other tapped tensor."""
    readers: dict[int, list[Any]] = defaultdict(list)
    for layer in model.layers:
        if not isinstance(layer, layers.InputLayer):
            for t in _inputs(layer):
                readers[id(t)].append(layer)
    names = []
    for layer in model.layers:
        out = layer.output
        r = readers[id(out)]
        fused = (
            len(r) == 1
            and isinstance(r[0], _ACTIVATIONS)
            and not isinstance(layer, (layers.InputLayer, *_ACTIVATIONS))
        )
        if not fused:
            names.append(layer.name)
    return names


@dataclass
class Calibration:
    """One histogram per tapped tensor, in graph order."""

    histograms: dict[str, qfcal.Histogram]

    def search(self, **options: Any) -> dict[str, qfcal.SearchResult]:
        """``qfcal.search`` on every tensor's histogram with the same options."""
        return {name: qfcal.search(h, **options) for name, h in self.histograms.items()}


def _batches(images: Any, batch_size: int) -> Iterator[np.ndarray]:
    if isinstance(images, np.ndarray):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
    else:
        for b in images:
            yield np.asarray(b)


def calibrate(
    model: keras.Model,
    images: np.ndarray | Iterable[Any],
    *,
    batch_size: int = 32,
    bins: int = qfcal.DEFAULT_BINS,
) -> Calibration:
    """Run `images` (an array, or an iterable of batches) through `model`, histogramming every
    tapped tensor.

    Raises:
        ValueError: no images, or images that do not fit the model's input.
    """
    names = tap_names(model)
    # the input tensor is the batch itself; the model computes the others
    inner = [n for n in names if not isinstance(model.get_layer(n), layers.InputLayer)]
    tensors = [model.get_layer(n).output for n in inner]
    if len(model.inputs) != 1:
        raise ValueError(f"model must have one input, got {len(model.inputs)}")
    taps = keras.Model(model.inputs[0], tensors, name=f"{model.name}_taps")
    hists = {n: qfcal.Histogram(bins) for n in names}
    want = tuple(model.inputs[0].shape[1:])
    seen = 0
    for batch in _batches(images, batch_size):
        if tuple(batch.shape[1:]) != want:
            raise ValueError(
                f"images must have shape (n, {', '.join(map(str, want))}), got {batch.shape}"
            )
        batch = batch.astype(np.float32)
        outs = taps(batch, training=False)
        for n, o in zip(inner, outs, strict=True):
            hists[n].update(np.asarray(o))
        for n in names:
            if n not in inner:
                hists[n].update(batch)
        seen += len(batch)
    if seen == 0:
        raise ValueError("images is empty: calibration needs at least one image")
    return Calibration(hists)


def ranges_json(results: dict[str, qfcal.SearchResult]) -> dict[str, Any]:
    """The ``ranges.json`` document: per tensor, method, scale, zero point, min, max, loss."""
    return {
        name: {
            "method": r.method,
            "scale": r.scale,
            "zero_point": r.zero_point,
            "qmin": r.qmin,
            "qmax": r.qmax,
            "min": r.min,
            "max": r.max,
            "loss": r.loss,
            "rounding_loss": r.rounding_loss,
            "clipping_loss": r.clipping_loss,
            "sqnr_db": r.sqnr_db if np.isfinite(r.sqnr_db) else None,
        }
        for name, r in results.items()
    }
