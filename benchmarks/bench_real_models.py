"""Real-model end-to-end quantization benchmark (issue 12, item 1).

Pretrained models no one here wrote (installed from PyPI), calibrated on real photographs or
sentences and measured on held-out inputs from other sources, through the flow a user would
take, for every contender's activation ranges; metrics against the float model, no labels.
See ``benchmarks/README.md`` ("bench_real_models.py") and ``benchmarks/real_models/``.

Setup (once; Debian packages and a virtual environment, see the script)::

    bash benchmarks/real_models/setup.sh
    ~/.cache/qfcal-bench/venv/bin/python benchmarks/bench_real_models.py --quick
    ~/.cache/qfcal-bench/venv/bin/python benchmarks/bench_real_models.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.modules.setdefault("triton", None)  # type: ignore[arg-type]  # TF + torch in one process


from real_models import data, models  # noqa: E402
from real_models.data import MissingInputError  # noqa: E402

FLOWS = ("ort", "pt2e", "tflite")
BITS = (8, 6, 4)
WEIGHTS = ("per-channel", "per-tensor")
PERCENTILES = (99.9, 99.99, 99.999)
# contender groups (--contenders) -> what they add in each flow
GROUPS = (
    "default",
    "optimal",
    "minmax",
    "percentile",
    "entropy",
    "tf_enhanced",
    "greedy",
    "gamma3",
    "framework",
    "aimet",
    "loss-aware",
    "weights",
    "crossval",
    "auto",
)
QFCAL_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    # row label -> (group, search kwargs; no "method" = the adapter's / search's default)
    "qfcal:default": ("default", {}),
    "qfcal:optimal": ("optimal", {"method": "optimal"}),
    "qfcal:minmax": ("minmax", {"method": "minmax"}),
    **{
        f"qfcal:percentile{p}": ("percentile", {"method": "percentile", "percentile": p})
        for p in PERCENTILES
    },
    "qfcal:entropy": ("entropy", {"method": "entropy"}),
    # qfcal's reimplementations of AIMET's TF-Enhanced and PyTorch's HistogramObserver search
    "qfcal:tf_enhanced": ("tf_enhanced", {"method": "tf_enhanced"}),
    "qfcal:greedy": ("greedy", {"method": "greedy"}),
    # clipping weighted 3x (AIMET's TF-Enhanced weighs it so): wider ranges
    "qfcal:optimal-gamma3": ("gamma3", {"method": "optimal", "gamma": 3.0}),
}


def _pooled_cosine(reference: Any, outputs: Any, batch: Any) -> tuple[float, float]:
    """1 - cosine of the mean-pooled sentence embeddings (MiniLM's graph ends at the hidden
    states; its users compare the pooled embedding), summed over the batch's sentences."""
    import numpy as np
    from real_models import metrics

    f = metrics.mean_pool(reference[0], batch["attention_mask"])
    q = metrics.mean_pool(outputs[0], batch["attention_mask"])
    cos = (f * q).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-30)
    return float(np.sum(1.0 - cos)), float(len(f))


# qfcal:auto's output error by the model's output (what its users compare)
AUTO_METRICS: dict[str, Any] = {"logits": "kl", "embedding": _pooled_cosine}
ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile")
AIMET_SCHEMES = ("min_max", "tf_enhanced", "percentile")


