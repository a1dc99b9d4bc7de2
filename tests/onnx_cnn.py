"""The small CNN the ONNX Runtime tests and benchmarks/bench_memory.py quantize, as an ONNX graph
built with onnx.helper (NCHW, batch dimension free): Conv-Relu-Conv-Relu-Add-Conv-Relu-Flatten-
Gemm on 28x28x1 images."""

from __future__ import annotations

from typing import Any

import numpy as np


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised weights (zero biases) under the names :func:`build_onnx` takes."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "c1.weight": he(16, 1, 3, 3),
        "c1.bias": np.zeros(16, np.float32),
        "c2.weight": he(16, 16, 3, 3),
        "c2.bias": np.zeros(16, np.float32),
        "c3.weight": he(32, 16, 3, 3),
        "c3.bias": np.zeros(32, np.float32),
        "fc.weight": he(10, 32 * 7 * 7),
        "fc.bias": np.zeros(10, np.float32),
    }


def build_onnx(w: dict[str, np.ndarray]) -> Any:
    """The CNN as an ONNX graph (NCHW, batch dimension free) with the given weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    nodes = [
        n("Conv", ["input", "c1.weight", "c1.bias"], ["conv1"], strides=[2, 2], pads=[1] * 4),
        n("Relu", ["conv1"], ["relu1"]),
        n("Conv", ["relu1", "c2.weight", "c2.bias"], ["conv2"], pads=[1] * 4),
        n("Relu", ["conv2"], ["relu2"]),
        n("Add", ["relu1", "relu2"], ["add"]),
        n("Conv", ["add", "c3.weight", "c3.bias"], ["conv3"], strides=[2, 2], pads=[1] * 4),
        n("Relu", ["conv3"], ["relu3"]),
        n("Flatten", ["relu3"], ["flat"]),
        n("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes,
        "fashion_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
