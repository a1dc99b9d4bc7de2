"""Calibration memory as the number of batches grows 100x: qfcal against ONNX Runtime.

One ONNX model (the residual CNN of ``tests/test_onnxruntime.py``: Conv-Relu-Conv-Relu-Add-Conv-
Relu-Flatten-Gemm on 1x28x28 inputs, random weights: memory does not depend on them), one stream
of batches (``--batch`` images each, drawn from a fixed seed, a fresh array per batch so the data
is streamed too), calibrated over ``--base`` x 1, 10 and 100 batches by

* qfcal: ``qfcal.onnxruntime.calibrate`` (one ``qfcal.Histogram`` per tensor, each batch
  histogrammed and dropped; the search included);
* ONNX Runtime's own calibrators, ``create_calibrator(..., calibrate_method=Entropy |
  Percentile | MinMax)`` + ``collect_data`` + ``compute_data``, defaults otherwise.

Each configuration runs in a fresh interpreter. After the imports it resets the kernel's peak
(``/proc/self/clear_refs``, Linux) and reads the resident size; the figure is the peak resident
size (``VmHWM``) during calibration minus that baseline: what calibration itself holds, with the
model and libraries excluded (``ru_maxrss``, the whole process's peak, is printed too). Resident
memory, not tracemalloc: ONNX Runtime's arrays live in its own allocator.

A configuration whose peak, extrapolated linearly from the same calibrator's previous size,
would pass ``--max-gb`` (default 8) is not run and is marked as such.

    python benchmarks/bench_memory.py            # a few minutes on 2 cores
    python benchmarks/bench_memory.py --quick    # smoke run (1, 2, 4 batches)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model, load

CALIBRATORS = ("qfcal", "Entropy", "Percentile", "MinMax")


def build_onnx(seed: int = 0) -> object:
    """The CNN of tests/test_onnxruntime.py (tests/onnx_cnn.py), random weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from onnx_cnn import build_onnx as build
    from onnx_cnn import random_weights

    return build(random_weights(seed))


# every float tensor the calibrators see: input, 5 tensors of 16x14x14, 3 of 32x7x7, logits
FLOATS_PER_IMAGE = 784 + 5 * 16 * 14 * 14 + 3 * 32 * 7 * 7 + 10


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def child(which: str, model: str, batches: int, batch: int) -> None:
    """One configuration, in this (fresh) process; prints ``RESULT peak_delta maxrss seconds``."""
    import onnxruntime  # noqa: F401 - imported before the baseline, as by the calibrators
    import qfcal.onnxruntime as qo
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    class Reader:
        """ONNX Runtime's reader protocol; a fresh array each batch (the data streams too)."""

        def __init__(self) -> None:
            self.i, self.rng = 0, np.random.default_rng(0)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i == batches:
                return None
            self.i += 1
            return {"input": self.rng.random((batch, 1, 28, 28), dtype=np.float32)}

    tmp = tempfile.mkdtemp(prefix="qfcal-bench-mem-")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    base = _status("VmRSS")
    t0 = time.perf_counter()
    if which == "qfcal":
        cal = qo.calibrate(model, Reader(), progress=False)
        assert cal.batches == batches
    else:
        c = create_calibrator(
            model,
            augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=CalibrationMethod[which],
        )
        c.collect_data(Reader())
        ranges = c.compute_data()
        assert len(ranges.data) > 0
    seconds = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(f"RESULT {_status('VmHWM') - base} {maxrss} {seconds:.3f}")