class Recorder:
    """Collects result rows and prints progress."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, **row: Any) -> None:
        self.rows.append(row)
        m = row.get("metrics", {})
        main = " ".join(f"{k}={v:.4f}" for k, v in m.items())
        print(
            f"  {row['model']:<13} {row['flow']:<6} {row['weights']:<11} {row['bits']}b "
            f"{row['contender']:<28} {main}",
            flush=True,
        )

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def _sample_sets(spec: models.ModelSpec, n_calib: int, n_held: int) -> tuple[Any, Any]:
    if spec.kind == "image":
        c, h = data.image_sets(spec.size, n_calib, n_held)
        return models.preprocess(spec.key, c), models.preprocess(spec.key, h)
    if spec.kind == "fmnist":
        return data.fmnist_sets(n_calib, n_held)
    return data.sentence_sets(n_calib, n_held)


# -- ONNX Runtime -----------------------------------------------------------------------------


def run_ort(spec: models.ModelSpec, args: argparse.Namespace, rec: Recorder) -> None:
    """Every contender through ONNX Runtime's quantize_static (see real_models/flow_ort.py)."""
    import qfcal
    import qfcal.onnxruntime
    from real_models.flow_ort import SIM_LABEL, OrtFlow, grid, ort_calibrator_ranges

    pre = models.onnx_model(spec.key, args.cache)
    calib, held = _sample_sets(spec, args.calib, args.heldout)
    if spec.kind in ("image", "fmnist"):
        name = models.ONNX_INPUTS[spec.key][0]
        calib_feeds = [{name: x[None]} for x in calib]
        held_feeds = [{name: held[i : i + 16]} for i in range(0, len(held), 16)]
    else:
        tok = models.tokenizer()
        calib_feeds = [tok(s) for s in calib]
        held_feeds = [tok(s) for s in held]
    flow = OrtFlow(
        pre,
        calib_feeds,
        held_feeds,
        spec.output,
        args.cache / spec.key / "work",
        threads=args.threads,
        op_types=spec.ort_op_types,
    )
    base = {"model": spec.key, "flow": "ort"}
    base_ref = {"model": spec.key, "flow": "ort-ref"}

    def row(contender: str, weights: str, bits: int, path: Path, **extra: Any) -> None:
        """One quantized model: the int8-kernel run (8 bits) and the reference run."""
        if bits == 8:
            m = flow.evaluate(path)
            rec.add(**base, contender=contender, weights=weights, bits=bits, sim=None, metrics=m,
                    **extra)  # fmt: skip
        sim = None if bits == 8 else SIM_LABEL
        m = flow.evaluate(path, reference=True)
        rec.add(**base_ref, contender=contender, weights=weights, bits=bits, sim=sim, metrics=m,
                **extra)  # fmt: skip

    # qfcal's adapter as a user calls it (no method=): the real 8-bit default rows, and the
    # histograms every other qfcal row re-searches.
    cal = None
    weight_overrides: dict[str, Any] = {}  # the adapter's weight scales, per weight mode
    for w in args.weights:
        t0 = time.perf_counter()
        out = flow.workdir / "qfcal_default.onnx"
        # the adapter's default (method="auto") when it is a contender, else one plain
        # calibration for the histograms the other rows re-search
        plain = {} if "default" in args.contenders else {"method": "optimal"}
        cal = qfcal.onnxruntime.quantize_static(
            pre, out, calib_feeds, progress=False, **plain, **flow.ort_kwargs(w == "per-channel")
        )
        dt = time.perf_counter() - t0
        weight_overrides[w] = qfcal.onnxruntime.weight_overrides(cal.weight_ranges)
        if "weights" in args.contenders:  # qfcal's weight scales, for qfcal:optimal+weights
            searched = qfcal.onnxruntime.search_weight_ranges(
                pre, per_channel=w == "per-channel", op_types=spec.ort_op_types
            )
            weight_overrides[f"{w}+weights"] = qfcal.onnxruntime.weight_overrides(searched)
        if cal.selection is not None:  # the default, method="auto"
            rec.note(f"{spec.key} qfcal:default {w} 8b ({dt:.1f} s):\n{cal.selection.table()}")
        if "default" in args.contenders and 8 in args.bits:
            row("qfcal:default", w, 8, out, seconds=dt, method=cal.method)
    assert cal is not None
    hists = cal.histograms

    sources: dict[str, Callable[[int], dict[str, tuple[float, float]]]] = {}
    for label, (group, kw) in QFCAL_ROWS.items():
        if group not in args.contenders or label == "qfcal:default":
            continue  # the default (method="auto") at 6/4 bits: ort_auto below

        def qfcal_ranges(bits: int, kw: dict[str, Any] = kw) -> dict[str, tuple[float, float]]:
            if bits == 8 and kw:
                c = cal.search(**kw)
                return {k: (float(lo), float(hi)) for k, (lo, hi) in c.bounds.items()}
            qmin, qmax = grid(bits)
            out: dict[str, tuple[float, float]] = {}
            for k, h in hists.items():
                if h.finite:
                    r = qfcal.search(h, qmin=qmin, qmax=qmax, **kw)
                    out[k] = (r.min, r.max)
            return out

        sources[label] = qfcal_ranges
        if label == "qfcal:optimal" and "weights" in args.contenders:
            sources["qfcal:optimal+weights"] = qfcal_ranges
    if "crossval" in args.contenders:
        # cross-validated clipping: each calibration sample's histograms kept, gamma per tensor
        t0 = time.perf_counter()
        cv = qfcal.onnxruntime.calibrate(
            pre, calib_feeds, method="crossval", op_types=spec.ort_op_types, progress=False
        )
        dt = time.perf_counter() - t0
        rec.note(f"{spec.key} qfcal:crossval calibration and 8-bit search {dt:.1f} s")

        def crossval_ranges(bits: int) -> dict[str, tuple[float, float]]:
            if bits == 8:
                return {k: (float(lo), float(hi)) for k, (lo, hi) in cv.bounds.items()}
            qmin, qmax = grid(bits)
            out: dict[str, tuple[float, float]] = {}
            for k, parts in cv.batch_histograms.items():
                parts = [h for h in parts if h.finite]
                if len(parts) >= 2:
                    r = qfcal.cross_validate(parts, folds=min(8, len(parts)), qmin=qmin, qmax=qmax)
                    out[k] = (r.min, r.max)
            return out

        sources["qfcal:crossval"] = crossval_ranges
    if "default" in args.contenders:  # the adapter's default at 6/4 bits: auto, metric "auto"
        ort_auto(flow, pre, calib_feeds, args, rec, row, "qfcal:default", "auto", cal)
    if "auto" in args.contenders:
        ort_auto(flow, pre, calib_feeds, args, rec, row)
    if "framework" in args.contenders:
        for method in ORT_CALIBRATORS:
            try:
                ranges, dt = ort_calibrator_ranges(pre, calib_feeds, method, spec.ort_op_types)
            except Exception as e:  # an ORT calibrator failing is a result, not a crash
                rec.note(f"{spec.key} ort:{method} failed: {type(e).__name__}: {e}")
                continue
            rec.note(f"{spec.key} ort:{method} calibration {dt:.1f} s")
            sources[f"ort:{method}"] = lambda bits, r=ranges: r
    aimet_sims: dict[tuple[str, int], Any] = {}
    if "aimet" in args.contenders:
        try:
            from real_models import aimet_ranges

            fixed: dict[str, dict[str, tuple[float, float]]] = {}
            data_minmax = {k: (float(h.min), float(h.max)) for k, h in hists.items() if h.finite}
            for scheme in AIMET_SCHEMES:
                if scheme != "tf_enhanced":
                    r, sim, dt = aimet_ranges.encodings(pre, calib_feeds, scheme, 8)
                    r = aimet_ranges.complete(r, data_minmax)
                    fixed[scheme] = r
                    aimet_sims[(scheme, 8)] = sim
                    rec.note(f"{spec.key} aimet:{scheme} encodings {dt:.1f} s")
                    sources[f"aimet:{scheme}"] = lambda bits, r=r: r
            cache_te: dict[int, dict[str, tuple[float, float]]] = {}

            def aimet_te(bits: int) -> dict[str, tuple[float, float]]:
                if bits not in cache_te:
                    r, sim, dt = aimet_ranges.encodings(pre, calib_feeds, "tf_enhanced", bits)
                    r = aimet_ranges.complete(r, data_minmax)
                    rec.note(f"{spec.key} aimet:tf_enhanced {bits}-bit encodings {dt:.1f} s")
                    cache_te[bits] = r
                    aimet_sims[("tf_enhanced", bits)] = sim
                return cache_te[bits]

            sources["aimet:tf_enhanced"] = aimet_te
        except ImportError as e:
            rec.note(f"aimet-onnx not importable ({e}); AIMET rows skipped (run {data.SETUP})")

    for bits in args.bits:
        for label, source in sources.items():
            ranges = source(bits)
            for w in args.weights:
                if label == "qfcal:default" and bits == 8:
                    continue  # done above through the adapter itself
                t0 = time.perf_counter()
                # qfcal's default at 6/4 bits: with the adapter's weight scales too
                wo = {
                    "qfcal:default": weight_overrides.get(w),
                    "qfcal:optimal+weights": weight_overrides.get(f"{w}+weights"),
                }.get(label)
                path = flow.quantize(
                    ranges, per_channel=w == "per-channel", bits=bits, weight_overrides=wo
                )
                row(label, w, bits, path, seconds=time.perf_counter() - t0)
        sim = aimet_sims.get(("tf_enhanced", bits))
        if sim is not None:  # AIMET's own QuantSim output (its weights: per-channel int8)
            out = flow.run("", sess=sim.session)
            rec.add(
                **base_ref,
                contender="aimet-quantsim:tf_enhanced",
                weights="per-channel",
                bits=bits,
                sim="aimet-quantsim",
                metrics=flow.score(out),
            )


