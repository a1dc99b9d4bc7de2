"""Cross-layer equalization, bias absorption and bias correction of an ONNX model (issue 13).

Exposed as :func:`qfcal.onnxruntime.equalize` and ``qfcal.onnxruntime.quantize_static(...,
equalize=True)``; the algebra and the ReLU6 bound are :mod:`qfcal.equalize`'s. Links are
``Conv -> [Relu | Clip(0, 6)] -> Conv`` (regular or depthwise convolutions, weights and biases
as initializers used once, the tensor between read by the second convolution only and not a
graph output); a convolution without a bias gets a zero one. Tensors are NCHW. With
``relu6="per-channel"`` each moved ReLU6 clip becomes ``Clip(0, max_c c) -> Min(c)`` with the
per-channel clips ``c`` (shape ``(1, C, 1, ...)``), the ``Min`` taking the clip's output name.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import helper, numpy_helper

from qfcal.equalize import (
    ChannelStats,
    EqualizeReport,
    Layer,
    Link,
    bias_correction,
    equalize_links,
)


def _const(g: Any, name: str) -> np.ndarray | None:
    if not name:
        return None
    for init in g.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _activation(g: Any, node: Any) -> str | None:
    if node.op_type == "Relu":
        return "relu"
    if node.op_type != "Clip":
        return None
    lo: float | None = None
    hi: float | None = None
    for a in node.attribute:  # opset < 11
        if a.name == "min":
            lo = a.f
        elif a.name == "max":
            hi = a.f
    if len(node.input) > 1:
        v = _const(g, node.input[1])
        lo = None if v is None else float(v)
    if len(node.input) > 2:
        v = _const(g, node.input[2])
        hi = None if v is None else float(v)
    if lo == 0.0 and hi is None:
        return "relu"
    if lo == 0.0 and hi == 6.0:
        return "relu6"
    return None


class _Graph:
    """The convolutions of an ONNX graph and who reads what."""

    def __init__(self, model: Any) -> None:
        self.model = model
        g = model.graph
        self.g = g
        self.inits = {i.name: i for i in g.initializer}
        self.readers: dict[str, list[Any]] = defaultdict(list)
        for node in g.node:
            for name in node.input:
                if name:
                    self.readers[name].append(node)
        self.outputs = {o.name for o in g.output}

    def conv_kind(self, node: Any) -> str | None:
        """Why `node` cannot be linked (None: it can)."""
        if node.op_type != "Conv":
            return f"{node.op_type}"
        if len(node.input) < 2 or node.input[1] not in self.inits:
            return "weights are not an initializer"
        if len(self.readers[node.input[1]]) != 1:
            return "weights shared with another node"
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.inits or len(self.readers[node.input[2]]) != 1:
                return "bias is not an initializer of its own"
        w = self.inits[node.input[1]]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group != 1 and not (group == w.dims[0] and w.dims[1] == 1):
            return f"grouped convolution ({group} groups)"
        return None

    def depthwise(self, node: Any) -> bool:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return bool(group != 1)

    def layer(self, node: Any) -> Layer:
        w = numpy_helper.to_array(self.inits[node.input[1]]).astype(np.float64)
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(self.inits[node.input[2]]).astype(np.float64)
        else:
            b = np.zeros(w.shape[0])
        return Layer(node.name or node.output[0], w, b, depthwise=self.depthwise(node))

    def set_layer(self, node: Any, layer: Layer) -> None:
        w = self.inits[node.input[1]]
        dtype = numpy_helper.to_array(w).dtype
        w.CopyFrom(numpy_helper.from_array(layer.kernel.astype(dtype), w.name))
        if len(node.input) > 2 and node.input[2]:
            b = self.inits[node.input[2]]
            b.CopyFrom(numpy_helper.from_array(layer.bias.astype(dtype), b.name))
        else:
            name = f"{node.input[1]}_qfcal_bias"
            t = numpy_helper.from_array(layer.bias.astype(dtype), name)
            self.g.initializer.append(t)
            self.inits[name] = self.g.initializer[-1]
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
            self.readers[name].append(node)


def _links(gr: _Graph) -> tuple[list[tuple[Any, Any, str, str, bool]], list[tuple[str, str]]]:
    """(first node, second node, activation, tensor between, absorb ok) and skipped pairs."""
    out = []
    skipped = []
    for node in gr.g.node:
        if node.op_type != "Conv":
            continue
        name = node.name or node.output[0]
        why = gr.conv_kind(node)
        t, act = node.output[0], "linear"
        second = None
        while why is None:
            r = gr.readers[t]
            if t in gr.outputs or len(r) != 1:
                why = "its output is read by several nodes" if len(r) > 1 else "graph output"
                break
            nxt = r[0]
            kind = _activation(gr.g, nxt)
            if kind is not None and act == "linear":
                act, t = kind, nxt.output[0]
                continue
            if nxt.op_type == "Conv" and nxt.input[0] == t:
                bad = gr.conv_kind(nxt)
                if bad is not None:
                    why = f"next node {nxt.name}: {bad}"
                    break
                second = nxt
                break
            why = f"followed by {nxt.op_type}"
        if second is None:
            skipped.append((name, why or "no next node"))
            continue
        w2 = gr.inits[second.input[1]]
        one = tuple(w2.dims[2:]) == (1,) * (len(w2.dims) - 2)
        out.append((node, second, act, t, one))
    return out, skipped


def _batches(data: Any) -> Iterable[Mapping[str, Any]]:
    from qfcal.onnxruntime import _batches as read

    return read(data, "data_reader")


def _stats(
    model: Any, tensors: Sequence[str], batches: Sequence[Mapping[str, Any]]
) -> list[ChannelStats]:
    """Per tensor (NCHW or NC), its per-channel statistics over `batches`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for t in tensors:
        if t not in known:
            m.graph.output.append(helper.make_empty_tensor_value_info(t))
            known.add(t)
    with tempfile.TemporaryDirectory(prefix="qfcal-eq-") as tmp:
        path = os.path.join(tmp, "probe.onnx")
        onnx.save_model(m, path, save_as_external_data=True, location="probe.data")
        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        unique = list(dict.fromkeys(tensors))
        by_name = {t: ChannelStats(axis=1) for t in unique}
        for feed in batches:
            for t, y in zip(unique, sess.run(unique, dict(feed)), strict=True):
                by_name[t].update(y)
        stats = [by_name[t] for t in tensors]
    if not stats or stats[0].count == 0:
        raise ValueError("data_reader gave no batches: equalization needs calibration data")
    return stats


