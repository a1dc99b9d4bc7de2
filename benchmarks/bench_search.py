"""Range search: time per tensor and TRUE quantization error, qfcal against its peers.

Eight synthetic "real-looking activation" tensors (fixed seed, ``--n`` values each) are made:
ReLU outputs, heavy tails, a near-constant tensor, a bimodal mixture and a depthwise-conv-like
output with a few huge outliers. For each tensor:

* qfcal: one ``qfcal.Histogram()`` (default bins) fed the whole tensor, then
  ``qfcal.search(h, bits=8, method=m)`` timed for every ``m`` in ``qfcal.methods()`` (signed grid
  [-128, 127], asymmetric), plus ``optimal`` on the unsigned grid [0, 255] (``signed=False``) to
  sit beside PyTorch;
* PyTorch ``HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)``: forward
  over the tensor in ``--batches`` batches, then ``calculate_qparams()`` timed alone (grid
  [0, 255]);
* ONNX Runtime ``onnxruntime.quantization.calibrate.HistogramCollector``, built as
  ``create_calibrator`` builds it with its default options, fed the batches as ``collect_data``
  feeds them, then ``compute_collection_result()`` timed alone: entropy (defaults: 128 bins, 128
  quantized bins), entropy with 2048 bins (the figure in the guide), percentile (defaults:
  99.999, 2048 bins of |x|, symmetric) and distribution (defaults: 2048 bins; for integer types
  ORT uses its (lowest, highest), which are the histogram edges +-max|x|). Each (lo, hi) is
  encoded on the int8 grid [-128, 127] by ORT's own ``quant_utils.compute_scale_zp(lo, hi,
  qmin, qmax, symmetric=False)``, as ``quantize_static`` does by default (``QInt8``
  activations, ``ActivationSymmetric=False``).

True error: every encoding (scale, zero_point, qmin, qmax) quantizes the raw values,
``q = clip(round(x / scale) + zp, qmin, qmax)``, ``xhat = (q - zp) * scale``, and
``mse = mean((x - xhat)**2)`` in float64. All encodings here are asymmetric with 256 levels, so
[-128, 127] and [0, 255] give the same choices up to a shift of the zero point. qfcal's methods
also report ``r.mse``, the cost the search minimizes (expected squared rounding + clipping error
under the histogram's piecewise-uniform density, exact zeros apart).

Only numpy and qfcal are required; torch and onnxruntime are skipped when not installed
(onnxruntime.quantization also needs the ``onnx`` package).

    python benchmarks/bench_search.py            # 8 tensors of 2**20 values
    python benchmarks/bench_search.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import qfcal
from _machine import cpu_model, load

# ---------------------------------------------------------------------------------------------
# data


def _relu_halfnormal(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.maximum(rng.standard_normal(n), 0.0)


def _relu_gamma(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.gamma(2.0, 0.7, n)
    x[rng.random(n) < 0.65] = 0.0
    return x


def _student_t2(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_t(2.0, n)


def _student_t3(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_t(3.0, n)


def _laplace(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.laplace(0.0, 1.0, n)


def _near_constant(rng: np.random.Generator, n: int) -> np.ndarray:
    return 0.75 + 1e-4 * rng.standard_normal(n)


def _bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    left = rng.random(n) < 0.4
    return np.where(left, rng.normal(-2.0, 0.5, n), rng.normal(3.0, 1.0, n))


def _dwconv_outliers(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(0.0, 0.3, n)
    k = 16
    idx = rng.choice(n, k, replace=False)
    x[idx] = rng.uniform(30.0, 120.0, k) * rng.choice([-1.0, 1.0], k)
    return x


TENSORS: dict[str, tuple[str, Callable[[np.random.Generator, int], np.ndarray]]] = {
    "relu_halfnormal": ("max(N(0,1), 0): half exact zeros, half-normal tail", _relu_halfnormal),
    "relu_gamma": ("65% exact zeros, Gamma(k=2, theta=0.7) tail", _relu_gamma),
    "student_t2": ("Student-t, df=2 (infinite variance)", _student_t2),
    "student_t3": ("Student-t, df=3", _student_t3),
    "laplace": ("Laplace(0, 1)", _laplace),
    "near_constant": ("0.75 + N(0, 1e-4)", _near_constant),
    "bimodal": ("0.4 N(-2, 0.5) + 0.6 N(3, 1)", _bimodal),
    "dwconv_outliers": ("N(0, 0.3) with 16 outliers of |x| in [30, 120]", _dwconv_outliers),
}


def make_tensors(n: int, seed: int, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(TENSORS):
        if name in names:
            rng = np.random.default_rng([seed, i])
            out[name] = TENSORS[name][1](rng, n).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# measurement


@dataclass
class Row:
    method: str
    grid: str  # "i8" [-128, 127] or "u8" [0, 255]
    time_ms: float | None = None
    scale: float = math.nan
    zero_point: int = 0
    qmin: int = 0
    qmax: int = 0
    hist_cost: float | None = None
    true_mse: float = math.nan
    sqnr_db: float = math.nan
    error: str | None = None

    @property
    def lo(self) -> float:
        return (self.qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        return (self.qmax - self.zero_point) * self.scale


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def true_error(x64: np.ndarray, power: float, row: Row) -> None:
    """Fill ``row.true_mse`` and ``row.sqnr_db`` by quantizing the raw values."""
    q = np.rint(x64 / row.scale)
    q += row.zero_point
    np.clip(q, row.qmin, row.qmax, out=q)
    q -= row.zero_point
    q *= row.scale
    np.subtract(x64, q, out=q)
    mse = float(np.dot(q, q)) / q.size
    row.true_mse = mse
    row.sqnr_db = math.inf if mse == 0 else 10 * math.log10(power / mse)


def _fresh_hist(x: np.ndarray) -> qfcal.Histogram:
    h = qfcal.Histogram()
    h.update(x)
    return h


def bench_qfcal(x: np.ndarray, repeat: int) -> tuple[list[Row], float]:
    build_ms, h = median_ms(lambda: _fresh_hist(x), 3)
    rows = []
    grids = [(m, "i8", True) for m in qfcal.methods()] + [("optimal", "u8", False)]
    for method, grid, signed in grids:
        qfcal.search(h, bits=8, signed=signed, method=method)  # warm up

        def call(m: str = method, s: bool = signed) -> qfcal.SearchResult:
            return qfcal.search(h, bits=8, signed=s, method=m)

        ms, r = median_ms(call, repeat)
        label = f"qfcal {method}" + (" (u8 grid)" if grid == "u8" else "")
        rows.append(Row(label, grid, ms, r.scale, r.zero_point, r.qmin, r.qmax, hist_cost=r.mse))
    return rows, build_ms


def bench_torch(torch: Any, batches: list[np.ndarray], repeat: int) -> tuple[Row, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import HistogramObserver

        obs = HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        t0 = time.perf_counter()
        for b in batches:
            obs(torch.from_numpy(b))
        forward_ms = (time.perf_counter() - t0) * 1e3
        obs.calculate_qparams()  # warm up
        ms, (scale, zp) = median_ms(obs.calculate_qparams, repeat)
    row = Row(
        "torch HistogramObserver",
        "u8",
        ms,
        float(scale.reshape(-1)[0]),
        int(zp.reshape(-1)[0]),
        int(obs.quant_min),
        int(obs.quant_max),
    )
    return row, forward_ms


def _ort_cfg(method: str, symmetric: bool, num_bins: int, num_quantized_bins: int) -> dict:
    return {
        "method": method,
        "symmetric": symmetric,
        "num_bins": num_bins,
        "num_quantized_bins": num_quantized_bins,
        "percentile": 99.999,
        "scenario": "same",
    }


# name, HistogramCollector arguments (create_calibrator's defaults unless said), repeat cap
ORT_CONFIGS: list[tuple[str, dict[str, Any], int | None]] = [
    ("ort entropy (default 128 bins)", _ort_cfg("entropy", False, 128, 128), None),
    ("ort entropy, 2048 bins", _ort_cfg("entropy", False, 2048, 128), 3),
    ("ort percentile 99.999", _ort_cfg("percentile", True, 2048, 2048), None),
    ("ort distribution", _ort_cfg("distribution", False, 2048, 2048), None),
]


def import_ort() -> tuple[Any | None, str]:
    try:
        import onnxruntime
    except ImportError:
        return None, "not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import onnx
            from onnxruntime.quantization import calibrate, quant_utils
    except ImportError as e:
        return None, f"not installed (onnxruntime.quantization cannot be imported: {e})"
    ns = argparse.Namespace(calibrate=calibrate, quant_utils=quant_utils, onnx=onnx)
    return ns, f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}"


def bench_ort(ort: Any, batches: list[np.ndarray], repeat: int) -> tuple[list[Row], list[str]]:
    rows, notes = [], []
    qmin, qmax = ort.quant_utils.get_qmin_qmax_for_qType(ort.onnx.TensorProto.INT8)
    for name, cfg, cap in ORT_CONFIGS:
        reps = repeat if cap is None else max(1, min(repeat, cap))
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                col = ort.calibrate.HistogramCollector(**cfg)
                t0 = time.perf_counter()
                col.collect({"t": list(batches)})
                collect_ms = (time.perf_counter() - t0) * 1e3
                ms, res = median_ms(col.compute_collection_result, reps)
            out = res["t"]
            if isinstance(out, tuple):
                lo, hi = out[0], out[1]
            else:  # distribution: a TensorData; integer types use its (lowest, highest)
                lo, hi = out.range_value
            nbins = len(col.histogram_dict["t"][0])
            zp, scale = ort.quant_utils.compute_scale_zp(lo, hi, qmin, qmax, symmetric=False)
            rows.append(Row(name, "i8", ms, float(scale), int(zp), int(qmin), int(qmax)))
            notes.append(
                f"{name}: collect {collect_ms:.1f} ms, {nbins} bins, "
                f"thresholds ({float(lo):.6g}, {float(hi):.6g}), median of {reps}"
            )
        except Exception as e:  # a failing peer is reported, not fatal
            rows.append(Row(name, "i8", error=f"{type(e).__name__}: {e}"))
    return rows, notes


# ---------------------------------------------------------------------------------------------
# report


def fmt(v: float | None, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def print_table(name: str, x: np.ndarray, rows: list[Row], notes: list[str]) -> None:
    zeros = np.count_nonzero(x == 0) / x.size
    meansq = float(np.mean(np.square(x, dtype=np.float64)))
    print(f"\n### {name}: {TENSORS[name][0]}")
    print(
        f"{x.size:,} values, min {float(x.min()):.6g}, max {float(x.max()):.6g}, "
        f"{zeros:.1%} exact zeros, E[x^2] {meansq:.6g}"
    )
    ref = {r.grid: r.true_mse for r in rows if r.method.startswith("qfcal optimal")}
    w = max(len(r.method) for r in rows)
    print(
        f"| {'method':<{w}} | grid | time ms | hist cost r.mse | true MSE   | SQNR dB "
        "| MSE/optimal | range [min, max]"
    )
    print(
        f"|{'-' * (w + 2)}|------|--------:|----------------:|-----------:|--------:"
        "|------------:|-----------------"
    )
    for r in rows:
        if r.error is not None:
            print(f"| {r.method:<{w}} | {r.grid}   | failed: {r.error}")
            continue
        ratio = r.true_mse / ref[r.grid] if ref.get(r.grid) else math.nan
        print(
            f"| {r.method:<{w}} | {r.grid}   | {fmt(r.time_ms, '7.3f'):>7} "
            f"| {fmt(r.hist_cost, '15.4e'):>15} | {r.true_mse:10.4e} | {r.sqnr_db:7.2f} "
            f"| {fmt(ratio, '11.4f'):>11} | [{r.lo:.5g}, {r.hi:.5g}]"
        )
    print()
    for note in notes:
        print(f"  {note}")


def lowest_verdict(rows: list[Row]) -> str:
    """Is qfcal optimal's true MSE the lowest of every other method and peer on this tensor?"""
    opt = next(r for r in rows if r.method == "qfcal optimal")
    others = [r for r in rows if r.error is None and r is not opt and "(u8 grid)" not in r.method]
    best = min(others, key=lambda r: r.true_mse)
    rel = best.true_mse / opt.true_mse
    if opt.true_mse < best.true_mse:
        return f"yes (next: {best.method}, {rel:.4f}x = +{(rel - 1) * 100:.2g}%)"
    if opt.true_mse == best.true_mse:
        ties = ", ".join(r.method for r in others if r.true_mse == opt.true_mse)
        return f"yes (tie with {ties})"
    return f"NO: {best.method} {rel:.6f}x of optimal's ({(1 - rel) * 100:.2g}% lower)"


