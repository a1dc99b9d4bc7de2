"""Rust extension of qfcal (built by maturin from rust/qfcal-py)."""

from collections.abc import Sequence
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BINS",
    "MAX_BINS",
    "MIN_BINS",
    "EmptyHistogramError",
    "Histogram",
    "SearchResult",
    "WeightedHistogram",
    "__version__",
    "check_search_options",
    "methods",
    "score",
    "search",
    "_search_result",
    "_channel_scales",
]

__version__: str
DEFAULT_BINS: int
"""Bins of ``Histogram()`` when none are given (4096)."""
MIN_BINS: int
"""Fewest bins a :class:`Histogram` may have (16): ``Histogram(MIN_BINS - 1)`` raises ValueError."""
MAX_BINS: int
"""Most bins a :class:`Histogram` may have (``2**20``): ``Histogram(MAX_BINS + 1)`` raises
ValueError."""

_MethodName = Literal["optimal", "greedy", "tf_enhanced", "entropy", "percentile", "minmax"]

class EmptyHistogramError(ValueError):
    """A search was asked of a histogram that holds no finite value."""

@final
class Histogram:
    """An exact, order-independent, mergeable histogram with bounded memory.

    Bins lie on a power-of-two grid anchored at zero: bin ``g`` covers ``[g*w, (g+1)*w)`` with
    ``w = 2**k``. ``k`` is the smallest exponent for which the span of the nonzero finite values
    fits in ``bins`` bins, but never below ``e - 52`` where ``2**e <= max|x|`` (finer bins would
    not be exact in float64). So for float16/float32 data the span always covers at least
    ``bins // 2`` bins; float64 data spanning less than about ``2**-40`` of its magnitude gets
    fewer. When new data widens the span, neighbouring bins merge exactly.

    The same multiset of values, split into batches in any way, fed in any order, through any
    tree of :meth:`merge` calls, gives a bit-identical histogram. Counts are 64-bit integers.

    Exact zeros (``0.0`` and ``-0.0``) are counted apart (:attr:`zeros`) and never binned. NaN,
    +Inf and -Inf are never binned either; they are counted in :attr:`nan`, :attr:`pos_inf` and
    :attr:`neg_inf`.

    A histogram may be shared between threads: updates, merges and reads from many threads at
    once never fail and give exactly what a serial run gives (the histogram is locked inside;
    :meth:`update` counts with the GIL released, in parallel when the lock is taken, merging
    under it). An internal error (a bug) raises RuntimeError instead of crashing; a histogram it
    interrupted mid-change raises RuntimeError from then on rather than give inexact counts.

    Raises:
        ValueError: ``bins`` is outside ``16..=1048576`` (:data:`MIN_BINS` to :data:`MAX_BINS`).
    """

    def __new__(cls, bins: int = 4096) -> Histogram: ...
    def update(self, values: npt.ArrayLike) -> None:
        """Add every value of ``values`` (a numpy array of any shape, or anything numpy reads).

        float32 and float64 arrays whose values are contiguous in memory, in any axis order
        (C, Fortran, transposed, reversed), are read in place; strided, broadcast (stride 0) and
        byte-swapped arrays and float16 are read in memory order a block at a time (unaligned
        ones, such as fields of packed record arrays, are copied first). Large arrays are split
        over all cores. Counts are exact 64-bit integers, also beyond ``2**32``
        values. The GIL is released while the values are read.

        Raises:
            TypeError: the dtype is not float16, float32 or float64 (integers included).
        """

    def merge(self, other: Histogram) -> None:
        """Add ``other`` into this histogram, exactly (``h.merge(h)`` doubles ``h``).

        Raises:
            ValueError: the two histograms have different ``bins`` (they are not coarsened to
                one another: build both with the same ``bins``).
        """

    def __add__(self, other: Histogram, /) -> Histogram: ...
    def __radd__(self, other: Histogram, /) -> Histogram: ...
    def __iadd__(self, other: Histogram, /) -> Histogram: ...
    def __eq__(self, other: object, /) -> bool: ...
    def copy(self) -> Histogram:
        """An independent copy."""

    def __copy__(self) -> Histogram: ...
    def __deepcopy__(self, memo: Any) -> Histogram: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    def to_bytes(self) -> bytes:
        """A versioned, checksummed byte string (see :meth:`from_bytes`)."""

    @staticmethod
    def from_bytes(data: bytes) -> Histogram:
        """Read :meth:`to_bytes` output.

        Raises:
            ValueError: the bytes are corrupted, truncated, not a qfcal histogram, or from a
                newer format version.
        """

    def to_numpy(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float64]]:
        """``(counts, edges)`` with the zeros put back into the bin holding 0: what
        ``np.histogram`` gives for the same values and edges. The grid reaches 0; when that takes
        more than ``bins`` bins it is coarsened exactly by a power of two, as if the zeros had
        been binned all along."""

    @property
    def bins(self) -> int:
        """Configured number of bins."""

    @property
    def counts(self) -> npt.NDArray[np.uint64]:
        """Counts of the occupied bins, from the bin of the smallest nonzero value to the bin of
        the largest (zeros excluded)."""

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """Edges of the occupied bins (``len(counts) + 1`` values, exact multiples of
        :attr:`bin_width`; the last is ``inf`` only for values within a bin of the float64
        maximum)."""

    @property
    def bin_width(self) -> float | None:
        """``2**k``, or None before the first nonzero finite value."""

    @property
    def min(self) -> float | None:
        """Smallest finite value seen (zeros included), or None."""

    @property
    def max(self) -> float | None:
        """Largest finite value seen (zeros included), or None."""

    @property
    def at_extremes(self) -> tuple[int, int]:
        """How many values equal the smallest and the largest nonzero value: point masses the
        searches see exactly (a ReLU6 spike at 6.0 can sit on a grid point). ``(0, 0)`` without
        nonzero values, or for a histogram read from format version 1 bytes."""

    @property
    def total(self) -> int:
        """Every value seen, non-finite ones included."""

    @property
    def finite(self) -> int:
        """Finite values seen (binned plus zeros)."""

    @property
    def nonzero(self) -> int:
        """Nonzero finite values seen (the binned ones)."""

    @property
    def zeros(self) -> int:
        """Exact zeros seen."""

    @property
    def nan(self) -> int:
        """NaN values seen."""

    @property
    def pos_inf(self) -> int:
        """+Inf values seen."""

    @property
    def neg_inf(self) -> int:
        """-Inf values seen."""

