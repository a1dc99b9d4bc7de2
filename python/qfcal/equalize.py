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
channels the bound held back. On networks whose ReLU6 channels mostly reach the clip (a
pretrained EfficientNet-Lite0: 11,314 channels) that bound leaves little to equalize, so
``relu6="per-channel"`` moves the clip instead: channel ``c`` is clipped at ``6 / s_c``
(the graph's ReLU6 clips at the largest of those, and the adapters add one elementwise
minimum with the per-channel values after it), which is exact for every input, not only the
calibration data, at the price of one more operation per moved clip.

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
    "RELU6_MODES",
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
#: A channel's total scale stays within [1 / MAX_SCALE, MAX_SCALE] (dead channels keep 1).
MAX_SCALE = 1e4
#: A channel whose weight range is under this share of its layer's widest is dead for
#: equalization (scale 1): on a real MobileNetV2, stem channels with weights near 0 were
#: otherwise "equalized" by 1e-11, their biases grew to 1e11, and the int8 converter widened
#: the whole layer's weight scale to fit those biases in int32.
DEAD_RANGE = 1e-6
#: How ReLU6 links are kept exact: ``bound``, scales bounded by the calibration data (the graph
#: keeps its operations); ``per-channel``, any scale, and channel ``c``'s clip moves to
#: ``6 / s_c`` (:attr:`EqualizeReport.clips`; the adapters add a per-channel minimum).
RELU6_MODES = ("bound", "per-channel")
#: How a link's scales are chosen: ``cle``, equal weight ranges on both sides (Nagel et al.
#: 2019); ``noise``, the least predicted output noise of the two layers' per-tensor weights
#: and of the per-tensor activations between them (needs the link's data statistics).
OBJECTIVES = ("cle", "noise")
#: ``objective="noise"`` never lets a layer's requantization scale (input step times weight
#: step over output step) grow past this factor of the model's own: XNNPACK (TFLite's CPU
#: delegate) refuses a convolution whose scale reaches 256, and on a real MobileNetV2 an
#: unbounded choice took the stem's from about 10 to 10,000.
REQUANT_GROWTH = 4.0

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
        input_power: per input channel of `first`, the mean square of its input on the
            calibration data (original model): with it (and the data statistics above),
            ``objective="noise"`` can predict the output noise of each choice of scales.
        data_active: per channel, the share of the tensor's values that are not exactly 0
            (a ReLU's zeros pass no rounding error on); None: all.
    """

    first: str
    second: str
    activation: str
    data_max: Array | None = None
    data_min: Array | None = None
    absorb: bool = False
    data_mean: Array | None = None
    data_std: Array | None = None
    input_power: Array | None = None
    data_active: Array | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    @classmethod
    def measured(
        cls,
        first: str,
        second: str,
        activation: str,
        between: ChannelStats,
        inputs: ChannelStats | None = None,
        *,
        absorb: bool = False,
    ) -> Link:
        """The link with the calibration statistics of the tensor `between` the layers and,
        for ``objective="noise"``, of `first`'s `inputs`."""
        return cls(
            first,
            second,
            activation,
            data_max=between.max,
            data_min=between.min,
            absorb=absorb,
            data_mean=between.mean,
            data_std=between.std,
            input_power=None if inputs is None else inputs.mean_square,
            data_active=between.active,
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
        self._nonzero: Array | None = None
        self.count = 0

    def update(self, x: npt.ArrayLike) -> None:
        a = np.asarray(x, dtype=np.float64)
        flat = np.moveaxis(a, self.axis, -1).reshape(-1, a.shape[self.axis])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        s, sq = flat.sum(axis=0), (flat * flat).sum(axis=0)
        nz = np.count_nonzero(flat, axis=0).astype(np.float64)
        if self._sum is None or self._sq is None or self._nonzero is None:
            self.min, self.max, self._sum, self._sq, self._nonzero = lo, hi, s, sq, nz
        else:
            assert self.min is not None and self.max is not None
            self.min = np.minimum(self.min, lo)
            self.max = np.maximum(self.max, hi)
            self._sum = self._sum + s
            self._sq = self._sq + sq
            self._nonzero = self._nonzero + nz
        self.count += flat.shape[0]

    @property
    def mean(self) -> Array:
        assert self._sum is not None, "no batch seen"
        return self._sum / max(self.count, 1)

    @property
    def mean_square(self) -> Array:
        assert self._sq is not None, "no batch seen"
        return self._sq / max(self.count, 1)

    @property
    def active(self) -> Array:
        """Per channel, the share of values that are not exactly 0 (after a ReLU: where the
        channel is on)."""
        assert self._nonzero is not None, "no batch seen"
        return self._nonzero / max(self.count, 1)

    @property
    def std(self) -> Array:
        assert self._sq is not None, "no batch seen"
        var = self.mean_square - self.mean**2
        return np.asarray(np.sqrt(np.maximum(var, 0.0)))


def _live(r: Array) -> npt.NDArray[np.bool_]:
    """Channels whose weight range is finite and not negligible beside the widest (a channel
    at ``DEAD_RANGE`` of it is dead: scaling it to the others' range would multiply its bias
    by as much)."""
    top = float(np.max(r[np.isfinite(r)])) if np.isfinite(r).any() else 0.0
    return np.isfinite(r) & (r > DEAD_RANGE * top)


def equalizing_scales(first_ranges: Array, second_ranges: Array) -> Array:
    """``sqrt(r_first / r_second)`` per channel (1 where either range is dead: 0, not finite,
    or under ``DEAD_RANGE`` of its layer's widest), clipped to ``[1 / MAX_SCALE, MAX_SCALE]``."""
    r1 = np.asarray(first_ranges, dtype=np.float64)
    r2 = np.asarray(second_ranges, dtype=np.float64)
    ok = _live(r1) & _live(r2)
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
        bounded: channels whose scale stopped at their bound: the one that keeps a ReLU6
            channel's data below the moved clip, or the one that keeps the activation range
            from widening (:func:`range_bounds`).
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
        clips: with ``relu6="per-channel"``, for each ReLU6 link whose scales moved (by its
            first layer's name), the per-channel clip ``6 / s`` of the tensor between.
    """

    links: list[LinkChange] = field(default_factory=list)
    iterations: int = 0
    bias_corrected: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    float_drift: float | None = None
    clips: dict[str, Array] = field(default_factory=dict)

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
            f"calibration data), {bounded} stopped at their bound (ReLU6 clip or activation "
            f"range), {absorbed} biases absorbed"
        ]
        if worst is not None:
            lines.append(
                f"widest channel spread: {worst.first} {worst.spread_before:.1f}x -> "
                f"{worst.spread_after:.1f}x"
            )
        if self.clips:
            lines.append(
                f"{len(self.clips)} ReLU6 clips moved per channel (one elementwise minimum "
                "added after each)"
            )
        elif held:
            lines.append(
                f"relu6='per-channel' would scale the {held} held channels too (exact: their "
                "clips move per channel, one elementwise minimum per ReLU6)"
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
            "clips": {k: v.tolist() for k, v in self.clips.items()},
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


def _cle_totals(
    a: Layer, b: Layer, t: Array, bound: tuple[Array, npt.NDArray[np.bool_]] | None
) -> Array:
    """The total scales that make `a`'s and `b`'s current channel ranges equal (`t`: the
    totals they hold now), at least `bound`'s lower bounds, its held channels at 1, within
    ``[1 / MAX_SCALE, MAX_SCALE]``."""
    total = t * equalizing_scales(a.out_ranges(), b.in_ranges())
    if bound is not None:
        lower, held = bound
        total = np.maximum(total, lower)
        total[held] = 1.0
    return np.clip(total, 1.0 / MAX_SCALE, MAX_SCALE)


def equalize_links(
    layers: Mapping[str, Layer],
    links: Sequence[Link],
    *,
    max_iterations: int = 20,
    tol: float = 1e-3,
    absorb: bool = True,
    headroom: float = 1.0,
    objective: str = "cle",
    weight_bits: int = 8,
    relu6: str = "bound",
) -> tuple[dict[str, Layer], EqualizeReport]:
    """Equalize every link (in rounds until no scale moves by more than `tol`), then absorb
    biases. Returns new layers (the inputs are not modified) and the report.

    `objective` (:data:`OBJECTIVES`): ``cle`` makes both layers' per-channel weight ranges
    equal; ``noise`` chooses, on links whose data statistics (with ``input_power``) are
    given, the scales of least predicted output noise with `weight_bits` per-tensor weights
    and 8-bit per-tensor activations, so a channel is not shrunk past the point where its
    activation levels cost more than its weights gain (other links: ``cle``).

    `relu6` (:data:`RELU6_MODES`): ``bound`` leaves ReLU6 links without calibration data
    alone and bounds a ReLU6 channel's total scale by :func:`relu6_bounds`, so the result
    equals the original on the calibration data; ``per-channel`` scales ReLU6 links as ReLU
    links and returns each moved clip in the report's ``clips`` (the caller must apply them:
    the layers alone are not equivalent then), and absorbs no bias across them.

    Raises:
        ValueError: a link names a missing layer, the channel counts disagree, a data array
            has the wrong shape, or a layer is the first (or the second) of two links.
    """
    _check_links(layers, links)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or weight_bits < 2:
        raise ValueError(f"weight_bits must be an int >= 2, got {weight_bits!r}")
    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {', '.join(RELU6_MODES)}, got {relu6!r}")
    moving = relu6 == "per-channel"
    out = {name: layer.copy() for name, layer in layers.items()}
    before_link = {k.second: k.first for k in links}
    before = {k.first: _spread(layers[k.first].out_ranges()) for k in links}
    total = {k.first: np.ones(layers[k.first].kernel.shape[0]) for k in links}
    bounds: dict[str, tuple[Array, npt.NDArray[np.bool_]]] = {}
    active = []
    for k in links:
        if k.data_max is not None:
            lower = range_bounds(k.data_max, k.data_min, headroom)
            held = np.zeros(lower.shape, dtype=bool)
            if k.activation == "relu6" and not moving:
                r6, held = relu6_bounds(k.data_max, headroom)
                lower = np.where(held, 1.0, np.maximum(lower, r6))
            bounds[k.first] = (lower, held)
        elif k.activation == "relu6" and not moving:
            continue
        active.append(k)
    rounds = 0
    for rounds in range(1, max_iterations + 1):  # noqa: B007 (the count is reported)
        moved = 0.0
        for k in active:
            a, b = out[k.first], out[k.second]
            t = total[k.first]
            noisy = objective == "noise" and k.input_power is not None and k.first in bounds
            if noisy and k.data_mean is not None and k.data_std is not None:
                lower, held = bounds[k.first]
                prev = before_link.get(k.first)
                n_in = a.kernel.shape[0] if a.depthwise else a.kernel.shape[1]
                t_in = total[prev] if prev is not None else np.ones(n_in)
                nm = _noise_model(a, b, k, t, t_in, weight_bits)
                cle = _cle_totals(a, b, t, bounds[k.first])
                s = nm.best([np.ones_like(t), t, cle], lower, held) / t
            else:
                s = _cle_totals(a, b, t, bounds.get(k.first)) / t
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
        clipped = k.activation == "relu6" and moving
        if clipped and np.any(np.abs(t - 1.0) > 1e-12):
            report.clips[k.first] = 6.0 / t
        if (
            absorb
            and k.absorb
            and not clipped
            and k.activation != "linear"
            and k.data_min is not None
        ):
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


@dataclass
class _NoiseModel:
    """A link's predicted output noise as a function of the total scales ``T`` (channel c of
    the tensor between the layers divided by ``T[c]``), in the units of `second`'s output,
    summed over its channels: the per-tensor weight rounding of `first` and `second` and the
    per-tensor (asymmetric min/max) rounding of the tensor between them, each uniform.

    With ``T`` scaling `first`'s rows down and `second`'s columns up, `first`'s weight noise
    and the activation noise reach `second`'s output multiplied by ``T``, and `second`'s
    weight noise meets the channels' signal divided by ``T``."""

    r1: Array  # per channel: first's weight range before this link's scaling
    r2: Array  # per channel: second's weight range before this link's scaling
    fan_in_power: Array  # per channel: sum of first's input power over its fan-in, times the
    # share of the channel's values that are on (a ReLU's zeros carry no rounding error)
    active: Array
    col_power: Array  # per channel: sum of squares of second's weights reading it
    signal: Array  # per channel: mean square of the tensor between, original units
    reads: float  # per channel: how many weights of second read each value
    dmax: Array
    dmin: Array
    qw: float

    def steps(self, total: Array) -> tuple[float, float, float]:
        d1 = float(np.max(self.r1 / total)) / self.qw
        d2 = float(np.max(self.r2 * total)) / self.qw
        hi = max(float(np.max(self.dmax / total)), 0.0)
        lo = min(float(np.min(self.dmin / total)), 0.0)
        return d1, (hi - lo) / 255.0, d2

    def feasible(self, total: Array) -> bool:
        """Whether neither layer's requantization scale grows past :data:`REQUANT_GROWTH`
        times its value without this link's scaling (``total`` = 1)."""
        d1, da, d2 = self.steps(total)
        e1, ea, e2 = self.steps(np.ones_like(total))
        if min(d1, da, d2, e1, ea, e2) <= 0:
            return True
        first = (d1 / da) / (e1 / ea)  # first's input step is not touched by this link
        second = (da * d2) / (ea * e2)  # nor is second's output step
        return max(first, second) <= REQUANT_GROWTH

    def noise(self, total: Array) -> float:
        d1, da, d2 = self.steps(total)
        up = (d1 * d1 * self.fan_in_power + da * da * self.active) * self.col_power * total**2
        down = d2 * d2 * self.reads * self.signal / total**2
        return float(np.sum(up + down) / 12.0)

    def best(self, candidates: Sequence[Array], lower: Array, held: npt.NDArray[np.bool_]) -> Array:
        """The total scales of least predicted noise among `candidates` and the fixed-point
        iterates from each (every channel at its optimum with the three rounding steps held),
        within ``[lower, MAX_SCALE]``, held channels at 1, and :meth:`feasible` (the first
        candidate, no scaling, always is)."""
        live = (self.col_power > 0) & (self.signal > 0) & ~held & _live(self.r1)
        best, best_e = candidates[0], self.noise(candidates[0])
        for start in candidates:
            if not self.feasible(start):
                continue
            e = self.noise(start)
            if e < best_e:
                best, best_e = start, e
            best, best_e = self._iterate(start, live, lower, held, best, best_e)
        return best

    def _iterate(
        self,
        start: Array,
        live: npt.NDArray[np.bool_],
        lower: Array,
        held: npt.NDArray[np.bool_],
        best: Array,
        best_e: float,
    ) -> tuple[Array, float]:
        t = start.copy()
        for _ in range(30):
            d1, da, d2 = self.steps(t)
            up = (d1 * d1 * self.fan_in_power + da * da * self.active) * self.col_power
            new = t.copy()
            new[live] = (d2 * d2 * self.reads * self.signal[live] / up[live]) ** 0.25
            new = np.clip(new, np.maximum(lower, 1.0 / MAX_SCALE), MAX_SCALE)
            new[held] = 1.0
            if not self.feasible(new):
                break
            e = self.noise(new)
            if e < best_e * (1 - 1e-9):
                best, best_e = new, e
            if np.allclose(new, t, rtol=1e-4):
                break
            t = new
        return best, best_e


def _noise_model(a: Layer, b: Layer, k: Link, t: Array, t_in: Array, bits: int) -> _NoiseModel:
    """The noise model of link `k` whose layers `a`, `b` hold the current scales `t` (and
    `a`'s input channels the scales `t_in` of the link before)."""
    assert k.data_max is not None and k.data_min is not None and k.input_power is not None
    assert k.data_mean is not None and k.data_std is not None
    pin = np.asarray(k.input_power, dtype=np.float64) / t_in**2
    taps1 = int(np.prod(a.kernel.shape[2:])) if a.kernel.ndim > 2 else 1
    if a.depthwise:
        fan_in = taps1 * pin
    else:
        fan_in = np.full(a.kernel.shape[0], taps1 * float(np.sum(pin)))
    taps2 = float(np.prod(b.kernel.shape[2:])) if b.kernel.ndim > 2 else 1.0
    k2 = b.kernel if b.depthwise else np.moveaxis(b.kernel, 1, 0)  # channel of the link first
    col = (k2 * k2).reshape(k2.shape[0], -1).sum(axis=1) / t**2
    reads = taps2 if b.depthwise else b.kernel.shape[0] * taps2
    mean, std = np.asarray(k.data_mean), np.asarray(k.data_std)
    on = np.ones_like(mean) if k.data_active is None else np.asarray(k.data_active, np.float64)
    return _NoiseModel(
        r1=a.out_ranges() * t, r2=b.in_ranges() / t, fan_in_power=fan_in * on, active=on,
        col_power=col,
        signal=mean * mean + std * std, reads=reads,
        dmax=np.asarray(k.data_max, np.float64), dmin=np.asarray(k.data_min, np.float64),
        qw=float(2 ** (bits - 1) - 1),
    )  # fmt: skip


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
