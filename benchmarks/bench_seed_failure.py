"""Issue 13, item 2: train the standard and the quantization-friendly MobileNet under recipes
meant to recreate the seed's failure (depthwise channels that die, whose folded batch norm then
stretches the per-tensor weight range), and measure what per-tensor weights cost at 8, 6 and 4
bits against per-channel weights.

Run from the repository root (a few minutes per recipe, variant and epoch on two cores)::

    python benchmarks/bench_seed_failure.py --recipes paper,hot --epochs 4 --out seed.json
    python benchmarks/bench_seed_failure.py --report seed.json     # the Markdown table again

Per recipe and variant: the float model's top-1 on the 10,000 test images, its folded weight
statistics (``qfcal inspect``: widest per-channel range spread, dead channels, hit layers) and
the top-1 of the int8 ``.tflite`` (qfcal ``optimal`` activation ranges from 10 images per
class) with per-tensor and per-channel weights at each weight bit width. Under 8 bits the
weights are fake-quantized in float on the ``bits``-bit symmetric grid first and stored by the
converter in its int8 container (``qfcal.pipeline.equalize.fake_quant_weights``). With
``--equalize``, the standard variant also gets per-tensor weights after qfcal's equalization
and bias correction (``qfcal.tflite.quantize(..., equalize=True)``, ``--objective``: ``noise``
by default; ``--relu6``: ``per-channel`` by default): the fix without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ chatter

# What each recipe changes from the demo's (Adam 4e-3, cosine, no weight decay).
RECIPES: dict[str, dict[str, Any]] = {
    "dw-l2": {
        "about": "Adam 4e-3, cosine; L2 1e-3 on the depthwise kernels (drives idle ones to 0)",
        "optimizer": "adam",
        "lr": 4e-3,
        "schedule": "cosine",
        "depthwise_l2": 1e-3,
        "kernel_l2": 0.0,
    },
    "paper": {
        "about": "the MobileNet papers': RMSprop 0.045 (decay 0.9, momentum 0.9, eps 1.0), "
        "step schedule; L2 4e-5 on every kernel but the depthwise ones",
        "optimizer": "rmsprop",
        "lr": 0.045,
        "schedule": "step",
        "depthwise_l2": 0.0,
        "kernel_l2": 4e-5,
    },
    "hot": {
        "about": "Adam 3e-2 (7.5x the demo's), cosine; no weight decay: ReLU6 channels die early",
        "optimizer": "adam",
        "lr": 3e-2,
        "schedule": "cosine",
        "depthwise_l2": 0.0,
        "kernel_l2": 0.0,
    },
}


def _regularize(model: Any, l2: float) -> None:
    """L2 `l2` on every convolution and dense kernel except the depthwise ones."""
    from keras import layers, regularizers

    for la in model.layers:
        if isinstance(la, layers.DepthwiseConv2D):
            continue
        if isinstance(la, (layers.Conv2D, layers.Dense)):
            la.kernel.regularizer = regularizers.L2(l2)


def run_one(recipe: str, variant: str, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    import qfcal.tflite
    from qfcal.pipeline import equalize as eq
    from qfcal.pipeline import evaluate, models
    from qfcal.pipeline import train as qtrain
    from qfcal.pipeline.data import calibration_indices
    from qfcal.pipeline.inspect_weights import HIT_SPREAD, weight_stats

    r = RECIPES[recipe]
    t0 = time.perf_counter()
    model = models.build(
        args.arch,
        variant,
        input_shape=data.image_shape,
        classes=data.num_classes,
        alpha=args.alpha,
        depthwise_l2=r["depthwise_l2"],
        stem_stride=args.stem_stride,
    )
    if r["kernel_l2"]:
        _regularize(model, r["kernel_l2"])
    cfg = qtrain.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=r["lr"],
        optimizer=r["optimizer"],
        schedule=r["schedule"],
        augment=False,
        flip=True,
        seed=args.seed,
    )
    ckpt = Path(args.work) / f"{recipe}_{variant}_{args.arch}_e{args.epochs}"
    model, history = qtrain.train(model, data, cfg, ckpt, verbose=2)
    train_s = time.perf_counter() - t0
    labels = data.labels("test")

    def top1(pred: np.ndarray) -> float:
        return round(float(np.mean(pred == labels)), 4)

    stats = weight_stats(model)
    live = [s for s in stats if np.isfinite(s.spread)]
    widest = max(live, key=lambda s: s.spread) if live else None
    row: dict[str, Any] = {
        "recipe": recipe,
        "variant": variant,
        "arch": args.arch,
        "epochs": args.epochs,
        "train_seconds": round(train_s),
        "train_accuracy": history.get("accuracy", [None])[-1],
        "float": top1(evaluate.predict_keras(model, data)),
        "widest_spread": round(widest.spread, 2) if widest else None,
        "widest_layer": widest.name if widest else None,
        "dead_channels": int(sum(s.dead for s in stats)),
        "hit_layers": [s.name for s in stats if s.spread >= HIT_SPREAD],
        "layers": len(stats),
        "int8": {},
    }
    idx = calibration_indices(data.labels("train"), args.calib_per_class, seed=args.seed)
    calib = qtrain.to_float(data.images("train", idx))
    samples = [[calib[i : i + 1]] for i in range(len(calib))]

    def rep() -> Any:
        return iter(samples)

    def int8_top1(m: Any, per_channel: bool, **kw: Any) -> float:
        q = qfcal.tflite.quantize(m, rep, method="optimal", per_channel=per_channel, **kw)
        return top1(evaluate.predict_tflite(evaluate.TFLiteModel(bytes(q)), data))

    folded = eq.fold_batch_norm(eq.flatten(model))
    for bits in args.bits:
        cell: dict[str, float] = {}
        for pc, name in ((False, "per-tensor"), (True, "per-channel")):
            m = folded if bits == 8 else eq.fake_quant_weights(folded, bits, per_channel=pc)
            cell[name] = int8_top1(m, pc)
        if args.equalize and variant == "standard":
            flat, _ = eq.equalize(
                model, rep, objective=args.objective, weight_bits=bits, relu6=args.relu6
            )
            m = eq.correct_bias(flat, rep, bits=bits, per_channel=False)
            if bits != 8:
                m = eq.fake_quant_weights(m, bits, per_channel=False)
            cell["per-tensor+eq"] = int8_top1(m, False)
        row["int8"][str(bits)] = cell
        print(f"  {recipe} {variant} {bits}b: {cell}", flush=True)
    row["seconds"] = round(time.perf_counter() - t0)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    bits = sorted({int(b) for r in rows for b in r["int8"]}, reverse=True)
    head = ["recipe", "variant", "float"]
    for b in bits:
        head += [f"{b}b per-tensor", f"{b}b per-channel"]
    head += ["widest spread", "dead", "hit layers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["recipe"], r["variant"], f"{100 * r['float']:.2f}%"]
        for b in bits:
            c = r["int8"].get(str(b), {})
            pt = f"{100 * c['per-tensor']:.2f}%" if "per-tensor" in c else "-"
            if "per-tensor+eq" in c:
                pt += f" (eq {100 * c['per-tensor+eq']:.2f}%)"
            cells += [pt, f"{100 * c['per-channel']:.2f}%" if "per-channel" in c else "-"]
        spread = f"{r['widest_spread']:.1f}x ({r['widest_layer']})" if r["widest_spread"] else "-"
        cells += [spread, str(r["dead_channels"]), f"{len(r['hit_layers'])} of {r['layers']}"]
        lines.append("| " + " | ".join(cells) + " |")
    used = {r["recipe"] for r in rows}
    about = [f"- `{k}`: {v['about']}" for k, v in RECIPES.items() if k in used]
    return "\n".join(lines + [""] + about)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipes", default="paper,hot", help=f"comma-separated: {', '.join(RECIPES)}")
    p.add_argument("--variants", default="standard,qfriendly")
    p.add_argument("--arch", default="v1", choices=("v1", "v2"))
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--stem-stride", type=int, default=2, choices=(1, 2))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bits", default="8,6,4")
    p.add_argument("--calib-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--equalize", action="store_true", help="add the standard variant equalized")
    p.add_argument("--objective", default="noise", choices=("noise", "cle"))
    p.add_argument(
        "--relu6", default="per-channel", choices=("per-channel", "bound"),
        help="how equalization keeps ReLU6 exact (qfcal.pipeline.equalize.equalize's relu6)",
    )  # fmt: skip
    p.add_argument("--limit-train", type=int, default=None, help="train on this many images")
    p.add_argument("--work", default="runs/seed_failure", help="checkpoints (resumable)")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--report", help="print the table of an --out file and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text(encoding="utf-8"))))
        return 0
    recipes = args.recipes.split(",")
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        p.error(f"--recipes: unknown {', '.join(bad)} (known: {', '.join(RECIPES)})")
    args.bits = [int(b) for b in args.bits.split(",")]

    from qfcal.pipeline import data as qdata

    data = qdata.load("fashion_mnist")
    if args.limit_train:
        data = data.subset(args.limit_train, None, seed=args.seed)
    rows: list[dict[str, Any]] = []
    for recipe in recipes:
        for variant in args.variants.split(","):
            rows.append(run_one(recipe, variant, args, data))
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
