"""Cross-layer equalization, bias absorption and bias correction, framework-free (numpy only).

The seed's failure, in a trained network: a depthwise convolution's channels have very
different weight ranges once batch norm is folded in (a dying channel gets a huge batch-norm
scale), so one scale per tensor leaves most channels a few levels. Nagel et al., "Data-Free
Quantization" (2019), fix it without retraining. For two layers ``A -> f -> B`` where ``f`` is
positively homogeneous (``f(x / s) = f(x) / s`` for ``s > 0``: identity, ReLU), dividing output
channel ``c`` of ``A`` (weights and bias) by ``s_c`` and multiplying input channel ``c`` of ``B``
by ``s_c`` keeps the function; ``s_c = sqrt(r_A[c] / r_B[c])`` gives both channels the range
``sqrt(r_A[c] r_B[c])`` (:func:`equalizing_scales`).

ReLU6 is not homogeneous: ``relu6(x / s) * s`` clips at ``6 s``. The textbook recipe replaces it
with ReLU, which changes the network (measured on a pretrained MobileNetV2: 0.051 mean |Δprob|
of float drift with AIMET's implementation). Here ReLU6 stays, and the scales are bounded by the
calibration data instead (:func:`relu6_bounds`): a channel whose data reach the clip keeps
``s = 1`` (its clip stays at 6); a channel whose data stay below it (maximum ``m < 6``) may
take any ``s >= m / 6``, so that no calibration value crosses the moved clip. The equalized
model is then equal to the original on the calibration data, and the report says how many
channels the bound held back.

Bias absorption moves a constant ``h_c`` out of ``A``'s channel ``c`` into ``B``'s bias where
the channel is always positive on the calibration data (ReLU is then the identity there), which
narrows the activation range; it needs ``B`` to see no padding (a 1x1 convolution or a dense
layer). Bias correction subtracts from each layer's bias the mean shift its quantized weights
cause, ``(Q(W) - W) E[x]``, with ``E[x]`` measured on the calibration data: this one changes the
float model on purpose (it cancels the int8 model's error), so it is applied for the weight
quantization the flow will use.

Weights are passed in one layout: ``(out, in, *spatial)`` for convolutions and dense layers
(ONNX's), ``(channels, 1, *spatial)`` for depthwise convolutions (whose input channel ``c`` is
output channel ``c``). The Keras and ONNX adapters (``qfcal.pipeline.equalize``,
``qfcal.onnxruntime.equalize``) build those from their graphs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ACTIVATIONS",
    "ChannelStats",
    "EqualizeReport",
    "Layer",
    "Link",
    "LinkChange",
    "bias_correction",
    "equalize_links",
    "equalizing_scales",
    "quantize_weights",
    "range_bounds",
    "relu6_bounds",
]

#: Activations allowed between the two layers of a link.
ACTIVATIONS = ("linear", "relu", "relu6")
#: A channel whose calibration maximum is this close to 6 is taken to reach the clip.
CLIP_TOL = 1e-6
#: Scales are kept within [1 / MAX_SCALE, MAX_SCALE] (dead channels keep 1).
MAX_SCALE = 1e4

Array = npt.NDArray[np.float64]


@dataclass
class Layer:
    """One weighted layer: `kernel` in ``(out, in, *spatial)`` layout (``(channels, 1,
    *spatial)`` when `depthwise`), `bias` of shape ``(out,)``."""

    name: str
    kernel: Array
    bias: Array
    depthwise: bool = False

    def __post_init__(self) -> None:
        self.kernel = np.asarray(self.kernel, dtype=np.float64)
        self.bias = np.asarray(self.bias, dtype=np.float64).reshape(-1)
        if self.kernel.ndim < 2:
            raise ValueError(
                f"layer {self.name!r}: kernel must have at least 2 dims (out, in, ...), "
                f"got shape {self.kernel.shape}"
            )
        if self.bias.shape != (self.kernel.shape[0],):
            raise ValueError(
                f"layer {self.name!r}: bias must have shape ({self.kernel.shape[0]},), "
                f"got {self.bias.shape}"
            )
        if self.depthwise and self.kernel.shape[1] != 1:
            raise ValueError(
                f"layer {self.name!r}: a depthwise kernel must be (channels, 1, ...), "
                f"got shape {self.kernel.shape}"
            )

    def out_ranges(self) -> Array:
        """max |w| of each output channel."""
        k = np.abs(self.kernel)
        return np.asarray(k.reshape(k.shape[0], -1).max(axis=1), dtype=np.float64)

    def in_ranges(self) -> Array:
        """max |w| of each input channel (a depthwise layer: of each channel)."""
        if self.depthwise:
            return self.out_ranges()
        k = np.abs(self.kernel)
        return np.asarray(np.moveaxis(k, 1, 0).reshape(k.shape[1], -1).max(axis=1), np.float64)

    def copy(self) -> Layer:
        return Layer(self.name, self.kernel.copy(), self.bias.copy(), self.depthwise)


@dataclass(frozen=True)
class Link:
    """``first -> activation -> second``: the tensor between them is read by `second` only.

    Attributes:
        first, second: layer names.
        activation: ``linear``, ``relu`` or ``relu6``.
        data_max, data_min: per channel, the largest and smallest value of the tensor between
            the layers (after the activation) on the calibration data, in the original model;
            ``None`` when no data were given (then ReLU6 links are not scaled).
        absorb: `second` sees the tensor without padding (a 1x1 convolution or a dense layer,
            nothing padding in between), so a constant can move into its bias exactly.
        data_mean, data_std: per channel, the mean and standard deviation of that tensor on
            the calibration data: absorption then moves at most ``mean - 3 std`` (as AIMET
            moves ``beta - 3 gamma``), so values a little below the calibration minimum on
            other inputs are not cut.
    """

    first: str
    second: str
    activation: str
    data_max: Array | None = None
    data_min: Array | None = None
    absorb: bool = False
    data_mean: Array | None = None
    data_std: Array | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )


class ChannelStats:
    """Per-channel min, max, mean and standard deviation of a tensor over batches, channels on
    `axis` (-1: channels last, as Keras; 1: NCHW, as ONNX)."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis
        self.min: Array | None = None
        self.max: Array | None = None
        self._sum: Array | None = None
        self._sq: Array | None = None
        self.count = 0

    def update(self, x: npt.ArrayLike) -> None:
        a = np.asarray(x, dtype=np.float64)
        flat = np.moveaxis(a, self.axis, -1).reshape(-1, a.shape[self.axis])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        s, sq = flat.sum(axis=0), (flat * flat).sum(axis=0)
        if self.min is None or self.max is None or self._sum is None or self._sq is None:
            self.min, self.max, self._sum, self._sq = lo, hi, s, sq
        else:
            self.min = np.minimum(self.min, lo)
            self.max = np.maximum(self.max, hi)
            self._sum = self._sum + s
            self._sq = self._sq + sq
        self.count += flat.shape[0]

    @property
    def mean(self) -> Array:
        assert self._sum is not None, "no batch seen"
        return self._sum / max(self.count, 1)

    @property
    def std(self) -> Array:
        assert self._sq is not None, "no batch seen"
        var = self._sq / max(self.count, 1) - self.mean**2
        return np.asarray(np.sqrt(np.maximum(var, 0.0)))


