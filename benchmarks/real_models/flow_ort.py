"""The ONNX Runtime flow: ``quantize_static`` (QDQ, int8 weights) from any activation ranges.

Every contender ends as a map ``{tensor name: (lowest, highest)}`` handed to ONNX Runtime's own
``quantize_static`` through its calibration cache (what ``qfcal.onnxruntime.quantize_static``
does with qfcal's ranges), so the placement of quantizers, the weight quantization (symmetric
int8, per channel or per tensor) and the kernels are ONNX Runtime's for every contender.
:meth:`OrtFlow.quantize` takes such a map directly: that is the ablation hook (mix contenders
tensor by tensor).

8-bit activations: the QDQ model as ONNX Runtime writes it, run in an ORT session (all graph
optimizations, so DQ-op-Q groups become int8 kernels). 6- and 4-bit activations (ORT's QDQ has
no int6 type and its int4 activations have no integer kernels): the same 8-bit QDQ model with
each activation's QuantizeLinear given the b-bit scale and zero point of the range
(``compute_scale_zp`` on the b-bit signed grid) and a ``Clip`` to the b-bit grid's ends in
front of it, so the int8 container holds exactly the 2^b levels: a fake-quant simulation run
by ONNX Runtime, labelled ``sim: ort-qdq-int8-container+clip``. Weights stay int8.

Two ways to run each quantized model, two flows in the tables: ``ort`` is the ORT session a
user gets (all graph optimizations: QDQ groups fused into int8 kernels), 8 bits only; ``ort-ref``
is the same model with graph optimizations off, so every Q/DQ is computed as written with float
ops in between (the QDQ model's exact semantics), at 8, 6 and 4 bits. They differ where ORT's
x86 int8 kernels lose accuracy: on AVX2 CPUs without VNNI, ORT's u8s8 convolution uses
VPMADDUBSW, whose int16 pair sums saturate (ORT's quantization docs name this and advise
``reduce_range`` or U8U8); on the benchmark machine (AMD EPYC, AVX2, no VNNI) that error is
larger than any range choice makes.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    TensorsData,
    quantize_static,
    save_tensors_data,
)
from onnxruntime.quantization.quant_utils import compute_scale_zp

from . import metrics

Ranges = Mapping[str, tuple[float, float]]
SIM_LABEL = "ort-qdq-int8-container+clip"


def grid(bits: int) -> tuple[int, int]:
    """The signed asymmetric b-bit grid ONNX Runtime's QInt8 activations generalize to."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def session(path: str | os.PathLike[str], threads: int, reference: bool = False) -> Any:
    """An ONNX Runtime CPU session with every graph optimization (int8 kernels), or with none
    (``reference``: each QuantizeLinear/DequantizeLinear computed as written, float ops in
    between: the QDQ model's exact semantics)."""
    so = ort.SessionOptions()
    if reference:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtFlow:
    """One model's ONNX Runtime flow: held-out evaluation and quantization from ranges.

    Args:
        model: the float (pre-processed) ONNX model.
        calib: calibration batches ``{input: array}`` (one sample each).
        heldout: held-out batches (images: several samples per batch; text: one sentence each).
        output: ``logits``, ``probs`` or ``embedding`` (MiniLM: last_hidden_state, pooled here).
        workdir: where quantized models are written (overwritten per call).
        op_types: ``op_types_to_quantize`` (None: ONNX Runtime's default, every op it knows).
    """

    def __init__(
        self,
        model: Path,
        calib: Sequence[Mapping[str, np.ndarray]],
        heldout: Sequence[Mapping[str, np.ndarray]],
        output: str,
        workdir: Path,
        threads: int = 2,
        op_types: Sequence[str] | None = None,
    ) -> None:
        self.model = model
        self.calib = list(calib)
        self.heldout = list(heldout)
        self.output = output
        self.workdir = workdir
        self.threads = threads
        self.op_types = list(op_types) if op_types else None
        workdir.mkdir(parents=True, exist_ok=True)
        self.reference = self.run(model)

    # -- running ------------------------------------------------------------------------

    def run(self, path: Path | str, sess: Any = None, reference: bool = False) -> np.ndarray:
        """Probabilities (classifiers) or normalized embeddings on the held-out batches."""
        sess = sess or session(path, self.threads, reference)
        outs = []
        for feed in self.heldout:
            y = sess.run(None, dict(feed))[0]
            if self.output == "embedding":
                y = metrics.mean_pool(y, feed["attention_mask"])
            outs.append(y)
        y = np.concatenate(outs)
        return metrics.softmax(y) if self.output == "logits" else y

    def score(self, outputs: np.ndarray) -> dict[str, float]:
        """The metrics of `outputs` against the float model's."""
        if self.output == "embedding":
            return metrics.encoder(self.reference, outputs)
        return metrics.classifier(self.reference, outputs)

    # -- quantizing ----------------------------------------------------------------------

    def ort_kwargs(self, per_channel: bool) -> dict[str, Any]:
        """The quantize_static arguments every contender shares."""
        kwargs: dict[str, Any] = {
            "quant_format": QuantFormat.QDQ,
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            "per_channel": per_channel,
        }
        if self.op_types:
            kwargs["op_types_to_quantize"] = self.op_types
        return kwargs

    def quantize(
        self,
        ranges: Ranges,
        *,
        per_channel: bool,
        bits: int = 8,
        name: str = "model",
        weight_overrides: Mapping[str, Any] | None = None,
    ) -> Path:
        """The QDQ model for activation `ranges` (any mix of contenders: the ablation hook).

        8 bits: ONNX Runtime's quantize_static with the ranges as its calibration cache (and
        `weight_overrides` as its ``TensorQuantOverrides``: qfcal's weight scales).
        Fewer bits: that model with each activation's quantizer moved to the b-bit grid (see
        the module docstring)."""
        out = self.workdir / f"{name}.onnx"
        data = TensorsData(
            CalibrationMethod.MinMax,
            {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()},
        )
        with tempfile.TemporaryDirectory(prefix="qfcal-bench-") as tmp:
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(data, cache)
            quantize_static(
                str(self.model),
                str(out),
                None,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
                **self.ort_kwargs(per_channel),
                **(
                    {"extra_options": {"TensorQuantOverrides": dict(weight_overrides)}}
                    if weight_overrides
                    else {}
                ),
            )
        if bits != 8:
            to_bits(out, ranges, bits)
        return out

    def evaluate(self, path: Path, reference: bool = False) -> dict[str, float]:
        """Metrics of the model at `path` on the held-out inputs (``reference``: graph
        optimizations off, see :func:`session`)."""
        return self.score(self.run(path, reference=reference))


