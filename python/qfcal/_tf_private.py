"""The private TensorFlow Lite APIs :mod:`qfcal.tflite` relies on, in one place.

TensorFlow has no public way to hand the converter your own activation ranges. Its converter
does have the three steps qfcal needs, behind private names:

- ``converter._experimental_calibrate_only``: convert and calibrate, but stop before
  quantizing: the float flatbuffer's tensors carry the calibrated ``min``/``max``;
- ``tensorflow.lite.tools.flatbuffer_utils``: the flatbuffer as an object tree (``ModelT``) and
  back;
- ``tensorflow.lite.python.convert.mlir_quantize``: the quantizer the converter itself calls
  next (``TFLiteConverter._quantize``), with the same arguments.

Each use goes through this module; when TensorFlow renames or changes one of them, the error
says which and what to do (:class:`TFPrivateAPIError`), instead of an ``AttributeError`` deep
inside a conversion. Checked with TensorFlow 2.16 to 2.21.
"""

from __future__ import annotations

import warnings
from typing import Any

TESTED = ((2, 16), (2, 21))  # oldest and newest TensorFlow versions these wrappers were checked on


class TFPrivateAPIError(RuntimeError):
    """A private TensorFlow Lite API that :mod:`qfcal.tflite` uses is missing or changed."""


def _tf() -> Any:
    import tensorflow as tf

    return tf


def _version() -> tuple[int, int]:
    parts = _tf().__version__.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _fail(what: str, err: BaseException) -> TFPrivateAPIError:
    lo, hi = TESTED
    return TFPrivateAPIError(
        f"qfcal.tflite needs TensorFlow's private {what}, which TensorFlow "
        f"{_tf().__version__} does not provide as expected ({type(err).__name__}: {err}). "
        f"qfcal.tflite is checked with TensorFlow {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}: install "
        f"one of those (pip install 'tensorflow-cpu=={hi[0]}.{hi[1]}.*') or use qfcal.export, "
        "which needs only public APIs (FakeQuant nodes)."
    )


def check_version() -> None:
    """Warn (once per call site) when TensorFlow is outside the versions checked."""
    v = _version()
    lo, hi = TESTED
    if not lo <= v <= hi:
        warnings.warn(
            f"qfcal.tflite was checked with TensorFlow {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, "
            f"this is {_tf().__version__}: its private converter APIs may have changed",
            stacklevel=3,
        )


def calibrate_only(converter: Any) -> bytes:
    """Run `converter` (optimizations and representative dataset set) up to calibration: the
    float model whose tensors carry the converter's min/max."""
    if not hasattr(converter, "_experimental_calibrate_only"):
        raise _fail(
            "converter flag _experimental_calibrate_only",
            AttributeError(f"{type(converter).__name__} has no _experimental_calibrate_only"),
        )
    if getattr(converter, "experimental_new_quantizer", True) is False:
        raise ValueError(
            "converter.experimental_new_quantizer is False: qfcal.tflite finishes with the MLIR "
            "quantizer (the converter's default); set it to True"
        )
    before = converter._experimental_calibrate_only
    converter._experimental_calibrate_only = True
    try:
        out = converter.convert()
    finally:
        converter._experimental_calibrate_only = before
    if not isinstance(out, bytes | bytearray):
        raise _fail(
            "calibrate-only conversion",
            TypeError(f"convert() returned {type(out).__name__}, expected the flatbuffer bytes"),
        )
    return bytes(out)


def read_model(flatbuffer: bytes) -> Any:
    """The flatbuffer as a mutable ``ModelT`` object tree."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils

        return flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    except (ImportError, AttributeError) as e:
        raise _fail("tensorflow.lite.tools.flatbuffer_utils.convert_bytearray_to_object", e) from e


def write_model(model: Any) -> bytes:
    """A ``ModelT`` object tree back to flatbuffer bytes."""
    try:
        from tensorflow.lite.tools import flatbuffer_utils

        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    except (ImportError, AttributeError) as e:
        raise _fail("tensorflow.lite.tools.flatbuffer_utils.convert_object_to_bytearray", e) from e


def quantize_calibrated(
    calibrated: bytes,
    *,
    disable_per_channel: bool,
    disable_per_channel_for_dense_layers: bool,
    input_type: Any,
    output_type: Any,
    activations: str = "int8",
) -> bytes:
    """Quantize a calibrated float flatbuffer the way ``TFLiteConverter._quantize`` does: with
    the MLIR quantizer for int8 activations, with the older one for ``"int16"`` (16x8)."""
    if activations == "int16":
        return _quantize_calibrated_16x8(
            calibrated, disable_per_channel, disable_per_channel_for_dense_layers,
            input_type, output_type,
        )  # fmt: skip
    try:
        from tensorflow.lite.python import convert
    except ImportError as e:  # pragma: no cover - depends on the TensorFlow build
        raise _fail("module tensorflow.lite.python.convert", e) from e
    fn = getattr(convert, "mlir_quantize", None)
    if fn is None:
        raise _fail("function tensorflow.lite.python.convert.mlir_quantize", AttributeError())
    try:
        out = fn(
            calibrated,
            disable_per_channel,
            input_data_type=input_type,
            output_data_type=output_type,
            disable_per_channel_for_dense_layers=disable_per_channel_for_dense_layers,
        )
    except TypeError as e:
        raise _fail("signature of tensorflow.lite.python.convert.mlir_quantize", e) from e
    return bytes(out)


def _quantize_calibrated_16x8(
    calibrated: bytes,
    disable_per_channel: bool,
    disable_per_channel_for_dense_layers: bool,
    input_type: Any,
    output_type: Any,
) -> bytes:
    """Quantize a calibrated float flatbuffer with 16-bit activations and 8-bit weights, the
    way ``TFLiteConverter._quantize`` does for that mode (the older quantizer, which the MLIR
    one does not replace there): its calibration wrapper's ``QuantizeModel``, given no samples,
    keeps the min/max the flatbuffer's tensors already hold."""
    import numpy as np

    try:
        from tensorflow.lite.python.optimize import calibrator
    except ImportError as e:  # pragma: no cover - depends on the TensorFlow build
        raise _fail("module tensorflow.lite.python.optimize.calibrator", e) from e
    try:
        wrapper = calibrator.Calibrator(calibrated)._calibrator
        out = wrapper.QuantizeModel(
            np.dtype(input_type.as_numpy_dtype()).num,
            np.dtype(output_type.as_numpy_dtype()).num,
            False,  # allow_float: every op 16x8 or an error
            np.dtype(np.int16).num,
            np.dtype(np.int64).num,  # the converter's bias type for 16-bit activations
            disable_per_channel,
            disable_per_channel_for_dense_layers,
        )
    except (AttributeError, TypeError) as e:
        raise _fail("tensorflow.lite.python.optimize.calibrator.Calibrator.QuantizeModel", e) from e
    return bytes(out)