def equalizing_scales(first_ranges: Array, second_ranges: Array) -> Array:
    """``sqrt(r_first / r_second)`` per channel (1 where either range is 0 or not finite),
    clipped to ``[1 / MAX_SCALE, MAX_SCALE]``."""
    r1 = np.asarray(first_ranges, dtype=np.float64)
    r2 = np.asarray(second_ranges, dtype=np.float64)
    ok = (r1 > 0) & (r2 > 0) & np.isfinite(r1) & np.isfinite(r2)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE)


def relu6_bounds(
    data_max: Array, headroom: float = 1.0, clip: float = 6.0
) -> tuple[Array, npt.NDArray[np.bool_]]:
    """Per channel, the smallest total scale that keeps ``relu6`` exact on data whose maximum
    (after the activation) is `data_max` times `headroom`, and whether the channel is held at
    scale 1 (those data reach the clip)."""
    if not (np.isfinite(headroom) and headroom >= 1.0):
        raise ValueError(f"headroom must be a finite number >= 1, got {headroom!r}")
    m = np.asarray(data_max, dtype=np.float64) * headroom
    held = m >= clip * (1 - CLIP_TOL)
    lower = np.where(held, 1.0, np.maximum(m, 0.0) / clip)
    return lower, held


def range_bounds(data_max: Array, data_min: Array | None = None, headroom: float = 1.0) -> Array:
    """Per channel, the smallest total scale that keeps the channel's calibration data (times
    `headroom`) inside the tensor's own range ``max_c |x_c|``: equalization then never widens
    the activation range that one per-tensor scale must cover."""
    if not (np.isfinite(headroom) and headroom >= 1.0):
        raise ValueError(f"headroom must be a finite number >= 1, got {headroom!r}")
    m = np.abs(np.asarray(data_max, dtype=np.float64))
    if data_min is not None:
        m = np.maximum(m, np.abs(np.asarray(data_min, dtype=np.float64)))
    top = float(m.max()) if m.size else 0.0
    if top <= 0:
        return np.ones_like(m)
    return np.minimum(m * headroom / top, 1.0)


