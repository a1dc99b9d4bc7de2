"""A small transformer-like encoder as an ONNX graph (onnx.helper), with the trait that makes
MiniLM-style models need mixed precision: a feed-forward hidden unit that fires on about 1% of
the tokens drives one channel of the feed-forward output to ~150 where the rest stay near 1,
and the LayerNorm after the residual Add scales that channel down (a small gamma), so the
information is in the other channels.

Per block: ``h1 = LN(h + (h @ Wa + ba))``, ``f = Relu(h1 @ W1 + b1)``,
``h = LN(h1 + (f @ W2 + b2))``; the output is the mean over the tokens (a sentence embedding).
Input ``x``: (batch, tokens, D) float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

D, HIDDEN, BLOCKS = 32, 64, 3
OUTLIER_BLOCKS = (0, 1)  # the blocks whose feed-forward output carries the outlier channel


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def lin(n_in: int, n_out: int) -> np.ndarray:
        return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    for b in range(BLOCKS):
        w[f"b{b}.wa"], w[f"b{b}.ba"] = lin(D, D), np.zeros(D, np.float32)
        w[f"b{b}.w1"], w[f"b{b}.b1"] = lin(D, HIDDEN), np.zeros(HIDDEN, np.float32)
        w[f"b{b}.w2"], w[f"b{b}.b2"] = lin(HIDDEN, D), np.zeros(D, np.float32)
        for k in ("ln1", "ln2"):
            w[f"b{b}.{k}.g"] = np.ones(D, np.float32)
            w[f"b{b}.{k}.b"] = np.zeros(D, np.float32)
        if b in OUTLIER_BLOCKS:
            # hidden unit 0 reads one unit direction of the normalized tokens and fires above
            # 2 sigma (a few % of the tokens); it writes ~150 into channel 0, which the next
            # LayerNorm scales down
            v = rng.standard_normal(D)
            w[f"b{b}.w1"][:, 0] = (v / np.linalg.norm(v)).astype(np.float32)
            w[f"b{b}.b1"][0] = -2.0
            w[f"b{b}.w2"][0, :] = 0.0
            w[f"b{b}.w2"][0, 0] = 150.0
            w[f"b{b}.ln2.g"][0] = 0.02
    return w


def build(w: dict[str, np.ndarray], decomposed: bool = False) -> Any:
    """The encoder (opset 17: LayerNormalization) with the given weights. `decomposed`: each
    LayerNorm as the elementwise ops PyTorch's opset-14 export writes (ReduceMean, Sub, Pow,
    ReduceMean, Add, Sqrt, Div, Mul, Add) and the activation an erf GELU (Div, Erf, Add, Mul,
    Mul) instead of Relu, as in all-MiniLM-L6-v2's ONNX export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    nodes = []
    consts = {"eps": 1e-5, "two": 2.0, "sqrt2": float(np.sqrt(2.0)), "one": 1.0, "half": 0.5}

    def layernorm(x: str, g: str, b: str, out: str) -> None:
        if not decomposed:
            nodes.append(n("LayerNormalization", [x, g, b], [out], axis=-1))
            return
        p = out + "/"
        nodes.extend([
            n("ReduceMean", [x], [p + "mean"], axes=[-1]),
            n("Sub", [x, p + "mean"], [p + "sub"]),
            n("Pow", [p + "sub", "two"], [p + "pow"]),
            n("ReduceMean", [p + "pow"], [p + "var"], axes=[-1]),
            n("Add", [p + "var", "eps"], [p + "vareps"]),
            n("Sqrt", [p + "vareps"], [p + "std"]),
            n("Div", [p + "sub", p + "std"], [p + "norm"]),
            n("Mul", [p + "norm", g], [p + "scaled"]),
            n("Add", [p + "scaled", b], [out]),
        ])  # fmt: skip

    def activation(x: str, out: str) -> None:
        if not decomposed:
            nodes.append(n("Relu", [x], [out]))
            return
        p = out + "/"
        nodes.extend([
            n("Div", [x, "sqrt2"], [p + "div"]),
            n("Erf", [p + "div"], [p + "erf"]),
            n("Add", [p + "erf", "one"], [p + "erf1"]),
            n("Mul", [x, p + "erf1"], [p + "mul"]),
            n("Mul", [p + "mul", "half"], [out]),
        ])  # fmt: skip

    h = "x"
    for b in range(BLOCKS):
        p = f"b{b}"

        def linear(x: str, name: str, p: str = p) -> str:
            nodes.append(n("MatMul", [x, f"{p}.w{name}"], [f"{p}.mm{name}"]))
            nodes.append(n("Add", [f"{p}.mm{name}", f"{p}.b{name}"], [f"{p}.lin{name}"]))
            return f"{p}.lin{name}"

        a = linear(h, "a")
        nodes.append(n("Add", [h, a], [f"{p}.res1"]))
        layernorm(f"{p}.res1", f"{p}.ln1.g", f"{p}.ln1.b", f"{p}.h1")
        f = linear(f"{p}.h1", "1")
        activation(f, f"{p}.f")
        g = linear(f"{p}.f", "2")
        nodes.append(n("Add", [f"{p}.h1", g], [f"{p}.res2"]))
        layernorm(f"{p}.res2", f"{p}.ln2.g", f"{p}.ln2.b", f"{p}.h")
        h = f"{p}.h"
    nodes.append(n("ReduceMean", [h], ["embedding"], axes=[1], keepdims=0))
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    if decomposed:
        inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", D])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", D])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def sentences(n: int, seed: int, tokens: int = 16) -> np.ndarray:
    """`n` inputs of `tokens` token vectors."""
    return np.random.default_rng(seed).standard_normal((n, tokens, D)).astype(np.float32)
