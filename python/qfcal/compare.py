"""Calibration shoot-out: every range method on the same tensors of the same model.

qfcal collects one exact histogram per tensor once; every method is then scored from it at
almost no cost. For each tapped tensor and each method this module records the range, the cost
on the histogram (the expected squared error of quantize-then-dequantize, clipping weighted 1,
the same measure for every method), the time the method took, and the *true* error: the raw
activations of a held-apart evaluation batch (never seen by calibration) quantized with the
method's range. Per method it records the end-to-end top-1 of the model exported with that
method's ranges: the int8 ``.tflite`` at 8 bits, the FakeQuant graph (TensorFlow, float
emulation of the integer grid) at other bit widths, where TFLite has no kernels.

:func:`compare` returns a :class:`Comparison` (plain records, no pandas); :func:`write` makes
the markdown report and the PNG plots. ``qfcal compare`` runs it on a run folder.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import qfcal
from qfcal._io import write_json_atomic, write_text_atomic

# (label, qfcal.search options): the field's methods, as qfcal reimplements them
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("minmax", {"method": "minmax"}),
    ("percentile 99.9", {"method": "percentile", "percentile": 99.9}),
    ("percentile 99.99", {"method": "percentile", "percentile": 99.99}),
    ("percentile 99.999", {"method": "percentile", "percentile": 99.999}),
    ("entropy", {"method": "entropy"}),
    ("tf_enhanced", {"method": "tf_enhanced"}),
    ("greedy", {"method": "greedy"}),
    ("optimal", {"method": "optimal", "gamma": 1.0}),
    ("optimal gamma 3", {"method": "optimal", "gamma": 3.0}),
]
REFERENCE = "optimal"
TIE = 1e-12  # relative: errors this close count as equal (float64 summation order)
NEAR = 0.01  # relative: "within 1% of the lowest true error" (0.04 dB of SQNR)


@dataclass
class Row:
    """One tensor under one method."""

    tensor: str
    method: str
    min: float
    max: float
    scale: float
    zero_point: int
    hist_mse: float  # expected squared error on the calibration histogram (clipping weight 1)
    true_mse: float  # mean squared error quantizing the evaluation batch's raw activations
    true_sqnr_db: float
    seconds: float  # time of the range search for this tensor
    calib_mse: float = math.nan  # the same error on the calibration images' raw activations


@dataclass
class MethodSummary:
    """One method over the whole model."""

    method: str
    seconds: float  # all tensors' range searches
    best_true: int  # tensors where this method's true error is the lowest (ties count)
    top1: float | None  # end-to-end top-1 with this method's ranges (None: not measured)
    mean_true_sqnr_db: float
    near_best: int = 0  # tensors where its true error is within NEAR (1%) of the lowest
    best_calib: int = 0  # tensors where its error on the calibration activations is the lowest


@dataclass
class Comparison:
    """The shoot-out's table: per tensor and method (:attr:`rows`), per method
    (:attr:`methods`), and what it was measured on."""

    bits: int
    tensors: list[str]
    rows: list[Row]
    methods: list[MethodSummary]
    calibration_images: int
    eval_images: int
    accuracy_images: int
    float_top1: float | None
    accuracy_backend: str
    histograms: dict[str, qfcal.Histogram] = field(repr=False, default_factory=dict)
    peers: list[str] = field(default_factory=list)
    peer_notes: list[str] = field(default_factory=list)
    # the ceiling: qfcal optimal searched on the evaluation activations' own histogram
    # (what a perfect calibration set would give); true MSE per tensor, and on how many
    # tensors it is at least as good as every method above
    oracle_mse: dict[str, float] = field(default_factory=dict)
    oracle_lowest: int | None = None

    def row(self, tensor: str, method: str) -> Row:
        for r in self.rows:
            if r.tensor == tensor and r.method == method:
                return r
        raise KeyError(f"no row for tensor {tensor!r} and method {method!r}")

    def table(self) -> list[dict[str, Any]]:
        """Every row as a plain dict (JSON-ready)."""
        return [dict(r.__dict__) for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "calibration_images": self.calibration_images,
            "eval_images": self.eval_images,
            "accuracy_images": self.accuracy_images,
            "accuracy_backend": self.accuracy_backend,
            "float_top1": self.float_top1,
            "methods": [dict(m.__dict__) for m in self.methods],
            "peers": self.peers,
            "peer_notes": self.peer_notes,
            "oracle_lowest": self.oracle_lowest,
            "oracle_mse": self.oracle_mse,
            "rows": [
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in r.items()}
                for r in self.table()
            ],
        }  # fmt: skip


@dataclass(frozen=True)
class Grid:
    """An encoding from a peer: integer grid `[qmin, qmax]`, scale and zero point."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def min(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def max(self) -> float:
        return (self.qmax - self.zero_point) * self.scale


