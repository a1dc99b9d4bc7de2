"""AIMET's own encoding analyzers (``aimet-onnx``) on the float ONNX model.

``QuantizationSimModel(model, quant_scheme=..., activation_type=int<b>, param_type=int8)``
with AIMET's default configuration, ``compute_encodings`` over the calibration batches, then
each enabled activation quantizer's encoding ``(min, max)`` by tensor name: the ranges handed
to ONNX Runtime's quantizer placement (``aimet:<scheme>`` rows). AIMET's own QuantSim output
(its placement, its per-channel int8 weights on the [-128, 127] grid, fake-quant in ORT) is
the ``aimet-quantsim:<scheme>`` row where it is run.

Schemes: ``min_max`` (AIMET's "tf"), ``tf_enhanced`` and ``percentile`` (AIMET's default
percentile). ``min_max`` and ``percentile`` ranges do not depend on the bit width, so they are
computed once (8 bits) and reused at 6/4 bits; ``tf_enhanced`` is computed at each bit width.

AIMET quantizes no tensor inside its supergroups (a Conv output that feeds a ReLU6); ONNX
Runtime's quantizer still wants a range there (it then gives the Conv output the ReLU6 output's
quantizer), so :func:`complete` fills such tensors with the data's min/max.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _quiet() -> None:
    for name in ("Quant", "Utils", "aimet_onnx", "aimet_common", "QuantSim"):
        logging.getLogger(name).setLevel(logging.WARNING)


def encodings(
    model: Path, calib: Sequence[dict[str, np.ndarray]], scheme: str, bits: int
) -> tuple[dict[str, tuple[float, float]], Any, float]:
    """(activation ranges by tensor name, the calibrated QuantizationSimModel, seconds)."""
    import onnx
    from aimet_onnx.common.defs import qtype
    from aimet_onnx.quantsim import QuantizationSimModel

    _quiet()
    t0 = time.perf_counter()
    sim = QuantizationSimModel(
        onnx.load(str(model)),
        quant_scheme=scheme,
        activation_type=qtype.int(bits),
        param_type="int8",
        providers=["CPUExecutionProvider"],
    )
    _quiet()
    sim.compute_encodings([dict(b) for b in calib])
    out: dict[str, tuple[float, float]] = {}
    for name in sim.activation_names:
        q = sim.qc_quantize_op_dict.get(name)
        if q is None or not q.enabled:
            continue
        enc = q.get_encodings()
        if not enc:
            continue
        out[name] = (float(enc[0].min), float(enc[0].max))
    return out, sim, time.perf_counter() - t0


def complete(
    ranges: dict[str, tuple[float, float]], fallback: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """`ranges` plus `fallback`'s entries for the tensors AIMET left unquantized."""
    return {**fallback, **ranges}
