"""A clip that generalizes: each tensor's clipping chosen by cross-validation over per-sample
histograms, instead of trusting the tails of a small calibration set.

One image per class (the seed's recipe) gives a calibration set whose extremes are a sample of
the tensor's true tails: a range fitted to all of it can clip too much (the rare large values of
unseen inputs) or too little. With one histogram per calibration sample (or per small group of
samples), :func:`cross_validate` searches the range on all but one fold at each clipping weight
``gamma``, scores it on the fold left out (:func:`qfcal.score`: the error the range makes on data
it did not see), and keeps the ``gamma`` of least held-out error; the range returned is then
searched on all the data with that ``gamma``. Exact merges make every "all but one" histogram
cheap: prefix and suffix merges, no data read twice.

>>> import numpy as np, qfcal
>>> rng = np.random.default_rng(0)
>>> per_sample = []
>>> for _ in range(8):
...     h = qfcal.Histogram()
...     h.update(rng.standard_t(3, 2000).astype(np.float32))
...     per_sample.append(h)
>>> r = qfcal.cross_validate(per_sample, bits=4)
>>> r.gamma in qfcal.crossval.DEFAULT_GAMMAS
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qfcal._core import Histogram, SearchResult, check_search_options, score, search
from qfcal.distributed import merge_bytes

#: Clipping weights tried by default: from the plain mean squared error (1) to ranges that
#: all but refuse to clip (256).
DEFAULT_GAMMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0)


def _folds(hists: Sequence[Histogram], folds: int) -> list[Histogram]:
    """The histograms merged into `folds` groups of consecutive ones, sizes differing by one."""
    n = len(hists)
    bounds = [round(i * n / folds) for i in range(folds + 1)]
    return [merge_bytes(hists[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def held_out_errors(
    hists: Sequence[Histogram],
    *,
    folds: int | None = None,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    **options: Any,
) -> dict[float, float]:
    """For each ``gamma``: the squared error, summed over the values of every fold, of the range
    searched on the other folds (see :func:`cross_validate` for the arguments)."""
    groups, gammas = _check(hists, folds, gammas, options)
    k = len(groups)
    # all but fold i = prefix[i] + suffix[i + 1], each merged once
    prefix: list[Histogram | None] = [None]
    for g in groups[:-1]:
        last = prefix[-1]
        prefix.append(g.copy() if last is None else last + g)
    suffix: list[Histogram | None] = [None]
    for g in reversed(groups[1:]):
        last = suffix[-1]
        suffix.append(g.copy() if last is None else last + g)
    suffix.reverse()
    errors = dict.fromkeys(gammas, 0.0)
    for i in range(k):
        parts = [h for h in (prefix[i], suffix[i]) if h is not None]
        train = parts[0] + parts[1] if len(parts) == 2 else parts[0]
        test = groups[i]
        if train.finite == 0 or test.finite == 0:
            continue
        for gamma in gammas:
            r = search(train, gamma=gamma, **options)
            errors[gamma] += score(test, r, gamma=1.0).mse * test.finite
    return errors


def cross_validate(
    hists: Sequence[Histogram],
    *,
    folds: int | None = None,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    **options: Any,
) -> SearchResult:
    """The range of all the data, searched with the clipping weight ``gamma`` whose ranges
    made the least error on the data they were not searched on.

    Args:
        hists: one :class:`qfcal.Histogram` per calibration sample (or group of samples), all
            with the same ``bins``; at least two holding finite values.
        folds: how many folds (consecutive histograms are merged into each); default: one per
            histogram (leave one out).
        gammas: the clipping weights tried (positive, finite). Among equal held-out errors the
            smallest wins.
        **options: the other options of :func:`qfcal.search` (``bits``, ``symmetric``,
            ``signed``, ``narrow_range``, ``qmin``, ``qmax``, ``method``, ``percentile``).

    Returns:
        ``search(merged, gamma=best, **options)``; its ``gamma`` says which was chosen.

    Raises:
        TypeError: `hists` is not a sequence of Histograms, or an unknown option.
        ValueError: fewer than two histograms (or folds) with finite values, histograms with
            different ``bins``, a bad fold count or ``gamma``, or a bad search option.
    """
    errors = held_out_errors(hists, folds=folds, gammas=gammas, **options)
    best = min(errors, key=lambda g: (errors[g], g))
    return search(merge_bytes(hists), gamma=best, **options)


def _check(
    hists: Sequence[Histogram], folds: int | None, gammas: Sequence[float], options: dict[str, Any]
) -> tuple[list[Histogram], list[float]]:
    if "gamma" in options:
        raise TypeError("cross_validate chooses gamma: pass the candidates as gammas=")
    if isinstance(hists, Histogram) or not isinstance(hists, Sequence):
        raise TypeError(f"hists must be a sequence of qfcal.Histogram, got {type(hists).__name__}")
    hists = list(hists)
    for i, h in enumerate(hists):
        if not isinstance(h, Histogram):
            raise TypeError(f"hists[{i}] must be a qfcal.Histogram, got {type(h).__name__}")
    bins = {h.bins for h in hists}
    if len(bins) > 1:
        raise ValueError(f"hists must all have the same bins, got {sorted(bins)}")
    with_values = [h for h in hists if h.finite > 0]
    if len(with_values) < 2:
        raise ValueError(
            f"hists must hold at least two histograms with finite values, got {len(with_values)}"
        )
    k = len(with_values) if folds is None else folds
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= len(with_values):
        raise ValueError(
            f"folds must be an int in 2..={len(with_values)} (the histograms with finite "
            f"values), got {folds!r}"
        )
    gammas = list(gammas)
    if not gammas or not all(
        isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g > 0
        for g in gammas
    ):
        raise ValueError(f"gammas must be positive finite numbers, got {gammas!r}")
    check_search_options(**options)
    return _folds(with_values, k), [float(g) for g in gammas]
