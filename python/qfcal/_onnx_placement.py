"""Where an ONNX model's activation quantizers go: the tensors a runtime's fused kernels keep
internal (no quantizer needed: linear layers' outputs before their bias, the inside of
LayerNorm and GELU), and taking the quantizers off such tensors in a QDQ model.

Re-exported by :mod:`qfcal.onnxruntime` (``fused_outputs``, ``remove_quantizers``); needs
``onnx`` only.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

# Ops whose output a fused kernel can take through a bias Add without writing it out: the
# MatMul + Add of a linear layer (a Gemm / FullyConnected with bias in every runtime, one
# "supergroup" in AIMET and QNN) and a convolution followed by a bias Add.
_LINEAR = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
# Activations fused into the producing kernel (ORT's QDQ quantizer already leaves the tensor
# between a Conv and its Relu/Clip unquantized; other runtimes fuse them too).
_FUSED_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "Sigmoid"}


def load_model(model: Any, arg: str = "model", external_data: bool = True) -> Any:
    """`model` itself if an ``onnx.ModelProto``, else the model at that path (`arg` names the
    argument in errors; ``external_data=False`` leaves large weights on disk)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, str | os.PathLike):
        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"{arg} must be an ONNX model file, {str(p)!r} does not exist")
        return onnx.load(str(p), load_external_data=external_data)
    raise TypeError(f"{arg} must be a path or an onnx.ModelProto, got {type(model).__name__}")


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def _user(users: dict[str, list[Any]], t: str, op: str) -> Any | None:
    """The one consumer of `t` of type `op` (looking through a quantizer), if exactly one."""
    found = [u for u in _past_quantizer(users, t) if u.op_type == op]
    return found[0] if len(found) == 1 else None


def _walk(users: dict[str, list[Any]], t: str, ops: tuple[str, ...]) -> list[Any] | None:
    """The chain of single consumers of types `ops` from `t`, or None where it breaks."""
    out: list[Any] = []
    for op in ops:
        node = _user(users, t, op)
        if node is None:
            return None
        out.append(node)
        t = node.output[0]
    return out


def _through(t: str, quantized_from: dict[str, str]) -> str:
    """The float tensor behind a DequantizeLinear output (itself when not quantized)."""
    return quantized_from.get(t, t)


def _layernorm_internals(
    graph: Any, users: dict[str, list[Any]], consts: set[str], source: dict[str, str]
) -> list[str]:
    """The intermediate tensors of LayerNorms exported as elementwise ops (ReduceMean, Sub,
    Pow, ReduceMean, Add eps, Sqrt, Div, then Mul gamma and Add beta): one fused kernel
    wherever a runtime has LayerNormalization (ONNX Runtime fuses this pattern, QNN has the op).
    """
    found: list[str] = []
    for r1 in graph.node:
        if r1.op_type != "ReduceMean":
            continue
        x, mean = _through(r1.input[0], source), r1.output[0]
        sub = _user(users, mean, "Sub")
        if sub is None or _through(sub.input[0], source) != x:
            continue
        steps = _walk(users, sub.output[0], ("Pow", "ReduceMean", "Add", "Sqrt", "Div"))
        if steps is None or _through(steps[-1].input[0], source) != sub.output[0]:
            continue
        chain = [mean, sub.output[0]] + [n.output[0] for n in steps[:-1]]
        last = steps[-1].output[0]
        for op in ("Mul", "Add"):  # gamma, beta
            nxt = _user(users, last, op)
            if nxt is None or not any(_through(i, source) in consts for i in nxt.input):
                break
            chain.append(last)
            last = nxt.output[0]
        found.extend(chain)
    return found


def _gelu_internals(
    graph: Any, users: dict[str, list[Any]], consts: set[str], source: dict[str, str]
) -> list[str]:
    """The intermediate tensors of the erf GELU ``x * (erf(x / sqrt 2) + 1) * 0.5`` exported as
    Div, Erf, Add, Mul, Mul: one Gelu kernel in ONNX Runtime and QNN."""
    found: list[str] = []
    for div in graph.node:
        if div.op_type != "Div" or _through(div.input[1], source) not in consts:
            continue
        x = _through(div.input[0], source)
        steps = _walk(users, div.output[0], ("Erf", "Add", "Mul"))
        if steps is None or x not in {_through(i, source) for i in steps[-1].input}:
            continue
        erf, add, mul = steps
        half = _user(users, mul.output[0], "Mul")
        chain = [div.output[0], erf.output[0], add.output[0]]
        if half is not None and any(_through(i, source) in consts for i in half.input):
            chain.append(mul.output[0])
        found.extend(chain)
    return found


