"""The PyTorch PT2E flow (torchao): ``torch.export``, a quantizer with the contender's
activation observer (every conv/linear input and weight, activation outputs, adds and pooling;
see :func:`_quantizer` for why not torchao's ``X86InductorQuantizer``), calibration,
``convert_pt2e``, and the converted model (its quantize/dequantize ops in the exported graph)
run on the held-out images.

Activations: uint8, per-tensor affine, ``quant_min=0``, ``quant_max=2**bits - 1`` (the
QuantizationSpec's own way to ask for 6/4-bit activations; the converted model carries those
quant ranges, so 6 and 4 bits are run, not simulated separately, by the same q/dq ops).
Weights: int8 symmetric [-127, 127], per channel (``PerChannelMinMaxObserver``) or per tensor
(``MinMaxObserver``).

Calibration runs once per (weight mode, observer family): qfcal's observer (one histogram per
tensor serves every qfcal method and bit width: each contender's copy of the calibrated model
has its observers' ``method``/``percentile``/``quant_max`` set before ``convert_pt2e``),
torch's ``HistogramObserver`` (the default of torchao's x86 quantizer) and ``MinMaxObserver``,
whose qparams also follow ``quant_min``/``quant_max`` set after calibration.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import metrics

_CONV_OPS = ("aten.conv2d.default", "aten.linear.default")
_ACT_OPS = ("aten.hardtanh.default", "aten.relu.default", "aten.relu6.default")
_OUT_OPS = (
    "aten.add.Tensor",
    "aten.mean.dim",
    "aten.adaptive_avg_pool2d.default",
    "aten.silu.default",
    "aten.sigmoid.default",
    "aten.mul.Tensor",
)


def _quantizer(observer_ctr: Any, per_channel: bool, bits: int, weight_ctr: Any = None) -> Any:
    """A PT2E quantizer that quantizes every conv/linear input (activation and weight), every
    activation function's output, every conv/linear output not followed by one (a fused
    kernel's output), and the outputs of adds and pooling: the XNNPACK-style placement.

    torchao's ``X86InductorQuantizer`` annotated only the stem convolution of these exported
    models (one weight observer for EfficientNet-Lite0's 49 convolutions), which would leave
    the flow nearly float; this placement is what the quantized kernels of a mobile backend
    compute."""
    import torch
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
    )

    act = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=2**bits - 1,
        qscheme=torch.per_tensor_affine,
        is_dynamic=False,
        observer_or_fake_quant_ctr=observer_ctr,
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=weight_ctr
        or (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(eps=2**-12),
    )

    class AllOpsQuantizer(Quantizer):  # type: ignore[misc]
        def annotate(self, model: Any) -> Any:
            for node in model.graph.nodes:
                if node.op != "call_function":
                    continue
                target = str(node.target)
                users = [str(u.target) for u in node.users]
                fused = len(users) == 1 and users[0] in _ACT_OPS
                if target in _CONV_OPS:
                    x, w = node.args[0], node.args[1]
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={x: act, w: weight},
                        output_qspec=None if fused else act,
                        _annotated=True,
                    )
                elif target in _ACT_OPS or target in _OUT_OPS:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        output_qspec=act, _annotated=True
                    )
            return model

        def validate(self, model: Any) -> None:
            pass

    return AllOpsQuantizer()


class Pt2eFlow:
    """One image model's PT2E flow.

    Args:
        model: the float torch module (eval mode).
        calib: (n, 3, h, w) float32 calibration images.
        heldout: (m, 3, h, w) float32 held-out images.
        batch: batch size for calibration and evaluation.
    """

    def __init__(self, model: Any, calib: np.ndarray, heldout: np.ndarray, batch: int = 16) -> None:
        import torch

        self.batch = batch
        self.calib = torch.from_numpy(calib)
        self.heldout = torch.from_numpy(heldout)
        with torch.no_grad():
            self.reference = self._probs(model)
            self.exported = torch.export.export(
                model, (self.calib[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
            ).module()

    def _batches(self, x: Any) -> Iterator[Any]:
        for i in range(0, len(x), self.batch):
            yield x[i : i + self.batch]

    def _probs(self, model: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = torch.cat([model(b) for b in self._batches(self.heldout)])
        return metrics.softmax(logits.numpy())

    def calibrate(self, family: str, per_channel: bool) -> tuple[Any, float]:
        """A prepared, calibrated model with the family's activation observers (8-bit quant
        range; changed per contender before conversion): (model, seconds)."""
        import qfcal.torch
        import torch
        from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        if family in ("qfcal", "qfcal-loss-aware"):
            ctr = qfcal.torch.pt2e_observer().with_args()  # the adapter's default method
        elif family == "torch:HistogramObserver":
            ctr = HistogramObserver.with_args(eps=2**-12)
        elif family == "torch:MinMaxObserver":
            ctr = MinMaxObserver.with_args(eps=2**-12)
        else:
            raise ValueError(family)
        # qfcal's weight observer (per channel; its method set per contender at conversion)
        weight_ctr = None
        if family.startswith("qfcal") and per_channel:
            weight_ctr = qfcal.torch.pt2e_weight_observer().with_args(eps=2**-12)
        t0 = time.perf_counter()
        prepared = prepare_pt2e(
            copy.deepcopy(self.exported), _quantizer(ctr, per_channel, 8, weight_ctr)
        )
        if family == "qfcal-loss-aware":
            # one forward and backward pass per batch: the observers count as usual and get
            # the squared-gradient weights of the same values (Fisher, labels from the model)
            qfcal.torch.calibrate_loss_aware(prepared, list(self._batches(self.calib)))
        else:
            with torch.no_grad():
                for b in self._batches(self.calib):
                    prepared(b)
        return prepared, time.perf_counter() - t0

    def convert_and_score(
        self,
        prepared: Any,
        bits: int,
        method: str | None = None,
        percentile: float | None = None,
        weight_method: str = "minmax",
    ) -> dict[str, float]:
        """Copy the calibrated model, set every activation observer's quant range to `bits`
        (and a qfcal observer's method/percentile; None keeps the adapter's default) and a qfcal
        weight observer's method (``minmax``: torch's own scales), convert and score on the
        held-out images."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        m = copy.deepcopy(prepared)
        self._configure(m, bits, method, percentile, weight_method)
        converted = convert_pt2e(m)
        return metrics.classifier(self.reference, self._probs(converted))

    def auto(self, per_channel: bool, bits: int, metric: str) -> tuple[dict[str, float], Any]:
        """qfcal:auto: qfcal's observers on `bits`-bit activations (the flow's weight scales),
        calibrated by qfcal.torch.calibrate_auto on pairs of calibration images (the smallest
        batch the exported model takes), converted and scored: (metrics, Selection)."""
        import qfcal.torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        ctr = qfcal.torch.pt2e_observer().with_args()
        weight_ctr = None
        if per_channel:
            weight_ctr = qfcal.torch.pt2e_weight_observer().with_args(eps=2**-12)
        prepared = prepare_pt2e(
            copy.deepcopy(self.exported), _quantizer(ctr, per_channel, 8, weight_ctr)
        )
        self._configure(prepared, bits, None, None, "minmax")
        pairs = [self.calib[i : i + 2] for i in range(0, len(self.calib), 2)]
        sel = qfcal.torch.calibrate_auto(prepared, pairs, metric=metric)
        converted = convert_pt2e(prepared)
        return metrics.classifier(self.reference, self._probs(converted)), sel

    @staticmethod
    def _configure(
        m: Any, bits: int, method: str | None, percentile: float | None, weight_method: str
    ) -> None:
        from torchao.quantization.pt2e import ObserverBase

        for mod in m.modules():
            if not isinstance(mod, ObserverBase) or getattr(mod, "dtype", None) is None:
                continue
            if "WeightObserver" in type(mod).__name__:  # qfcal's
                mod.method = weight_method
                continue
            if mod.dtype.is_signed or "PerChannel" in type(mod).__name__:
                continue  # weight observers (int8)
            if getattr(mod, "quant_max", None) == 255:
                mod.quant_max = 2**bits - 1
                if method is not None and hasattr(mod, "method"):
                    mod.method = method
                if percentile is not None and hasattr(mod, "percentile"):
                    mod.percentile = percentile
