"""Which tensors need more than 8 bits, decided from their histograms (numpy only).

Each tensor's exact histogram gives its quantization error at every bit width without running
the model: :func:`plan` searches each tensor at the base and the higher width, ranks the
tensors by what the step up buys (the drop in noise power relative to the power of the
tensor's bulk, see :func:`bulk_power`; loss-weighted for a :class:`qfcal.WeightedHistogram`;
times an optional per-tensor sensitivity), and gives the higher width to the best ones within
a budget: a number of tensors, a share of the activation bytes, or a target error. Tensors a
runtime's fused kernel keeps internal (``free=``, e.g. from
:func:`qfcal.onnxruntime.fused_outputs`) get no quantizer at all. The :class:`PrecisionPlan`
says per tensor the bits and the predicted error, and hands ONNX Runtime its per-tensor
overrides (:meth:`PrecisionPlan.ort_overrides`: 16-bit tensors as ``QInt16``) and AIMET / QNN
their encodings with a bit width per tensor (``qfcal.encodings.write(plan.results, path,
"aimet")``).

Why the bulk: on a transformer's residual stream a few channels reach 200 where the rest stay
near 1. The outliers dominate ``E[x^2]``, so ``mse / E[x^2]`` calls the tensor fine, but the
8-bit step they force (about 1.5) is noise on every other channel, which is where the
information is once LayerNorm has scaled the outlier channels down. Measured on
all-MiniLM-L6-v2 (``benchmarks/real_models/precision.py``): normalizing by the bulk puts the
tensors the model itself finds most sensitive first, where ``mse / E[x^2]`` did not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import qfcal

__all__ = ["BULK_QUANTILE", "PrecisionPlan", "TensorPrecision", "bulk_power", "plan"]

Hist = Any  # qfcal.Histogram | qfcal.WeightedHistogram


@dataclass(frozen=True)
class TensorPrecision:
    """One tensor in a plan.

    Attributes:
        name: the tensor.
        bits: the width the plan gives it; ``None``: no quantizer (a tensor the runtime's
            fused kernel keeps internal, from ``free=``).
        error: predicted error at `bits`: noise power over the bulk's power
            (``mse / bulk_power``; for a weighted histogram the loss increase
            ``sum(w * e^2) / n``), times its sensitivity; 0 without a quantizer.
        base_error, high_error: the same at the base and at the higher width.
        gain: ``base_error - high_error``, what the step up buys.
        size: its bytes per sample at the base width (``sizes``; 1 when not given).
        result: the range at `bits` (at the base width for a tensor without a quantizer).
    """

    name: str
    bits: int | None
    error: float
    base_error: float
    high_error: float
    gain: float
    size: int
    result: qfcal.SearchResult


@dataclass
class PrecisionPlan:
    """Per tensor, its bits and predicted error; `ranked` holds every tensor, best step up
    first."""

    base_bits: int
    high_bits: int
    tensors: dict[str, TensorPrecision] = field(default_factory=dict)
    ranked: list[str] = field(default_factory=list)

    @property
    def bits(self) -> dict[str, int | None]:
        """tensor -> bits (``None``: no quantizer)."""
        return {n: t.bits for n, t in self.tensors.items()}

    @property
    def free(self) -> list[str]:
        """The tensors left without a quantizer (``free=``): take them off the quantized model
        (:func:`qfcal.onnxruntime.remove_quantizers`)."""
        return [n for n, t in self.tensors.items() if t.bits is None]

    @property
    def high(self) -> list[str]:
        """The tensors given the higher width, best first."""
        return [n for n in self.ranked if self.tensors[n].bits == self.high_bits]

    @property
    def results(self) -> dict[str, qfcal.SearchResult]:
        """tensor -> its range at the plan's bits, for every quantized tensor: a source for
        :mod:`qfcal.encodings` (AIMET and QNN encodings carry a bit width per tensor)."""
        return {n: t.result for n, t in self.tensors.items() if t.bits is not None}

    @property
    def predicted_error(self) -> float:
        """The sum of the tensors' predicted errors under the plan."""
        return math.fsum(t.error for t in self.tensors.values())

    def ort_overrides(self) -> dict[str, list[dict[str, Any]]]:
        """ONNX Runtime ``TensorQuantOverrides`` for every quantized tensor of the plan (the
        higher width's tensors as 16-bit types), with qfcal's scale and zero point
        (:func:`qfcal.encodings.to_ort`)."""
        from qfcal.encodings import to_ort

        return to_ort(self.results)

    def summary(self) -> str:
        """A line a user reads."""
        base = math.fsum(t.base_error for t in self.tensors.values())
        free = f", {len(self.free)} without a quantizer" if self.free else ""
        return (
            f"{len(self.high)} of {len(self.tensors)} tensors at {self.high_bits} bits{free}: "
            f"predicted error {self.predicted_error:.4g} (all at {self.base_bits} bits: "
            f"{base:.4g})"
        )