def fused_outputs(model: Any) -> list[str]:
    """The activations a runtime's fused kernels keep internal, so they need no quantizer.

    A tensor qualifies, unless it is a graph output, when it is

    - the output of a MatMul/Gemm/Conv whose weight is a constant and whose only consumer is
      an ``Add`` of a constant (the bias: MatMul + Add is one fully-connected kernel with an
      int32 accumulator) or a fused activation (``Relu``, ``Clip``, ...). ONNX Runtime's
      quantizer puts a quantizer on a MatMul's output before its bias Add (``MatMul`` in
      ``op_types_to_quantize``); AIMET and QNN do not, and on a transformer those tensors carry
      the feed-forward outliers;
    - inside a LayerNorm exported as elementwise ops (ReduceMean, Sub, Pow, ReduceMean, Add,
      Sqrt, Div, Mul, Add: PyTorch's export before opset 17) or an erf GELU (Div, Erf, Add,
      Mul, Mul): one kernel in ONNX Runtime (its LayerNormalization and Gelu fusions, once no
      quantizer splits the pattern) and in QNN. With every op quantized these carry the
      residual stream's outliers through a dozen tensors per layer.

    Args:
        model: an ``onnx.ModelProto`` or a path (the float model, or its QDQ quantization).

    Returns:
        The tensor names, in graph order.
    """
    graph = load_model(model, external_data=False).graph
    consts = {i.name for i in graph.initializer}
    consts |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    # a weight behind DequantizeLinear (a QDQ model) is still a constant
    consts |= {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in consts}  # fmt: skip
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    # a QDQ model: DequantizeLinear output -> the float tensor its QuantizeLinear read
    q_in = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    source = {n.output[0]: q_in[n.input[0]] for n in graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in q_in}  # fmt: skip
    found = []
    for node in graph.node:
        if node.op_type not in _LINEAR or len(node.input) < 2 or node.input[1] not in consts:
            continue
        t = node.output[0]
        nxt = _past_quantizer(users, t)
        if len(nxt) != 1:
            continue
        (user,) = nxt
        bias_add = user.op_type == "Add" and any(i in consts for i in user.input if i != t)
        if bias_add or user.op_type in _FUSED_ACTIVATIONS:
            found.append(t)
    found += _layernorm_internals(graph, users, consts, source)
    found += _gelu_internals(graph, users, consts, source)
    order = {name: i for i, n in enumerate(graph.node) for name in n.output}
    return sorted(dict.fromkeys(t for t in found if t not in outputs), key=order.__getitem__)


def _past_quantizer(users: dict[str, list[Any]], t: str) -> list[Any]:
    """The consumers of `t`, looking through a QuantizeLinear -> DequantizeLinear pair."""
    out = []
    for u in users.get(t, []):
        if u.op_type == "QuantizeLinear":
            for dq in users.get(u.output[0], []):
                out.extend(users.get(dq.output[0], []) if dq.op_type == "DequantizeLinear"
                           else [dq])  # fmt: skip
        else:
            out.append(u)
    return out


def remove_quantizers(
    model: Any, tensors: Iterable[str], output: str | os.PathLike[str] | None = None
) -> Any:
    """Take the activation quantizer off each of `tensors` in a QDQ model: the
    ``QuantizeLinear`` -> ``DequantizeLinear`` pair(s) after the tensor go, and their consumers
    read the float tensor. For the tensors a fused kernel keeps internal
    (:func:`fused_outputs`) or a plan keeps in float (:attr:`qfcal.precision.PrecisionPlan.free`).

    Args:
        model: the quantized QDQ model (``onnx.ModelProto`` or path).
        tensors: the float tensor names (as in the float model).
        output: where to save the result (optional).

    Returns:
        The changed ``onnx.ModelProto``.

    A tensor without a quantizer in `model` (ONNX Runtime leaves a Conv's output before its
    fused Relu unquantized) is left as it is.

    Raises:
        ValueError: a name that is no tensor of `model`, a quantizer not followed by
            DequantizeLinear, or a tensor read as a graph output through its quantizer.
    """
    model = load_model(model)
    graph = model.graph
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    drop: list[Any] = []
    rename: dict[str, str] = {}
    known = {name for node in graph.node for name in (*node.input, *node.output)}
    known |= {i.name for i in graph.input}
    for t in dict.fromkeys(tensors):
        if t not in known:
            raise ValueError(f"tensors: {t!r} is not a tensor of the model")
        qs = [u for u in users.get(t, []) if u.op_type == "QuantizeLinear"]
        if not qs:
            continue  # already float (e.g. a Conv output ONNX Runtime fused with its Relu)
        dqs = [d for q in qs for d in users.get(q.output[0], [])]
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            raise ValueError(
                f"tensors: {t!r} is quantized by a QuantizeLinear not followed by "
                "DequantizeLinear only (not a QDQ model?)"
            )
        if any(d.output[0] in outputs for d in dqs) or any(q.output[0] in outputs for q in qs):
            raise ValueError(f"tensors: {t!r} is read as a graph output through its quantizer")
        drop.extend(qs + dqs)
        rename.update({d.output[0]: t for d in dqs})
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    gone = {id(n) for n in drop}
    params = {name for n in drop for name in n.input[1:]}  # their scales and zero points
    kept = [n for n in graph.node if id(n) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input}
    inits = [i for i in graph.initializer if i.name in used or i.name not in params]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    if output is not None:
        onnx.save(model, os.fspath(output))
    return model
