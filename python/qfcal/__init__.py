"""qfcal: exact streaming histograms and optimal quantization ranges for post-training quantization.

>>> import numpy as np, qfcal
>>> h = qfcal.Histogram()
>>> h.update(np.random.default_rng(0).standard_normal(10_000, dtype=np.float32))
>>> r = qfcal.search(h, bits=8)
>>> r.min <= 0.0 <= r.max
True

Only numpy and the Rust extension are imported here; framework adapters live in their own
modules and import their framework when they are imported.
"""

from qfcal._core import (
    DEFAULT_BINS,
    MAX_BINS,
    MIN_BINS,
    EmptyHistogramError,
    Histogram,
    SearchResult,
    WeightedHistogram,
    __version__,
    check_search_options,
    methods,
    score,
    search,
)
from qfcal.crossval import cross_validate
from qfcal.weights import WeightRanges, search_weights

__all__ = [
    "DEFAULT_BINS",
    "MAX_BINS",
    "MIN_BINS",
    "EmptyHistogramError",
    "Histogram",
    "SearchResult",
    "WeightRanges",
    "WeightedHistogram",
    "__version__",
    "check_search_options",
    "cross_validate",
    "methods",
    "score",
    "search",
    "search_weights",
]