def to_bits(path: Path, ranges: Ranges, bits: int) -> None:
    """Rewrite a QDQ model in place: every activation QuantizeLinear whose input has a range
    gets that range's b-bit scale/zero point and a Clip to the b-bit grid in front of it."""
    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    qmin, qmax = grid(bits)
    new_nodes = []
    for node in g.node:
        if (
            node.op_type == "QuantizeLinear"
            and node.input[0] in ranges
            and np.isfinite(ranges[node.input[0]]).all()
        ):
            x = node.input[0]
            lo, hi = ranges[x]
            zp, scale = compute_scale_zp(
                np.float32(lo),
                np.float32(hi),
                np.array(qmin, np.int32),
                np.array(qmax, np.int32),
                False,
            )
            scale = np.float32(np.asarray(scale))
            zp = int(np.asarray(zp))
            s_init, z_init = inits[node.input[1]], inits[node.input[2]]
            s_init.CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), s_init.name))
            zdtype = numpy_helper.to_array(z_init).dtype
            z_init.CopyFrom(numpy_helper.from_array(np.array(zp, zdtype), z_init.name))
            lo_b = np.float32((qmin - zp) * float(scale))
            hi_b = np.float32((qmax - zp) * float(scale))
            lo_name, hi_name, y = f"{x}__clip{bits}_lo", f"{x}__clip{bits}_hi", f"{x}__clip{bits}"
            if lo_name not in inits:
                for n, v in ((lo_name, lo_b), (hi_name, hi_b)):
                    t = numpy_helper.from_array(np.array(v, np.float32), n)
                    g.initializer.append(t)
                    inits[n] = t
                new_nodes.append(helper.make_node("Clip", [x, lo_name, hi_name], [y]))
            node.input[0] = y
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.save(m, str(path))


# -- ONNX Runtime's own calibrators ------------------------------------------------------------


def ort_calibrator_ranges(
    model: Path,
    calib: Iterable[Mapping[str, np.ndarray]],
    method: str,
    op_types: Sequence[str] | None = None,
) -> tuple[dict[str, tuple[float, float]], float]:
    """ONNX Runtime's own calibrator (``MinMax``, ``Entropy`` or ``Percentile``, default
    options as ``quantize_static`` uses them) over the calibration batches: (ranges, seconds)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qfcal-bench-ortcal-") as tmp:
        cal = create_calibrator(
            str(model),
            list(op_types or []),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(CalibrationMethod, method),
        )
        batches = iter(list(calib))

        class Reader:
            def get_next(self) -> Any:
                return next(batches, None)

        cal.collect_data(Reader())
        data = cal.compute_data()
    out = {}
    for name, td in data.data.items():
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in td.range_value)
        out[name] = (lo, hi)
    return out, time.perf_counter() - t0