@dataclass(frozen=True)
class LinkChange:
    """What equalization did to one link.

    Attributes:
        first, second, activation: the link.
        channels: channels between the layers.
        scaled: channels whose total scale differs from 1 by more than 1%.
        held: ReLU6 channels kept at scale 1 because their calibration data reach the clip.
        bounded: ReLU6 channels whose scale stopped at the bound that keeps their data below
            the moved clip.
        absorbed: channels whose constant moved into `second`'s bias.
        spread_before, spread_after: the first layer's output channel ranges, largest over
            median, before and after.
    """

    first: str
    second: str
    activation: str
    channels: int
    scaled: int
    held: int
    bounded: int
    absorbed: int
    spread_before: float
    spread_after: float


@dataclass
class EqualizeReport:
    """What :func:`equalize_links` (and the adapters) changed.

    Attributes:
        links: one :class:`LinkChange` per link.
        iterations: rounds over the links until the scales settled.
        bias_corrected: layer -> largest |bias shift| applied by bias correction.
        skipped: ``(layer, reason)`` for consecutive layers that were not linked.
        float_drift: largest |output difference| between the original and the equalized
            model on the calibration data (set by the adapters; before bias correction).
    """

    links: list[LinkChange] = field(default_factory=list)
    iterations: int = 0
    bias_corrected: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    float_drift: float | None = None

    def summary(self) -> str:
        """A few lines a user reads: what moved, what was held, how far float moved."""
        scaled = sum(c.scaled for c in self.links)
        held = sum(c.held for c in self.links)
        bounded = sum(c.bounded for c in self.links)
        absorbed = sum(c.absorbed for c in self.links)
        worst = max(self.links, key=lambda c: c.spread_before, default=None)
        lines = [
            f"equalized {len(self.links)} layer pairs in {self.iterations} rounds: "
            f"{scaled} channels scaled, {held} held at scale 1 (ReLU6 clip reached on the "
            f"calibration data), {bounded} stopped at the ReLU6 bound, {absorbed} biases absorbed"
        ]
        if worst is not None:
            lines.append(
                f"widest channel spread: {worst.first} {worst.spread_before:.1f}x -> "
                f"{worst.spread_after:.1f}x"
            )
        if self.bias_corrected:
            name, shift = max(self.bias_corrected.items(), key=lambda kv: kv[1])
            lines.append(
                f"bias correction on {len(self.bias_corrected)} layers (largest shift "
                f"{shift:.3g}, {name})"
            )
        if self.float_drift is not None:
            lines.append(
                f"float model drift on the calibration data: {self.float_drift:.3g} "
                "(largest |output difference|)"
            )
        if self.skipped:
            lines.append(f"{len(self.skipped)} layer pairs not linked (see .skipped)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "links": [dataclasses.asdict(c) for c in self.links],
            "iterations": self.iterations,
            "bias_corrected": dict(self.bias_corrected),
            "skipped": [list(s) for s in self.skipped],
            "float_drift": self.float_drift,
        }


def _spread(r: Array) -> float:
    live = r[r > 0]
    if live.size == 0:
        return 1.0
    med = float(np.median(live))
    return float(live.max() / med) if med > 0 else float("inf")


