"""What per-tensor weight quantization does to each layer of a Keras model (issue 13, "see it").

The seed's diagnosis: in a depthwise convolution some channels' weights shrink to nothing in
training; the batch norm after it then has a tiny variance there and a huge scale, and once that
scale is folded into the weights those channels stretch the per-tensor range, so every other
channel loses its levels. :func:`weight_stats` measures exactly that on the folded weights (what
an int8 model holds): per layer, the spread of the per-channel weight ranges, the dead channels
(a zero batch-norm variance or all-zero weights), and the weight SQNR with one scale per tensor
against one per channel at 8, 6 and 4 bits. A layer is *hit* when one scale per tensor costs at
least :data:`HIT_DB` decibels at 8 bits against one per channel.

Imports TensorFlow and Keras (the ``tf`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import layers

from qfcal.pipeline.fold import fold_batch_norm, foldable_pairs

#: Weight bit widths reported.
BITS = (8, 6, 4)
#: Per-tensor SQNR this far (dB) below per-channel at 8 bits marks a layer the seed's problem hits.
HIT_DB = 6.0

_WEIGHTED = (layers.DepthwiseConv2D, layers.Conv2D, layers.Dense)


@dataclass(frozen=True)
class LayerWeights:
    """One layer's folded weights, as per-tensor and per-channel int quantization sees them.

    Attributes:
        name: the layer's name.
        kind: ``depthwise``, ``conv`` or ``dense``.
        channels: output channels (a depthwise layer: input channels times the multiplier).
        spread: the largest channel's max |w| over the median channel's (live channels only).
        dead: channels with a zero batch-norm variance or all-zero weights.
        sqnr_tensor: bits -> weight SQNR (dB) with one symmetric scale for the tensor.
        sqnr_channel: bits -> weight SQNR (dB) with one symmetric scale per channel.
    """

    name: str
    kind: str
    channels: int
    spread: float
    dead: int
    sqnr_tensor: dict[int, float] = field(default_factory=dict)
    sqnr_channel: dict[int, float] = field(default_factory=dict)

    @property
    def hit(self) -> bool:
        """One scale per tensor costs at least :data:`HIT_DB` dB at 8 bits."""
        return self.sqnr_channel[8] - self.sqnr_tensor[8] >= HIT_DB


def _sqnr(w: np.ndarray, limit: np.ndarray, bits: int) -> float:
    """SQNR (dB) of `w` (channels last) on the symmetric narrow-range grid whose largest level
    sits at `limit` (per channel, broadcast), as TFLite quantizes weights."""
    q = 2 ** (bits - 1) - 1
    scale = np.where(limit > 0, limit / q, 1.0)
    wq = np.clip(np.round(w / scale), -q, q) * scale
    noise = float(np.sum((w - wq) ** 2))
    power = float(np.sum(w**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(power / noise) if power > 0 else float("-inf")


def _channels_last(layer: Any, kernel: np.ndarray) -> np.ndarray:
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw, cin, mult = kernel.shape
        return kernel.reshape(kh * kw, cin * mult)
    return kernel.reshape(-1, kernel.shape[-1])


def weight_stats(model: keras.Model, bits: tuple[int, ...] = BITS) -> list[LayerWeights]:
    """Per weighted layer (depthwise and regular convolutions, dense) of `model`, in graph
    order, its folded weights' statistics (see the module docstring). Batch norms are folded
    first, as the TFLite converter folds them.

    Raises:
        ValueError: `model` is not a functional Keras model (from :func:`fold_batch_norm`), or
            a bit width outside 2..16.
    """
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16]
    if bad or not bits:
        raise ValueError(f"bits must be ints in 2..16, got {bits!r}")
    if 8 not in bits:
        bits = (8, *bits)
    bns = foldable_pairs(model) if isinstance(model, keras.Model) else {}
    folded = fold_batch_norm(model)
    out = []
    for layer in folded.layers:
        if not isinstance(layer, _WEIGHTED):
            continue
        w = _channels_last(layer, np.asarray(layer.kernel, dtype=np.float64))
        per_channel = np.abs(w).max(axis=0)
        dead = per_channel == 0
        bn = bns.get(layer.name)
        if bn is not None:
            dead |= np.asarray(bn.moving_variance).reshape(-1) == 0
        live = per_channel[~dead]
        median = float(np.median(live)) if live.size else 0.0
        spread = float(live.max() / median) if median > 0 else float("inf")
        kind = (
            "depthwise"
            if isinstance(layer, layers.DepthwiseConv2D)
            else "conv"
            if isinstance(layer, layers.Conv2D)
            else "dense"
        )
        whole = np.full_like(per_channel, np.abs(w).max())
        out.append(
            LayerWeights(
                name=layer.name,
                kind=kind,
                channels=int(w.shape[1]),
                spread=spread,
                dead=int(dead.sum()),
                sqnr_tensor={b: _sqnr(w, whole, b) for b in sorted(bits, reverse=True)},
                sqnr_channel={b: _sqnr(w, per_channel, b) for b in sorted(bits, reverse=True)},
            )
        )
    return out
