"""What per-tensor weight quantization does to each layer of a Keras model (issue 13, "see it").

The seed's diagnosis: in a depthwise convolution some channels' weights shrink to nothing in
training; the batch norm after it then has a tiny variance there and a huge scale, and once that
scale is folded into the weights those channels stretch the per-tensor range, so every other
channel loses its levels. :func:`weight_stats` measures exactly that on the folded weights (what
an int8 model holds): per layer, the spread of the per-channel weight ranges, the dead channels
(a zero batch-norm variance or all-zero weights), and the weight SQNR with one scale per tensor
against one per channel at 8, 6 and 4 bits. A layer is *hit* when its widest channel reaches
:data:`HIT_SPREAD` times the median channel's range.

:func:`format_table` prints the figures (``qfcal inspect MODEL``), :func:`stats_json` gives them
as JSON (the run report's ``weights`` key) and :func:`plot_weight_stats` draws them.

Imports TensorFlow and Keras (the ``tf`` extra).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from qfcal.pipeline import plots as qplots
from qfcal.pipeline.fold import _folded_weights, foldable_pairs
from qfcal.pipeline.taps import layer_inputs

#: Weight bit widths reported.
BITS = (8, 6, 4)
#: A layer whose widest channel reaches this many times the median channel's max |w| is hit by the
#: seed's problem: with one scale per tensor the median channel keeps a quarter of its levels or
#: less (12 dB, two of the eight bits). The tensor's SQNR does not tell: the widest channel
#: holds most of the power, so a planted 31x spread costs it 8 dB while a healthy 2x spread costs
#: 6-7 dB.
HIT_SPREAD = 4.0

_WEIGHTED = (layers.DepthwiseConv2D, layers.Conv2D, layers.Dense)


@dataclass(frozen=True)
class LayerWeights:
    """One layer's folded weights, as per-tensor and per-channel int quantization sees them.

    Attributes:
        name: the layer's name; a layer of a nested model is named by its path,
            ``outer/inner`` (e.g. ``mobilenetv2_1.00_160/block_1_depthwise``).
        kind: ``depthwise``, ``conv`` or ``dense``.
        channels: output channels (a depthwise layer: input channels times the multiplier).
        spread: the largest channel's max |w| over the median live channel's. A dead channel
            counts in the largest: folded with a zero batch-norm variance its weights are
            huge, and they set the per-tensor range all the same (the seed's failure).
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
        """The channels' spread reaches :data:`HIT_SPREAD` (finite: a layer of dead channels
        only is not hit)."""
        return bool(math.isfinite(self.spread) and self.spread >= HIT_SPREAD)

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-able values: bit widths as string keys, and None for an
        infinite spread or SQNR (all live channels zero, or weights the grid holds exactly)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "spread": _finite(self.spread),
            "dead": self.dead,
            "sqnr_tensor": {str(b): _finite(v) for b, v in self.sqnr_tensor.items()},
            "sqnr_channel": {str(b): _finite(v) for b, v in self.sqnr_channel.items()},
            "hit": self.hit,
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


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
    return float(10.0 * np.log10(power / noise)) if power > 0 else float("-inf")


def _channels_last(layer: Any, kernel: np.ndarray) -> np.ndarray:
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw, cin, mult = kernel.shape
        return kernel.reshape(kh * kw, cin * mult)
    return kernel.reshape(-1, kernel.shape[-1])


def _pairs(model: Any, path: str) -> dict[str, Any]:
    """:func:`foldable_pairs` of the (functional or Sequential) `model` named `path`, with a
    ValueError naming the model or layer whose graph cannot be read."""
    try:
        graph_inputs = model.inputs
    except AttributeError:
        graph_inputs = None
    if not graph_inputs:
        kind = "Sequential" if isinstance(model, keras.Sequential) else type(model).__name__
        raise ValueError(
            f"cannot fold the batch norms of {path!r}: a {kind} model without a graph of "
            "layers (a subclassed model, or one never built on an input shape); "
            "save a functional or Sequential model built on an input"
        )
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        try:
            layer_inputs(layer)
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"cannot fold the batch norms of {path!r}: layer {layer.name!r} has no input "
                f"in its graph ({e})"
            ) from e
    return foldable_pairs(model)


def _weighted_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(path, layer, batch norm folded into it or None)`` for every weighted layer of
    `model`, in graph order, nested models' layers in place of the nested model."""
    pairs = _pairs(model, prefix.rstrip("/") or model.name)
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, keras.Model):
            yield from _weighted_layers(layer, path + "/")
        elif isinstance(layer, _WEIGHTED):
            if not layer.built:
                raise ValueError(f"layer {path!r} is not built: it holds no weights yet")
            yield path, layer, pairs.get(layer.name)


