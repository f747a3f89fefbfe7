"""Prototype: an OpenVINO-friendly Q/DQ placement derived from a slimq INT8 model.

onnxruntime needs Q/DQ around (almost) every op to stay in integer kernels. OpenVINO's CPU
plugin turns each Q/DQ pair into a FakeQuantize; a chain of them between elementwise ops
(PP-OCR's BatchNorm-as-Mul/Add and HardSwish) runs as "Subgraph" kernels that took 44-60 %
of the INT8 time there, making INT8 barely faster than FP32. Here Q/DQ pairs whose
dequantized value feeds only elementwise arithmetic are removed (that arithmetic runs in
float and OpenVINO fuses it into the convolutions' post-ops); Q/DQ on convolution/matmul
inputs and around Resize/Concat etc. stay (removing those too cost 10 % probability-map
IoU on PP-OCR det in OpenVINO). Scalar constants behind a per-tensor DequantizeLinear that
feed no convolution/matmul are folded to float (OpenVINO's Swish fusion fails on them).

    .venv/bin/python benchmarks/ov_placement.py INT8.onnx OUT.onnx
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

MAC_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "HardSigmoid", "HardSwish", "Clip", "Relu", "Sigmoid"})


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            out[name].append(n)
    return out


def _fold_constant_dq(graph: onnx.GraphProto) -> int:
    """Per-tensor DequantizeLinear of an initializer that feeds no conv/matmul -> a float initializer."""
    inits, users = {i.name: i for i in graph.initializer}, _consumers(graph)
    drop = set()
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        if scale.size > 1 or any(u.op_type in MAC_OPS for u in users[dq.output[0]]):
            continue
        zp = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
              if len(dq.input) > 2 and dq.input[2] in inits else np.float32(0))
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), dq.output[0]))
        drop.add(id(dq))
    _keep(graph, drop)
    return len(drop)


def _keep(graph: onnx.GraphProto, drop: set[int]) -> None:
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)


def ov_placement(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` without the Q/DQ pairs that feed only elementwise ops; returns (model, pairs removed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    users = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    rename, drop = {}, set()
    for dq in g.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or dq.output[0] in outputs:
            continue
        if all(u.op_type in ELEMENTWISE for u in users[dq.output[0]]) and users[dq.output[0]]:
            rename[dq.output[0]] = q.input[0]
            drop.add(id(dq))
    for q in g.node:  # a Q left without any DequantizeLinear consumer goes too
        if q.op_type == "QuantizeLinear" and users[q.output[0]] and all(id(c) in drop for c in users[q.output[0]]):
            drop.add(id(q))
    _keep(g, drop)
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    _fold_constant_dq(g)
    return model, len(rename)


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    out, removed = ov_placement(onnx.load(src))
    onnx.save(out, dst)
    print(f"removed {removed} Q/DQ pairs -> {dst}")
