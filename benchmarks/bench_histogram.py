"""Histogram throughput: qfcal.Histogram.update against its peers, on the same float32 data.

Measured, in one process, interleaved round by round so that a noisy shared machine slows every
contender alike (the torch contenders form a second phase: torch's thread pool keeps the cores
busy for a while after each call and would slow whatever ran next):

* ``qfcal.Histogram().update`` (threads: all cores), on a warm histogram (steady state of a
  streaming calibration), on a fresh histogram (includes the first allocation), and pinned to one
  core (``os.sched_setaffinity``, where the OS has it);
* ``np.histogram(x, bins=2048, range=(lo, hi))`` with a fixed range;
* ``torch.histc(t, bins=2048, min=lo, max=hi)`` with ``torch.set_num_threads(1)`` and with all
  threads;
* ``x.min(); x.max()``: the memory-bound reference (one streaming pass each);
* PyTorch ``torch.ao.quantization.HistogramObserver`` forward over batches of ``--batch-mb``
  (a fresh observer per pass, all torch threads).

Two data sets: standard normal, and ReLU-like (``max(normal, 0)``: half of it exact zeros).
Prints GB/s (median and best of ``--repeat``) and the ratios qfcal / peer. Only numpy and qfcal
are required; a missing torch is reported as "not installed" and skipped.

    python benchmarks/bench_histogram.py            # 64 MB, 7 rounds
    python benchmarks/bench_histogram.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import qfcal
from _machine import cpu_model, load

NP_BINS = 2048


@dataclass
class Bench:
    """One contender: ``run`` does the measured work once; ``prepare`` runs untimed before it."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    times: list[float] = field(default_factory=list)

    def once(self) -> None:
        if self.prepare is not None:
            self.prepare()
        try:
            t0 = time.perf_counter()
            self.run()
            self.times.append(time.perf_counter() - t0)
        finally:
            if self.finish is not None:
                self.finish()


