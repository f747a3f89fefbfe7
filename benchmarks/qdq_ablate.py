"""Read-only diagnostics: switch off parts of a QDQ model's quantization to see what costs accuracy.

``bypass_activations(model, keep)`` returns a copy of a QDQ model in which every
activation QuantizeLinear -> DequantizeLinear pair whose input tensor does *not*
satisfy ``keep`` is replaced by an Identity (that tensor stays float; weights stay
int8). ``keep=lambda t: False`` gives a weights-only model. ``float_weights`` puts
the original FP32 weights back (activations-only quantization).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def bypass_activations(model: onnx.ModelProto, keep: Callable[[str], bool]) -> onnx.ModelProto:
    """Copy of ``model`` with the activation Q/DQ pairs of tensors not kept replaced by Identity."""
    m = _copy(model)
    inits = {t.name for t in m.graph.initializer}
    q_of = {n.output[0]: n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    drop: set[int] = set()
    nodes = []
    for n in m.graph.node:
        q = q_of.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is not None and not keep(q.input[0]):
            nodes.append(helper.make_node("Identity", [q.input[0]], [n.output[0]], name=n.name + "_bypass"))
            drop.add(id(q))
        else:
            nodes.append(n)
    nodes = [n for n in nodes if id(n) not in drop]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def float_weights(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose weight DequantizeLinear nodes output the original FP32 weights again.

    ``fp32`` is the preprocessed FP32 model; weight DQ nodes are named ``<weight>_DequantizeLinear``."""
    m = _copy(model)
    weights = {t.name: t for t in fp32.graph.initializer}
    inits = {t.name for t in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        base = n.name.removesuffix("_DequantizeLinear")
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and base in weights:
            t = onnx.TensorProto()
            t.CopyFrom(weights[base])
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m
