"""Two builds of qfcal's extension, A and B, measured in one process, interleaved: histogram
throughput and search time, so that a refactor or an optimisation is judged on ratios measured
under the same load (the machine is shared). Also checks that both give identical results.

Build the extension of another revision into a folder of its own, for example::

    git worktree add /tmp/rev HEAD~1 && (cd /tmp/rev && maturin build --release -o /tmp/rev/dist)
    mkdir -p /tmp/a && unzip -o -j /tmp/rev/dist/*.whl 'qfcal/_core*.so' -d /tmp/a
    python benchmarks/bench_ab.py /tmp/a/_core.abi3.so python/qfcal/_core.abi3.so

Throughput: a warm histogram updated with 64 MB of N(0, 1) float32 (contiguous, float16,
every other value of a twice-as-long array, byte-swapped), all cores. Search: the sum over
bench_search.py's eight 2**20-value tensors of the median of 21 calls, per method. Rounds
alternate which build goes first; the table gives the median of the rounds [best].
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load  # noqa: E402
from bench_search import TENSORS, make_tensors  # noqa: E402

SEARCH_REPEAT = 21


def extension(path: str) -> ModuleType:
    """The extension module at `path`, loaded under its own name (two builds side by side)."""
    loader = importlib.machinery.ExtensionFileLoader("qfcal._core", path)
    spec = importlib.util.spec_from_file_location("qfcal._core", path, loader=loader)
    assert spec is not None, path
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def inputs() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((64 << 20) // 4).astype(np.float32)
    wide = np.empty(2 * x.size, np.float32)
    wide[::2] = x
    return {
        "float32 contiguous": x,
        "float16": x.astype(np.float16),
        "float32 strided": wide[::2],
        "float32 byte-swapped": x.astype(">f4"),
    }


def same_results(
    mods: dict[str, ModuleType], data: dict[str, np.ndarray], changed: bool = False
) -> tuple[int, list[tuple[Any, ...]]]:
    """Histogram bytes and every method's encoding must agree between the builds; returns the
    number of comparisons made (AssertionError on the first difference) and, with `changed`
    (a change meant to move results), the encodings that differ instead: (tensor, method,
    options, A's loss, B's loss)."""
    checked = 0
    diffs: list[tuple[Any, ...]] = []
    tensors = make_tensors(1 << 16, 1, list(TENSORS))
    for name, x in {**tensors, **{k: v[: 1 << 16] for k, v in data.items()}}.items():
        hs = []
        for mod in mods.values():
            h = mod.Histogram()
            h.update(x)
            hs.append(h)
        assert hs[0].to_bytes() == hs[1].to_bytes(), name
        checked += 1
        for method in mods["A"].methods():
            for kw in ({}, {"bits": 4, "signed": False}, {"symmetric": True, "gamma": 3.0}):
                pairs = zip(mods.values(), hs, strict=True)
                a, b = (mod.search(h, method=method, **kw) for mod, h in pairs)
                same = (a.scale, a.zero_point, a.loss) == (b.scale, b.zero_point, b.loss)
                if not same and changed:
                    diffs.append((name, method, kw, a.loss, b.loss))
                assert same or changed, (name, method, kw, a, b)
                checked += 1
    return checked, diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the A build's _core .so")
    p.add_argument("b", help="the B build's _core .so")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--changed",
        action="store_true",
        help="B is meant to move results: list the encodings that differ (A's and B's loss) "
        "instead of stopping at the first",
    )
    args = p.parse_args()
    mods = {"A": extension(args.a), "B": extension(args.b)}
    print(f"cpu: {cpu_model()}; load {load()}; A = {args.a}, B = {args.b}")
    data = inputs()
    checked, diffs = same_results(mods, data, args.changed)
    print(f"identical results: {checked - len(diffs)} of {checked} comparisons")
    for name, method, kw, la, lb in diffs:
        print(f"  differs: {name} {method} {kw}: loss A {la:.6g}, B {lb:.6g} ({lb / la - 1:+.2%})")

    warm: dict[tuple[str, str], Any] = {}
    for m, mod in mods.items():
        for k, v in data.items():
            warm[m, k] = mod.Histogram()
            warm[m, k].update(v)
    rate: dict[tuple[str, str], list[float]] = {key: [] for key in warm}
    order = list(mods)
    for r in range(args.rounds):
        for k, v in data.items():
            for m in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                warm[m, k].update(v)
                rate[m, k].append(v.size / (time.perf_counter() - t0) / 1e6)

    tensors = make_tensors(1 << 20, 0, list(TENSORS))
    hists = {}
    for m, mod in mods.items():
        for name, t in tensors.items():
            hists[m, name] = mod.Histogram()
            hists[m, name].update(t)
    calls = [(method, True) for method in mods["A"].methods()] + [("optimal", False)]
    ms: dict[tuple[str, tuple[str, bool]], list[float]] = {(m, c): [] for m in mods for c in calls}
    for r in range(args.rounds):
        for c in calls:
            for m in order if r % 2 == 0 else order[::-1]:
                total = 0.0
                for name in tensors:
                    h = hists[m, name]
                    times = []
                    for _ in range(SEARCH_REPEAT):
                        t0 = time.perf_counter()
                        mods[m].search(h, bits=8, signed=c[1], method=c[0])
                        times.append(time.perf_counter() - t0)
                    total += statistics.median(times)
                ms[m, c].append(1e3 * total)

    def cell(xs: list[float], best: float) -> str:
        return f"{statistics.median(xs):.2f} [{best:.2f}]"

    print(f"\nHistogram throughput, Mvalues/s ({args.rounds} rounds: median [best])\n")
    print("| input | A | B | B/A (median) |\n|---|---:|---:|---:|")
    for k in data:
        a, b = rate["A", k], rate["B", k]
        ratio = statistics.median(b) / statistics.median(a)
        print(f"| {k} | {cell(a, max(a))} | {cell(b, max(b))} | {ratio:.2f} |")
    print(f"\nSearch, ms over 8 tensors ({args.rounds} rounds: median [best])\n")
    print("| method | A | B | B/A (median) |\n|---|---:|---:|---:|")
    for c in calls:
        a, b = ms["A", c], ms["B", c]
        label = c[0] + ("" if c[1] else " (unsigned grid)")
        ratio = statistics.median(b) / statistics.median(a)
        print(f"| {label} | {cell(a, min(a))} | {cell(b, min(b))} | {ratio:.2f} |")
    print(f"\nload at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
