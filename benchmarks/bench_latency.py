"""int8 against float ``.tflite`` latency at ImageNet size: the four MobileNets at 224x224x3,
1000 classes, width 1.0, exported by qfcal exactly as ``qfcal run`` does (batch norm folded,
ranges from qfcal's optimal search over a few calibration images, FakeQuant graph, TFLite
converter), timed one image at a time on one thread in the LiteRT interpreter.

The weights are random (variance-preserving), not trained: latency does not depend on their
values, and the Fashion-MNIST models of ``bench_pipeline.py`` are too small (28x28) for the
integer kernels to show: there the per-operator overhead dominates and int8 runs about as fast
as float.

    python benchmarks/bench_latency.py             # about 5 minutes on 2 cores
    python benchmarks/bench_latency.py --runs 10   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import qfcal  # noqa: E402
from _machine import cpu_model, load  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50, help="timed single-image runs per model")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--alpha", type=float, default=1.0)
    args = p.parse_args()

    from qfcal.pipeline import evaluate, export, fold, models, taps

    print(f"qfcal {qfcal.__version__}; cpu: {cpu_model()}; load {load()}")
    shape = (args.size, args.size, 3)
    x = np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype(np.float32)
    rows = []
    for arch in ("v1", "v2"):
        for variant in ("standard", "qfriendly"):
            m = models.build(arch, variant, input_shape=shape, classes=1000, alpha=args.alpha)
            models.variance_preserving_init(m)
            m = fold.fold_batch_norm(m)
            res = taps.collect_histograms(m, x[:4], batch_size=2).search()
            ranges = {k: (r.min, r.max) for k, r in res.items()}
            f32 = export.to_float_tflite(m)
            for weights in ("per-tensor", "per-channel"):
                i8 = export.to_int8_tflite(m, ranges, weights=weights)
                lf = evaluate.latency(f32, x, runs=args.runs, warmup=5)
                li = evaluate.latency(i8, x, runs=args.runs, warmup=5)
                rows.append((arch, variant, weights, lf, li, len(f32), len(i8)))
                print(f"  {arch} {variant} {weights}: float {lf['median_ms']:.2f} ms, "
                      f"int8 {li['median_ms']:.2f} ms", flush=True)  # fmt: skip

    print(f"\n{args.size}x{args.size}x3, 1000 classes, alpha {args.alpha:g}, one thread, "
          f"median (p90) of {args.runs} single-image runs; {load()}")  # fmt: skip
    print(
        "| model | weights | float .tflite ms | int8 .tflite ms | int8/float | size float / int8 |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for arch, variant, weights, lf, li, sf, si in rows:
        print(
            f"| {arch} {variant} | {weights} | {lf['median_ms']:.2f} ({lf['p90_ms']:.2f}) | "
            f"{li['median_ms']:.2f} ({li['p90_ms']:.2f}) | "
            f"{li['median_ms'] / lf['median_ms']:.2f}x | {sf / 2**20:.1f} / {si / 2**20:.1f} MiB |"
        )
    worst = max(li["median_ms"] / lf["median_ms"] for *_, lf, li, _, _ in rows)
    print(f"target int8 <= 0.6x float: worst {worst:.2f}x ({'met' if worst <= 0.6 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