@final
class SearchResult:
    """A chosen encoding and what it costs (frozen).

    ``min = (qmin - zero_point) * scale`` and ``max = (qmax - zero_point) * scale`` are exactly
    representable and zero lies on the grid, so TensorFlow's FakeQuant nudging leaves them alone.
    ``scale`` is a float32 value.
    """

    @property
    def scale(self) -> float:
        """Step size Δ (a float32 value)."""

    @property
    def zero_point(self) -> int:
        """Integer in ``[qmin, qmax]`` that represents 0."""

    @property
    def qmin(self) -> int: ...
    @property
    def qmax(self) -> int: ...
    @property
    def min(self) -> float:
        """Smallest representable value, ``(qmin - zero_point) * scale`` (<= 0)."""

    @property
    def max(self) -> float:
        """Largest representable value, ``(qmax - zero_point) * scale`` (>= 0)."""

    @property
    def loss(self) -> float:
        """The objective: ``rounding_loss + gamma * clipping_loss``."""

    @property
    def rounding_loss(self) -> float:
        """Expected squared rounding error per value (inside ``[min, max]``)."""

    @property
    def clipping_loss(self) -> float:
        """Expected squared clipping error per value (outside ``[min, max]``)."""

    @property
    def mse(self) -> float:
        """``rounding_loss + clipping_loss``."""

    @property
    def gamma(self) -> float: ...
    @property
    def sqnr_db(self) -> float:
        """``10*log10(E[x²] / mse)``; inf when there is no error."""

    @property
    def method(self) -> str: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __copy__(self) -> SearchResult: ...
    def __deepcopy__(self, memo: Any, /) -> SearchResult: ...
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]: ...

