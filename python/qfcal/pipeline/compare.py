"""Calibration shoot-out: every range method on the same tensors of the same model.

One concept in one file (about 500 lines): the shoot-out's records and its phases; its report is
:mod:`.compare_report`, the other toolkits' calibrators :mod:`.peers`.

qfcal collects one exact histogram per tensor once; every method is then scored from it at
almost no cost. For each tapped tensor and each method this module records the range, the cost
on the histogram (the expected squared error of quantize-then-dequantize, clipping weighted 1,
the same measure for every method), the time the method took, and the *true* error: the raw
activations of a held-apart evaluation batch (never seen by calibration) quantized with the
method's range. Per method it records the end-to-end top-1 of the model exported with that
method's ranges: the int8 ``.tflite`` at 8 bits, the FakeQuant graph (TensorFlow, float
emulation of the integer grid) at other bit widths, where TFLite has no kernels.

:func:`compare` returns a :class:`Comparison` (plain records, no pandas). It runs in named
phases: *collect* (one histogram per tapped tensor from the calibration images,
:func:`qfcal.pipeline.taps.collect_histograms`), *search* (:func:`search_ranges`: every method
on every histogram; :func:`peer_ranges`: the peers' own calibrators on the same activations),
*score* (:func:`score`: each range's true error on raw activations), *accuracy*
(:func:`accuracy`: each method's end-to-end top-1), then :func:`summarize`.
:func:`qfcal.pipeline.compare_report.write` makes the markdown report and the PNG plots;
``qfcal compare`` runs it all on a run folder. Importing this module needs numpy only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

import qfcal
from qfcal._progress import Progress, track
from qfcal.pipeline.peers import COUNTERPART, PEERS, Grid, available_peers

if TYPE_CHECKING:
    from qfcal.pipeline.taps import Taps

log = logging.getLogger(__name__)

# the ranges of one method (or peer): tensor -> its grid
Ranges = dict[str, "qfcal.SearchResult | Grid"]

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
    :data:`qfcal.pipeline.peers.PEERS`), the peers' own calibrators (PyTorch's
    ``HistogramObserver``, ONNX Runtime's histogram calibrators) see the same calibration
    activations and are scored the same way; their histogram cost is not defined (their grids
    are not qfcal's) and left NaN.

    Each row also has the error on the calibration images' own activations (`calib_mse`: the
    data the histograms came from). With `oracle`, qfcal's optimal search is also run on a
    histogram of the evaluation activations themselves: the ceiling a perfect calibration set
    would reach (:attr:`Comparison.oracle_mse`, :attr:`Comparison.oracle_lowest`).
    `progress`: progress bars over the phases.

    Raises:
        ValueError: no calibration or evaluation images; bits outside 2..16; unknown peers;
            methods with the same label.
    """
    from qfcal.pipeline.taps import Taps, collect_histograms

    methods = METHODS if methods is None else methods
    peer_labels = _check(bits, calib_images, eval_images, methods, peers)
    # collect
    taps = Taps(model)
    histograms = collect_histograms(model, calib_images, batch_size=batch_size).histograms
    # search
    ranges, seconds = search_ranges(histograms, methods, bits, progress=progress)
    if peer_labels:
        more, more_seconds = peer_ranges(
            taps, calib_images, peer_labels, bits, batch_size=batch_size, progress=progress
        )
        ranges.update(more)
        seconds.update(more_seconds)
    # score
    seen = {n: qfcal.Histogram(h.bins) for n, h in histograms.items()} if oracle else None
    true = score(taps, eval_images, ranges, batch_size=batch_size, into=seen)
    calib = score(taps, calib_images, ranges, batch_size=batch_size)
    oracle_mse: dict[str, float] = {}
    if seen is not None:
        best: dict[str, Ranges] = {
            "oracle": {n: qfcal.search(h, bits=bits) for n, h in seen.items()}
        }
        ceiling = score(taps, eval_images, best, batch_size=batch_size)
        oracle_mse = {n: ceiling.mse("oracle", n) for n in taps.names}
    rows = _rows(taps.names, ranges, seconds, true, calib)
    # accuracy
    top1: dict[str, float | None] = dict.fromkeys(ranges)
    float_top1, backend = None, "not measured"
    if accuracy is not None:
        float_top1, top1, backend = measure_accuracy(
            model, ranges, accuracy, bits=bits, weights=weights, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    summaries, lowest = summarize(rows, seconds, top1)
    return Comparison(
        peers=peer_labels,
        peer_notes=peer_notes(peer_labels, ranges, true),
        bits=bits,
        tensors=taps.names,
        rows=rows,
        methods=summaries,
        calibration_images=len(calib_images),
        eval_images=len(eval_images),
        accuracy_images=0 if accuracy is None else len(accuracy[0]),
        float_top1=float_top1,
        accuracy_backend=backend,
        histograms=histograms,
        oracle_mse=oracle_mse,
        oracle_lowest=(
            sum(oracle_mse[n] <= lowest[n] * (1 + TIE) for n in taps.names) if oracle else None
        ),
    )


def _check(
    bits: int,
    calib_images: npt.NDArray[np.float32],
    eval_images: npt.NDArray[np.float32],
    methods: list[tuple[str, dict[str, Any]]],
    peers: bool | list[str],
) -> list[str]:
    """Check :func:`compare`'s arguments before any work; the peers' labels to run."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    if len(calib_images) == 0 or len(eval_images) == 0:
        raise ValueError(
            f"calib_images and eval_images must not be empty, got {len(calib_images)} and "
            f"{len(eval_images)} images"
        )
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
    return peer_labels


def search_ranges(
    histograms: dict[str, qfcal.Histogram],
    methods: list[tuple[str, dict[str, Any]]],
    bits: int,
    *,
    progress: bool = False,
) -> tuple[dict[str, Ranges], dict[str, dict[str, float]]]:
    """The search phase: every method on every histogram. Returns the ranges and the seconds
    each search took, both ``{method label: {tensor: ...}}``."""
    ranges: dict[str, Ranges] = {label: {} for label, _ in methods}
    seconds: dict[str, dict[str, float]] = {label: {} for label, _ in methods}
    with Progress(
        len(methods) * len(histograms), "searching ranges", unit="searches", enabled=progress
    ) as bar:
        for label, opts in methods:
            for n, h in histograms.items():
                t0 = time.perf_counter()
                ranges[label][n] = qfcal.search(h, bits=bits, **opts)
                seconds[label][n] = time.perf_counter() - t0
                bar.update()
    return ranges, seconds


def peer_ranges(
    taps: Taps,
    images: npt.NDArray[np.float32],
    peers: list[str],
    bits: int,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[str, Ranges], dict[str, dict[str, float]]]:
    """The peers' search phase: each peer's own calibrator on the calibration activations,
    batch by batch as qfcal saw them. Returns ranges and seconds as :func:`search_ranges`."""
    from qfcal.pipeline.taps import batches

    acts: dict[str, list[npt.NDArray[np.float32]]] = {n: [] for n in taps.names}
    for batch in batches(np.asarray(images, dtype=np.float32), batch_size):
        for n, value in taps.run(batch).items():
            acts[n].append(value)
    ranges: dict[str, Ranges] = {p: {} for p in peers}
    seconds: dict[str, dict[str, float]] = {p: {} for p in peers}
    for label in peers:
        for n in track(taps.names, f"running {label}", unit="tensors", enabled=progress):
            t0 = time.perf_counter()
            ranges[label][n] = PEERS[label](acts[n], bits)
            seconds[label][n] = time.perf_counter() - t0
    return ranges, seconds


@dataclass
class Errors:
    """Sums of squared errors per (method label, tensor), and per tensor the signal energy and
    the number of (finite) values they were measured on."""

    sse: dict[tuple[str, str], float]
    energy: dict[str, float]
    count: dict[str, int]

    def mse(self, label: str, tensor: str) -> float:
        return self.sse[(label, tensor)] / max(1, self.count[tensor])

    def sqnr_db(self, label: str, tensor: str) -> float:
        return _sqnr(self.energy[tensor] / max(1, self.count[tensor]), self.mse(label, tensor))


def activations(
    taps: Taps, images: npt.NDArray[Any], batch_size: int
) -> Iterator[tuple[str, npt.NDArray[np.float64]]]:
    """Each batch's raw activations, tensor by tensor, finite values only (float64)."""
    from qfcal.pipeline.taps import batches

    for batch in batches(np.asarray(images, dtype=np.float32), batch_size):
        for n, value in taps.run(batch).items():
            x = value.astype(np.float64).ravel()
            yield n, x[np.isfinite(x)]


def score(
    taps: Taps,
    images: npt.NDArray[Any],
    ranges: dict[str, Ranges],
    *,
    batch_size: int = 64,
    into: dict[str, qfcal.Histogram] | None = None,
) -> Errors:
    """The score phase: every range's error on the raw activations of `images`; the
    activations also feed the histograms `into` (the oracle's), if given."""
    sse = {(m, n): 0.0 for m in ranges for n in taps.names}
    energy = dict.fromkeys(taps.names, 0.0)
    count = dict.fromkeys(taps.names, 0)
    for n, x in activations(taps, images, batch_size):
        energy[n] += float(np.dot(x, x))
        count[n] += x.size
        if into is not None:
            into[n].update(x.astype(np.float32))
        for m in ranges:
            sse[(m, n)] += quantize_error(x, ranges[m][n])
    return Errors(sse, energy, count)


def _rows(
    names: list[str],
    ranges: dict[str, Ranges],
    seconds: dict[str, dict[str, float]],
    true: Errors,
    calib: Errors,
) -> list[Row]:
    rows = []
    for n in names:
        for m in ranges:
            r = ranges[m][n]
            rows.append(
                Row(
                    tensor=n, method=m, min=r.min, max=r.max, scale=r.scale,
                    zero_point=r.zero_point,
                    hist_mse=r.mse if isinstance(r, qfcal.SearchResult) else math.nan,
                    true_mse=true.mse(m, n), true_sqnr_db=true.sqnr_db(m, n),
                    seconds=seconds[m][n], calib_mse=calib.mse(m, n),
                )
            )  # fmt: skip
    return rows


def measure_accuracy(
    model: Any,
    ranges: dict[str, Ranges],
    accuracy: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    *,
    bits: int,
    weights: str,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[float, dict[str, float | None], str]:
    """The accuracy phase: the float model's top-1, each method's end-to-end top-1 with its
    ranges, and what ran the quantized model (the int8 ``.tflite`` at 8 bits, the FakeQuant
    graph otherwise)."""
    images, y = accuracy
    float_top1 = _top1_keras(model, images, y, batch_size)
    backend = "int8 .tflite (LiteRT)" if bits == 8 else f"FakeQuant graph, {bits}-bit"
    top1: dict[str, float | None] = {}
    for label in track(list(ranges), f"end-to-end top-1 ({backend})", unit="methods",
                       enabled=progress):  # fmt: skip
        grid = {n: (r.min, r.max) for n, r in ranges[label].items()}
        top1[label] = _top1_quantized(model, grid, images, y, bits, weights, batch_size)
    return float_top1, top1, backend


def summarize(
    rows: list[Row], seconds: dict[str, dict[str, float]], top1: dict[str, float | None]
) -> tuple[list[MethodSummary], dict[str, float]]:
    """Per method: its search time, on how many tensors it is lowest (and within 1%), its
    mean true SQNR, its top-1. Also returns each tensor's lowest true MSE."""
    lowest: dict[str, float] = {}
    lowest_calib: dict[str, float] = {}
    for r in rows:
        lowest[r.tensor] = min(lowest.get(r.tensor, math.inf), r.true_mse)
        lowest_calib[r.tensor] = min(lowest_calib.get(r.tensor, math.inf), r.calib_mse)
    summaries = []
    for m in seconds:
        mine = [r for r in rows if r.method == m]
        finite = [r.true_sqnr_db for r in mine if math.isfinite(r.true_sqnr_db)]
        summaries.append(
            MethodSummary(
                method=m,
                seconds=sum(seconds[m].values()),
                best_true=sum(r.true_mse <= lowest[r.tensor] * (1 + TIE) for r in mine),
                near_best=sum(r.true_mse <= lowest[r.tensor] * (1 + NEAR) for r in mine),
                best_calib=sum(r.calib_mse <= lowest_calib[r.tensor] * (1 + TIE) for r in mine),
                top1=top1.get(m),
                mean_true_sqnr_db=float(np.mean(finite)) if finite else math.nan,
            )
        )
    return summaries, lowest


def peer_notes(peers: list[str], ranges: dict[str, Ranges], true: Errors) -> list[str]:
    """How far each peer's ranges are from qfcal's reimplementation of it, and why."""
    notes = []
    for p in peers:
        ours, why = COUNTERPART[p]
        if ours not in ranges:
            continue
        names = list(ranges[p])
        widths = [
            (ranges[p][n].max - ranges[p][n].min) / (ranges[ours][n].max - ranges[ours][n].min)
            for n in names
        ]
        ratios = [
            true.sse[(p, n)] / true.sse[(ours, n)]
            for n in names
            if true.sse[(ours, n)] > 0 and true.sse[(p, n)] > 0
        ]
        notes.append(
            f"{p} against qfcal's {ours}: range width ratio median {np.median(widths):.3f} "
            f"(min {np.min(widths):.3f}, max {np.max(widths):.3f}); true MSE ratio median "
            f"{np.median(ratios) if ratios else math.nan:.3f}. Why they differ: {why}."
        )
    return notes


def _top1_keras(model: Any, images: Any, labels: Any, batch_size: int) -> float:
    from qfcal.pipeline.evaluate import call_keras

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
    from qfcal.pipeline import export

    run: Any
    if bits == 8:
        from qfcal.pipeline.evaluate import TFLiteModel

        run = TFLiteModel(export.to_int8_tflite(model, ranges, weights=weights), num_threads=None)
    else:
        fn = export.fake_quant_function(model, ranges, weights, num_bits=bits)
        run = lambda x: fn(x).numpy()  # noqa: E731

    hits = 0
    for i in range(0, len(images), 256):
        out = run(np.asarray(images[i : i + 256], dtype=np.float32))
        hits += int(np.sum(np.argmax(out, axis=1) == labels[i : i + 256]))
    return hits / len(images)
