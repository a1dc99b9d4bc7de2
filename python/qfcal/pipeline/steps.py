"""The end-to-end job, step by step, over one run folder.

=================  ======================================================================
step               writes into the run folder
=================  ======================================================================
:func:`train`      ``model.keras`` (the float model), ``checkpoints/`` (resumable)
:func:`calibrate`  ``ranges.json`` (per tensor: method, scale, zero point, min, max, loss),
                   ``histograms.npz`` (every tensor's exact histogram, as bytes)
:func:`export`     ``model_float.tflite``, ``model_int8.tflite``
:func:`evaluate`   ``report.json``, ``report.md``, ``histograms.png``, ``sqnr.png``,
                   ``accuracy.png``, ``weights.png`` (the folded weights per layer:
                   :mod:`qfcal.pipeline.inspect_weights`)
=================  ======================================================================

:func:`run` does all four. Every file is written atomically (temporary file, then rename). The
options of every step are kept in ``run.json``, so a later step (or ``qfcal evaluate`` on the
folder) knows how the earlier ones ran.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import qfcal
from qfcal._io import atomic_path, write_bytes_atomic, write_json_atomic
from qfcal.pipeline import data as qdata

if TYPE_CHECKING:
    from qfcal import selection
    from qfcal.pipeline.taps import TapHistograms

# --method auto: the range method chosen by the int8 model's outputs (qfcal.selection)
AUTO = "auto"

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Every option of a run (the command line's, one to one)."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = True
    arch: str = "v2"
    variant: str = "qfriendly"
    alpha: float = 0.35
    depthwise_l2: float = 0.0
    stem_stride: int | None = None
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    augment: bool = True
    seed: int = 0
    distribute: str = "auto"
    calib_per_class: int = 1
    method: str = AUTO
    gamma: float = 1.0
    percentile: float = 99.99
    weights: str = "per-tensor"
    weight_method: str = "minmax"
    int8_io: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int | None = None
    latency_runs: int = 200

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> RunConfig:
        """A config from `options` (``run.json``'s ``"config"``), ignoring the options this
        version of qfcal does not have (a run folder written by an older one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})

    def check(self) -> None:
        """Validate the options that no later step would reject early."""
        from qfcal.pipeline.export import WEIGHT_METHODS, WEIGHT_MODES
        from qfcal.pipeline.models import ARCHITECTURES, VARIANTS

        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.method not in (*qfcal.methods(), AUTO):
            raise ValueError(
                f"method must be one of {', '.join((*qfcal.methods(), AUTO))}, got {self.method!r}"
            )
        if self.method == AUTO:
            from qfcal.selection import check_auto_options

            check_auto_options(self.gamma, self.percentile)
        if self.stem_stride not in (None, 1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(
                f"weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}"
            )
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(
                f"weight_method must be one of {', '.join(WEIGHT_METHODS)}, "
                f"got {self.weight_method!r}"
            )
        if self.calib_per_class < 1:
            raise ValueError(f"calib_per_class must be at least 1, got {self.calib_per_class}")
        from qfcal.pipeline.train import STRATEGIES

        if self.distribute not in STRATEGIES:
            raise ValueError(
                f"distribute must be one of {', '.join(STRATEGIES)}, got {self.distribute!r}"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if self.latency_runs < 1:
            raise ValueError(f"latency_runs must be at least 1, got {self.latency_runs}")

    def train_config(self) -> Any:
        from qfcal.pipeline.train import NO_FLIP, TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            schedule=self.schedule,
            augment=self.augment,
            flip=self.dataset not in NO_FLIP,
            seed=self.seed,
        )


def default_folder(cfg: RunConfig) -> Path:
    """``runs/<dataset>_<arch>_<variant>_a<alpha>_<weights>``: the same command finds (and
    resumes) the same folder."""
    name = Path(cfg.dataset).name if os.path.isdir(cfg.dataset) else cfg.dataset
    return Path("runs") / f"{name}_{cfg.arch}_{cfg.variant}_a{cfg.alpha:g}_{cfg.weights}"


def load_data(cfg: RunConfig) -> Any:
    """The run's dataset, cut to ``limit_train``/``limit_test`` images when set."""
    kwargs: dict[str, Any] = {"data_dir": cfg.data_dir, "download": cfg.download}
    if cfg.image_size is not None:
        kwargs["image_size"] = (cfg.image_size, cfg.image_size)
    ds = qdata.load(cfg.dataset, **kwargs)
    if cfg.limit_train is not None or cfg.limit_test is not None:
        ds = ds.subset(cfg.limit_train, cfg.limit_test, seed=cfg.seed)
    return ds


def _record(folder: Path, step: str, cfg: RunConfig, extra: dict[str, Any] | None = None) -> None:
    path = folder / "run.json"
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    doc["config"] = dataclasses.asdict(cfg)
    doc.setdefault("steps", {})[step] = {
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json_atomic(path, doc)


def read_run(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``run.json`` of a run folder (configuration and what each step recorded)."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is {str(folder)!r} a run folder?")
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def train(cfg: RunConfig, folder: Path, data: Any, verbose: int | str = "auto") -> Path:
    """Build and train the float model; ``model.keras`` in `folder`."""
    from qfcal.pipeline import models
    from qfcal.pipeline import train as qtrain

    cfg.check()
    folder.mkdir(parents=True, exist_ok=True)
    model = models.build(
        cfg.arch,
        cfg.variant,
        input_shape=data.image_shape,
        classes=data.num_classes,
        alpha=cfg.alpha,
        depthwise_l2=cfg.depthwise_l2,
        stem_stride=cfg.stem_stride,
    )
    meta = {
        "dataset": cfg.dataset,
        "arch": cfg.arch,
        "variant": cfg.variant,
        "alpha": cfg.alpha,
        "depthwise_l2": cfg.depthwise_l2,
        "stem_stride": cfg.stem_stride,
        "train_images": data.size("train"),
    }
    t0 = time.perf_counter()
    model, history = qtrain.train(
        model,
        data,
        cfg.train_config(),
        folder / "checkpoints",
        meta=meta,
        verbose=verbose,
        distribute=cfg.distribute,
    )
    qtrain.save_model_atomic(model, folder / "model.keras")
    _record(
        folder,
        "train",
        cfg,
        {"history": history, "seconds": time.perf_counter() - t0, "params": model.count_params()},
    )
    return folder / "model.keras"


def calibrate(
    cfg: RunConfig, folder: Path, data: Any, model_path: Path | None = None, dask: Any = None
) -> dict[str, qfcal.SearchResult]:
    """Fold batch norm, histogram every int8 tensor over the calibration images (one per class
    by default), search the ranges; ``ranges.json`` and ``histograms.npz`` in `folder`.

    `dask`: a Dask scheduler address, ``"local"``, ``"local:N"`` or a ``distributed.Client``
    (:func:`qfcal.distributed.dask_client`): the images are cut at batch boundaries, one shard
    per worker thread, each worker loads the model file itself, and the merged histograms (so
    both files) are bit-identical to those of one process."""
    from qfcal.pipeline.fold import fold_batch_norm
    from qfcal.pipeline.taps import TapHistograms, collect_histograms
    from qfcal.pipeline.train import load_model, to_float

    cfg.check()
    path = model_path or folder / "model.keras"
    model = fold_batch_norm(load_model(path)) if dask is None else None
    idx = qdata.calibration_indices(data.labels("train"), cfg.calib_per_class, seed=cfg.seed)
    images = to_float(data.images("train", idx))
    log.info("calibrating on %d training images (%d per class)", len(idx), cfg.calib_per_class)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    options: dict[str, Any] = {
        "method": cfg.method, "gamma": cfg.gamma, "percentile": cfg.percentile
    }  # fmt: skip
    if cfg.method == AUTO and dask is not None:
        log.warning(
            "method auto exports and runs the model once per candidate and fold, in one "
            "process; with --dask the ranges are searched with method optimal (drop --dask "
            "for auto)"
        )
        options["method"] = "optimal"
        extra = {"method_used": "optimal"}
    if cfg.method == AUTO and dask is None:
        taps, sel = _calibrate_auto(cfg, model, images)
        options = dict(sel.options)
        extra = {
            "selection": {
                "chosen": sel.chosen,
                "options": sel.options,
                "errors": sel.errors,
                "z": sel.z,
                "folds": sel.folds,
                "metric": sel.metric,
            }
        }
    elif dask is None:
        taps = collect_histograms(model, images, progress=True)
    else:
        from qfcal import distributed as qdist
        from qfcal.pipeline import dask_keras

        with qdist.dask_client(dask) as client:
            # batch_size 32: collect_histograms' default above; shards hold whole batches of it
            parts = dask_keras.split_batches(images, 32, qdist.client_threads(client))
            log.info("on Dask (%s): %d shards", client.scheduler.address, len(parts))
            hists = dask_keras.calibrate_keras_dask(path, parts, client, batch_size=32)
        taps = TapHistograms(hists)
        extra["dask_shards"] = len(parts)
    t1 = time.perf_counter()
    results = taps.search(bits=8, progress=True, **options)
    t2 = time.perf_counter()
    write_json_atomic(folder / "ranges.json", ranges_json(results))
    blobs = {n: np.frombuffer(h.to_bytes(), dtype=np.uint8) for n, h in taps.histograms.items()}
    with atomic_path(folder / "histograms.npz") as tmp:
        np.savez(tmp, **blobs)  # type: ignore[arg-type]
    _record(
        folder,
        "calibrate",
        cfg,
        {
            "images": len(idx),
            "tensors": len(results),
            "histogram_seconds": t1 - t0,
            "search_seconds": t2 - t1,
            **extra,
        },
    )
    return results


def _calibrate_auto(
    cfg: RunConfig, model: Any, images: Any
) -> tuple[TapHistograms, selection.Selection]:
    """``method="auto"``: the calibration images dealt round-robin into folds, one histogram
    per tap and fold; each candidate method's ranges from all folds but one go through the
    export (FakeQuant graph, TFLite converter) and the int8 model runs the fold's images; the
    KL divergence of its softmax to the float model's (``metric="auto"`` on the logits) picks
    the method
    (:func:`qfcal.selection.select`). Returns the taps' histograms over all the images and the
    :class:`~qfcal.selection.Selection`."""
    from qfcal import selection
    from qfcal.pipeline import export as qexp
    from qfcal.pipeline.taps import TapHistograms, collect_histograms
    from qfcal.tflite import _feeder, _interpreter, _outputs

    n = len(images)
    if n < 2:  # one class, one image per class
        raise ValueError(
            f"method 'auto' needs at least 2 calibration images, got {n}: raise "
            "--calib-per-class or choose a method"
        )
    k = min(selection.DEFAULT_FOLDS, n)
    folds = [list(range(f, n, k)) for f in range(k)]
    parts = [collect_histograms(model, images[f], progress=False).histograms for f in folds]

    by_tap = {name: [p[name] for p in parts] for name in parts[0]}

    reference = np.asarray(model.predict(images, verbose=0), np.float64)

    def evaluate(options: Any, test: list[int]) -> tuple[list[float], list[float]]:
        train = selection.merge_parts(by_tap, {folds.index(test)})
        ranges = {}
        for name, h in train.items():
            r = qfcal.search(h, bits=8, **dict(options))
            ranges[name] = (r.min, r.max)
        content = qexp.to_int8_tflite(
            model, ranges, weights=cfg.weights, weight_method=cfg.weight_method, int8_io=False
        )
        interp = _interpreter(content)
        interp.allocate_tensors()
        feed = _feeder(interp)
        errs, norms = [], []
        for j in test:
            feed([images[j : j + 1]])
            interp.invoke()
            out = _outputs(interp)
            e, n_ = selection.output_error("auto", [reference[j : j + 1]], out[:1])
            errs.append(e)
            norms.append(n_)
        return errs, norms

    log.info(
        "method auto: %d candidate methods x %d folds of %d calibration images, each trial "
        "exported and run",
        len(selection.DEFAULT_CANDIDATES),
        k,
        n,
    )
    sel = selection.select(n, evaluate, folds=folds, progress=True)
    sel.metric = selection.metric_name("auto", [reference[:1]])
    log.info("method auto chose %s:\n%s", sel.chosen, sel.table())
    return TapHistograms(selection.merge_parts(by_tap)), sel


def ranges_json(results: dict[str, qfcal.SearchResult]) -> dict[str, Any]:
    """The ``ranges.json`` document: per tensor, every field of its range
    (:func:`qfcal.encodings.result_fields`; ``qfcal.encodings.ranges_of`` reads it back into
    equal results)."""
    from qfcal.encodings import result_fields

    return {name: result_fields(r) for name, r in results.items()}


def load_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """``ranges.json`` as ``{tensor: (min, max)}``."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: run the calibrate step first")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {name: (float(r["min"]), float(r["max"])) for name, r in doc.items()}


def load_histograms(path: Path) -> dict[str, qfcal.Histogram]:
    """``histograms.npz`` back as histograms."""
    with np.load(path) as z:
        return {n: qfcal.Histogram.from_bytes(z[n].tobytes()) for n in z.files}


def _int8_tflite(
    cfg: RunConfig, keras_model: Any, ranges: dict[str, tuple[float, float]], weights: str
) -> bytes:
    """The int8 ``.tflite`` of `keras_model` (batch norms folded here) with `ranges` and
    `weights` (``per-tensor`` or ``per-channel``), as the run's options say."""
    from qfcal.pipeline import export as qexp
    from qfcal.pipeline.fold import fold_batch_norm

    return qexp.to_int8_tflite(
        fold_batch_norm(keras_model),
        ranges,
        weights=weights,
        weight_method=cfg.weight_method,
        int8_io=cfg.int8_io,
    )


def export(cfg: RunConfig, folder: Path, model_path: Path | None = None) -> tuple[Path, Path]:
    """The float ``.tflite`` and the int8 ``.tflite`` built from the FakeQuant graph with the
    ranges of ``ranges.json``."""
    from qfcal.pipeline import export as qexp
    from qfcal.pipeline.train import load_model

    cfg.check()
    ranges = load_ranges(folder / "ranges.json")
    keras_model = load_model(model_path or folder / "model.keras")
    log.info("converting to the float .tflite")
    float_path, int8_path = folder / "model_float.tflite", folder / "model_int8.tflite"
    write_bytes_atomic(float_path, qexp.to_float_tflite(keras_model))
    log.info("converting the FakeQuant graph to the int8 .tflite (%s weights)", cfg.weights)
    write_bytes_atomic(int8_path, _int8_tflite(cfg, keras_model, ranges, cfg.weights))
    _record(folder, "export", cfg)
    return float_path, int8_path


def _other_weights(cfg: RunConfig, folder: Path, keras_model: Any, data: Any) -> dict[str, Any]:
    """The int8 model with the same activation ranges and the other weight granularity
    (per-channel for a per-tensor run and the reverse), built in memory: its top-1 beside the
    run's says what one weight scale per tensor costs this model (the seed's question)."""
    from qfcal.pipeline import evaluate as qeval

    other = "per-channel" if cfg.weights == "per-tensor" else "per-tensor"
    log.info("converting the int8 .tflite with %s weights, for comparison", other)
    content = _int8_tflite(cfg, keras_model, load_ranges(folder / "ranges.json"), other)
    pred = qeval.predict_tflite(
        qeval.TFLiteModel(content), data, label=f"the int8 .tflite with {other} weights"
    )
    return {
        "weights": other,
        "top1": float(np.mean(pred == data.labels("test"))),
        "size_bytes": len(content),
    }


def evaluate(cfg: RunConfig, folder: Path, data: Any) -> dict[str, Any]:
    """Measure the three models and write the report (JSON, markdown, plots), with the top-1
    of the int8 model with the other weight granularity beside them. The report also holds the
    float model's folded weights per layer (``weights``: spread, dead channels, weight SQNR per
    tensor and per channel, the layers the seed's per-tensor problem hits)."""
    from qfcal.pipeline import evaluate as qeval
    from qfcal.pipeline import inspect_weights
    from qfcal.pipeline import report as qreport
    from qfcal.pipeline.train import load_model

    keras_model = load_model(folder / "model.keras")
    paths = {k: folder / f"model_{k}.tflite" for k in ("float", "int8")}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"{str(p)!r} does not exist: run the export step first")
    ev = qeval.evaluate(
        keras_model,
        paths["float"].read_bytes(),
        paths["int8"].read_bytes(),
        data,
        latency_runs=cfg.latency_runs,
    )
    ev["other_weights"] = _other_weights(cfg, folder, keras_model, data)
    run_doc = read_run(folder)
    ranges = json.loads((folder / "ranges.json").read_text(encoding="utf-8"))
    report = {
        "qfcal_version": qfcal.__version__,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(cfg),
        "training": run_doc.get("steps", {}).get("train", {}),
        "calibration": run_doc.get("steps", {}).get("calibrate", {}),
        "evaluation": ev,
        "ranges": ranges,
    }
    try:
        report["weights"] = inspect_weights.stats_json(inspect_weights.weight_stats(keras_model))
    except ValueError as e:  # a model whose graph cannot be read: the rest of the report stands
        log.warning("no weight statistics in the report: %s", e)
    qreport.write(folder, report, load_histograms(folder / "histograms.npz"))
    _record(folder, "evaluate", cfg)
    return report


def compare_folder(cfg: RunConfig, folder: Path, bits: int) -> Path:
    """Where :func:`compare` writes: ``compare-<bits>bit`` (``-<n>per-class`` when the
    calibration set is not one image per class)."""
    more = f"-{cfg.calib_per_class}per-class" if cfg.calib_per_class != 1 else ""
    return Path(folder) / f"compare-{bits}bit{more}"


def compare(
    cfg: RunConfig,
    folder: Path,
    data: Any,
    *,
    bits: int = 8,
    eval_images: int = 256,
    accuracy_images: int | None = None,
    peers: bool = False,
    methods: list[str] | None = None,
) -> Any:
    """The calibration shoot-out (:mod:`qfcal.pipeline.compare`) on the run's model: histograms
    from the calibration images, true errors on `eval_images` other training images, end-to-end
    top-1 on the first `accuracy_images` test images (all by default); written to
    :func:`compare_folder`. The calibration set is `cfg.calib_per_class` images per class."""
    from qfcal.pipeline import compare as qcmp
    from qfcal.pipeline import compare_report
    from qfcal.pipeline.fold import fold_batch_norm
    from qfcal.pipeline.train import load_model, to_float

    cfg.check()
    chosen = qcmp.METHODS
    if methods:
        known = dict(qcmp.METHODS)
        bad = [m for m in methods if m not in known]
        if bad:
            raise ValueError(f"methods must be among {', '.join(known)}; got {bad}")
        chosen = [(m, known[m]) for m in methods]
    if eval_images < 1:
        raise ValueError(f"eval_images must be at least 1, got {eval_images}")
    model = fold_batch_norm(load_model(folder / "model.keras"))
    labels = data.labels("train")
    idx = qdata.calibration_indices(labels, cfg.calib_per_class, seed=cfg.seed)
    rest = np.setdiff1d(np.arange(len(labels)), idx)
    rng = np.random.default_rng([cfg.seed, 7])
    held = np.sort(rng.choice(rest, size=min(eval_images, len(rest)), replace=False))
    n_acc = (
        data.size("test") if accuracy_images is None else min(accuracy_images, data.size("test"))
    )
    acc_idx = np.arange(n_acc)
    log.info(
        "comparing %d methods at %d bits: %d calibration images, %d held-apart training "
        "images, top-1 on %d test images",
        len(chosen),
        bits,
        len(idx),
        len(held),
        n_acc,
    )
    c = qcmp.compare(
        model,
        to_float(data.images("train", idx)),
        to_float(data.images("train", held)),
        bits=bits,
        accuracy=(to_float(data.images("test", acc_idx)), data.labels("test")[acc_idx]),
        weights=cfg.weights,
        peers=peers,
        methods=chosen,
    )
    out = compare_folder(cfg, folder, bits)
    title = f"{cfg.arch} {cfg.variant} (alpha {cfg.alpha:g}), {cfg.weights} weights"
    compare_report.write(c, out, title)
    return c


def run(
    cfg: RunConfig, folder: Path | None = None, verbose: int | str = "auto", dask: Any = None
) -> dict[str, Any]:
    """Train, calibrate (on Dask when `dask` names a scheduler: see :func:`calibrate`),
    export, evaluate; returns the report."""
    cfg.check()
    folder = folder or default_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg)
    log.info(
        "%s: %d training and %d test images %s, %d classes (%s); run folder %s",
        data.name,
        data.size("train"),
        data.size("test"),
        data.image_shape,
        data.num_classes,
        data.source,
        folder,
    )
    train(cfg, folder, data, verbose=verbose)
    calibrate(cfg, folder, data, dask=dask)
    export(cfg, folder)
    return evaluate(cfg, folder, data)