@final
class WeightedHistogram:
    """Counts and, beside them, the sum of a non-negative weight per value, on the same exact
    grid: the loss-aware density. ``qfcal.search(wh)`` then minimizes the weighted squared error
    ``sum w * (x - q(x))**2`` (for example with ``w`` the squared gradient of the loss with
    respect to each activation, see :mod:`qfcal.loss_aware`).

    Weights are summed exactly (each rounded down once to a multiple of ``2**-96``, 128-bit
    integer sums): the state does not depend on how values were batched, ordered or merged.
    Weights below ``2**-96`` count as 0; a total beyond ``2**32`` is an error (scale them down:
    only their ratios matter). Weights of NaN and +-Inf values are dropped with them.
    Picklable through :meth:`to_bytes` (lossless); ``copy.copy`` and ``copy.deepcopy`` work.
    """

    def __new__(cls, bins: int = 4096) -> WeightedHistogram: ...
    def __reduce__(self) -> tuple[Any, tuple[bytes]]: ...
    def to_bytes(self) -> bytes:
        """A versioned, checksummed byte string: the counts' :meth:`Histogram.to_bytes` and the
        exact fixed-point weight sums (see :meth:`from_bytes`)."""

    @staticmethod
    def from_bytes(data: bytes) -> WeightedHistogram:
        """Read :meth:`to_bytes` output, exactly.

        Raises:
            ValueError: the bytes are corrupted, truncated, not a qfcal weighted histogram,
                from a newer format version, or a state no update or merge can produce.
        """
    def update(self, values: npt.ArrayLike, weights: npt.ArrayLike) -> None:
        """Add ``values`` with their ``weights`` (same shape; each finite, >= 0 and below
        ``2**32``). Nothing changes if it raises ValueError."""
    def merge(self, other: WeightedHistogram) -> None:
        """Add ``other`` into this one, exactly (same ``bins``)."""
    def copy(self) -> WeightedHistogram: ...
    def __copy__(self) -> WeightedHistogram: ...
    def __deepcopy__(self, memo: Any, /) -> WeightedHistogram: ...
    @property
    def counts(self) -> Histogram:
        """The counts alone: exactly the :class:`Histogram` of the same values (a copy)."""
    @property
    def bins(self) -> int: ...
    @property
    def total_weight(self) -> float:
        """The total weight of the finite values."""
    def weight_sums(self) -> tuple[npt.NDArray[np.float64], float, float, float]:
        """``(bins, at_min, at_max, zeros)``: the weight sums of the occupied bins (those of
        ``counts.occupied``), of the values equal to the exact min and max, and of the zeros."""
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...

def _search_result(
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    rounding: float,
    clipping: float,
    gamma: float,
    sqnr_db: float,
    method: str,
) -> SearchResult:
    """Rebuilds a pickled :class:`SearchResult`."""

