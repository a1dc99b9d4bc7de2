"""The calibration shoot-out (issue 4) on the four Fashion-MNIST models of bench_pipeline.py:
every method, and the peers' own calibrators where installed, on the same tensors, at 8, 6 and
4 bits, per-tensor weights.

Per model and bit width: how many tensors each method gives the lowest true error on (raw
activations of 256 held-apart training images), each method's end-to-end top-1 (int8 .tflite at
8 bits, the FakeQuant graph below), and the time all methods took to score all tensors. Checks
the targets: optimal lowest on >= 95% of tensors, its top-1 >= the best other method's, all
methods on all tensors in under a second. Writes each report to
``<runs>/<model>_per-tensor/compare-<bits>bit/``.

    python benchmarks/bench_pipeline.py      # first: trains the models
    python benchmarks/bench_compare.py       # then this (about 40 minutes on 2 cores)

With ``--calib-per-class 1,10`` (the default) everything runs twice: with the seed's one
calibration image per class and with ten. Each model's "ceiling" is qfcal's optimal searched on
the held-apart activations' own histogram: what a perfect calibration set would give.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import qfcal  # noqa: E402
from _machine import cpu_model, load  # noqa: E402
from qfcal.pipeline import compare  # noqa: E402
from qfcal.pipeline import steps as pipeline  # noqa: E402

MODELS = ["v1_standard", "v1_qfriendly", "v2_standard", "v2_qfriendly"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="benchmarks/runs", help="bench_pipeline.py's --out")
    p.add_argument("--bits", default="8,6,4")
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--accuracy-images", type=int, default=10_000)
    p.add_argument("--no-peers", action="store_true")
    p.add_argument(
        "--calib-per-class",
        default="1,10",
        help="calibration set sizes to run, images per class (the seed's is 1)",
    )
    p.add_argument(
        "--score-only",
        action="store_true",
        help="only time the scoring: every qfcal method on every tensor's histogram, 7 rounds "
        "(no true errors, no top-1; for a quiet machine)",
    )
    args = p.parse_args()
    if args.score_only:
        return score_only(args)
    bits_list = [int(b) for b in args.bits.split(",")]
    per_class_list = [int(k) for k in args.calib_per_class.split(",")]
    print(f"qfcal {qfcal.__version__}; cpu: {cpu_model()}; load {load()}")
    print("peers:", compare.available_peers())
    summary = []
    for name in MODELS:
        folder = Path(args.runs) / f"{name}_per-tensor"
        if not (folder / "model.keras").is_file():
            print(f"{folder}: no model (run bench_pipeline.py first); skipped")
            continue
        base = pipeline.RunConfig.from_dict(pipeline.read_run(folder)["config"])
        data = pipeline.load_data(base)
        for per_class, bits in itertools.product(per_class_list, bits_list):
            cfg = dataclasses.replace(base, calib_per_class=per_class)
            t0 = time.perf_counter()
            c = pipeline.compare(
                cfg,
                folder,
                data,
                bits=bits,
                eval_images=args.eval_images,
                accuracy_images=args.accuracy_images,
                peers=not args.no_peers,
            )
            n = len(c.tensors)
            own = [m for m in c.methods if m.method not in c.peers]
            opt = next(m for m in c.methods if m.method == "optimal")
            others = [m for m in c.methods if m.method != "optimal" and m.top1 is not None]
            best_other = max(others, key=lambda m: m.top1 or 0.0)
            row = {
                "model": name,
                "bits": bits,
                "calib_per_class": per_class,
                "calibration_images": c.calibration_images,
                "optimal_near": opt.near_best,
                "optimal_best_calib": opt.best_calib,
                "oracle_lowest": c.oracle_lowest,
                "tensors": n,
                "float_top1": c.float_top1,
                "optimal_lowest": opt.best_true,
                "optimal_top1": opt.top1,
                "best_other": best_other.method,
                "best_other_top1": best_other.top1,
                "score_seconds": sum(m.seconds for m in own),
                "methods": {m.method: [m.best_true, m.top1, m.seconds] for m in c.methods},
                "peer_notes": c.peer_notes,
                "wall_seconds": time.perf_counter() - t0,
            }
            summary.append(row)
            print(
                f"{name} {bits}-bit, {c.calibration_images} calibration images: optimal lowest "
                f"on {opt.best_true}/{n} (ceiling {c.oracle_lowest}/{n}), top-1 "
                f"{100 * (opt.top1 or 0):.2f}% (best other: {best_other.method} "
                f"{100 * (best_other.top1 or 0):.2f}%), scored in {row['score_seconds']:.2f} s",
                flush=True,
            )
    out = Path(args.runs) / f"compare_summary_{args.calib_per_class.replace(',', '-')}.json"
    out.write_text(json.dumps(summary, indent=1))

    labels = [m for m, _ in compare.METHODS]
    peers = sorted({k for r in summary for k in r["methods"]} - set(labels))
    for per_class, bits in itertools.product(per_class_list, bits_list):
        rows = [r for r in summary if r["bits"] == bits and r["calib_per_class"] == per_class]
        if not rows:
            continue
        print(
            f"\n### {bits}-bit activations, {per_class} calibration image(s) per class: top-1 (%) "
            "by method; lowest-true-error count"
        )
        head = ["model", "float", *labels, *peers]
        print("| " + " | ".join(head) + " |")
        print("|---|" + "---:|" * (len(head) - 1))
        for r in rows:
            cells = [r["model"], f"{100 * r['float_top1']:.2f}"]
            for m in [*labels, *peers]:
                if m not in r["methods"]:
                    cells.append("-")
                    continue
                lowest, top1, _ = r["methods"][m]
                cells.append(f"{100 * top1:.2f} ({lowest}/{r['tensors']})")
            print("| " + " | ".join(cells) + " |")
    print("\n### targets")
    for r in summary:
        share = r["optimal_lowest"] / r["tensors"]
        top_ok = (r["optimal_top1"] or 0) >= (r["best_other_top1"] or 0)
        print(
            f"{r['model']} {r['bits']}-bit, {r['calib_per_class']}/class: lowest true error on "
            f"{share:.0%} of tensors ({'met' if share >= 0.95 else 'NOT met'}; within 1% of the "
            f"lowest on {r['optimal_near'] / r['tensors']:.0%}, lowest on the calibration "
            f"activations {r['optimal_best_calib'] / r['tensors']:.0%}, ceiling "
            f"{r['oracle_lowest'] / r['tensors']:.0%}); top-1 {100 * r['optimal_top1']:.2f} vs "
            f"best other {100 * r['best_other_top1']:.2f} ({'met' if top_ok else 'NOT met'}); "
            f"all methods scored in {r['score_seconds']:.2f} s "
            f"({'met' if r['score_seconds'] < 1.0 else 'NOT met'})"
        )
    print(f"load at the end: {load()}")
    return 0


def score_only(args: argparse.Namespace) -> int:
    """All qfcal methods on all tensors of each model, from the calibration histograms, timed
    in 7 rounds (median and best of the round totals)."""
    import statistics

    from qfcal.pipeline import data as qdata
    from qfcal.pipeline.fold import fold_batch_norm
    from qfcal.pipeline.taps import collect_histograms
    from qfcal.pipeline.train import load_model, to_float

    print(f"qfcal {qfcal.__version__}; cpu: {cpu_model()}; load {load()}")
    bits_list = [int(b) for b in args.bits.split(",")]
    for name in MODELS:
        folder = Path(args.runs) / f"{name}_per-tensor"
        if not (folder / "model.keras").is_file():
            print(f"{folder}: no model (run bench_pipeline.py first); skipped")
            continue
        cfg = pipeline.RunConfig.from_dict(pipeline.read_run(folder)["config"])
        ds = pipeline.load_data(cfg)
        model = fold_batch_norm(load_model(folder / "model.keras"))
        for per_class in (int(k) for k in args.calib_per_class.split(",")):
            idx = qdata.calibration_indices(ds.labels("train"), per_class, seed=cfg.seed)
            hists = collect_histograms(model, to_float(ds.images("train", idx))).histograms
            for bits in bits_list:
                rounds = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    for _label, opts in compare.METHODS:
                        for h in hists.values():
                            qfcal.search(h, bits=bits, **opts)
                    rounds.append(time.perf_counter() - t0)
                print(
                    f"{name} {bits}-bit, {len(idx)} calibration images: {len(compare.METHODS)} "
                    f"methods x {len(hists)} tensors in {statistics.median(rounds):.3f} s median, "
                    f"{min(rounds):.3f} s best",
                    flush=True,
                )
    print(f"load at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