def ort_auto(
    flow: Any, pre: Path, calib_feeds: list[Any], args: argparse.Namespace, rec: Recorder,
    row: Callable[..., None], label: str = "qfcal:auto", metric: Any = None, cal: Any = None,
) -> None:  # fmt: skip
    """qfcal:auto: the range method chosen end to end on held-out calibration folds, with the
    output error a user of the model would pick (classifier logits: KL; encoder: cosine). 8 bits:
    the adapter itself (quantize_static(method="auto")). 6/4 bits: the same selection
    (qfcal.selection.select) on the simulated b-bit model, each candidate's ranges written into
    one quantized model (to_bits); both in exact semantics. `cal`: an auto calibration already
    made (the default's, with `metric` "auto"): 6/4 bits only."""
    import shutil

    import qfcal
    import qfcal.onnxruntime
    import qfcal.selection
    from real_models.flow_ort import grid, session, to_bits

    if metric is None:
        metric = args.auto_metric or AUTO_METRICS.get(flow.output, "mse")
    for w in args.weights if cal is None else ():
        t0 = time.perf_counter()
        out = flow.workdir / "qfcal_auto.onnx"
        cal = qfcal.onnxruntime.quantize_static(
            pre, out, calib_feeds, method="auto", metric=metric, progress=False,
            **flow.ort_kwargs(w == "per-channel"),
        )  # fmt: skip
        dt = time.perf_counter() - t0
        assert cal.selection is not None
        rec.note(f"{flow.model.parent.name} {label} {w} 8b ({dt:.1f} s):\n{cal.selection.table()}")
        if 8 in args.bits:
            row(label, w, 8, out, seconds=dt, method=cal.selection.chosen)
    assert cal is not None
    lower = [b for b in args.bits if b != 8]
    if not lower:
        return
    parts = cal.batch_histograms
    ref_sess = session(flow.model, flow.threads)
    reference = [ref_sess.run(None, dict(f))[:1] for f in calib_feeds]
    merged: dict[tuple[int, ...], dict[str, Any]] = {}

    def train(test: list[int]) -> dict[str, Any]:
        key = tuple(test)
        if key not in merged:
            merged[key] = qfcal.selection.merge_parts(parts, set(test))
        return merged[key]

    def ranges_of(hists: dict[str, Any], options: dict[str, Any], bits: int) -> dict[str, Any]:
        qmin, qmax = grid(bits)
        out = {}
        for k, h in hists.items():
            if h.finite:
                r = qfcal.search(h, qmin=qmin, qmax=qmax, **options)
                out[k] = (r.min, r.max)
        return out

    trial = flow.workdir / "auto_trial.onnx"
    for w in args.weights:
        base = flow.quantize(
            ranges_of(cal.histograms, {"method": "optimal"}, 8),
            per_channel=w == "per-channel", name="auto_base",
        )  # fmt: skip
        for bits in lower:
            t0 = time.perf_counter()

            def evaluate(
                options: Any, test: list[int], bits: int = bits, base: Path = base
            ) -> tuple[Any, Any]:
                shutil.copyfile(base, trial)
                to_bits(trial, ranges_of(train(test), dict(options), bits), bits)
                s = session(trial, flow.threads, reference=True)
                errs, norms = [], []
                for i in test:
                    q = s.run(None, dict(calib_feeds[i]))[:1]
                    e, n = qfcal.selection.output_error(metric, reference[i], q, calib_feeds[i])
                    errs.append(e)
                    norms.append(n)
                return errs, norms

            sel = qfcal.selection.select(len(calib_feeds), evaluate, progress=False)
            path = flow.quantize(
                ranges_of(cal.histograms, sel.options, bits),
                per_channel=w == "per-channel", bits=bits,
            )  # fmt: skip
            dt = time.perf_counter() - t0
            rec.note(f"{flow.model.parent.name} {label} {w} {bits}b ({dt:.1f} s):\n{sel.table()}")
            row(label, w, bits, path, seconds=dt, method=sel.chosen)


