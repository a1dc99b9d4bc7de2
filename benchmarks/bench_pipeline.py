"""The end-to-end benchmark (issue 3): the four MobileNets on Fashion-MNIST, each trained once,
calibrated with qfcal's optimal search, exported with per-tensor and with per-channel weights,
and evaluated on the whole test set.

For each model: float top-1 (Keras and float ``.tflite``), int8 top-1 with per-tensor and
per-channel weights, the drop in points, float/int8 agreement, one-thread per-image latency of
the float and the int8 ``.tflite`` (median, measured in the same process) and sizes. Prints a
markdown table (the one in BENCHMARKS.md) and writes ``<out>/summary.json``.

    python benchmarks/bench_pipeline.py                 # defaults: about 45 min on 2 cores
    python benchmarks/bench_pipeline.py --epochs-v1 1 --epochs-v2 1 --limit-train 5000  # smoke

Runs are resumable: each model's folder keeps its training checkpoint, and a finished training
is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import qfcal  # noqa: E402
from _machine import cpu_model, load  # noqa: E402
from qfcal._io import write_json_atomic  # noqa: E402
from qfcal.pipeline import steps as pipeline  # noqa: E402

MODELS = [("v1", "standard"), ("v1", "qfriendly"), ("v2", "standard"), ("v2", "qfriendly")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/runs", help="folder of the run folders")
    p.add_argument("--epochs-v1", type=int, default=5)
    p.add_argument("--epochs-v2", type=int, default=4)
    p.add_argument("--alpha-v1", type=float, default=0.25)
    p.add_argument("--alpha-v2", type=float, default=0.35)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--latency-runs", type=int, default=300)
    p.add_argument("--method", default="optimal", choices=qfcal.methods())
    p.add_argument("--models", default=",".join(f"{a}:{v}" for a, v in MODELS))
    args = p.parse_args()

    t_start = time.perf_counter()
    out = Path(args.out)
    print(f"qfcal {qfcal.__version__}; cpu: {cpu_model()}; load {load()}")
    rows = []
    for spec in args.models.split(","):
        arch, variant = spec.split(":")
        alpha = args.alpha_v1 if arch == "v1" else args.alpha_v2
        epochs = args.epochs_v1 if arch == "v1" else args.epochs_v2
        base = pipeline.RunConfig(
            arch=arch,
            variant=variant,
            alpha=alpha,
            epochs=epochs,
            method=args.method,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
            latency_runs=args.latency_runs,
        )
        data = pipeline.load_data(base)
        train_dir = out / f"{arch}_{variant}"
        t0 = time.perf_counter()
        pipeline.train(base, train_dir, data, verbose=2)
        t_train = time.perf_counter() - t0
        for weights in ("per-tensor", "per-channel"):
            cfg = pipeline.RunConfig(**{**base.__dict__, "weights": weights})
            folder = out / f"{arch}_{variant}_{weights}"
            folder.mkdir(parents=True, exist_ok=True)
            model_path = train_dir / "model.keras"
            pipeline.calibrate(cfg, folder, data, model_path)
            pipeline.export(cfg, folder, model_path)
            (folder / "model.keras").unlink(missing_ok=True)
            os.link(model_path, folder / "model.keras")
            rep = pipeline.evaluate(cfg, folder, data)
            ev = rep["evaluation"]
            rows.append(
                {
                    "model": f"{arch} {variant} (alpha {alpha:g})",
                    "weights": weights,
                    "epochs": epochs,
                    "train_seconds": t_train,
                    "keras_float": ev["top1"]["keras_float"],
                    "tflite_float": ev["top1"]["tflite_float"],
                    "tflite_int8": ev["top1"]["tflite_int8"],
                    "drop_points": ev["int8_drop_points"],
                    "agreement": ev["agreement_float_int8"],
                    "latency_float_ms": ev["latency"]["tflite_float"]["median_ms"],
                    "latency_int8_ms": ev["latency"]["tflite_int8"]["median_ms"],
                    "latency_ratio": ev["latency_ratio_int8_float"],
                    "size_float": ev["size_bytes"]["tflite_float"],
                    "size_int8": ev["size_bytes"]["tflite_int8"],
                }
            )
            write_json_atomic(out / "summary.json", rows)

    print(f"\nFashion-MNIST, {args.method} activation ranges, whole test set; {load()}")
    print(
        "| model | weights | epochs | float top-1 (Keras / .tflite) | int8 top-1 | drop (pt) "
        "| agreement | latency float / int8 (ms, 1 thread) | int8/float | size float / int8 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['weights']} | {r['epochs']} | {100 * r['keras_float']:.2f} / "
            f"{100 * r['tflite_float']:.2f} | {100 * r['tflite_int8']:.2f} | "
            f"{r['drop_points']:+.2f} | {100 * r['agreement']:.2f}% | "
            f"{r['latency_float_ms']:.3f} / {r['latency_int8_ms']:.3f} | "
            f"{r['latency_ratio']:.2f}x | {r['size_float'] / 1024:.0f} / "
            f"{r['size_int8'] / 1024:.0f} KiB |"
        )
    for r in rows:
        if r["model"].startswith("v2 qfriendly") and r["weights"] == "per-tensor":
            ok = r["drop_points"] <= 0.3
            print(
                f"target: qfriendly V2 per-tensor drop <= 0.3 pt: {r['drop_points']:+.2f} "
                f"({'met' if ok else 'NOT met'})"
            )
    worst = max(r["latency_ratio"] for r in rows)
    print(
        f"target: int8 latency <= 0.6x float: worst {worst:.2f}x "
        f"({'met' if worst <= 0.6 else 'NOT met'})"
    )
    print(f"total {(time.perf_counter() - t_start) / 60:.1f} min")
    print(json.dumps({"summary": str(out / "summary.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
