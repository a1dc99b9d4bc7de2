"""Issue 15's sweep: which activations get 16 bits, on the real models, through ONNX Runtime.

For each model: one qfcal calibration (``optimal`` ranges, histograms kept), then ONNX Runtime's
own ``quantize_static`` (QDQ, int8 per-channel weights) with ``TensorQuantOverrides`` giving
each quantized activation its qfcal scale and zero point, at 8 bits or (for the chosen ones)
16 bits. The output error on held-apart inputs (MiniLM: ``1 - cos`` of the pooled embedding;
classifiers: sum |Δprob|) is measured for

- ``histogram``: :func:`qfcal.precision.plan`'s ranking, the k best tensors in 16 bits;
- ``outlier``: the rule users try, tensors ranked by ``max|x| / p99.9|x|`` (from the same
  histograms), the k highest in 16 bits;
- ``sensitivity``: the model's own one-at-a-time measurement (each tensor alone in 16 bits,
  quantized by ONNX Runtime and run on the held-apart inputs), the slow ground truth; its
  ranking is the oracle row;
- ``free+histogram``: where ONNX Runtime quantizes tensors a fused kernel keeps internal
  (:func:`qfcal.onnxruntime.fused_outputs`: a MatMul's output before its bias Add), those
  without a quantizer (:func:`qfcal.onnxruntime.remove_quantizers`) and the plan's k best
  of the rest in 16 bits; with ONNX Runtime's latency of that placement;
- ``all-16`` (every quantized activation in 16 bits) and ``all-8``;
- ONNX Runtime dynamic quantization (MiniLM: the reference the issue names).

It prints the sweep, the smallest k whose improvement reaches 95% of all-16's, the top-10
agreement of the histogram ranking with the sensitivity ranking (and of the sensitivity with
itself on two halves of the inputs: how much agreement the measurement can show), and both
rankings' seconds. The sensitivity (per input) is kept under the cache and reused.

    python -m real_models.precision --models minilm [--op-types all] [--heldout 100]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data, models
from .flow_ort import OrtFlow

DEFAULT_CACHE = Path.home() / ".cache" / "qfcal-bench"


def feeds(spec: models.ModelSpec, n_calib: int, n_held: int) -> tuple[list[Any], list[Any]]:
    """Calibration feeds (one sample each) and held-apart feeds, as the main benchmark's."""
    if spec.kind == "image":
        c, h = data.image_sets(spec.size, n_calib, n_held)
        c, h = models.preprocess(spec.key, c), models.preprocess(spec.key, h)
    elif spec.kind == "fmnist":
        c, h = data.fmnist_sets(n_calib, n_held)
    else:
        tok = models.tokenizer()
        cs, hs = data.sentence_sets(n_calib, n_held)
        return [tok(s) for s in cs], [tok(s) for s in hs]
    name = models.ONNX_INPUTS[spec.key][0]
    return [{name: x[None]} for x in c], [{name: h[i : i + 16]} for i in range(0, len(h), 16)]


def outlier_ratio(h: Any, q: float = 0.999) -> float:
    """``max|x| / (q-quantile of |x|)`` from a histogram (the simple outlier rule)."""
    counts, edges = h.to_numpy()
    centers = np.abs(0.5 * (edges[:-1] + edges[1:]))
    order = np.argsort(centers)
    c = np.cumsum(counts[order], dtype=np.float64)
    if c[-1] == 0:
        return 0.0
    at = centers[order][np.searchsorted(c, q * c[-1])]
    top = max(abs(h.min), abs(h.max))
    return float(top / at) if at > 0 else math.inf