# -- PT2E -------------------------------------------------------------------------------------


def run_pt2e(spec: models.ModelSpec, args: argparse.Namespace, rec: Recorder) -> None:
    """Every contender through torchao's PT2E flow (see real_models/flow_pt2e.py)."""
    from real_models.flow_pt2e import Pt2eFlow

    calib, held = _sample_sets(spec, args.calib, args.heldout)
    flow = Pt2eFlow(models.torch_model(spec.key), calib, held)
    families = []
    if any(QFCAL_ROWS[k][0] in args.contenders for k in QFCAL_ROWS):
        families.append("qfcal")
    if "framework" in args.contenders:
        families += ["torch:HistogramObserver", "torch:MinMaxObserver"]
    if "loss-aware" in args.contenders:
        families.append("qfcal-loss-aware")
    for w in args.weights:
        for family in families:
            prepared, dt = flow.calibrate(family, w == "per-channel")
            rec.note(f"{spec.key} pt2e {w} {family} calibration {dt:.1f} s")
            for bits in args.bits:
                if family == "qfcal-loss-aware":  # optimal on the loss-weighted histograms
                    m = flow.convert_and_score(prepared, bits, method="optimal")
                    rec.add(
                        model=spec.key, flow="pt2e", contender="qfcal:loss-aware", weights=w,
                        bits=bits, sim=None, metrics=m,
                    )  # fmt: skip
                    continue
                if family != "qfcal":
                    m = flow.convert_and_score(prepared, bits)
                    rec.add(
                        model=spec.key, flow="pt2e", contender=family, weights=w, bits=bits,
                        sim=None, metrics=m,
                    )  # fmt: skip
                    continue
                for label, (group, kw) in QFCAL_ROWS.items():
                    if group not in args.contenders:
                        continue
                    m = flow.convert_and_score(
                        prepared,
                        bits,
                        method=kw.get("method"),
                        percentile=kw.get("percentile"),
                    )
                    rec.add(
                        model=spec.key, flow="pt2e", contender=label, weights=w, bits=bits,
                        sim=None, metrics=m,
                    )  # fmt: skip
                if "auto" in args.contenders and family == "qfcal":
                    t0 = time.perf_counter()
                    m, sel = flow.auto(
                        w == "per-channel", bits, args.auto_metric or AUTO_METRICS[spec.output]
                    )
                    dt = time.perf_counter() - t0
                    rec.note(f"{spec.key} pt2e qfcal:auto {w} {bits}b ({dt:.1f} s):\n{sel.table()}")
                    rec.add(
                        model=spec.key, flow="pt2e", contender="qfcal:auto", weights=w, bits=bits,
                        sim=None, metrics=m, seconds=dt, method=sel.chosen,
                    )  # fmt: skip
                if "weights" in args.contenders and w == "per-channel":
                    # qfcal's weight observer searching (the other rows: torch's min/max)
                    m = flow.convert_and_score(
                        prepared, bits, method="optimal", weight_method="optimal"
                    )
                    rec.add(
                        model=spec.key, flow="pt2e", contender="qfcal:optimal+weights",
                        weights=w, bits=bits, sim=None, metrics=m,
                    )  # fmt: skip