def _outputs(model: Any, batches: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    sess = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    res = []
    for feed in batches:
        ys = sess.run(None, dict(feed))
        res.append(np.concatenate([np.asarray(y).reshape(len(y), -1) for y in ys], axis=1))
    return res


def equalize_onnx(
    model: Any,
    batches: Sequence[Mapping[str, Any]],
    *,
    equalize: bool = True,
    headroom: float = 2.0,
    absorb: bool = False,
    bias_correction_bits: int | None = None,
    per_channel: bool = True,
    max_iterations: int = 20,
    check: bool = True,
    objective: str = "noise",
    weight_bits: int = 8,
    relu6: str = "bound",
) -> tuple[Any, EqualizeReport]:
    """The equalized copy of `model` (an onnx.ModelProto) and the report; see
    :func:`qfcal.onnxruntime.equalize`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    gr = _Graph(out)
    found, skipped = _links(gr) if equalize else ([], [])
    tensors = [f[3] for f in found]
    if objective == "noise":  # the first layers' inputs too, for the noise model
        tensors += [f[0].input[0] for f in found]
    stats = _stats(out, tensors, batches) if found else []
    inputs: list[ChannelStats | None] = [*stats[len(found) :]] or [None] * len(found)
    core: dict[str, Layer] = {}
    nodes: dict[str, Any] = {}
    links = []
    for (first, second, act, _t, one), between, inp in zip(
        found, stats[: len(found)], inputs, strict=True
    ):
        for n in (first, second):
            la = gr.layer(n)
            core[la.name] = la
            nodes[la.name] = n
        links.append(
            Link.measured(
                first.name or first.output[0],
                second.name or second.output[0],
                act,
                between,
                inp,
                absorb=one,
            )
        )
    new, report = equalize_links(
        core,
        links,
        max_iterations=max_iterations,
        absorb=absorb,
        headroom=headroom,
        objective=objective,
        weight_bits=weight_bits,
        relu6=relu6,
    )
    report.skipped = skipped
    for name, la in new.items():
        gr.set_layer(nodes[name], la)
    if report.clips:
        clip_at = {
            k.first: (t, len(gr.inits[f.input[1]].dims))
            for k, (f, _s, _a, t, _o) in zip(links, found, strict=True)
        }
        _move_clips(out, {clip_at[n][0]: (c, clip_at[n][1]) for n, c in report.clips.items()})
    if check and found:
        report.float_drift = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(_outputs(model, batches), _outputs(out, batches), strict=True)
        )
    if bias_correction_bits is not None:
        convs = [n for n in out.graph.node if n.op_type == "Conv" and gr.conv_kind(n) is None]
        means = _stats(out, [n.input[0] for n in convs], batches)
        for n, st in zip(convs, means, strict=True):
            la = gr.layer(n)
            la.bias, shift = bias_correction(
                la, st.mean, bits=bias_correction_bits, per_channel=per_channel
            )
            gr.set_layer(n, la)
            report.bias_corrected[la.name] = shift
    return out, report


def _move_clips(model: Any, clips: Mapping[str, tuple[np.ndarray, int]]) -> None:
    """For each ReLU6 ``Clip`` whose output is a key of `clips` (per-channel clips, tensor
    rank): clip at the largest of them, then ``Min`` with all of them (under the clip's output
    name)."""
    g = model.graph
    nodes = []
    for node in g.node:
        if node.op_type != "Clip" or node.output[0] not in clips:
            nodes.append(node)
            continue
        out = node.output[0]
        c = np.asarray(clips[out][0], dtype=np.float32)
        rank = clips[out][1]
        hi_name, c_name = f"{out}_qfcal_clip_max", f"{out}_qfcal_clip"
        if any(a.name == "max" for a in node.attribute):  # opset < 11
            for a in node.attribute:
                if a.name == "max":
                    a.f = float(c.max())
        else:
            g.initializer.append(numpy_helper.from_array(np.array(c.max(), np.float32), hi_name))
            node.input[2] = hi_name
        g.initializer.append(numpy_helper.from_array(c.reshape(1, -1, *[1] * (rank - 2)), c_name))
        node.output[0] = f"{out}_qfcal_preclip"
        nodes += [node, helper.make_node("Min", [node.output[0], c_name], [out], name=c_name)]
    del g.node[:]
    g.node.extend(nodes)


def as_list(data: Any) -> list[Mapping[str, Any]]:
    """The reader's batches, kept (they are read more than once)."""
    return list(_batches(data))


__all__ = ["as_list", "equalize_onnx"]