def search(
    hist: Histogram | WeightedHistogram | tuple[npt.ArrayLike, npt.ArrayLike] | Sequence[Any],
    *,
    bits: int = 8,
    symmetric: bool = False,
    signed: bool = True,
    narrow_range: bool = False,
    qmin: int | None = None,
    qmax: int | None = None,
    gamma: float = 1.0,
    method: _MethodName | str = "optimal",
    percentile: float = 99.99,
) -> SearchResult:
    """Choose a scale and zero point for ``hist``.

    Args:
        hist: a :class:`Histogram`, or ``(counts, edges)`` as from ``np.histogram``, ONNX
            Runtime's collector or ``torch.histc`` with its edges (uniform density per bin).
        bits: 2..16; with ``signed`` and ``narrow_range`` it sets ``qmin``/``qmax``.
        symmetric: fix the zero point (0 for signed grids, the middle for unsigned ones).
        signed: signed ``[-2**(bits-1), 2**(bits-1)-1]`` or unsigned ``[0, 2**bits-1]``.
        narrow_range: drop the lowest level (``[-127, 127]`` for signed 8 bits).
        qmin, qmax: explicit integer range, overriding ``bits``/``signed``/``narrow_range``.
        gamma: weight of the clipping loss against the rounding loss (> 0).
        method: ``optimal`` (the minimum of the cost), ``greedy`` (PyTorch/caffe2 walk),
            ``tf_enhanced`` (AIMET), ``entropy`` (TensorRT KL), ``percentile``, ``minmax``.
        percentile: for ``method="percentile"``, the percentile kept, in (0, 100].

    ``optimal`` searches every scale and zero point for the least cost; among costs within 1e-6
    relative it keeps the smallest scale (a near-constant tensor fits many grid points equally
    well). Tested never to be more than 1e-6 worse than another method or a dense brute-force
    scan (over the windows that fit the data) on random histograms. No method returns a range
    reaching more than half a step beyond the data's own minimum or maximum (or zero, which
    every range holds); a histogram's exact extremes are point masses, where a grid point can
    sit.
    Searches accept magnitudes ``max|x|`` from ``2**-110`` to ``2**100``, where scales and
    ranges stay normal float32 numbers at every bit width.

    Raises:
        ValueError: an option is out of range, the data's magnitude is outside the range above,
            or ``(counts, edges)`` is malformed.
        EmptyHistogramError: the histogram holds no finite value.
        TypeError: ``hist`` is neither a Histogram nor a pair.
    """

def score(
    hist: Histogram | WeightedHistogram | tuple[npt.ArrayLike, npt.ArrayLike] | Sequence[Any],
    result: SearchResult,
    *,
    gamma: float | None = None,
) -> SearchResult:
    """``result``'s encoding scored on ``hist``: the same scale, zero point, grid and method,
    with the loss (and SQNR) of that encoding on ``hist``'s density, weighted by ``gamma``
    (default: the result's own). The error a range makes on data it was not searched on: the
    held-out half of :func:`qfcal.cross_validate`.

    Raises:
        ValueError: a bad ``gamma``, a malformed ``(counts, edges)``.
        EmptyHistogramError: the histogram holds no finite value.
        TypeError: ``hist`` is neither a Histogram nor a pair.
    """

def check_search_options(
    *,
    bits: int = 8,
    symmetric: bool = False,
    signed: bool = True,
    narrow_range: bool = False,
    qmin: int | None = None,
    qmax: int | None = None,
    gamma: float = 1.0,
    method: _MethodName | str = "optimal",
    percentile: float = 99.99,
) -> None:
    """Check search options without a histogram: returns None when :func:`search` would accept
    them, and otherwise raises exactly the exception (type and message) that :func:`search`
    raises for them, since both run the same checks. Use it to validate options up front,
    before any data is read.

    Raises:
        ValueError: an option is out of range (message as from :func:`search`, e.g.
            ``bits must be in 2..=16, got 1``).
        TypeError: an option has the wrong type (``bits=8.0``, ``symmetric="yes"``).
    """

def methods() -> list[str]:
    """The names of the search methods, ``optimal`` first."""

def _channel_scales(
    values: npt.NDArray[np.float32],
    *,
    bits: int = 8,
    signed: bool = True,
    narrow_range: bool = False,
    qmin: int | None = None,
    qmax: int | None = None,
    widen: bool = True,
    threads: int = 0,
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
]:
    """``(scale, mse, fit_scale, fit_mse, power)`` per row of a C-contiguous float32
    ``(channels, n)`` array, on the symmetric grid of the options; used by
    :func:`qfcal.search_weights`."""
