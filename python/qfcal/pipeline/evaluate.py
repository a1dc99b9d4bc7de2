"""Evaluation of a run: top-1 of the Keras float model, the float ``.tflite`` and the int8
``.tflite`` on the whole test split, float/int8 agreement, one-thread per-image latency, sizes.

``.tflite`` files run in the LiteRT interpreter (``ai_edge_litert.interpreter``); an int8 model
with int8 input and output is fed images quantized with its input scale and zero point, and its
outputs are dequantized, so every model is compared on the same float images.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from qfcal._progress import Progress
from qfcal.pipeline.train import to_float

log = logging.getLogger(__name__)


class TFLiteModel:
    """A ``.tflite`` model in the LiteRT interpreter, taking float images in [0, 1]."""

    def __init__(self, content: bytes, num_threads: int | None = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.content = content
        self.num_threads = num_threads
        self._it = Interpreter(model_content=content, num_threads=num_threads)
        self._batch = -1
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]

    @property
    def input_dtype(self) -> Any:
        return self._in["dtype"]

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._it.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            self._it.allocate_tensors()
            self._in = self._it.get_input_details()[0]
            self._out = self._it.get_output_details()[0]
            self._batch = n

    def _quantize(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        d = self._in
        if d["dtype"] == np.float32:
            return x
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        q = np.round(x / scale) + zp
        out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(d["dtype"])
        return out

    def _dequantize(self, y: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        d = self._out
        if d["dtype"] == np.float32:
            return y.astype(np.float32, copy=False)
        scale, zp = d["quantization"]
        out: npt.NDArray[np.float32] = ((y.astype(np.float32) - zp) * scale).astype(np.float32)
        return out

    def __call__(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The model's (dequantized) outputs for a batch of float images."""
        self._resize(len(images))
        self._it.set_tensor(self._in["index"], self._quantize(images))
        self._it.invoke()
        return self._dequantize(self._it.get_tensor(self._out["index"]))


def _predict(
    run: Callable[[npt.NDArray[np.float32]], Any], data: Any, batch_size: int, label: str
) -> npt.NDArray[np.int64]:
    """Top-1 class of every test image under `run` (a batch of float images to logits)."""
    n = data.size("test")
    out = np.empty(n, dtype=np.int64)
    with Progress(n, f"evaluating {label}", unit="test images") as bar:
        for i in range(0, n, batch_size):
            idx = np.arange(i, min(n, i + batch_size))
            out[idx] = np.argmax(run(to_float(data.images("test", idx))), axis=1)
            bar.update(len(idx))
    return out


def predict_tflite(
    model: TFLiteModel, data: Any, batch_size: int = 256, label: str = "tflite"
) -> npt.NDArray[np.int64]:
    """Top-1 class of every test image."""
    return _predict(model, data, batch_size, label)


def call_keras(model: Any, x: Any) -> npt.NDArray[np.float32]:
    """`model` on a batch, in inference mode. (A model whose inputs were given as a list warns
    that one array does not match that structure; the array is what it expects.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        out: npt.NDArray[np.float32] = np.asarray(model(x, training=False))
    return out


def predict_keras(model: Any, data: Any, batch_size: int = 256) -> npt.NDArray[np.int64]:
    """Top-1 class of every test image under the Keras model (inference mode), the model
    traced once into a graph (2.6x faster than eager calls on the demo's model)."""
    import tensorflow as tf

    graph = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def run(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
            return np.asarray(graph(x))

    return _predict(run, data, batch_size, "the Keras float model")


def latency(
    content: bytes, images: npt.NDArray[np.float32], *, runs: int = 200, warmup: int = 20
) -> dict[str, float]:
    """Per-image latency of a ``.tflite`` on one thread, batch 1: median and p90 in ms over
    `runs` invocations (after `warmup`), cycling through `images`."""
    m = TFLiteModel(content, num_threads=1)
    m(images[:1])
    it, d_in, d_out = m._it, m._in, m._out
    inputs = [m._quantize(images[i : i + 1]) for i in range(len(images))]
    times = []
    for r in range(warmup + runs):
        x = inputs[r % len(inputs)]
        t0 = time.perf_counter()
        it.set_tensor(d_in["index"], x)
        it.invoke()
        it.get_tensor(d_out["index"])
        if r >= warmup:
            times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)],
        "runs": runs,
    }


def evaluate(
    keras_model: Any,
    float_tflite: bytes,
    int8_tflite: bytes,
    data: Any,
    *,
    batch_size: int = 256,
    latency_runs: int = 200,
) -> dict[str, Any]:
    """Every figure of the evaluation, as a JSON-ready dict."""
    labels = data.labels("test")
    preds = {
        "keras_float": predict_keras(keras_model, data, batch_size),
        "tflite_float": predict_tflite(
            TFLiteModel(float_tflite), data, batch_size, "the float .tflite"
        ),
        "tflite_int8": predict_tflite(
            TFLiteModel(int8_tflite), data, batch_size, "the int8 .tflite"
        ),
    }
    top1 = {k: float(np.mean(p == labels)) for k, p in preds.items()}
    sample = to_float(data.images("test", np.arange(min(64, len(labels)))))
    log.info("timing one-thread latency (%d single-image runs per model)", latency_runs)
    lat = {
        "tflite_float": latency(float_tflite, sample, runs=latency_runs),
        "tflite_int8": latency(int8_tflite, sample, runs=latency_runs),
    }
    return {
        "test_images": int(len(labels)),
        "top1": top1,
        "int8_drop_points": 100.0 * (top1["tflite_float"] - top1["tflite_int8"]),
        "agreement_float_int8": float(np.mean(preds["tflite_float"] == preds["tflite_int8"])),
        "latency": lat,
        "latency_ratio_int8_float": lat["tflite_int8"]["median_ms"]
        / lat["tflite_float"]["median_ms"],
        "size_bytes": {"tflite_float": len(float_tflite), "tflite_int8": len(int8_tflite)},
    }
