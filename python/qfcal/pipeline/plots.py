"""Plotting helpers shared by the run report (:mod:`.report`) and the shoot-out's report
(:mod:`.compare_report`): matplotlib without a display, histograms drawn readably, atomic PNGs.
Every report works without matplotlib (it then writes no plots)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import qfcal
from qfcal._io import atomic_path

DPI = 90


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def coarse(
    counts: npt.NDArray[Any], edges: npt.NDArray[Any], n: int = 96
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """At most about `n` bins, by merging neighbours (a few calibration images spread thinly
    over 2048+ bins); the edges must be evenly spaced, as a ``qfcal.Histogram``'s are."""
    g = max(1, math.ceil(len(counts) / n))
    pad = (-len(counts)) % g
    c = np.concatenate([counts, np.zeros(pad, dtype=counts.dtype)]).reshape(-1, g).sum(axis=1)
    e0 = edges[0]
    w = edges[1] - edges[0]
    return c, e0 + w * g * np.arange(len(c) + 1)


def draw_histogram(ax: Any, h: qfcal.Histogram, *, bins: int = 96, color: str = "#4c72b0") -> None:
    """`h` on `ax` with log counts, merged to about `bins` bins (exact zeros, counted apart by
    the histogram, are not drawn); an empty histogram draws an empty axis."""
    if h.nonzero:
        raw_counts, raw_edges = h.to_numpy()
        counts, edges = coarse(np.asarray(raw_counts), np.asarray(raw_edges), n=bins)
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color=color)
    ax.set_yscale("log")
    ax.tick_params(labelsize=6)


def save(fig: Any, path: Path) -> str:
    """Write `fig` to `path` atomically, close it, and return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    pyplot().close(fig)
    return str(path)