def measure(which: str, model: Path, batches: int, batch: int) -> tuple[int, int, float]:
    r = subprocess.run(
        [sys.executable, __file__, "--child", which, str(model), str(batches), str(batch)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    if r.returncode != 0:
        raise RuntimeError(f"{which} over {batches} batches failed:\n{r.stderr[-3000:]}")
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")][-1].split()
    return int(line[1]), int(line[2]), float(line[3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images per batch (64)")
    p.add_argument("--base", type=int, default=4, help="batches at 1x (4)")
    p.add_argument("--scales", default="1,10,100", help="multiples of --base (1,10,100)")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip runs projected above (8)")
    p.add_argument("--calibrators", default=",".join(CALIBRATORS), help="subset to run")
    p.add_argument("--quick", action="store_true", help="1, 2, 4 batches of 16 (smoke run)")
    p.add_argument("--child", nargs=4, metavar=("WHICH", "MODEL", "BATCHES", "BATCH"))
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]), int(a.child[3]))
        return
    if not os.access("/proc/self/clear_refs", os.W_OK):
        sys.exit("needs Linux /proc/self/clear_refs (to reset the peak resident size)")
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        sys.exit(f"onnxruntime: not installed ({e}); pip install onnxruntime onnx")
    if a.quick:
        a.batch, a.base, a.scales = 16, 1, "1,2,4"
    scales = [int(s) for s in a.scales.split(",")]
    which = [w for w in a.calibrators.split(",") if w]
    bad = [w for w in which if w not in CALIBRATORS]
    if bad:
        sys.exit(f"--calibrators must be among {', '.join(CALIBRATORS)}, got {bad}")
    per_batch = a.batch * 4 * FLOATS_PER_IMAGE
    print("# Calibration memory: qfcal streaming vs ONNX Runtime's calibrators\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} cores, load {load()}")
    print(f"- onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}")
    print(
        f"- model: residual CNN 1x28x28 (tests/test_onnxruntime.py), batches of {a.batch}; "
        f"one batch's float activations: {per_batch / 1e6:.1f} MB"
    )
    print(f"- sizes: {', '.join(f'{s * a.base} batches' for s in scales)}; cap {a.max_gb} GB\n")
    results: dict[tuple[str, int], tuple[int, int, float] | str] = {}
    with tempfile.TemporaryDirectory(prefix="qfcal-bench-mem-") as tmp:
        model = Path(tmp) / "cnn.onnx"
        onnx.save(build_onnx(), str(model))
        for w in which:
            prev: tuple[int, int] | None = None  # (batches, peak)
            for s in scales:
                n = s * a.base
                if prev is not None:
                    projected = prev[1] * n / prev[0]
                    if projected > a.max_gb * 1e9:
                        results[(w, s)] = f"not run (projected {projected / 1e9:.1f} GB)"
                        print(f"{w:>10} x{n:<5} {results[(w, s)]}", file=sys.stderr)
                        continue
                results[(w, s)] = got = measure(w, model, n, a.batch)
                prev = (n, got[0])
                print(
                    f"{w:>10} x{n:<5} {got[0] / 1e6:9.1f} MB  (process peak {got[1] / 1e6:.0f} "
                    f"MB, {got[2]:.1f} s)",
                    file=sys.stderr,
                )

    def cell(w: str, s: int, k: int = 0) -> str:
        r = results.get((w, s))
        if r is None:
            return "-"
        if isinstance(r, str):
            return r
        return f"{r[k] / 1e6:.1f}" if k < 2 else f"{r[k]:.1f}"

    head = [f"{s * a.base} batches ({s}x)" for s in scales]
    print("## Peak resident memory of calibration, MB (above the process after its imports)\n")
    print("| calibrator | " + " | ".join(head) + f" | growth {scales[-1]}x/{scales[0]}x |")
    print("|---|" + "---:|" * (len(scales) + 1))
    for w in which:
        first, last = results.get((w, scales[0])), results.get((w, scales[-1]))
        growth = (
            f"{last[0] / first[0]:.1f}x"
            if isinstance(first, tuple) and isinstance(last, tuple)
            else "-"
        )
        label = w if w == "qfcal" else f"ORT {w}"
        print(f"| {label} | " + " | ".join(cell(w, s) for s in scales) + f" | {growth} |")
    if "qfcal" in which:
        print("\n## ONNX Runtime / qfcal, same size\n")
        print("| calibrator | " + " | ".join(head) + " |")
        print("|---|" + "---:|" * len(scales))
        for w in which:
            if w == "qfcal":
                continue
            row = []
            for s in scales:
                o, q = results.get((w, s)), results.get(("qfcal", s))
                ok = isinstance(o, tuple) and isinstance(q, tuple)
                row.append(f"{o[0] / q[0]:.1f}x" if ok else "-")  # type: ignore[index]
            print(f"| ORT {w} | " + " | ".join(row) + " |")
    print("\n## Whole-process peak (ru_maxrss, MB) and calibration time (s)\n")
    print("| calibrator | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(scales))
    for w in which:
        label = w if w == "qfcal" else f"ORT {w}"
        row = [
            f"{cell(w, s, 1)} MB, {cell(w, s, 2)} s"
            if isinstance(results.get((w, s)), tuple)
            else cell(w, s)
            for s in scales
        ]
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