def available_peers() -> dict[str, str]:
    """The peers' own calibrators that can run here: ``{label: version or why not}``."""
    out = {}
    try:
        import torch

        out["torch HistogramObserver"] = f"torch {torch.__version__}"
    except ImportError:
        out["torch HistogramObserver"] = "not installed (pip install torch)"
    try:
        import onnxruntime
        from onnxruntime.quantization import calibrate  # noqa: F401

        for k in ("ort entropy", "ort percentile 99.999"):
            out[k] = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        for k in ("ort entropy", "ort percentile 99.999"):
            out[k] = "not installed (pip install onnxruntime onnx)"
    return out


def _torch_histogram_observer(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    import torch
    from torch.ao.quantization import HistogramObserver

    obs = HistogramObserver(quant_min=0, quant_max=2**bits - 1, dtype=torch.quint8)
    for b in batches:
        obs(torch.from_numpy(np.array(b, dtype=np.float32)))  # a writable copy
    scale, zp = obs.calculate_qparams()
    return Grid(float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]), 0, 2**bits - 1)


def _ort_collector(method: str) -> Any:
    from onnxruntime.quantization.calibrate import HistogramCollector

    if method == "entropy":  # create_calibrator's defaults for CalibrationMethod.Entropy
        return HistogramCollector("entropy", False, 128, 128, 99.999, "same")
    return HistogramCollector("percentile", True, 2048, 2048, 99.999, "same")


def _ort(batches: list[npt.NDArray[np.float32]], bits: int, method: str) -> Grid:
    import contextlib
    import io
    import warnings

    from onnxruntime.quantization.quant_utils import compute_scale_zp

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        col = _ort_collector(method)
        # the collector stacks its list with np.asarray, which needs batches of one shape (a
        # last, smaller batch fails): one flat array holds the same values
        flat = np.concatenate([np.asarray(b, dtype=np.float32).ravel() for b in batches])
        col.collect({"t": [flat]})
        out = col.compute_collection_result()["t"]
    lo, hi = (out[0], out[1]) if isinstance(out, tuple) else out.range_value
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    zp, scale = compute_scale_zp(
        np.float32(lo), np.float32(hi), np.int32(qmin), np.int32(qmax), symmetric=False
    )
    return Grid(float(scale), int(zp), qmin, qmax)


def _ort_entropy(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    return _ort(batches, bits, "entropy")


def _ort_percentile(batches: list[npt.NDArray[np.float32]], bits: int) -> Grid:
    return _ort(batches, bits, "percentile")


PEERS: dict[str, Callable[[list[npt.NDArray[np.float32]], int], Grid]] = {
    "torch HistogramObserver": _torch_histogram_observer,
    "ort entropy": _ort_entropy,
    "ort percentile 99.999": _ort_percentile,
}
# qfcal's reimplementation of each peer, for the "how far apart and why" note
COUNTERPART = {
    "torch HistogramObserver": (
        "greedy",
        "torch resamples its histogram when the range grows and counts levels as "
        "quant_max - quant_min + 1 in its error estimate; qfcal's walk runs on the exact "
        "histogram",
    ),
    "ort entropy": (
        "entropy",
        "ONNX Runtime's default is 128 bins and 128 levels, which leaves KL one candidate "
        "(the min/max range); qfcal's entropy uses TensorRT's 2048 bins and, as NVIDIA's "
        "calibrators do, gives the zero bin its neighbour's count",
    ),
    "ort percentile 99.999": (
        "percentile 99.999",
        "ONNX Runtime's percentile is symmetric (of |x|) on 2048 bins; qfcal's takes the two "
        "tails apart on the exact histogram",
    ),
}


def _sqnr(signal: float, mse: float) -> float:
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / mse) if signal > 0 else -math.inf