def _scale_in(layer: Layer, s: Array) -> None:
    """Multiply input channel c of `layer` by s[c]."""
    shape = [1] * layer.kernel.ndim
    if layer.depthwise:
        shape[0] = -1
    else:
        shape[1] = -1
    layer.kernel = layer.kernel * s.reshape(shape)


def _scale_out(layer: Layer, s: Array) -> None:
    """Divide output channel c of `layer` (weights and bias) by s[c]."""
    shape = [1] * layer.kernel.ndim
    shape[0] = -1
    layer.kernel = layer.kernel / s.reshape(shape)
    layer.bias = layer.bias / s


def _check_links(layers: Mapping[str, Layer], links: Sequence[Link]) -> None:
    seconds: set[str] = set()
    firsts: set[str] = set()
    for k in links:
        for name in (k.first, k.second):
            if name not in layers:
                raise ValueError(f"link {k.first} -> {k.second}: no layer named {name!r}")
        a, b = layers[k.first], layers[k.second]
        nb = b.kernel.shape[0] if b.depthwise else b.kernel.shape[1]
        if a.kernel.shape[0] != nb:
            raise ValueError(
                f"link {k.first} -> {k.second}: {a.kernel.shape[0]} output channels feed "
                f"{nb} input channels"
            )
        for arr, what in ((k.data_max, "data_max"), (k.data_min, "data_min")):
            if arr is not None and np.shape(arr) != (nb,):
                raise ValueError(
                    f"link {k.first} -> {k.second}: {what} must have shape ({nb},), "
                    f"got {np.shape(arr)}"
                )
        if k.first in firsts or k.second in seconds:
            raise ValueError(
                f"link {k.first} -> {k.second}: a layer may be the first of one link and the "
                "second of one link only"
            )
        firsts.add(k.first)
        seconds.add(k.second)


def equalize_links(
    layers: Mapping[str, Layer],
    links: Sequence[Link],
    *,
    max_iterations: int = 20,
    tol: float = 1e-3,
    absorb: bool = True,
    headroom: float = 1.0,
) -> tuple[dict[str, Layer], EqualizeReport]:
    """Equalize every link (in rounds until no scale moves by more than `tol`), then absorb
    biases. Returns new layers (the inputs are not modified) and the report.

    ReLU6 links without calibration data are left alone; a ReLU6 channel's total scale is
    bounded by :func:`relu6_bounds`, so the result equals the original on the calibration data.

    Raises:
        ValueError: a link names a missing layer, the channel counts disagree, a data array
            has the wrong shape, or a layer is the first (or the second) of two links.
    """
    _check_links(layers, links)
    out = {name: layer.copy() for name, layer in layers.items()}
    before = {k.first: _spread(layers[k.first].out_ranges()) for k in links}
    total = {k.first: np.ones(layers[k.first].kernel.shape[0]) for k in links}
    bounds: dict[str, tuple[Array, npt.NDArray[np.bool_]]] = {}
    active = []
    for k in links:
        if k.data_max is not None:
            lower = range_bounds(k.data_max, k.data_min, headroom)
            held = np.zeros(lower.shape, dtype=bool)
            if k.activation == "relu6":
                r6, held = relu6_bounds(k.data_max, headroom)
                lower = np.where(held, 1.0, np.maximum(lower, r6))
            bounds[k.first] = (lower, held)
        elif k.activation == "relu6":
            continue
        active.append(k)
    rounds = 0
    for rounds in range(1, max_iterations + 1):  # noqa: B007 (the count is reported)
        moved = 0.0
        for k in active:
            a, b = out[k.first], out[k.second]
            s = equalizing_scales(a.out_ranges(), b.in_ranges())
            t = total[k.first]
            if k.first in bounds:
                lower, held = bounds[k.first]
                s = np.maximum(s, lower / t)
                s[held] = 1.0 / t[held]
            _scale_out(a, s)
            _scale_in(b, s)
            total[k.first] = t * s
            moved = max(moved, float(np.max(np.abs(np.log(s)))) if s.size else 0.0)
        if moved < tol:
            break
    report = EqualizeReport(iterations=rounds if active else 0)
    for k in links:
        t = total[k.first]
        held_n = bounded_n = 0
        if k.first in bounds:
            lower, held = bounds[k.first]
            held_n = int(held.sum())
            bounded_n = int((~held & np.isclose(t, lower, rtol=1e-6) & (lower > 0)).sum())
        absorbed = 0
        if absorb and k.absorb and k.activation != "linear" and k.data_min is not None:
            absorbed = _absorb(out[k.first], out[k.second], k, t)
        report.links.append(
            LinkChange(
                first=k.first,
                second=k.second,
                activation=k.activation,
                channels=int(t.size),
                scaled=int((np.abs(t - 1) > 0.01).sum()),
                held=held_n,
                bounded=bounded_n,
                absorbed=absorbed,
                spread_before=before[k.first],
                spread_after=_spread(out[k.first].out_ranges()),
            )
        )
    return out, report


