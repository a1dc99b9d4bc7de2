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
    from matplotlib import ticker

    if h.nonzero:
        raw_counts, raw_edges = h.to_numpy()
        counts, edges = coarse(np.asarray(raw_counts), np.asarray(raw_edges), n=bins)
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color=color)
    ax.set_yscale("log")
    # Only the decades: a log axis's minor ticks and their labels cost most of a grid's drawing
    ax.yaxis.set_major_locator(ticker.LogLocator(numticks=4))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.tick_params(labelsize=6)


def save(fig: Any, path: Path) -> str:
    """Write `fig` to `path` atomically, close it, and return the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    pyplot().close(fig)
    return str(path)


_KIND_COLORS = {"depthwise": "#dd8452", "conv": "#4c72b0", "dense": "#55a868"}
_HIT_COLOR = "#c44e52"


def weight_stats(rows: list[dict[str, Any]], path: Path, title: str = "") -> str | None:
    """The per-layer weight figures of :mod:`qfcal.pipeline.inspect_weights` (its
    ``LayerWeights.to_dict`` rows) in two panels over the layers: the spread of the channel
    ranges (log axis, bars coloured by kind, depthwise apart), and the 8-bit weight SQNR with
    one scale per tensor against one per channel; hit layers shaded red with red names; `title`
    (the model's name, say) heads the title. Writes `path` and returns it, or None where
    matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return None
    n = len(rows)
    x = np.arange(n)
    label_in = 0.06 * max([0, *(len(r["name"]) for r in rows)])  # the names under the axis
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(max(6.0, 0.2 * n + 2.0), 5.0 + label_in), layout="constrained"
    )
    spread = [np.nan if r["spread"] is None else r["spread"] for r in rows]
    colors = [_KIND_COLORS.get(r["kind"], "#8c8c8c") for r in rows]
    top.bar(x, spread, color=colors)
    top.set_yscale("log")
    top.set_ylabel("channel range spread (x)")
    for i, r in enumerate(rows):
        if r["spread"] is None:
            top.annotate("inf", (i, 1), ha="center", fontsize=6, color=_HIT_COLOR)
    tensor = [_or_nan(r["sqnr_tensor"].get("8")) for r in rows]
    channel = [_or_nan(r["sqnr_channel"].get("8")) for r in rows]
    bottom.vlines(x, tensor, channel, color="#bbbbbb", lw=1)
    bottom.plot(x, channel, "o", ms=3.5, color="#4c72b0", label="one scale per channel")
    bottom.plot(x, tensor, "o", ms=3.5, color="#dd8452", label="one scale per tensor")
    bottom.set_ylabel("8-bit weight SQNR (dB)")
    for ax in (top, bottom):
        for i, r in enumerate(rows):
            if r["hit"]:
                ax.axvspan(i - 0.5, i + 0.5, color=_HIT_COLOR, alpha=0.15, lw=0)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=k) for k, c in _KIND_COLORS.items()] + [
        plt.Rectangle((0, 0), 1, 1, color=_HIT_COLOR, alpha=0.15, label="hit")
    ]
    top.legend(handles=handles, fontsize=7, loc="upper right")
    bottom.legend(fontsize=7, loc="lower right")
    bottom.set_xticks(x, [r["name"] for r in rows], rotation=90, fontsize=6)
    for label, r in zip(bottom.get_xticklabels(), rows, strict=True):
        if r["hit"]:
            label.set_color(_HIT_COLOR)
    bottom.set_xlim(-0.5, max(n, 1) - 0.5)
    fig.suptitle(
        (f"{title}: " if title else "")
        + "folded weights per layer: channel range spread; 8-bit SQNR per tensor vs per channel",
        fontsize=9,
    )
    return save(fig, path)


def _or_nan(x: float | None) -> float:
    return np.nan if x is None else float(x)