# -- TFLite -----------------------------------------------------------------------------------


def run_tflite(spec: models.ModelSpec, args: argparse.Namespace, rec: Recorder) -> None:
    """The TFLite converter and qfcal.tflite.quantize (see real_models/flow_tflite.py)."""
    from real_models.flow_tflite import TfliteFlow

    if 8 not in args.bits:
        return
    calib, held = _sample_sets(spec, args.calib, args.heldout)
    flow = TfliteFlow(models.keras_model(spec.key, args.cache), calib, held, spec.output)
    base = {"model": spec.key, "flow": "tflite", "bits": 8, "sim": None}
    for w in args.weights:
        pc = w == "per-channel"
        if "framework" in args.contenders:
            m, dt = flow.converter(pc)
            rec.add(**base, contender="tflite:converter", weights=w, metrics=m, seconds=dt)
        for label, (group, kw) in QFCAL_ROWS.items():
            if group in args.contenders:
                m, dt, q = flow.qfcal(pc, **kw)
                extra: dict[str, Any] = {}
                if q.selection is not None:  # the default, method="auto"
                    rec.note(
                        f"{spec.key} tflite {label} {w} 8b ({dt:.1f} s):\n{q.selection.table()}"
                    )
                    extra["method"] = q.selection.chosen
                rec.add(**base, contender=label, weights=w, metrics=m, seconds=dt, **extra)
        if "weights" in args.contenders:
            m, dt, _ = flow.qfcal(pc, method="optimal", weight_method="optimal")
            rec.add(**base, contender="qfcal:optimal+weights", weights=w, metrics=m, seconds=dt)
        if "loss-aware" in args.contenders:  # optimal on the Keras loss-weighted histograms
            target = "fisher" if spec.output == "logits" else "projection"
            m, dt, q = flow.qfcal(pc, method="optimal", loss_aware=target)
            rec.add(**base, contender="qfcal:loss-aware", weights=w, metrics=m, seconds=dt)
        if "auto" in args.contenders:
            metric = args.auto_metric or AUTO_METRICS.get(spec.output, "mse")
            m, dt, q = flow.qfcal(pc, method="auto", metric=metric)
            rec.note(f"{spec.key} tflite qfcal:auto {w} 8b ({dt:.1f} s):\n{q.selection.table()}")
            rec.add(**base, contender="qfcal:auto", weights=w, metrics=m, seconds=dt,
                    method=q.selection.chosen)  # fmt: skip