# The quantile of |x| above which values count as outliers in the bulk's power.
BULK_QUANTILE = 0.99


def _values(h: Hist) -> qfcal.Histogram:
    """The histogram of the values (a weighted histogram's counts)."""
    return h.counts if isinstance(h, qfcal.WeightedHistogram) else h


def bulk_power(h: Hist, quantile: float = BULK_QUANTILE) -> float:
    """``E[min(x^2, c^2)]`` with ``c`` the `quantile` of ``|x|``: the power of the tensor's
    bulk, with the rare outliers clipped (winsorized) so they do not set the scale against
    which noise is judged. Equal to ``E[x^2]`` within a few percent for a tensor without
    outliers; from the histogram's bin centres (the values' histogram for a weighted one).
    0 for a tensor that is all zeros."""
    counts, edges = _values(h).to_numpy()
    c = counts.astype(np.float64)
    total = c.sum()
    if total == 0:
        return 0.0
    a = np.abs(0.5 * (edges[:-1] + edges[1:]))
    order = np.argsort(a, kind="stable")
    cum = np.cumsum(c[order])
    cap = a[order][min(int(np.searchsorted(cum, quantile * total)), len(a) - 1)]
    return float(np.dot(c, np.minimum(a, cap) ** 2) / total)


def plan(
    histograms: Mapping[str, Hist],
    *,
    base_bits: int = 8,
    high_bits: int = 16,
    tensors: int | None = None,
    share: float | None = None,
    target: float | None = None,
    sizes: Mapping[str, int] | None = None,
    sensitivity: Mapping[str, float] | None = None,
    free: Iterable[str] = (),
    signed: bool = True,
    symmetric_high: bool = True,
    method: str = "optimal",
    high_method: str = "minmax",
) -> PrecisionPlan:
    """The tensors to quantize at `high_bits` instead of `base_bits`, chosen from histograms.

    Exactly one budget: `tensors` (at most that many at the higher width), `share` (at most
    that share of the activation bytes at the base width, with `sizes`: tensor -> elements per
    sample) or `target` (the fewest tensors that bring the summed predicted error to at most
    `target`). Tensors go up in order of gain (per byte with `share`). A tensor's error is its
    quantization noise power (``mse``) over its bulk's power (:func:`bulk_power`); for
    loss-weighted histograms (:func:`qfcal.torch.calibrate_loss_aware`, weights the squared
    gradient of the loss), the predicted loss increase ``sum(w * e^2) / n``, which ranks the
    tensors by what their noise costs the model's loss.

    Args:
        histograms: tensor -> :class:`qfcal.Histogram` or :class:`qfcal.WeightedHistogram`.
        base_bits, high_bits: the widths (2..16, base < high).
        sizes: tensor -> elements per sample (bytes at the base width; default 1 each).
        sensitivity: tensor -> a weight on its error (for instance from the model's own
            one-at-a-time measurement); default 1.
        free: tensors that get no quantizer (bits ``None``, error 0, outside every budget):
            those the runtime's fused kernels keep internal
            (:func:`qfcal.onnxruntime.fused_outputs`: a MatMul's output before its bias Add,
            the inside of a LayerNorm or GELU). Names without a histogram are not planned
            (nothing quantizes them).
        signed, method: the search's at the base width; `high_method` at the higher one
            (``minmax`` by default: at 16 bits rounding dominates and ``optimal`` gains
            almost nothing for a search about 5,000 times slower); `symmetric_high`: the
            higher width's grid symmetric (ONNX Runtime's and TFLite's 16-bit activations
            are) for tensors with negative values; a tensor without any starts at 0.

    Raises:
        ValueError: not exactly one budget, a budget out of range, bad widths, a histogram
            without finite values, a size/sensitivity that is not positive, or plain and
            loss-weighted histograms mixed.
    """
    given = [b for b in (tensors, share, target) if b is not None]
    if len(given) != 1:
        raise ValueError("give exactly one budget: tensors=, share= or target=")
    for name, v in (("base_bits", base_bits), ("high_bits", high_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 16:
            raise ValueError(f"{name} must be an int in 2..16, got {v!r}")
    if high_bits <= base_bits:
        raise ValueError(f"high_bits ({high_bits}) must exceed base_bits ({base_bits})")
    if tensors is not None and (isinstance(tensors, bool) or not isinstance(tensors, int)
                                or tensors < 0):  # fmt: skip
        raise ValueError(f"tensors must be an int >= 0, got {tensors!r}")
    if share is not None and not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share!r}")
    if target is not None and not (math.isfinite(target) and target >= 0):
        raise ValueError(f"target must be a finite number >= 0, got {target!r}")
    if isinstance(free, str):
        raise TypeError(f"free must be a collection of tensor names, got the string {free!r}")
    free = set(free) & set(histograms)  # a tensor without a histogram has no quantizer
    kinds = {isinstance(h, qfcal.WeightedHistogram) for h in histograms.values()}
    if len(kinds) > 1:
        raise ValueError(
            "histograms mixes loss-weighted and plain histograms: their errors are in "
            "different units (loss increase, noise over signal); give all of one kind"
        )
    out = PrecisionPlan(base_bits=base_bits, high_bits=high_bits)
    rows = []
    for name, h in histograms.items():
        size = int((sizes or {}).get(name, 1))
        weight = float((sensitivity or {}).get(name, 1.0))
        if size < 1:
            raise ValueError(f"sizes[{name!r}] must be >= 1, got {size}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"sensitivity[{name!r}] must be a finite number >= 0, got {weight}")
        try:
            lo = qfcal.search(h, bits=base_bits, signed=signed, method=method)
            # a tensor with no negative value keeps 0 as its lowest level: ONNX Runtime drops
            # the ReLU before a quantizer whose range starts at 0, so a symmetric range would
            # let the negatives through (measured: a small CNN's output error x600)
            low = _values(h).min
            sym = symmetric_high and low is not None and low < 0
            hi = qfcal.search(h, bits=high_bits, signed=signed, symmetric=sym, method=high_method)
        except qfcal.EmptyHistogramError as e:
            raise ValueError(f"tensor {name!r}: {e}") from e
        if isinstance(h, qfcal.WeightedHistogram):
            # the search's mse is a weighted mean (only the weights' ratios matter to a
            # range); times the mean weight it is the loss increase sum(w e^2) / n, which
            # compares across tensors (w: the squared gradient of the loss)
            n = h.counts.total
            power = n / h.total_weight if h.total_weight > 0 else 0.0
        else:
            power = bulk_power(h)
        scale = weight / power if power > 0 else 0.0  # an all-zero tensor: exact at any width
        base, high = lo.mse * scale, hi.mse * scale
        rows.append((name, lo, hi, base, high, size))
    order = sorted(rows, key=lambda r: (-(r[3] - r[4]) / (r[5] if share is not None else 1), r[0]))
    total_bytes = sum(r[5] for r in rows if r[0] not in free)
    up: set[str] = set()
    error = math.fsum(r[3] for r in rows if r[0] not in free)
    used = 0
    for name, _lo, _hi, base, high, size in order:
        if name in free:
            continue
        if base - high <= 0:
            break
        if tensors is not None and len(up) >= tensors:
            break
        if share is not None and used + size > share * total_bytes:
            continue
        if target is not None and error <= target:
            break
        up.add(name)
        used += size
        error += high - base
    for name, lo, hi, base, high, size in rows:
        bits: int | None = None if name in free else high_bits if name in up else base_bits
        out.tensors[name] = TensorPrecision(
            name=name,
            bits=bits,
            error=0.0 if bits is None else high if bits == high_bits else base,
            base_error=base,
            high_error=high,
            gain=base - high,
            size=size,
            result=hi if bits == high_bits else lo,
        )
    out.ranked = [r[0] for r in order if r[0] not in free]
    return out