def quantize_error(x: npt.NDArray[Any], r: qfcal.SearchResult | Grid) -> float:
    """Sum of squared errors of quantize-then-dequantize of `x` on the grid of `r` (float64,
    round half to even)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    q = np.clip(np.round(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    d = x - (q - r.zero_point) * r.scale
    return float(np.dot(d, d))


def compare(
    model: Any,
    calib_images: npt.NDArray[np.float32],
    eval_images: npt.NDArray[np.float32],
    *,
    bits: int = 8,
    methods: list[tuple[str, dict[str, Any]]] | None = None,
    accuracy: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
    weights: str = "per-tensor",
    batch_size: int = 64,
    progress: bool = True,
    peers: bool | list[str] = False,
    oracle: bool = True,
) -> Comparison:
    """Score every method on every tapped tensor of `model` (a batch-norm-folded Keras model).

    `calib_images` make the histograms (and only they); `eval_images` give the raw activations
    for the true errors. With `accuracy` = ``(images, labels)``, each method's ranges are also
    exported and its top-1 measured (the int8 ``.tflite`` at 8 bits, the FakeQuant graph
    otherwise). With `peers` (True: every installed one, or a list of labels of
    :data:`PEERS`), the peers' own calibrators (PyTorch's ``HistogramObserver``, ONNX
    Runtime's histogram calibrators) see the same calibration activations and are scored the
    same way; their histogram cost is not defined (their grids are not qfcal's) and left NaN.

    Each row also has the error on the calibration images' own activations (`calib_mse`: the
    data the histograms came from). With `oracle`, qfcal's optimal search is also run on a
    histogram of the evaluation activations themselves: the ceiling a perfect calibration set
    would reach (:attr:`Comparison.oracle_mse`, :attr:`Comparison.oracle_lowest`).

    Raises:
        ValueError: no calibration or evaluation images; bits outside 2..16.
    """
    from keras import layers

    from qfcal import calibrate as qcal

    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    if len(calib_images) == 0 or len(eval_images) == 0:
        raise ValueError(
            f"calib_images and eval_images must not be empty, got {len(calib_images)} and "
            f"{len(eval_images)} images"
        )
    methods = METHODS if methods is None else methods
    labels = [m for m, _ in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods must have distinct labels, got {labels}")

    if peers is True:
        peer_labels = [k for k, v in available_peers().items() if not v.startswith("not")]
    else:
        peer_labels = list(peers or [])
    unknown = [p for p in peer_labels if p not in PEERS]
    if unknown:
        raise ValueError(f"peers must be among {', '.join(PEERS)}, got {unknown}")

    cal = qcal.calibrate(model, calib_images, batch_size=batch_size)
    names = list(cal.histograms)
    inner = [n for n in names if not isinstance(model.get_layer(n), layers.InputLayer)]
    import keras

    taps = keras.Model(model.inputs[0], [model.get_layer(n).output for n in inner])
    results: dict[str, dict[str, Any]] = {m: {} for m in [*labels, *peer_labels]}
    seconds: dict[str, dict[str, float]] = {m: {} for m in [*labels, *peer_labels]}
    for label, opts in methods:
        for n in names:
            t0 = time.perf_counter()
            results[label][n] = qfcal.search(cal.histograms[n], bits=bits, **opts)
            seconds[label][n] = time.perf_counter() - t0
    if peer_labels:
        # the peers see the same calibration activations, batch by batch, as qfcal did
        acts: dict[str, list[npt.NDArray[np.float32]]] = {n: [] for n in names}
        for batch in qcal._batches(np.asarray(calib_images, dtype=np.float32), batch_size):
            outs = taps(batch, training=False)
            got = {n: np.asarray(o) for n, o in zip(inner, outs, strict=True)}
            for n in names:
                acts[n].append(got.get(n, batch))
        for label in peer_labels:
            if progress:
                print(f"running {label} on {len(names)} tensors", flush=True)
            for n in names:
                t0 = time.perf_counter()
                results[label][n] = PEERS[label](acts[n], bits)
                seconds[label][n] = time.perf_counter() - t0
    labels = [*labels, *peer_labels]

    def activations(images: npt.NDArray[Any]) -> Any:
        """Each batch's raw activations, tensor by tensor, finite values only (float64)."""
        for batch in qcal._batches(np.asarray(images, dtype=np.float32), batch_size):
            outs = taps(batch, training=False)
            got = {n: np.asarray(o) for n, o in zip(inner, outs, strict=True)}
            for n in names:
                x = got.get(n, batch).astype(np.float64).ravel()
                yield n, x[np.isfinite(x)]

    def errors(
        images: npt.NDArray[Any],
        grids: dict[str, dict[str, Any]],
        into: dict[str, qfcal.Histogram] | None = None,
    ) -> tuple[dict[tuple[str, str], float], dict[str, float], dict[str, int]]:
        """Sums of squared errors per (grid label, tensor), signal energy and element count per
        tensor; the activations also feed the histograms `into` (the oracle's), if given."""
        sse = {(m, n): 0.0 for m in grids for n in names}
        energy = dict.fromkeys(names, 0.0)
        count = dict.fromkeys(names, 0)
        for n, x in activations(images):
            energy[n] += float(np.dot(x, x))
            count[n] += x.size
            if into is not None:
                into[n].update(x.astype(np.float32))
            for m in grids:
                sse[(m, n)] += quantize_error(x, grids[m][n])
        return sse, energy, count

    seen = {n: qfcal.Histogram(cal.histograms[n].bins) for n in names} if oracle else None
    sse, energy, count = errors(eval_images, results, into=seen)
    calib_sse, _, calib_count = errors(calib_images, results)
    oracle_mse: dict[str, float] = {}
    if seen is not None:
        best = {"oracle": {n: qfcal.search(seen[n], bits=bits) for n in names}}
        osse, _, _ = errors(eval_images, best)
        oracle_mse = {n: osse[("oracle", n)] / max(1, count[n]) for n in names}

    rows = []
    for n in names:
        for m in labels:
            r = results[m][n]
            mse = sse[(m, n)] / max(1, count[n])
            hist_mse = r.mse if isinstance(r, qfcal.SearchResult) else math.nan
            rows.append(
                Row(
                    tensor=n, method=m, min=r.min, max=r.max, scale=r.scale,
                    zero_point=r.zero_point, hist_mse=hist_mse, true_mse=mse,
                    true_sqnr_db=_sqnr(energy[n] / max(1, count[n]), mse),
                    seconds=seconds[m][n],
                    calib_mse=calib_sse[(m, n)] / max(1, calib_count[n]),
                )
            )  # fmt: skip

    top1: dict[str, float | None] = dict.fromkeys(labels)
    float_top1 = None
    backend = "not measured"
    if accuracy is not None:
        images, y = accuracy
        float_top1 = _top1_keras(model, images, y, batch_size)
        backend = "int8 .tflite (LiteRT)" if bits == 8 else f"FakeQuant graph, {bits}-bit"
        for label in labels:
            ranges = {n: (results[label][n].min, results[label][n].max) for n in names}
            if progress:
                print(f"end-to-end top-1 with the {label} ranges ({backend})", flush=True)
            top1[label] = _top1_quantized(model, ranges, images, y, bits, weights, batch_size)

    lowest = {n: min(r.true_mse for r in rows if r.tensor == n) for n in names}
    lowest_calib = {n: min(r.calib_mse for r in rows if r.tensor == n) for n in names}
    summaries = []
    for m in labels:
        mine = [r for r in rows if r.method == m]
        finite = [r.true_sqnr_db for r in mine if math.isfinite(r.true_sqnr_db)]
        summaries.append(
            MethodSummary(
                method=m,
                seconds=sum(seconds[m].values()),
                best_true=sum(r.true_mse <= lowest[r.tensor] * (1 + TIE) for r in mine),
                near_best=sum(r.true_mse <= lowest[r.tensor] * (1 + NEAR) for r in mine),
                best_calib=sum(r.calib_mse <= lowest_calib[r.tensor] * (1 + TIE) for r in mine),
                top1=top1[m],
                mean_true_sqnr_db=float(np.mean(finite)) if finite else math.nan,
            )
        )
    notes = []
    for p in peer_labels:
        ours, why = COUNTERPART[p]
        if ours not in labels:
            continue
        widths = [
            (results[p][n].max - results[p][n].min) / (results[ours][n].max - results[ours][n].min)
            for n in names
        ]
        ratios = [
            sse[(p, n)] / sse[(ours, n)] for n in names if sse[(ours, n)] > 0 and sse[(p, n)] > 0
        ]
        notes.append(
            f"{p} against qfcal's {ours}: range width ratio median {np.median(widths):.3f} "
            f"(min {np.min(widths):.3f}, max {np.max(widths):.3f}); true MSE ratio median "
            f"{np.median(ratios) if ratios else math.nan:.3f}. Why they differ: {why}."
        )
    return Comparison(
        peers=peer_labels,
        peer_notes=notes,
        bits=bits,
        tensors=names,
        rows=rows,
        methods=summaries,
        calibration_images=len(calib_images),
        eval_images=len(eval_images),
        accuracy_images=0 if accuracy is None else len(accuracy[0]),
        float_top1=float_top1,
        accuracy_backend=backend,
        histograms=cal.histograms,
        oracle_mse=oracle_mse,
        oracle_lowest=(
            sum(oracle_mse[n] <= lowest[n] * (1 + TIE) for n in names) if oracle else None
        ),
    )


