"""Weights are ranges too: each weight channel's scale, searched on its exact values.

Frameworks quantize a weight channel from its min/max: the largest magnitude sets the scale and
every other value pays for it in rounding. :func:`search_weights` picks the scale of each
channel (or of the whole tensor) that minimizes the squared error of quantize-then-dequantize,
on the symmetric grid the runtime uses for weights (zero point 0: ``[-127, 127]`` for ONNX
Runtime's and TFLite's int8 weights, ``[-128, 127]`` where the full range is allowed). The
values are read exactly (no histogram: a channel holds few of them) and the cost is computed as
the runtimes compute it: each value divided by the float32 scale, rounded half to even, clamped.
Scales are scored up to the one at which the grid's symmetric part (``±127`` levels on int8)
reaches half a step past the channel's largest magnitude, never further; min/max's scale and
the frameworks' own ``max|w| / 127`` are scored too, so the result is never worse than either.

>>> import numpy as np, qfcal
>>> w = np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32)
>>> r = qfcal.search_weights(w, axis=0, narrow_range=True)
>>> bool((r.mse <= r.minmax_mse).all()) and r.scale.shape == (16,)
True

Per channel, the least squared error is what the model wants too (measured end to end in
BENCHMARKS.md); per tensor it clips the few channels with the largest weights, which costs the
model more than it saves (keep the flow's min/max there, as the adapters do by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qfcal import _core

__all__ = ["WeightRanges", "search_weights"]


@dataclass(frozen=True)
class WeightRanges:
    """The searched scale of each channel of a weight tensor and what it costs.

    Attributes:
        axis: the channel axis (``None``: one scale for the whole tensor).
        qmin, qmax, zero_point: the integer grid (symmetric: the zero point is fixed).
        scale: float32 scale per channel (0 where a channel is all zeros: no range to choose;
            the least normal float32 where the values are too small for any normal scale to
            reach them, about 1e-36: they then round to 0).
        mse: mean squared error per channel at ``scale``.
        minmax_scale, minmax_mse: min/max's scale (the extremes on the grid's ends: max |w| / 127
            on int8's narrow grid, as the nearest float32) and its error, per channel.
        power: mean square of each channel's values.
    """

    axis: int | None
    qmin: int
    qmax: int
    zero_point: int
    scale: npt.NDArray[np.float32]
    mse: npt.NDArray[np.float64]
    minmax_scale: npt.NDArray[np.float32]
    minmax_mse: npt.NDArray[np.float64]
    power: npt.NDArray[np.float64]

    @property
    def sqnr_db(self) -> npt.NDArray[np.float64]:
        """Signal-to-quantization-noise ratio per channel (inf where the error is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.mse > 0, 10 * np.log10(self.power / self.mse), np.inf)

    @property
    def gain_db(self) -> float:
        """Total error of min/max over the searched error, in dB (0: nothing better found)."""
        a, b = float(self.minmax_mse.sum()), float(self.mse.sum())
        return float(10 * np.log10(a / b)) if b > 0 else (0.0 if a == 0 else float("inf"))

    def fake_quantize(self, w: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """``w`` quantized and dequantized with these scales (as the runtimes compute it)."""
        x = np.asarray(w, dtype=np.float32)
        s = _broadcast(self.scale, x.ndim, self.axis)
        safe = np.where(s > 0, s, np.float32(1))
        lo, hi = self.qmin - self.zero_point, self.qmax - self.zero_point
        q = np.clip(np.rint(x / safe), lo, hi)
        return np.where(s > 0, q * safe, x).astype(np.float32)

    def __repr__(self) -> str:
        where = "per tensor" if self.axis is None else f"axis={self.axis}"
        return (
            f"WeightRanges({self.scale.size} channel(s), {where}, grid [{self.qmin}, "
            f"{self.qmax}], {self.gain_db:.2f} dB below min/max's error)"
        )


def _broadcast(v: npt.NDArray[Any], ndim: int, axis: int | None) -> npt.NDArray[Any]:
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def search_weights(
    weights: npt.ArrayLike,
    *,
    axis: int | None = 0,
    bits: int = 8,
    signed: bool = True,
    narrow_range: bool = False,
    qmin: int | None = None,
    qmax: int | None = None,
    widen: bool = True,
    threads: int = 0,
) -> WeightRanges:
    """Each channel's least-squared-error scale on a symmetric grid (see the module docs).

    Args:
        weights: the float weight tensor (any float dtype; read as float32, as runtimes do).
        axis: the channel axis (ONNX Conv: 0, MatMul ``[K, N]``: 1, Keras Conv2D ``HWIO``:
            3, depthwise ``HWC1``: 2, PyTorch Conv/Linear: 0); ``None`` for one scale.
        bits, signed, narrow_range, qmin, qmax: the grid, as in :func:`qfcal.search`
            (``narrow_range=True`` gives int8's ``[-127, 127]``).
        widen: also score scales above min/max's, up to half a step past the largest
            magnitude. False for flows that derive the scale from the weights (the TFLite
            converter): clipping the weights can only narrow their scale.
        threads: threads to use (0: every core).

    Raises:
        ValueError: a non-finite weight (its position named), an axis out of range, an empty
            or 0-d array, or a bad grid.
    """
    x = np.asarray(weights)
    if x.dtype.kind != "f":
        raise TypeError(f"weights must be a float array, got dtype {x.dtype}")
    if x.ndim == 0 or x.size == 0:
        raise ValueError(f"weights must be a non-empty array, got shape {x.shape}")
    if axis is not None:
        if not isinstance(axis, int | np.integer) or not -x.ndim <= int(axis) < x.ndim:
            raise ValueError(f"axis must be None or in [-{x.ndim}, {x.ndim}), got {axis!r}")
        axis = int(axis) % x.ndim
        rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    else:
        rows = x.reshape(1, -1)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if not np.isfinite(rows).all():
        bad = np.argwhere(~np.isfinite(np.asarray(x, dtype=np.float32)))[0]
        raise ValueError(
            f"weights must be finite, weights[{', '.join(map(str, bad))}] is {x[tuple(bad)]!r}"
        )
    scale, mse, fit_scale, fit_mse, power = _core._channel_scales(
        rows,
        bits=bits,
        signed=signed,
        narrow_range=narrow_range,
        qmin=qmin,
        qmax=qmax,
        widen=widen,
        threads=threads,
    )
    grid = _core.search(
        (np.ones(1), np.array([-1.0, 1.0])),
        bits=bits,
        signed=signed,
        narrow_range=narrow_range,
        qmin=qmin,
        qmax=qmax,
        symmetric=True,
        method="minmax",
    )
    return WeightRanges(
        axis=axis,
        qmin=grid.qmin,
        qmax=grid.qmax,
        zero_point=grid.zero_point,
        scale=scale.astype(np.float32),
        mse=mse,
        minmax_scale=fit_scale.astype(np.float32),
        minmax_mse=fit_mse,
        power=power,
    )