class Sweep:
    """One model's quantizations: activation bits per tensor -> output error."""

    def __init__(self, key: str, args: argparse.Namespace) -> None:
        import qfcal.onnxruntime

        self.spec = spec = models.MODELS[key]
        op_types = spec.ort_op_types if args.op_types == "spec" else None
        self.pre = models.onnx_model(key, args.cache)
        calib, held = feeds(spec, args.calib, args.heldout)
        self.flow = OrtFlow(
            self.pre, calib, held, spec.output, args.cache / key / f"precision-{args.op_types}",
            threads=args.threads, op_types=op_types,
        )  # fmt: skip
        t0 = time.perf_counter()
        self.cal = qfcal.onnxruntime.calibrate(
            self.pre, calib, method="optimal", op_types=op_types, progress=False
        )
        self.calibrate_s = time.perf_counter() - t0
        self.tmp = Path(tempfile.mkdtemp(prefix="qfcal-prec-"))
        self.cache = self.cal.save_cache(self.tmp / "ranges.json")
        self.quantize_s: list[float] = []
        self.evaluate_s: list[float] = []
        # the tensors ONNX Runtime quantizes (its own placement): read from the all-8 model
        import onnx

        path = self.quantize({}, "all8")
        q = onnx.load(str(path), load_external_data=False)
        self.tensors = sorted(
            {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
            & set(self.cal.histograms)
        )
        self.all8_path = path
        self.all8_samples = self.samples(path)
        self.all8 = float(np.mean(self.all8_samples))

    def samples(self, path: Path) -> np.ndarray:
        """Per held-out input: ``1 - cos`` to the float embedding, or sum |Δprob|."""
        t0 = time.perf_counter()
        out, ref = self.flow.run(path), self.flow.reference
        self.evaluate_s.append(time.perf_counter() - t0)
        if self.spec.output == "embedding":
            unit = out / np.linalg.norm(out, axis=1, keepdims=True)
            return 1.0 - (unit * (ref / np.linalg.norm(ref, axis=1, keepdims=True))).sum(1)
        return np.abs(out - ref).sum(1)  # run() gives probabilities

    def error(self, path: Path) -> float:
        return float(np.mean(self.samples(path)))

    def quantize(self, high: dict[str, Any], name: str) -> Path:
        """ONNX Runtime's quantize_static with qfcal's 8-bit ranges, and the `high` tensors'
        16-bit overrides."""
        from onnxruntime.quantization import CalibrationMethod, quantize_static
        from qfcal.encodings import to_ort

        out = self.flow.workdir / f"{name}.onnx"
        t0 = time.perf_counter()
        quantize_static(
            str(self.pre), str(out), None,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=str(self.cache),
            **self.flow.ort_kwargs(per_channel=True),
            extra_options={"TensorQuantOverrides": to_ort(high)} if high else {},
        )  # fmt: skip
        self.quantize_s.append(time.perf_counter() - t0)
        return out

    def with_high(self, names: list[str], high: dict[str, Any], label: str) -> float:
        return self.error(self.quantize({n: high[n] for n in names}, label))


def latency_ms(path: Path, feed: dict[str, Any], repeats: int = 30) -> float:
    """Median milliseconds of one ONNX Runtime run of `feed` on one thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def top10_split(gains: dict[str, list[float]], seed: int = 0) -> float:
    """How far the sensitivity agrees with itself: the mean top-10 overlap of the rankings
    measured on two random halves of the held-out inputs (20 splits)."""
    names = sorted(gains)
    g = np.array([gains[t] for t in names])
    rng = np.random.default_rng(seed)
    overlaps = []
    for _ in range(20):
        half = rng.permutation(g.shape[1]) < g.shape[1] // 2
        a = set(np.argsort(-g[:, half].mean(1), kind="stable")[:10])
        b = set(np.argsort(-g[:, ~half].mean(1), kind="stable")[:10])
        overlaps.append(len(a & b))
    return float(np.mean(overlaps))


def run(key: str, args: argparse.Namespace) -> dict[str, Any]:
    import qfcal.onnxruntime as qort
    from qfcal.precision import plan

    sw = Sweep(key, args)
    n = len(sw.tensors)
    hists = {t: sw.cal.histograms[t] for t in sw.tensors}
    t0 = time.perf_counter()
    p = plan(hists, tensors=n)
    plan_s = time.perf_counter() - t0
    high = {t: p.tensors[t].result for t in sw.tensors}  # every tensor's 16-bit range
    hist_rank = p.ranked
    out_rank = sorted(sw.tensors, key=lambda t: (-outlier_ratio(hists[t]), t))
    # the tensors a fused kernel keeps internal (MatMul before its bias Add), as ORT quantizes
    free = [t for t in qort.fused_outputs(sw.pre) if t in hists]
    res: dict[str, Any] = {
        "model": key,
        "op_types": args.op_types,
        "tensors": n,
        "free": len(free),
        "calibrate_s": sw.calibrate_s,
        "plan_s": plan_s,
        "all8": sw.all8,
    }
    print(f"{key}: {n} quantized activations ({len(free)} of them fused-kernel outputs); "
          f"all-8 error {sw.all8:.4f}", flush=True)  # fmt: skip
    all16 = sw.quantize(high, "all16")
    res["all16"] = sw.error(all16)
    print(f"  all-16 {res['all16']:.4f}", flush=True)
    if key == "minilm":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = sw.flow.workdir / "dynamic.onnx"
        quantize_dynamic(str(sw.pre), str(out), weight_type=QuantType.QInt8, per_channel=True)
        res["dynamic"] = sw.error(out)
        print(f"  ORT dynamic {res['dynamic']:.4f}", flush=True)

    def with_free(names: list[str], label: str) -> float:
        path = sw.quantize({t: high[t] for t in names}, label)
        qort.remove_quantizers(path, free, path)
        return sw.error(path)

    if free:
        res["all8_free"] = with_free([], "all8free")
        print(f"  all-8, no quantizer on the {len(free)} fused outputs {res['all8_free']:.4f}")
        feed = dict(sw.flow.heldout[0])
        free8 = sw.flow.workdir / "all8free.onnx"
        res["latency_ms"] = {
            "float": latency_ms(sw.pre, feed),
            "all8": latency_ms(sw.all8_path, feed),
            "all8_free": latency_ms(free8, feed),
            "all16": latency_ms(all16, feed),
        }
        print("  latency (1 thread, median ms): " + ", ".join(
            f"{k} {v:.1f}" for k, v in res["latency_ms"].items()), flush=True)  # fmt: skip
    # one tensor at a time in 16 bits: the ground truth (and its cost); per held-out input,
    # kept beside the model keyed by the run's settings, reused unless --fresh
    gains: dict[str, list[float]] = {}
    sens_s = 0.0
    stored = sw.flow.workdir / f"sensitivity-{args.op_types}-c{args.calib}-h{args.heldout}.json"
    if args.sensitivity and stored.exists() and not args.fresh:
        old = json.loads(stored.read_text())
        if sorted(old["gains"]) == sw.tensors and math.isclose(old["all8"], sw.all8):
            gains, sens_s = old["gains"], old["seconds"]
            print(f"  sensitivity read from {stored} (measured in {sens_s:.0f} s)", flush=True)
    if args.sensitivity and not gains:
        for i, t in enumerate(sw.tensors):
            t1 = time.perf_counter()
            one = sw.samples(sw.quantize({t: high[t]}, "one"))
            gains[t] = (sw.all8_samples - one).tolist()
            sens_s += time.perf_counter() - t1
            print(f"  [{i + 1}/{n}] {t}: gain {np.mean(gains[t]):+.5f}", file=sys.stderr,
                  flush=True)  # fmt: skip
        stored.write_text(json.dumps({"all8": sw.all8, "seconds": sens_s, "gains": gains}))
    sens = {t: float(np.mean(g)) for t, g in gains.items()}
    if sens:
        res["sensitivity_s"] = sens_s
        res["sensitivity"] = sens
    sens_rank = sorted(sens, key=lambda t: (-sens[t], t))
    ks = sorted({k for k in args.ks if k <= n} | {math.floor(0.15 * n)})
    rankings = {"histogram": hist_rank, "outlier": out_rank}
    if sens:
        rankings["sensitivity"] = sens_rank
    sweep: dict[str, dict[int, float]] = {r: {} for r in rankings}
    if free:
        sweep["free+histogram"] = {}
        # with the fused outputs free, the plan ranks the rest
        free_rank = plan(hists, tensors=n, free=free).ranked
    for k in ks:
        for r, ranking in rankings.items():
            sweep[r][k] = sw.all8 if k == 0 else sw.error(
                sw.quantize({t: high[t] for t in ranking[:k]}, f"{r}{k}"))  # fmt: skip
        if free:
            sweep["free+histogram"][k] = with_free(free_rank[:k], f"free{k}")
        print(f"  k={k:3d} " + " ".join(f"{r} {sweep[r][k]:.4f}" for r in sweep), flush=True)
    res["sweep"] = {r: {str(k): v for k, v in s.items()} for r, s in sweep.items()}
    gap = sw.all8 - res["all16"]
    res["reach95"] = {}
    for r, s in sweep.items():
        hit = [k for k in ks if gap > 0 and sw.all8 - s[k] >= 0.95 * gap]
        res["reach95"][r] = min(hit) if hit else None
    res["ranked"] = {r: rk[:20] for r, rk in rankings.items()}
    res["gain_histogram"] = {t: p.tensors[t].gain for t in sw.tensors}
    if sens:
        res["top10_agreement"] = len(set(hist_rank[:10]) & set(sens_rank[:10]))
        res["top10_agreement_outlier"] = len(set(out_rank[:10]) & set(sens_rank[:10]))
        res["top10_self_agreement"] = top10_split(gains)
    res["quantize_s_mean"] = float(np.mean(sw.quantize_s))
    res["evaluate_s_mean"] = float(np.mean(sw.evaluate_s))
    report(res)
    return res


def report(r: dict[str, Any]) -> None:
    n = r["tensors"]
    gap = r["all8"] - r["all16"]
    print(f"\n{r['model']} ({r['op_types']}): all-8 {r['all8']:.4f}, all-16 {r['all16']:.4f}"
          + (f", ORT dynamic {r['dynamic']:.4f}" if "dynamic" in r else "")
          + (f", all-8 with the fused outputs free {r['all8_free']:.4f}" if "all8_free" in r
             else ""))  # fmt: skip
    for name, k in r["reach95"].items():
        share = f"{k} of {n} ({k / n:.0%})" if k is not None else "not within the sweep"
        print(f"  95% of the all-16 improvement ({gap:.4f}) by {name}: {share}")
    if "top10_agreement" in r:
        print(f"  top-10 agreement with sensitivity: histogram {r['top10_agreement']}/10, "
              f"outlier rule {r['top10_agreement_outlier']}/10; the sensitivity with itself "
              f"(two halves of the inputs) {r['top10_self_agreement']:.1f}/10")  # fmt: skip
        print(f"  ranking cost: histogram {r['plan_s']:.2f} s (+ calibration "
              f"{r['calibrate_s']:.1f} s, shared), sensitivity {r['sensitivity_s']:.0f} s: "
              f"{100 * r['plan_s'] / r['sensitivity_s']:.3f}%")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="minilm", help="comma list (%(default)s)")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--heldout", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--op-types",
        default="spec",
        choices=["spec", "all"],
        help="ops ONNX Runtime quantizes: the model's spec (MiniLM: MatMul) or all",
    )
    p.add_argument("--ks", default="0,1,2,3,5,8,10,15,20,30", help="16-bit tensor counts")
    p.add_argument("--no-sensitivity", dest="sensitivity", action="store_false")
    p.add_argument("--fresh", action="store_true", help="measure the sensitivity again")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None, help="write the raw numbers as JSON here")
    args = p.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    results = [run(m, args) for m in args.models.split(",")]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