def import_torch() -> object | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def make_data(kind: str, n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    if kind == "relu":
        np.maximum(x, 0.0, out=x)
    return x


def build_benches(x: np.ndarray, batch_values: int, torch: object | None) -> list[Bench]:
    lo, hi = float(x.min()), float(x.max())
    ncpu = os.cpu_count() or 1
    benches: list[Bench] = []

    warm = qfcal.Histogram()
    warm.update(x)  # the first update allocates; later ones are the steady state
    benches.append(Bench("qfcal update (warm histogram, all cores)", lambda: warm.update(x)))

    fresh: list[qfcal.Histogram] = []

    def new_hist() -> None:
        fresh[:] = [qfcal.Histogram()]

    benches.append(
        Bench("qfcal update (fresh Histogram)", lambda: fresh[0].update(x), prepare=new_hist)
    )

    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        saved = os.sched_getaffinity(0)

        def pin() -> None:
            os.sched_setaffinity(0, {min(saved)})

        def unpin() -> None:
            os.sched_setaffinity(0, saved)

        benches.append(
            Bench("qfcal update (warm, pinned to 1 core)", lambda: warm.update(x), pin, unpin)
        )

    benches.append(
        Bench(
            f"np.histogram, {NP_BINS} bins, fixed range",
            lambda: np.histogram(x, bins=NP_BINS, range=(lo, hi)),
        )
    )

    def minmax() -> None:
        x.min()
        x.max()

    benches.append(Bench("np.min + np.max (memory-bound reference)", minmax))

    if torch is not None:
        t = torch.from_numpy(x)  # type: ignore[attr-defined]
        torch.histc(t, bins=NP_BINS, min=lo, max=hi)  # type: ignore[attr-defined]
        for threads in (1, ncpu):

            def set_threads(n: int = threads) -> None:
                torch.set_num_threads(n)  # type: ignore[attr-defined]

            def restore() -> None:
                torch.set_num_threads(ncpu)  # type: ignore[attr-defined]

            benches.append(
                Bench(
                    f"torch.histc, {NP_BINS} bins, {threads} thread{'s' if threads > 1 else ''}",
                    lambda: torch.histc(t, bins=NP_BINS, min=lo, max=hi),  # type: ignore[attr-defined]
                    set_threads,
                    restore,
                )
            )

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import HistogramObserver

        batches = [t[i : i + batch_values] for i in range(0, t.numel(), batch_values)]
        observer: list[object] = []

        def new_observer() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                observer[:] = [
                    HistogramObserver(
                        dtype=torch.quint8,  # type: ignore[attr-defined]
                        qscheme=torch.per_tensor_affine,  # type: ignore[attr-defined]
                    )
                ]

        def observe() -> None:
            obs = observer[0]
            for b in batches:
                obs(b)  # type: ignore[operator]

        new_observer()
        observe()  # warm up
        mb = batch_values * 4 / 2**20
        benches.append(
            Bench(
                f"torch HistogramObserver forward, {mb:g} MB batches, {ncpu} threads",
                observe,
                prepare=new_observer,
            )
        )
    return benches


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def report(kind: str, x: np.ndarray, benches: list[Bench], torch_missing: bool) -> None:
    nbytes = x.nbytes
    print(f"\n## {kind}: {x.size:,} float32 values ({nbytes / 2**20:g} MB)", end="")
    if kind == "relu":
        print(f", {np.count_nonzero(x == 0) / x.size:.1%} exact zeros")
    else:
        print()
    width = max(len(b.name) for b in benches)
    print(f"| {'contender':<{width}} | GB/s median | GB/s best | ms median |")
    print(f"|{'-' * (width + 2)}|------------:|----------:|----------:|")
    for b in benches:
        med, best = statistics.median(b.times), min(b.times)
        print(
            f"| {b.name:<{width}} | {gbps(nbytes, med):11.2f} | {gbps(nbytes, best):9.2f} "
            f"| {med * 1e3:9.2f} |"
        )
    if torch_missing:
        print("torch.histc, HistogramObserver: not installed (skipped)")

    by_name = {b.name: b for b in benches}
    q = benches[0]
    print("\nratios (qfcal warm update rate / peer rate; median, best-of):")
    targets = {"np.histogram": 10.0, "np.min + np.max": 0.5}
    for b in benches[1:]:
        if b.name.startswith("qfcal"):
            continue
        r_med = statistics.median(b.times) / statistics.median(q.times)
        r_best = min(b.times) / min(q.times)
        target = next((v for k, v in targets.items() if b.name.startswith(k)), None)
        verdict = ""
        if target is not None:
            verdict = f"  target >= {target:g}: {'met' if r_best >= target else 'NOT met'}"
        print(f"  qfcal / {b.name}: {r_med:.2f}x median, {r_best:.2f}x best{verdict}")
    pinned = by_name.get("qfcal update (warm, pinned to 1 core)")
    if pinned is not None:
        print(
            "  qfcal all cores / qfcal 1 core: "
            f"{min(pinned.times) / min(q.times):.2f}x best (thread scaling on this machine)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size-mb", type=float, default=64.0, help="float32 data size (default 64)")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per contender (default 7)")
    p.add_argument(
        "--batch-mb", type=float, default=4.0, help="HistogramObserver batch size (default 4)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data",
        choices=["normal", "relu", "both"],
        default="both",
        help="data set(s) to run (default both)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch peers")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 MB, 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.repeat = min(args.size_mb, 8.0), min(args.repeat, 2)
    if args.repeat < 1 or args.size_mb <= 0 or args.batch_mb <= 0:
        p.error("--repeat, --size-mb and --batch-mb must be positive")

    torch = None if args.no_torch else import_torch()
    ncpu = os.cpu_count() or 1
    print(f"qfcal {qfcal.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    if torch is not None:
        torch.set_num_threads(ncpu)  # type: ignore[attr-defined]
        print(f"torch {torch.__version__}")  # type: ignore[attr-defined]
    else:
        print("torch: " + ("skipped (--no-torch)" if args.no_torch else "not installed"))
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(f"cpu: {cpu_model()}, {ncpu} logical cores; affinity {affinity}; load average {load()}")
    print(
        f"rounds: {args.repeat} (interleaved; each contender runs once per round; "
        "torch contenders in a second phase)"
    )

    n = int(args.size_mb * 2**20) // 4
    batch_values = max(1, int(args.batch_mb * 2**20) // 4)
    kinds = ["normal", "relu"] if args.data == "both" else [args.data]
    for kind in kinds:
        x = make_data(kind, n, args.seed)
        benches = build_benches(x, batch_values, torch)
        # torch's intra-op thread pool keeps cores busy for a while after each torch call, which
        # would slow whichever contender runs next: the torch contenders run as a second phase,
        # interleaved among themselves, after the others.
        others = [b for b in benches if not b.name.startswith("torch")]
        torches = [b for b in benches if b.name.startswith("torch")]
        for group in (others, torches):
            for _ in range(args.repeat):
                for b in group:
                    b.once()
        report(kind, x, benches, torch is None and not args.no_torch)
    print(f"\nload average at the end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