def weight_stats(model: keras.Model, bits: tuple[int, ...] = BITS) -> list[LayerWeights]:
    """Per weighted layer (depthwise and regular convolutions, dense) of `model`, in graph
    order, its folded weights' statistics (see the module docstring). Batch norms are folded
    as the TFLite converter folds them (as :func:`qfcal.pipeline.fold.fold_batch_norm` does):
    a batch norm whose only input is a convolution without an activation, that convolution's
    only reader. A nested model (a functional or Sequential model used as a layer, such as a
    pretrained base under a new head) is walked too, its batch norms folded in its own graph;
    its layers are named ``nested/layer``. A batch norm reading a nested model's output
    convolution from outside it is not folded.

    Raises:
        ValueError: `model` or a nested model is not a functional or Sequential Keras model
            built on an input (the message names it, or the layer without an input), or a bit
            width outside 2..16.
    """
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16]
    if bad or not bits:
        raise ValueError(f"bits must be ints in 2..16, got {bits!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"model must be a built functional Keras model, got {type(model).__name__}"
        )
    widths = sorted({8, *bits}, reverse=True)
    out = []
    for path, layer, bn in _weighted_layers(model):
        kernel = _folded_weights(layer, bn)[0] if bn is not None else layer.kernel
        w = _channels_last(layer, np.asarray(kernel, dtype=np.float64))
        per_channel = np.abs(w).max(axis=0)
        dead = per_channel == 0
        if bn is not None:
            dead |= np.asarray(bn.moving_variance).reshape(-1) == 0
        live = per_channel[~dead]
        median = float(np.median(live)) if live.size else 0.0
        # the widest over every channel: a dead one's folded weights still set the tensor's scale
        spread = float(per_channel.max() / median) if median > 0 else float("inf")
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
                name=path,
                kind=kind,
                channels=int(w.shape[1]),
                spread=spread,
                dead=int(dead.sum()),
                sqnr_tensor={b: _sqnr(w, whole, b) for b in widths},
                sqnr_channel={b: _sqnr(w, per_channel, b) for b in widths},
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# the figures, readable


def _num(x: float, fmt: str = ".1f") -> str:
    return format(x, fmt) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _spread(x: float) -> str:
    return ("inf" if math.isinf(x) else f"{x:.3g}" if x >= 1e5 else f"{x:,.1f}") + "x"


def summary(stats: list[LayerWeights]) -> str:
    """One sentence: the hit layers (the seed's problem), with their kind, dead channels,
    spread and 8-bit SQNR lost, or that none is hit."""
    hits = [s for s in stats if s.hit]
    if not stats:
        return "no weighted layer (depthwise, convolution, dense) in the model"
    if not hits:
        worst = max(stats, key=lambda s: s.spread if math.isfinite(s.spread) else 0.0)
        return (
            f"no layer is hit: every one of the {len(stats)} layers keeps its channels within "
            f"{HIT_SPREAD:g}x of the median channel's range, so one scale per tensor leaves its "
            f"median channel more than a quarter of its levels (widest: {worst.name}, spread "
            f"{_spread(worst.spread)}, -{_num(_loss(worst))} dB of 8-bit weight SQNR)"
        )
    named = "; ".join(
        f"{s.name} ({s.kind}, {s.dead} dead, spread {_spread(s.spread)}, -{_num(_loss(s))} dB "
        "of 8-bit weight SQNR)"
        for s in hits
    )
    dw = sum(1 for s in hits if s.kind == "depthwise")
    return (
        f"hit: {len(hits)} of {len(stats)} layers ({dw} depthwise) have a channel {HIT_SPREAD:g}x "
        "or more the median channel's range, so one scale per tensor leaves their median channel "
        f"a quarter of its levels or less: {named}"
    )


def _loss(s: LayerWeights) -> float:
    d = s.sqnr_channel[8] - s.sqnr_tensor[8]
    return d if math.isfinite(d) else 0.0


def format_table(stats: list[LayerWeights]) -> str:
    """A fixed-width table, one row per layer: name, kind, channels, spread, dead channels,
    weight SQNR (dB) per tensor / per channel at each bit width, ``HIT`` on the hit layers;
    then :func:`summary`."""
    widths = sorted({b for s in stats for b in s.sqnr_tensor}, reverse=True)
    name_w = max([len("layer"), *(len(s.name) for s in stats)])
    head = f"{'layer':<{name_w}}  {'kind':<9} {'ch':>5} {'spread':>10} {'dead':>4}"
    head += "".join(f"  {f'{b}-bit t/c dB':>13}" for b in widths) + "  hit"
    lines = [head, "-" * len(head)]
    for s in stats:
        row = f"{s.name:<{name_w}}  {s.kind:<9} {s.channels:>5} {_spread(s.spread):>10} {s.dead:>4}"
        for b in widths:
            row += f"  {_num(s.sqnr_tensor[b]):>6}/{_num(s.sqnr_channel[b]):<6}"
        lines.append((row + ("  HIT" if s.hit else "")).rstrip())
    lines.append("")
    lines.append(
        textwrap.fill(
            "spread: largest channel max|w| over the median live channel's (batch norms folded; "
            "a dead channel counts in the largest, as it does in one scale per tensor); t/c: "
            "weight SQNR with one scale per tensor / per channel; HIT: a "
            f"channel spread {HIT_SPREAD:g}x or more (the median channel keeps a quarter of its "
            "levels or less with one scale per tensor)",
            100,
        )
    )
    lines.append(textwrap.fill(summary(stats), 100, subsequent_indent="  "))
    return "\n".join(lines)


def stats_json(stats: list[LayerWeights]) -> dict[str, Any]:
    """The figures as one JSON-able document: the bit widths, the hit threshold, the hit
    layers' names, the summary sentence and one :meth:`LayerWeights.to_dict` per layer."""
    widths = sorted({b for s in stats for b in s.sqnr_tensor}, reverse=True)
    return {
        "bits": widths,
        "hit_spread": HIT_SPREAD,
        "hit": [s.name for s in stats if s.hit],
        "summary": summary(stats),
        "layers": [s.to_dict() for s in stats],
    }


def plot_weight_stats(
    stats: list[LayerWeights], path: str | os.PathLike[str], title: str = ""
) -> str | None:
    """Draw the figures into the PNG `path`: the channel range spread per layer (log axis,
    depthwise layers in their own colour) over the 8-bit weight SQNR per tensor against per
    channel, hit layers marked red (see :func:`qfcal.pipeline.plots.weight_stats`); `title`
    heads the plot's title. Returns the path, or None where matplotlib is not installed."""
    return qplots.weight_stats([s.to_dict() for s in stats], Path(path), title)