def _top1_keras(model: Any, images: Any, labels: Any, batch_size: int) -> float:
    from qfcal.evaluate import call_keras

    hits = 0
    for i in range(0, len(images), batch_size):
        logits = call_keras(model, images[i : i + batch_size])
        hits += int(np.sum(np.argmax(logits, axis=1) == labels[i : i + batch_size]))
    return hits / len(images)


def _top1_quantized(
    model: Any,
    ranges: dict[str, tuple[float, float]],
    images: Any,
    labels: Any,
    bits: int,
    weights: str,
    batch_size: int,
) -> float:
    from qfcal import export

    run: Any
    if bits == 8:
        from qfcal.evaluate import TFLiteModel

        run = TFLiteModel(export.to_int8_tflite(model, ranges, weights=weights), num_threads=None)
    else:
        fn = export.fake_quant_function(model, ranges, weights, num_bits=bits)
        run = lambda x: fn(x).numpy()  # noqa: E731

    hits = 0
    for i in range(0, len(images), 256):
        out = run(np.asarray(images[i : i + 256], dtype=np.float32))
        hits += int(np.sum(np.argmax(out, axis=1) == labels[i : i + 256]))
    return hits / len(images)


# ---------------------------------------------------------------------------------------------
# report


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from qfcal.report import _coarse, _save_atomic

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
    path = folder / "sqnr_by_method.png"
    _save_atomic(fig, path)
    plt.close(fig)
    written.append(str(path))

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
        path = folder / "accuracy_by_method.png"
        _save_atomic(fig, path)
        plt.close(fig)
        written.append(str(path))

    # worst layers: lowest true SQNR of the reference method
    ref = REFERENCE if REFERENCE in labels else labels[0]
    order = sorted(c.tensors, key=lambda t: c.row(t, ref).true_sqnr_db)[:worst]
    cols = min(3, len(order))
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(list(axes.flat)[: len(order)], order, strict=True):
        h = c.histograms[t]
        if h.nonzero:
            raw_counts, raw_edges = h.to_numpy()
            counts, edges = _coarse(np.asarray(raw_counts), np.asarray(raw_edges), n=128)
            ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="#cccccc")
        ax.set_yscale("log")
        for i, m in enumerate(labels):
            r = c.row(t, m)
            ax.axvline(r.min, color=colours(i), lw=1, ls=":" if i % 2 else "-")
            ax.axvline(r.max, color=colours(i), lw=1, ls=":" if i % 2 else "-", label=m)
        ax.set_title(f"{t} ({ref}: {c.row(t, ref).true_sqnr_db:.1f} dB)", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("worst layers: histogram and each method's range")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = folder / "worst_layers.png"
    _save_atomic(fig, path)
    plt.close(fig)
    written.append(str(path))
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