def _in_dot(kernel: Array, v: Array) -> Array:
    """Per output channel, the sum over input channels and taps of ``kernel * v[in]``."""
    shape = [1] * kernel.ndim
    shape[1] = -1
    out = (kernel * v.reshape(shape)).reshape(kernel.shape[0], -1).sum(axis=1)
    return np.asarray(out, dtype=np.float64)


def _absorb(a: Layer, b: Layer, k: Link, total: Array) -> int:
    """Move ``h_c`` = the (scaled) calibration minimum of each always-positive channel from
    `a`'s bias into `b`'s. ReLU6 channels must stay below the clip after the shift."""
    assert k.data_min is not None
    low = np.asarray(k.data_min, dtype=np.float64)
    if k.data_mean is not None and k.data_std is not None:
        # a value below the calibration minimum would be cut: AIMET's beta - 3 gamma, measured
        low = np.minimum(low, np.asarray(k.data_mean) - 3 * np.asarray(k.data_std))
    h = np.maximum(low, 0.0) / total
    if k.activation == "relu6":
        if k.data_max is None:
            return 0
        scaled_max = np.asarray(k.data_max, dtype=np.float64) / total
        h = np.where(scaled_max < 6.0 * (1 - CLIP_TOL), h, 0.0)
    if b.depthwise:
        if b.kernel[0, 0].size != 1:
            return 0
        b.bias = b.bias + b.kernel.reshape(-1) * h
    else:
        b.bias = b.bias + _in_dot(b.kernel, h)
    a.bias = a.bias - h
    return int((h > 0).sum())


def quantize_weights(
    kernel: Array, bits: int = 8, per_channel: bool = False
) -> npt.NDArray[np.float64]:
    """`kernel` (out axis first) quantized and dequantized on the symmetric narrow grid
    ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` with scale max |w| / that level, per tensor or per
    output channel: how TFLite and ONNX Runtime quantize int8 weights."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    k = np.asarray(kernel, dtype=np.float64)
    q = 2 ** (bits - 1) - 1
    if per_channel:
        m = np.abs(k).reshape(k.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (k.ndim - 1))
    else:
        m = np.full((1,) * k.ndim, np.abs(k).max() if k.size else 0.0)
    scale = np.where(m > 0, m / q, 1.0)
    return np.clip(np.round(k / scale), -q, q) * scale


def bias_correction(
    layer: Layer, input_mean: Array, bits: int = 8, per_channel: bool = False
) -> tuple[Array, float]:
    """The bias that cancels the mean output shift of `layer`'s quantized weights on inputs
    whose per-channel mean is `input_mean`, and the largest |shift|."""
    mean = np.asarray(input_mean, dtype=np.float64).reshape(-1)
    n_in = layer.kernel.shape[0] if layer.depthwise else layer.kernel.shape[1]
    if mean.shape != (n_in,):
        raise ValueError(
            f"layer {layer.name!r}: input_mean must have shape ({n_in},), got {mean.shape}"
        )
    eps = quantize_weights(layer.kernel, bits, per_channel) - layer.kernel
    if layer.depthwise:
        shift = eps.reshape(eps.shape[0], -1).sum(axis=1) * mean
    else:
        shift = _in_dot(eps, mean)
    return layer.bias - shift, float(np.max(np.abs(shift))) if shift.size else 0.0
