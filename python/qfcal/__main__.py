"""``python -m qfcal``: calibrate activations with every method and print them side by side.

Without files it streams synthetic activations (seeded) through qfcal histograms; with ``.npy``
files it calibrates those arrays. For each tensor and method it prints the chosen range, the cost
on the histogram and the true error of quantizing the raw values.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

import qfcal


def _synthetic(seed: int, batches: int, size: int) -> dict[str, list[npt.NDArray[np.float32]]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[npt.NDArray[np.float32]]] = {"relu": [], "gaussian": [], "heavy_tail": []}
    for _ in range(batches):
        out["relu"].append(np.maximum(rng.standard_normal(size), 0).astype(np.float32))
        out["gaussian"].append(rng.normal(0.3, 1.5, size).astype(np.float32))
        out["heavy_tail"].append(rng.standard_t(3, size).astype(np.float32))
    return out


def _true_mse(x: npt.NDArray[np.float64], r: qfcal.SearchResult) -> float:
    q = np.clip(np.round(x / r.scale) + r.zero_point, r.qmin, r.qmax)
    return float(np.mean((x - (q - r.zero_point) * r.scale) ** 2))


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
        yield (
            f"{m:<12} {r.min:>10.4g} {r.max:>10.4g} {r.mse:>11.4e} {_true_mse(raw, r):>11.4e}"
            f" {r.sqnr_db:>8.2f}  ({ms:.2f} ms)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qfcal", description=__doc__)
    p.add_argument("npy", nargs="*", help=".npy files of activations (default: synthetic data)")
    p.add_argument("--bits", type=int, default=8, help="bit width, 2..16 (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    args = p.parse_args(argv)
    if args.npy:
        tensors = {path: [np.asarray(np.load(path), dtype=np.float32)] for path in args.npy}
    else:
        tensors = _synthetic(args.seed, batches=16, size=65536)
    print(f"qfcal {qfcal.__version__}: every method at {args.bits} bits, asymmetric int grid")
    for name, batches in tensors.items():
        for line in _rows(name, batches, args.bits):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