# -- report -----------------------------------------------------------------------------------


def tables(rows: list[dict[str, Any]]) -> str:
    """Markdown: per (model, flow), the main metric and the top-1 agreement tables."""
    out = []
    keys = sorted({(r["model"], r["flow"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, flow in keys:
        rs = [r for r in rows if r["model"] == model and r["flow"] == flow]
        encoder = "cos" in rs[0]["metrics"]
        cols = sorted({(r["weights"], r["bits"]) for r in rs}, key=lambda c: (c[0], -c[1]))
        contenders = list(dict.fromkeys(r["contender"] for r in rs))
        sims = sorted({r["sim"] for r in rs if r["sim"]})
        for metric, better in (
            ("cos" if encoder else "dprob", max if encoder else min),
            ("spearman" if encoder else "kl", max if encoder else min),
            ("top1", max),
        ):
            name = {
                "dprob": "mean sum|Δprob| (lower is better)",
                "kl": "KL(float || quantized) (lower is better)",
                "cos": "mean cosine to float (higher is better)",
                "spearman": "Spearman of pairwise similarities (higher is better)",
                "top1": (
                    "nearest-neighbour agreement with float"
                    if encoder
                    else "top-1 agreement with float"
                ),
            }[metric]
            out.append(f"\n#### {model} / {flow}: {name}\n")
            out.append("| contender | " + " | ".join(f"{w} {b}b" for w, b in cols) + " |")
            out.append("|---|" + "---:|" * len(cols))
            best = {}
            for c in cols:
                vals = [
                    r["metrics"][metric]
                    for r in rs
                    if (r["weights"], r["bits"]) == c and metric in r["metrics"]
                ]
                best[c] = better(vals) if vals else None
            for con in contenders:
                cells = []
                for c in cols:
                    v = next(
                        (
                            r["metrics"][metric]
                            for r in rs
                            if r["contender"] == con and (r["weights"], r["bits"]) == c
                        ),
                        None,
                    )
                    if v is None:
                        cells.append("")
                    else:
                        s = f"{v:.4f}" if metric != "top1" else f"{100 * v:.1f}%"
                        cells.append(f"**{s}**" if v == best[c] else s)
                out.append(f"| {con} | " + " | ".join(cells) + " |")
        if sims:
            out.append(
                "\n6/4-bit rows: "
                + ", ".join(sims)
                + " (see benchmarks/README.md); 8-bit rows run the real flow."
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(models.MODELS), help="comma list: %(default)s")
    p.add_argument("--flows", default=",".join(FLOWS), help="comma list: %(default)s")
    p.add_argument("--bits", default="8,6,4", help="activation bits, comma list: %(default)s")
    p.add_argument("--weights", default=",".join(WEIGHTS), help="comma list: %(default)s")
    p.add_argument("--contenders", default=",".join(GROUPS), help="groups: %(default)s")
    p.add_argument("--calib", type=int, default=32, help="calibration samples (%(default)s)")
    p.add_argument("--heldout", type=int, default=96, help="held-out samples (%(default)s)")
    p.add_argument("--quick", action="store_true", help="8 calib, 32 held-out, 8-bit only")
    p.add_argument("--threads", type=int, default=2, help="ORT/torch threads (%(default)s)")
    p.add_argument(
        "--auto-metric",
        choices=("kl", "mse", "cosine", "auto"),
        default=None,
        help="the auto group's output error instead of the model's usual one (AUTO_METRICS)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("QFCAL_BENCH_CACHE", Path.home() / ".cache" / "qfcal-bench")),
        help="exports and quantized models (default $QFCAL_BENCH_CACHE or ~/.cache/qfcal-bench)",
    )
    p.add_argument("--out", type=Path, default=None, help="write all raw numbers as JSON here")
    p.add_argument(
        "--report", type=Path, default=None, help="print the tables of a JSON written by --out"
    )
    args = p.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(tables(saved["rows"]))
        print(f"\nwall time {saved['wall_s'] / 60:.1f} min ({saved['timings_s']})")
        return 0
    args.models = [m for m in args.models.split(",") if m]
    args.flows = [f for f in args.flows.split(",") if f]
    args.bits = [int(b) for b in args.bits.split(",") if b]
    args.weights = [w for w in args.weights.split(",") if w]
    args.contenders = [c for c in args.contenders.split(",") if c]
    if args.quick:
        args.calib, args.heldout, args.bits = 8, 32, [8]
    for name, values, allowed in (
        ("models", args.models, tuple(models.MODELS)),
        ("flows", args.flows, FLOWS),
        ("bits", args.bits, BITS),
        ("weights", args.weights, WEIGHTS),
        ("contenders", args.contenders, GROUPS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {', '.join(map(str, allowed))}")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)

    rec = Recorder()
    t_start = time.perf_counter()
    runners = {"ort": run_ort, "pt2e": run_pt2e, "tflite": run_tflite}
    timings: dict[str, float] = {}
    try:
        for key in args.models:
            spec = models.MODELS[key]
            models.require(*spec.packages)
            for flow in spec.flows:
                if flow not in args.flows:
                    continue
                print(f"== {spec.title}: {flow}", flush=True)
                t0 = time.perf_counter()
                runners[flow](spec, args, rec)
                timings[f"{key}/{flow}"] = round(time.perf_counter() - t0, 1)
                if args.out:
                    write(args, rec, timings, time.perf_counter() - t_start)
                print(f"   {key}/{flow}: {timings[f'{key}/{flow}']} s", flush=True)
    except MissingInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - t_start
    print(tables(rec.rows))
    print(
        f"\nwall time {total / 60:.1f} min ({', '.join(f'{k} {v} s' for k, v in timings.items())})"
    )
    if args.out:
        write(args, rec, timings, total)
        print(f"wrote {args.out}")
    return 0


def write(args: argparse.Namespace, rec: Recorder, timings: dict[str, float], wall: float) -> None:
    """All raw numbers as JSON (rewritten after every model/flow, so a cut run keeps them)."""
    import qfcal

    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "inputs": data.describe(),
        "qfcal_version": getattr(qfcal, "__version__", "?"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "wall_s": round(wall, 1),
        "timings_s": timings,
        "notes": rec.notes,
        "rows": rec.rows,
    }
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    sys.exit(main())
