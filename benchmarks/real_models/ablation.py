"""Which tensors decide? Swap activation ranges between two methods, one tensor (or one kind of
tensor) at a time, and measure the output change (issue 12, item 2).

EfficientNet-Lite0 through ONNX Runtime (``quantize_static``, QDQ, 8-bit, per-channel weights
by default), using the ORT flow's range-override hook (``OrtFlow.quantize(ranges)``): start from
method A's ranges for every tensor (default qfcal ``optimal``), replace one tensor's range by
method B's (default ``minmax``) and measure mean sum|Δprob| against the float model on the
held-out photos; the same for each tensor kind at once:

- ``relu6``: outputs of Clip (ReLU6) nodes;
- ``conv-linear``: Conv outputs not followed by a Clip (linear bottlenecks, the stem when it has
  no activation, the head); Conv outputs that feed a Clip are left out (ONNX Runtime's quantizer
  gives them the Clip output's quantizer, so their own range is never used);
- ``add``: residual adds;
- ``other``: the rest (graph input, pooling, the classifier's output...).

Models are evaluated with graph optimizations off (the QDQ model's exact semantics, the
``ort-ref`` flow of the benchmark) unless ``--kernels``: on CPUs without VNNI, ORT's int8
kernels add a saturation error larger than the effects measured here.

Run (after ``setup.sh``)::

    ~/.cache/qfcal-bench/venv/bin/python benchmarks/real_models/ablation.py [--top 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from real_models import data, models  # noqa: E402
from real_models.flow_ort import OrtFlow  # noqa: E402

Range = tuple[float, float]


def tensor_kinds(path: Path) -> dict[str, str]:
    """tensor name -> kind (relu6, conv-linear, conv-into-relu6, add, other)."""
    g = onnx.load(str(path)).graph
    consumers: dict[str, list[str]] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node.op_type)
    kinds = {i.name: "other" for i in g.input}
    for node in g.node:
        for y in node.output:
            if node.op_type == "Clip":
                kinds[y] = "relu6"
            elif node.op_type == "Conv":
                feeds_clip = consumers.get(y, []) == ["Clip"]
                kinds[y] = "conv-into-relu6" if feeds_clip else "conv-linear"
            elif node.op_type == "Add":
                kinds[y] = "add"
            else:
                kinds[y] = "other"
    return kinds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="effnet_lite0", choices=["effnet_lite0", "mobilenet_v2"])
    p.add_argument(
        "--base",
        default="optimal",
        help="method A, every tensor: a qfcal method, percentileP or aimet:SCHEME (%(default)s)",
    )
    p.add_argument("--swap", default="minmax", help="method B, swapped in (%(default)s)")
    p.add_argument("--weights", default="per-channel", choices=["per-channel", "per-tensor"])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--heldout", type=int, default=64)
    p.add_argument("--top", type=int, default=15, help="tensors listed (%(default)s)")
    p.add_argument("--kernels", action="store_true", help="score with ORT's int8 kernels")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("QFCAL_BENCH_CACHE", Path.home() / ".cache" / "qfcal-bench")),
    )
    p.add_argument("--out", type=Path, default=None, help="JSON of every swap")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    import qfcal.onnxruntime

    t0 = time.perf_counter()
    spec = models.MODELS[args.model]
    pre = models.onnx_model(spec.key, args.cache)
    c, h = data.image_sets(spec.size, args.calib, args.heldout)
    xc, xh = models.preprocess(spec.key, c), models.preprocess(spec.key, h)
    calib = [{"input": x[None]} for x in xc]
    held = [{"input": xh[i : i + 16]} for i in range(0, len(xh), 16)]
    flow = OrtFlow(pre, calib, held, "logits", args.cache / spec.key / "ablation")
    cal = qfcal.onnxruntime.calibrate(pre, calib, progress=False)
    data_minmax = {k: (float(h.min), float(h.max)) for k, h in cal.histograms.items() if h.finite}

    def ranges_of(method: str) -> dict[str, Range]:
        """qfcal's `method` (``percentile99.99``: a percentile), or AIMET's ``aimet:<scheme>``
        encodings on ONNX Runtime's placement (the benchmark's aimet rows)."""
        if method.startswith("aimet:"):
            from real_models import aimet_ranges

            r, _, _ = aimet_ranges.encodings(pre, calib, method.split(":", 1)[1], 8)
            return aimet_ranges.complete(r, data_minmax)
        kw: dict[str, Any] = {"method": method}
        if method.startswith("percentile") and method != "percentile":
            kw = {"method": "percentile", "percentile": float(method[len("percentile") :])}
        return {k: (float(lo), float(hi)) for k, (lo, hi) in cal.search(**kw).bounds.items()}

    a = ranges_of(args.base)
    b = ranges_of(args.swap)
    kinds = tensor_kinds(pre)
    pc = args.weights == "per-channel"
    reference = not args.kernels

    def score(ranges: dict[str, Range]) -> dict[str, float]:
        path = flow.quantize(ranges, per_channel=pc)
        return flow.evaluate(path, reference=reference)

    base = score(a)
    alt = score(b)
    print(f"{spec.title}, ORT QDQ 8-bit {args.weights}, {'kernels' if args.kernels else 'ref'}")
    print(f"all {args.base}: {base}\nall {args.swap}: {alt}\n")

    by_kind: dict[str, Any] = {}
    for kind in sorted(set(kinds.values()) - {"conv-into-relu6"}):
        names = [k for k in a if kinds.get(k) == kind]
        mixed = {**a, **{k: b[k] for k in names if k in b}}
        m = score(mixed)
        ratio = [
            (a[k][1] - a[k][0]) / (b[k][1] - b[k][0]) for k in names if k in b and b[k][1] > b[k][0]
        ]
        by_kind[kind] = {
            "tensors": len(names),
            "metrics": m,
            "delta_dprob": m["dprob"] - base["dprob"],
            "median_width_ratio": float(np.median(ratio)) if ratio else None,
            "min_width_ratio": float(np.min(ratio)) if ratio else None,
        }
    print(f"| kind | tensors | {args.base} width / {args.swap} width (median, min) "
          f"| dprob with the kind swapped | Δ vs all {args.base} |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for kind, r in by_kind.items():
        med, lo = r["median_width_ratio"], r["min_width_ratio"]
        ratio_s = f"{med:.3f}, {lo:.3f}" if med is not None else ""
        print(
            f"| {kind} | {r['tensors']} | {ratio_s} | {r['metrics']['dprob']:.4f} "
            f"| {r['delta_dprob']:+.4f} |"
        )

    singles = []
    for k in a:
        if k not in b or kinds.get(k) == "conv-into-relu6" or a[k] == b[k]:
            continue
        m = score({**a, k: b[k]})
        hist = cal.histograms[k]
        singles.append(
            {
                "tensor": k,
                "kind": kinds.get(k, "?"),
                "base": a[k],
                "swap": b[k],
                "data": (float(hist.min), float(hist.max)),
                "metrics": m,
                "delta_dprob": m["dprob"] - base["dprob"],
            }
        )
    singles.sort(key=lambda r: -abs(r["delta_dprob"]))
    print(f"\nTensors whose swap {args.base} -> {args.swap} moves mean sum|Δprob| most "
          f"({len(singles)} tensors differ):\n")  # fmt: skip
    print(f"| tensor | kind | data [min, max] | {args.base} | {args.swap} | Δ dprob |")
    print("|---|---|---|---|---|---:|")
    for r in singles[: args.top]:
        print(
            f"| `{r['tensor']}` | {r['kind']} | [{r['data'][0]:.3g}, {r['data'][1]:.3g}] "
            f"| [{r['base'][0]:.3g}, {r['base'][1]:.3g}] | [{r['swap'][0]:.3g}, "
            f"{r['swap'][1]:.3g}] | {r['delta_dprob']:+.4f} |"
        )
    total = sum(r["delta_dprob"] for r in singles)
    all_delta = alt["dprob"] - base["dprob"]
    print(f"\nsum of single-tensor deltas {total:+.4f}; all swapped {all_delta:+.4f}")
    print(f"time {time.perf_counter() - t0:.0f} s")
    if args.out:
        args.out.write_text(
            json.dumps({"base": base, "swap": alt, "kinds": by_kind, "tensors": singles}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
