"""The shoot-out's report: ``compare.md``, ``compare.json`` and the plots (per-layer SQNR by
method, top-1 by method, the worst layers' histograms with every method's range)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from qfcal._io import write_json_atomic, write_text_atomic
from qfcal.pipeline import plots as qplots
from qfcal.pipeline.compare import NEAR, REFERENCE, Comparison


def markdown(c: Comparison, title: str = "") -> str:
    labels = [m.method for m in c.methods]
    n = len(c.tensors)
    out = [
        f"# Calibration shoot-out{': ' + title if title else ''} ({c.bits}-bit activations)",
        "",
        f"{n} tensors; histograms from {c.calibration_images} calibration images; true errors "
        f"on the raw activations of {c.eval_images} held-apart images; end-to-end top-1 on "
        f"{c.accuracy_images} test images ({c.accuracy_backend}).",
        "",
        "## Per method",
        "",
        "Lowest true error: tensors where the method's error on the held-apart activations is "
        f"the lowest of all methods (ties count); within {100 * NEAR:g}%: its error is at most "
        f"{100 * NEAR:g}% above the lowest; on calibration data: the lowest error on the "
        "calibration images' own activations.",
        "",
        "| method | lowest true error | within 1% of lowest | lowest on calibration data "
        "| mean true SQNR (dB) | top-1 | search time (all tensors) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    if c.float_top1 is not None:
        out.append(f"| float model | - | - | - | - | {100 * c.float_top1:.2f}% | - |")
    for m in c.methods:
        t1 = "-" if m.top1 is None else f"{100 * m.top1:.2f}%"
        out.append(
            f"| {m.method} | {m.best_true}/{n} | {m.near_best}/{n} | {m.best_calib}/{n} | "
            f"{m.mean_true_sqnr_db:.2f} | {t1} | {1e3 * m.seconds:.1f} ms |"
        )
    if c.oracle_lowest is not None:
        out += [
            "",
            "Ceiling: qfcal `optimal` searched on a histogram of the held-apart activations "
            f"themselves (not a usable method: it sees the evaluation data) is at least as good "
            f"as every method above on {c.oracle_lowest}/{n} tensors. The gap between this and "
            "`optimal`'s count is what the calibration set's size costs; what remains below "
            f"{n} is finer than a {c.histograms[c.tensors[0]].bins}-bin histogram resolves."
            if c.histograms
            else "",
        ]
    own = [m for m in c.methods if m.method not in c.peers]
    out += [
        "",
        f"All qfcal methods on all tensors: {1e3 * sum(m.seconds for m in own):.0f} ms of "
        "range search (histograms collected once).",
        "",
        *(
            ["", "## The peers' own calibrators", "", *[f"- {n}" for n in c.peer_notes]]
            if c.peers
            else []
        ),
        "",
        "## Per tensor: true SQNR (dB) of each method's range on the held-apart batch",
        "",
        "Bold: the best in the row. The histogram cost of `optimal` is the lowest in every row by "
        "construction; the true error need not be (the evaluation batch is not the calibration "
        "set).",
        "",
        "| tensor | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for t in c.tensors:
        rs = [c.row(t, m) for m in labels]
        best = min(r.true_mse for r in rs)
        cells = []
        for r in rs:
            v = "inf" if not math.isfinite(r.true_sqnr_db) else f"{r.true_sqnr_db:.1f}"
            cells.append(f"**{v}**" if r.true_mse <= best * (1 + 1e-12) else v)
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out += ["", "## Per tensor: ranges", "", "| tensor | " + " | ".join(labels) + " |"]
    out.append("|---|" + "---:|" * len(labels))
    for t in c.tensors:
        cells = [f"[{c.row(t, m).min:.3g}, {c.row(t, m).max:.3g}]" for m in labels]
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plots(c: Comparison, folder: Path, worst: int = 6) -> list[str]:
    """Per-layer SQNR by method, top-1 by method, and the worst layers' histograms with each
    method's range. Returns the paths written (none without matplotlib)."""
    plt = qplots.pyplot()
    if plt is None:
        return []

    labels = [m.method for m in c.methods]
    colours = plt.get_cmap("tab10")
    written = []

    fig, ax = plt.subplots(figsize=(max(8.0, 0.2 * len(c.tensors)), 4.2))
    for i, m in enumerate(labels):
        ys = [c.row(t, m).true_sqnr_db for t in c.tensors]
        ys = [y if math.isfinite(y) else np.nan for y in ys]
        ax.plot(range(len(c.tensors)), ys, marker=".", lw=1, label=m, color=colours(i))
    ax.set_xticks(range(len(c.tensors)), c.tensors, rotation=90, fontsize=6)
    ax.set_ylabel("true SQNR (dB), held-apart batch")
    ax.set_title(f"per-layer SQNR by method ({c.bits}-bit activations)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    written.append(qplots.save(fig, folder / "sqnr_by_method.png"))

    if any(m.top1 is not None for m in c.methods):
        fig, ax = plt.subplots(figsize=(8, 3.6))
        vals = [100 * (m.top1 or 0.0) for m in c.methods]
        bars = ax.bar(range(len(labels)), vals, color=[colours(i) for i in range(len(labels))])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        if c.float_top1 is not None:
            ax.axhline(100 * c.float_top1, color="k", ls="--", lw=1, label="float model")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        lo = min(vals + ([100 * c.float_top1] if c.float_top1 is not None else []))
        ax.set_ylim(max(0.0, lo - 5), 100)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"float vs quantized top-1 by method ({c.accuracy_backend})")
        fig.tight_layout()
        written.append(qplots.save(fig, folder / "accuracy_by_method.png"))

    # worst layers: lowest true SQNR of the reference method
    ref = REFERENCE if REFERENCE in labels else labels[0]
    order = sorted(c.tensors, key=lambda t: c.row(t, ref).true_sqnr_db)[:worst]
    cols = min(3, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(list(axes.flat)[: len(order)], order, strict=True):
        qplots.draw_histogram(ax, c.histograms[t], bins=128, color="#cccccc")
        for i, m in enumerate(labels):
            r = c.row(t, m)
            ax.axvline(r.min, color=colours(i), lw=1, ls=":" if i % 2 else "-")
            ax.axvline(r.max, color=colours(i), lw=1, ls=":" if i % 2 else "-", label=m)
        ax.set_title(f"{t} ({ref}: {c.row(t, ref).true_sqnr_db:.1f} dB)", fontsize=8)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("worst layers: histogram and each method's range")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    written.append(qplots.save(fig, folder / "worst_layers.png"))
    return written


def write(c: Comparison, folder: str | os.PathLike[str], title: str = "") -> list[str]:
    """``compare.json``, ``compare.md`` and the plots into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pngs = plots(c, folder)
    write_json_atomic(folder / "compare.json", c.to_json())
    md = markdown(c, title)
    if pngs:
        md += "\n## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in pngs)
        md += "\n"
    write_text_atomic(folder / "compare.md", md)
    return [str(folder / "compare.json"), str(folder / "compare.md"), *pngs]
