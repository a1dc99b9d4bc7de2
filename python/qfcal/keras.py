"""Loss-aware histograms for Keras models (TensorFlow backend).

The Keras counterpart of :func:`qfcal.torch.loss_aware_histograms`: each layer output's
:class:`qfcal.WeightedHistogram`, the values weighted by the squared gradient of a label-free
loss with respect to each of them, so that ``qfcal.search(hist)`` minimizes the error the
model's output feels::

    import qfcal.keras
    hists = qfcal.keras.loss_aware_histograms(model, calibration_batches)
    ranges = {name: qfcal.search(h, bits=8) for name, h in hists.items()}

Importing this module imports TensorFlow and Keras; ``import qfcal`` does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import qfcal
from qfcal._checks import LOSS_TARGETS, check_bins, check_choice
from qfcal._progress import Progress

__all__ = ["loss_aware_histograms"]


def _float_output(layer: Any) -> bool:
    dtype = getattr(getattr(layer, "output", None), "dtype", None)
    return dtype is not None and "float" in str(dtype)


def loss_aware_histograms(
    model: Any,
    batches: Iterable[Any],
    *,
    layers: Sequence[str] | None = None,
    target: str = "fisher",
    bins: int = qfcal.DEFAULT_BINS,
    seed: int = 0,
    floor: float = 0.0,
    progress: bool = False,
) -> dict[str, qfcal.WeightedHistogram]:
    """Each layer output's :class:`qfcal.WeightedHistogram`, weighted by squared gradients.

    Args:
        model: a functional or sequential ``keras.Model`` (run in inference mode).
        batches: an iterable of inputs (an array, or a list of arrays for several inputs).
        layers: the layers whose outputs are histogrammed, by name (default: every layer with
            one floating output, the inputs excepted).
        target: ``fisher`` (the output is logits: cross-entropy with labels drawn from the
            model's own softmax, whose squared gradient is the Fisher information's diagonal)
            or ``projection`` (``sum(r * output)``, ``r`` standard normal: any output).
        bins, seed, floor, progress: as :func:`qfcal.torch.loss_aware_histograms`.

    Layers whose output does not reach the model's (first) output get no histogram; nor do
    the layers inside a nested model (a pretrained base used as one layer), which are not in
    this model's graph (a warning says so). Cost: one
    forward and one backward pass per batch (no weight gradients are kept).

    Raises:
        ValueError: an unknown target or layer name, a nested model named in `layers`, or no
            batch.
    """
    check_choice(target, "target", LOSS_TARGETS)
    bins = check_bins(bins)
    names = [layer.name for layer in model.layers]
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if layers is None:
        chosen = [
            layer
            for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer | keras.Model) and _float_output(layer)
        ]
        if nested:
            warnings.warn(
                f"model holds nested model(s) {nested}: their inner layers are not in its "
                "graph, so only the outer layers get loss-aware histograms (rebuild the model "
                "flat to weight the inner ones)",
                stacklevel=2,
            )
    else:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers: model has no layer {unknown[0]!r}")
        inner = [n for n in layers if n in nested]
        if inner:
            raise ValueError(
                f"layers: {inner[0]!r} is a nested model, whose output is not a tensor of "
                "this model's graph; name the outer layers (or rebuild the model flat)"
            )
        chosen = [model.get_layer(n) for n in layers]
    probe = keras.Model(model.inputs, [layer.output for layer in chosen] + [model.outputs[0]])
    rng = tf.random.Generator.from_seed(seed)
    hists: dict[str, qfcal.WeightedHistogram] = {}
    seen = 0
    with Progress(
        None, "qfcal.keras: loss-aware histograms", unit="batches", enabled=progress
    ) as bar:
        for batch in batches:
            parts = batch if isinstance(batch, list | tuple) else [batch]
            inputs = [tf.convert_to_tensor(b) for b in parts]  # the structure of model.inputs
            with tf.GradientTape() as tape:
                outs = probe(inputs, training=False)
                acts, y = outs[:-1], outs[-1]
                if target == "fisher":
                    logits = tf.reshape(y, (-1, y.shape[-1]))
                    labels = tf.random.stateless_categorical(
                        tf.stop_gradient(logits), 1, seed=rng.make_seeds(1)[:, 0]
                    )[:, 0]
                    loss = tf.reduce_sum(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                    )
                else:
                    loss = tf.reduce_sum(y * rng.normal(tf.shape(y), dtype=y.dtype))
            grads = tape.gradient(loss, acts)
            for layer, a, g in zip(chosen, acts, grads, strict=True):
                if g is None:
                    continue  # not on the path to the output
                w = tf.square(tf.cast(g, tf.float32))
                if floor:
                    w = w + floor * tf.reduce_mean(w)
                h = hists.setdefault(layer.name, qfcal.WeightedHistogram(bins))
                h.update(np.asarray(a, dtype=np.float32), w.numpy())
            seen += 1
            bar.update()
    if seen == 0:
        raise ValueError("batches yielded no batch")
    return hists
