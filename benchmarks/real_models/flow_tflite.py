"""The TFLite flow (Keras model): the TFLite converter, int8, with a representative dataset,
and the int8 ``.tflite`` run in the LiteRT interpreter (``ai_edge_litert``).

Contenders: ``tflite:converter`` (the converter's own calibration: min/max per tensor) and
``qfcal.tflite.quantize(model, representative_dataset, method=..., per_channel=...)`` (qfcal's
ranges written over the converter's; ``qfcal:default`` calls it without ``method=``). 8 bits
only: the converter has no 6- or 4-bit activations (the same Keras model's 6/4-bit rows are in
its ONNX Runtime flow, exported with tf2onnx).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import metrics


class TfliteFlow:
    """One Keras classifier's TFLite flow (inputs NHWC float32; output probabilities or
    logits)."""

    def __init__(
        self, model: Any, calib: np.ndarray, heldout: np.ndarray, output: str = "probs"
    ) -> None:
        self.model = model
        self.calib = calib
        self.heldout = heldout
        self.output = output  # "probs", or "logits" (scored as their softmax)
        self.reference = self._interpret(self._float_tflite())

    def representative_dataset(self) -> Callable[[], Iterator[list[np.ndarray]]]:
        """The converter's representative dataset: one calibration image per sample."""
        calib = self.calib

        def gen() -> Iterator[list[np.ndarray]]:
            for x in calib:
                yield [x[None]]

        return gen

    def _converter(self, per_channel: bool) -> Any:
        import tensorflow as tf

        conv = tf.lite.TFLiteConverter.from_keras_model(self.model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = self.representative_dataset()
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv._experimental_disable_per_channel = not per_channel
        return conv

    def _float_tflite(self) -> bytes:
        import tensorflow as tf

        return bytes(tf.lite.TFLiteConverter.from_keras_model(self.model).convert())

    def _interpret(self, content: bytes) -> np.ndarray:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=content, num_threads=2)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        ys = []
        for x in self.heldout:
            a = x[None]
            if inp["dtype"] != np.float32:
                s, z = inp["quantization"]
                a = np.clip(np.round(a / s + z), -128, 127).astype(inp["dtype"])
            it.set_tensor(inp["index"], a)
            it.invoke()
            y = it.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                s, z = out["quantization"]
                y = (y.astype(np.float32) - z) * s
            ys.append(y[0])
        out = np.stack(ys)
        return metrics.softmax(out) if self.output == "logits" else out

    def converter(self, per_channel: bool) -> tuple[dict[str, float], float]:
        """The converter's own int8 model (float I/O): (metrics, seconds)."""
        t0 = time.perf_counter()
        content = self._converter(per_channel).convert()
        dt = time.perf_counter() - t0
        return metrics.classifier(self.reference, self._interpret(content)), dt

    def qfcal(self, per_channel: bool, **kwargs: Any) -> tuple[dict[str, float], float, Any]:
        """``qfcal.tflite.quantize`` (kwargs: method=..., percentile=...; none = the default):
        (metrics, seconds, the QuantizedModel)."""
        import qfcal.tflite

        t0 = time.perf_counter()
        q = qfcal.tflite.quantize(
            self.model, self.representative_dataset(), per_channel=per_channel, **kwargs
        )
        dt = time.perf_counter() - t0
        return metrics.classifier(self.reference, self._interpret(bytes(q))), dt, q