def _ok_time(r: Row | None) -> float | None:
    return None if r is None or r.error is not None else r.time_ms


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def print_summary(summary: list[dict[str, Any]]) -> None:
    print("\n## summary")
    print(
        "| tensor | optimal ms | optimal u8 ms | HO calc ms | HO / opt u8 | ORT entropy-2048 ms "
        "| ORT ent-2048 / opt | ORT entropy-128 ms | opt r.mse / true MSE "
        "| optimal lowest true MSE? |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for s in summary:
        print(
            f"| {s['tensor']} | {s['opt_ms']:.3f} | {s['opt_u8_ms']:.3f} "
            f"| {fmt(s['ho_ms'], '.2f')} | {_ratio(s['ho_ms'], s['opt_u8_ms'])} "
            f"| {fmt(s['ent_ms'], '.1f')} | {_ratio(s['ent_ms'], s['opt_ms'])} "
            f"| {fmt(s['ent128_ms'], '.3f')} | {s['cost_gap']:.4f} | {s['verdict']} |"
        )
    opt = [s["opt_ms"] for s in summary]
    verdict = "met" if max(opt) < 1.0 else "NOT met"
    print(
        f"\nqfcal optimal (8 bits, i8 grid): median {statistics.median(opt):.3f} ms, "
        f"max {max(opt):.3f} ms per tensor (target < 1 ms: {verdict})"
    )
    for key, label, ref in (
        ("ho_ms", "torch HistogramObserver.calculate_qparams", "opt_u8_ms"),
        ("ent_ms", "ORT entropy, 2048 bins", "opt_ms"),
        ("ent128_ms", "ORT entropy, default 128 bins", "opt_ms"),
    ):
        ratios = [s[key] / s[ref] for s in summary if s[key] is not None]
        if ratios:
            print(
                f"speed: {label} time / qfcal optimal time: median "
                f"{statistics.median(ratios):.1f}x (min {min(ratios):.1f}x, "
                f"max {max(ratios):.1f}x; > 1 means qfcal is faster)"
            )
        else:
            print(f"speed: qfcal optimal vs {label}: not measured")
    wins = sum(s["verdict"].startswith("yes") for s in summary)
    print(f"optimal has the lowest true MSE on {wins} of {len(summary)} tensors")


def run_tensor(
    name: str, x: np.ndarray, args: argparse.Namespace, torch: Any, ort: Any
) -> dict[str, Any]:
    x64 = x.astype(np.float64)
    power = float(np.dot(x64, x64)) / x64.size
    batches = np.array_split(x, args.batches)
    rows, build_ms = bench_qfcal(x, args.repeat)
    notes = [f"qfcal Histogram build (one update of the whole tensor): {build_ms:.2f} ms"]
    ho_ms = None
    if torch is not None:
        try:
            row, fwd_ms = bench_torch(torch, batches, args.peer_repeat)
            ho_ms = row.time_ms
            notes.append(f"torch HistogramObserver forward over the batches: {fwd_ms:.1f} ms")
        except Exception as e:  # a failing peer is reported, not fatal
            row = Row("torch HistogramObserver", "u8", error=f"{type(e).__name__}: {e}")
        rows.append(row)
    if ort is not None:
        ort_rows, ort_notes = bench_ort(ort, batches, args.peer_repeat)
        rows += ort_rows
        notes += ort_notes
    for r in rows:
        if r.error is None:
            true_error(x64, power, r)
    print_table(name, x, rows, notes)
    sys.stdout.flush()
    by = {r.method: r for r in rows}
    opt = by["qfcal optimal"]
    return {
        "tensor": name,
        "opt_ms": opt.time_ms,
        "opt_u8_ms": by["qfcal optimal (u8 grid)"].time_ms,
        "ho_ms": ho_ms,
        "ent_ms": _ok_time(by.get("ort entropy, 2048 bins")),
        "ent128_ms": _ok_time(by.get("ort entropy (default 128 bins)")),
        "cost_gap": opt.hist_cost / opt.true_mse if opt.true_mse else math.nan,
        "verdict": lowest_verdict(rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1 << 20, help="values per tensor (default 2**20)")
    p.add_argument("--repeat", type=int, default=21, help="timed calls per search (default 21)")
    p.add_argument(
        "--peer-repeat",
        type=int,
        default=7,
        help="timed calls per peer range computation (default 7; ORT entropy-2048: at most 3)",
    )
    p.add_argument("--batches", type=int, default=4, help="batches fed to the peers (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tensors", default=",".join(TENSORS), help="comma-separated subset of the defaults"
    )
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--quick", action="store_true", help="smoke run: 2**17 values, few repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 1 << 17)
        args.repeat = min(args.repeat, 3)
        args.peer_repeat = 1
    names = [t.strip() for t in args.tensors.split(",") if t.strip()]
    unknown = [t for t in names if t not in TENSORS]
    if unknown or not names:
        p.error(f"unknown or no tensors: {unknown}; choose from {', '.join(TENSORS)}")
    if args.batches < 1 or args.n < args.batches or args.repeat < 1 or args.peer_repeat < 1:
        p.error("--n >= --batches >= 1 and --repeat, --peer-repeat >= 1 are required")

    print(f"qfcal {qfcal.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; load average {load()}")
    torch: Any = None
    if args.no_torch:
        print("torch: skipped (--no-torch)")
    else:
        try:
            import torch
        except ImportError:
            print("torch: not installed")
        else:
            torch.set_num_threads(args.torch_threads)
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ort: Any = None
    if args.no_ort:
        print("onnxruntime: skipped (--no-ort)")
    else:
        ort, msg = import_ort()
        print(msg if ort is not None else f"onnxruntime: {msg}")
    print(
        f"{len(names)} tensors of {args.n:,} values; qfcal searches: median of {args.repeat}; "
        f"peers: median of {args.peer_repeat}; peers fed {args.batches} batches"
    )
    print("time ms: the range computation alone (histograms already collected)")

    t_start = time.perf_counter()
    tensors = make_tensors(args.n, args.seed, names)
    summary = [run_tensor(name, x, args, torch, ort) for name, x in tensors.items()]
    print_summary(summary)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.1f} s; load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
