"""Taps on a (folded) Keras model: which tensors the int8 model holds, and their histograms.

The phases are ONNX Runtime's calibrator's: *augment the graph* (:class:`Taps`: the model with
every tapped tensor as an output), *collect data* (:func:`collect_histograms`: the calibration
images run through it batch by batch, each tapped tensor feeding one ``qfcal.Histogram``, so
memory stays fixed whatever the number of images), *compute ranges*
(:meth:`TapHistograms.search`: one ``qfcal.search`` per tensor). The pipeline's ``calibrate``
step (:func:`qfcal.pipeline.steps.calibrate`) runs the three on a run folder.

The taps are the tensors an int8 TFLite model holds: the model input, every layer output that is
not fused into the layer reading it (a convolution's output read only by its activation is
fused: the activation's output is tapped instead), residual adds, pooling and the logits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import layers

import qfcal
from qfcal._progress import Progress, track

_ACTIVATIONS = (layers.ReLU, layers.Activation)


def layer_inputs(layer: Any) -> list[Any]:
    """The tensors `layer` reads, as a list (Keras gives one tensor or a list)."""
    x = layer.input
    return list(x) if isinstance(x, (list, tuple)) else [x]


def tap_names(model: keras.Model) -> list[str]:
    """Names of the tapped tensors, in graph order: the input layer's name, then the name of
    the layer that produces each other tapped tensor."""
    readers: dict[int, list[Any]] = defaultdict(list)
    for layer in model.layers:
        if not isinstance(layer, layers.InputLayer):
            for t in layer_inputs(layer):
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


class Taps:
    """`model` with every tapped tensor as an output.

    :attr:`names` are the tapped tensors in graph order; :meth:`run` gives all of them for one
    batch (the input tensor is the batch itself, the model computes the others).

    Raises:
        ValueError: the model has more than one input.
    """

    def __init__(self, model: keras.Model) -> None:
        if len(model.inputs) != 1:
            raise ValueError(f"model must have one input, got {len(model.inputs)}")
        self.names = tap_names(model)
        self.computed = [
            n for n in self.names if not isinstance(model.get_layer(n), layers.InputLayer)
        ]
        outputs = [model.get_layer(n).output for n in self.computed]
        self.model = keras.Model(model.inputs[0], outputs, name=f"{model.name}_taps")
        self.input_shape = tuple(model.inputs[0].shape[1:])

    def run(self, batch: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.float32]]:
        """Every tapped tensor's value for `batch` (float32), by name, in graph order.

        Raises:
            ValueError: `batch` does not fit the model's input.
        """
        if tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images must have shape (n, {', '.join(map(str, self.input_shape))}), "
                f"got {batch.shape}"
            )
        batch = batch.astype(np.float32)
        outs = dict(zip(self.computed, self.model(batch, training=False), strict=True))
        return {n: np.asarray(outs[n]) if n in outs else batch for n in self.names}


@dataclass
class TapHistograms:
    """One histogram per tapped tensor, in graph order (what :func:`collect_histograms`
    gives)."""

    histograms: dict[str, qfcal.Histogram]

    def search(self, *, progress: bool = False, **options: Any) -> dict[str, qfcal.SearchResult]:
        """``qfcal.search`` on every tensor's histogram with the same options (`progress`: a
        progress bar over the tensors)."""
        items = track(self.histograms.items(), "searching ranges", unit="tensors", enabled=progress)
        return {name: qfcal.search(h, **options) for name, h in items}


def batches(images: Any, batch_size: int) -> Iterator[npt.NDArray[Any]]:
    """`images` in batches: an array is cut into `batch_size` images (the last keeps the rest);
    an iterable of batches is taken as it is."""
    if isinstance(images, np.ndarray):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
    else:
        for b in images:
            yield np.asarray(b)


def collect_histograms(
    model: keras.Model,
    images: npt.NDArray[Any] | Iterable[Any],
    *,
    batch_size: int = 32,
    bins: int = qfcal.DEFAULT_BINS,
    progress: bool = False,
) -> TapHistograms:
    """Run `images` (an array, or an iterable of batches) through `model`, histogramming every
    tapped tensor. `progress`: a progress bar over the images.

    Raises:
        ValueError: no images, or images that do not fit the model's input.
    """
    taps = Taps(model)
    hists = {n: qfcal.Histogram(bins) for n in taps.names}
    total = len(images) if isinstance(images, np.ndarray) else None
    seen = 0
    with Progress(total, "histogramming the taps", unit="images", enabled=progress) as bar:
        for batch in batches(images, batch_size):
            for n, value in taps.run(batch).items():
                hists[n].update(value)
            seen += len(batch)
            bar.update(len(batch))
    if seen == 0:
        raise ValueError("images is empty: calibration needs at least one image")
    return TapHistograms(hists)
