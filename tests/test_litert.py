"""qfcal.litert against the real ai-edge-quantizer: qfcal's ranges through AEQ's calibration
result reach the int8 (and int16) .tflite it writes, scale and zero point bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_quantizer")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
import qfcal.litert  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_quantizer import quantizer, recipe  # noqa: E402
from keras import layers  # noqa: E402


def f32(x: float) -> bytes:
    return struct.pack("<f", x)


@pytest.fixture(scope="module")
def float_model() -> tuple[bytes, str, str]:
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    y = layers.Conv2D(8, 3, activation="relu")(x)
    y = layers.DepthwiseConv2D(3, activation="relu6")(y)
    y = layers.GlobalAveragePooling2D()(y)
    m = keras.Model(x, layers.Dense(5)(y))
    content = tf.lite.TFLiteConverter.from_keras_model(m).convert()
    sigs = Interpreter(model_content=content).get_signature_list()
    (sig,) = sigs
    return content, sig, sigs[sig]["inputs"][0]


def samples(name: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # heavy-tailed inputs: min/max and the least-error range differ
    return [{name: rng.standard_t(3, size=(1, 12, 12, 3)).astype(np.float32)} for _ in range(n)]


def quantized_params(content: bytes) -> dict[str, tuple[np.ndarray, np.ndarray, Any]]:
    it = Interpreter(model_content=content)
    return {
        d["name"]: (
            d["quantization_parameters"]["scales"],
            d["quantization_parameters"]["zero_points"],
            d["dtype"],
        )
        for d in it.get_tensor_details()
    }


@pytest.mark.parametrize(
    ("rec", "bits", "symmetric", "dtype"),
    [(recipe.static_wi8_ai8, 8, False, np.int8), (recipe.static_wi8_ai16, 16, True, np.int16)],
)
def test_qfcal_ranges_reach_the_model_aeq_writes(
    float_model: tuple[bytes, str, str], rec: Any, bits: int, symmetric: bool, dtype: Any
) -> None:
    content, sig, inp = float_model
    q = quantizer.Quantizer(content)
    q.load_quantization_recipe(rec())
    cal = qfcal.litert.calibrate(q, {sig: samples(inp, 24, 1)}, progress=False)
    assert (cal.bits, cal.symmetric) == (bits, symmetric)
    assert len(cal.ranges) >= 4 and not cal.kept, cal.kept
    assert set(cal.result) == set(cal.minmax)
    differ = 0
    for name, r in cal.ranges.items():
        assert (r.qmin, r.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        assert (r.zero_point == 0) if symmetric else True
        differ += not np.isclose(cal.result[name]["max"].max(), cal.minmax[name]["max"].max())
    assert differ >= 2  # qfcal's ranges, not AEQ's min/max
    out = bytes(q.quantize(cal.result, enable_progress_report=False).quantized_model)
    params = quantized_params(out)
    for name, r in cal.ranges.items():
        scales, zps, dt = params[name]
        assert dt == dtype, name
        assert f32(float(scales[0])) == f32(r.scale), (name, scales, r)
        assert int(zps[0]) == r.zero_point, (name, zps, r)
    it = Interpreter(model_content=out)
    it.allocate_tensors()  # the model AEQ wrote runs


def test_data_as_a_list_and_bad_input(float_model: tuple[bytes, str, str]) -> None:
    content, sig, inp = float_model
    q = quantizer.Quantizer(content)
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    cal = qfcal.litert.calibrate(q, samples(inp, 4, 2), method="minmax", progress=False)
    for name, r in cal.ranges.items():  # min/max on the grid: AEQ's range, widened to it
        assert r.min <= float(cal.minmax[name]["min"].min()) + 1e-7
        assert r.max >= float(cal.minmax[name]["max"].max()) - 1e-7
    with pytest.raises(ValueError, match="are not signatures of the model"):
        qfcal.litert.calibrate(q, {"nope": samples(inp, 2, 3)}, progress=False)
    with pytest.raises(ValueError, match="gave no samples"):
        qfcal.litert.calibrate(q, [], progress=False)
    with pytest.raises(ValueError, match="method"):
        qfcal.litert.calibrate(q, samples(inp, 2, 3), method="best", progress=False)
    with pytest.raises(ValueError, match="activation_bits must be an int in 2..16, got 40"):
        qfcal.litert.calibrate(q, samples(inp, 2, 3), activation_bits=40, progress=False)
    weights_only = quantizer.Quantizer(content)
    weights_only.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    with pytest.raises(ValueError, match="needs no calibration"):
        qfcal.litert.calibrate(weights_only, samples(inp, 2, 3), progress=False)
