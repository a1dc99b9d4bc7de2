"""A run's report: ``report.json`` (everything measured), ``report.md`` (the same, readable) and
PNG plots (per-layer histograms with the chosen ranges, per-layer SQNR, float vs int8 top-1, the
folded weights per layer).

Plots need matplotlib (part of the ``tf`` extra); without it the report says so and carries on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import qfcal
from qfcal._io import write_json_atomic, write_text_atomic
from qfcal.pipeline import plots as qplots


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def summary_table(report: dict[str, Any]) -> str:
    """The float-vs-int8 table (markdown) printed at the end of a run."""
    ev = report["evaluation"]
    top1, lat, size = ev["top1"], ev["latency"], ev["size_bytes"]
    rows = [
        "| model | top-1 | latency median (p90), 1 thread | size |",
        "|---|---:|---:|---:|",
        f"| Keras float | {_pct(top1['keras_float'])} | - | - |",
    ]
    mode = report.get("config", {}).get("weights")
    int8 = f"int8 .tflite, {mode} weights" if mode else "int8 .tflite"
    for key, name in (("tflite_float", "float .tflite"), ("tflite_int8", int8)):
        lt = lat[key]
        rows.append(
            f"| {name} | {_pct(top1[key])} | {lt['median_ms']:.3f} ms ({lt['p90_ms']:.3f} ms)"
            f" | {_kib(size[key])} |"
        )
    other = ev.get("other_weights")
    if other:  # the same ranges, the other weight granularity: what the seed is about
        rows.append(
            f"| int8 .tflite, {other['weights']} weights | {_pct(other['top1'])} | - "
            f"| {_kib(other['size_bytes'])} |"
        )
    rows.append("")
    rows.append(
        f"int8 drop: {ev['int8_drop_points']:+.2f} points of top-1 (float .tflite minus int8); "
        f"float/int8 agreement {_pct(ev['agreement_float_int8'])}; "
        f"int8 latency {ev['latency_ratio_int8_float']:.2f}x the float .tflite's"
    )
    weights = report.get("weights")
    if weights:
        # the seed's story on this model: does one weight scale per tensor cost it anything?
        cfg = report.get("config", {})
        rows.append(
            f"weights ({cfg.get('variant', '?')} {cfg.get('arch', '?')}, int8 "
            f"{cfg.get('weights', '?')}): {weights['summary']}"
        )
    return "\n".join(rows)


def _db(x: float | None) -> str:
    return "inf" if x is None else f"{x:.1f}"


def weights_markdown(weights: dict[str, Any], per: str = "") -> list[str]:
    """The report's section on the float model's folded weights (``report["weights"]``, from
    :func:`qfcal.pipeline.inspect_weights.stats_json`): the summary naming the layers the seed's
    per-tensor problem hits, then one table row per layer. `per` is how the int8 model's
    weights were quantized (``per-tensor`` or ``per-channel``), said where given."""
    bits = weights["bits"]
    out = [
        "",
        "## Weights per layer (batch norms folded)",
        "",
        "Spread: the largest channel's max |w| over the median live channel's (a dead "
        "channel counts in the largest, as it does in one scale per tensor); dead: zero "
        "batch-norm variance or all-zero weights; weight SQNR with one "
        "symmetric scale per tensor / one per channel; hit: a spread of "
        f"{weights.get('hit_spread', 4.0):g}x or more (the median channel keeps a quarter of "
        "its levels or less with one scale per tensor)."
        + (f" This run's int8 model quantizes its weights {per}." if per else ""),
        "",
        f"**{weights['summary']}**",
        "",
        "| layer | kind | channels | spread | dead | "
        + " | ".join(f"{b}-bit SQNR dB (tensor / channel)" for b in bits)
        + " | hit |",
        "|---|---|---:|---:|---:|" + "---:|" * len(bits) + "---|",
    ]
    for r in weights["layers"]:
        spread = "inf" if r["spread"] is None else f"{r['spread']:,.1f}x"
        sq = " | ".join(
            f"{_db(r['sqnr_tensor'][str(b)])} / {_db(r['sqnr_channel'][str(b)])}" for b in bits
        )
        hit = "**hit**" if r["hit"] else ""
        out.append(
            f"| {r['name']} | {r['kind']} | {r['channels']} | {spread} | {r['dead']} | {sq} "
            f"| {hit} |"
        )
    return out


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    """``report.md``: configuration, the summary table, training, per-tensor ranges, the folded
    weights per layer, plots."""
    cfg = report["config"]
    out = [
        f"# qfcal run: {cfg['arch']} {cfg['variant']} (alpha {cfg['alpha']:g}) on {cfg['dataset']}",
        "",
        f"qfcal {report['qfcal_version']}; written {report['written']}.",
        "",
        "## Result",
        "",
        summary_table(report),
        "",
        "## Configuration",
        "",
        "| option | value |",
        "|---|---|",
    ]
    for k, v in cfg.items():
        out.append(f"| {k} | `{v}` |")
    hist = report.get("training", {}).get("history", {})
    if hist:
        out += ["", "## Training", "", "| epoch | loss | accuracy |", "|---:|---:|---:|"]
        pairs = zip(hist.get("loss", []), hist.get("accuracy", []), strict=True)
        for i, (loss, acc) in enumerate(pairs):
            out.append(f"| {i + 1} | {loss:.4f} | {_pct(acc)} |")
    out += [
        "",
        "## Activation ranges (one row per int8 tensor)",
        "",
        f"{report['calibration']['images']} calibration images; method "
        f"`{cfg['method']}`, gamma {cfg['gamma']}"
        + (f", percentile {cfg['percentile']}." if cfg["method"] == "percentile" else "."),
        "",
        "| tensor | min | max | scale | zero point | SQNR dB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["ranges"].items():
        sq = "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}"
        out.append(
            f"| {name} | {r['min']:.5g} | {r['max']:.5g} | {r['scale']:.4g} | "
            f"{r['zero_point']} | {sq} |"
        )
    if report.get("weights"):
        out += weights_markdown(report["weights"], cfg.get("weights", ""))
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    else:
        out += ["", "(no plots: matplotlib is not installed)"]
    return "\n".join(out) + "\n"


def plots(
    folder: Path, report: dict[str, Any], histograms: dict[str, qfcal.Histogram]
) -> list[str]:
    """Write the PNG plots; returns their paths (none without matplotlib)."""
    plt = qplots.pyplot()
    if plt is None:
        return []
    written = []
    ranges = report["ranges"]

    # per-layer histograms with the chosen range
    names = [n for n in ranges if n in histograms]
    cols = 6
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    for ax, name in zip(list(axes.flat)[: len(names)], names, strict=True):
        r = ranges[name]
        qplots.draw_histogram(ax, histograms[name])
        ax.axvline(r["min"], color="#c44e52", lw=1)
        ax.axvline(r["max"], color="#c44e52", lw=1)
        ax.set_title(f"{name}\n[{r['min']:.3g}, {r['max']:.3g}]", fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("activation histograms (log counts; exact zeros not drawn) and int8 ranges (red)")
    # fixed margins: tight_layout over a grid of 30+ axes took seconds
    top = 1 - 0.8 / (2.2 * rows)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.3 / rows, top=top, wspace=0.3, hspace=0.75)
    written.append(qplots.save(fig, folder / "histograms.png"))

    # per-layer SQNR
    sq = [ranges[n]["sqnr_db"] if ranges[n]["sqnr_db"] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(names)), 3.5))
    ax.bar(range(len(names)), sq, color="#55a868")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("SQNR of the int8 range (dB)")
    ax.set_title("per-tensor quantization SQNR on the calibration histogram")
    fig.tight_layout()
    written.append(qplots.save(fig, folder / "sqnr.png"))

    # float vs int8 top-1
    top1 = report["evaluation"]["top1"]
    mode = report.get("config", {}).get("weights")
    labels = ["Keras float", "float .tflite", f"int8 .tflite\n{mode}" if mode else "int8 .tflite"]
    vals = [100 * top1[k] for k in ("keras_float", "tflite_float", "tflite_int8")]
    colors = ["#8172b2", "#4c72b0", "#dd8452"]
    other = report["evaluation"].get("other_weights")
    if other:
        labels.append(f"int8 .tflite\n{other['weights']}")
        vals.append(100 * other["top1"])
        colors.append("#c39b6f")
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(vals), 3.2))
    bars = ax.bar(labels, vals, color=colors)
    ax.bar_label(bars, fmt="%.2f")
    lo = max(0.0, min(vals) - 5)
    ax.set_ylim(lo, min(100.0, max(vals) + 2))
    ax.set_ylabel("top-1 (%)")
    ax.set_title("float vs int8 accuracy on the test set")
    fig.tight_layout()
    written.append(qplots.save(fig, folder / "accuracy.png"))

    # the float model's folded weights per layer
    if report.get("weights"):
        png = qplots.weight_stats(report["weights"]["layers"], folder / "weights.png")
        if png:
            written.append(png)
    return written


def write(
    folder: str | os.PathLike[str],
    report: dict[str, Any],
    histograms: dict[str, qfcal.Histogram],
) -> list[str]:
    """Write ``report.json``, the plots and ``report.md`` into `folder`; returns the paths."""
    folder = Path(folder)
    pngs = plots(folder, report, histograms)
    write_json_atomic(folder / "report.json", report)
    md = folder / "report.md"
    write_text_atomic(md, markdown(report, pngs))
    return [str(folder / "report.json"), str(md), *pngs]
