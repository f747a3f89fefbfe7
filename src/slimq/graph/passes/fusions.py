"""Exact FP32 rewrites that remove elementwise ops in front of quantization.

Every elementwise op left between two convolutions becomes a requantization point
(and, for ops without an int8 kernel, a float island) in the QDQ model. These passes
fold or fuse such ops without changing FP32 results:

* :func:`fold_conv_affine`: ``Conv -> Mul(c) [-> Add(c)]`` with per-channel or scalar
  constants becomes one Conv with scaled weights and bias (PP-LCNetV3's learnable affine
  blocks, and any exported ``x * gamma + beta`` after a conv).
* :func:`fold_input_affine`: ``Mul(c) [-> Add(c)] -> Conv`` with an unpadded Conv (1x1
  pointwise convs, typically) becomes one Conv: ``W' = W * a`` per input channel and
  ``b' = b + sum(W * beta)``. Exact only without padding (padded zeros would become beta).
  Not part of :func:`slimq.graph.passes.preprocess`: on onnxruntime's CPU EP the INT8 PP-OCRv4 rec
  model ran slower with it (17.6 vs 16.3 ms at 1 thread, interleaved) and CER did not improve.
* :func:`fuse_hardswish`: ``x * Clip(x + 3, 0, 6) / 6`` (and ``x * HardSigmoid(x)``)
  becomes ``HardSwish(x)``.

Each pass mutates the onnx-ir model in place and returns how many sites it rewrote.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.graph.passes.common import add_initializer, const_array

_ONNX = ("", "ai.onnx")


def _scalar(v: ir.Value | None) -> float | None:
    c = const_array(v)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def _sole_use(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0].node


def _other_input(node: ir.Node, v: ir.Value) -> ir.Value | None:
    others = [x for x in node.inputs if x is not v]
    return others[0] if len(others) == 1 else None


def _channel_vector(c: np.ndarray, cout: int, out_rank: int) -> np.ndarray | None:
    """A Mul/Add constant as a per-output-channel vector, if it broadcasts along channels only."""
    if c.size == 1:
        return np.full(cout, float(c.reshape(())), np.float64)
    if c.size != cout or c.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if shape[1] != cout:  # channel axis of an NC... tensor
        return None
    return c.reshape(cout).astype(np.float64)


def _affine_check(conv: ir.Node) -> tuple[ir.Node, np.ndarray] | str:
    """The Mul/Add to fold into `conv` and its constant as a channel vector, or why nothing fires."""
    w = const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None:
        return "weight is not a constant"
    nxt = _sole_use(conv.outputs[0])
    if nxt is None or nxt.op_type not in ("Mul", "Add") or nxt.domain not in _ONNX:
        return "output does not feed exactly one Mul/Add"
    other = _other_input(nxt, conv.outputs[0])
    c = const_array(other)
    if c is None:
        return "Mul/Add operand is not a constant"
    vec = _channel_vector(c, w.shape[0], w.ndim)
    if vec is None:
        return f"constant of shape {c.shape} does not broadcast per output channel"
    return nxt, vec


def _fold_into(graph: ir.Graph, conv: ir.Node, op: ir.Node, vec: np.ndarray) -> None:
    w = const_array(conv.inputs[1]).astype(np.float64)
    b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    if op.op_type == "Mul":
        w = w * vec.reshape(-1, *[1] * (w.ndim - 1))
        b = b * vec
    else:
        b = b + vec
    base = conv.name or conv.outputs[0].name
    dtype = const_array(conv.inputs[1]).dtype
    conv.replace_input_with(1, add_initializer(graph, f"{base}.weight_affine", w.astype(dtype)))
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, add_initializer(graph, f"{base}.bias_affine", b.astype(dtype)))
    op.outputs[0].replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
    graph.remove(op, safe=True)


def fold_conv_affine(model: ir.Model) -> int:
    """Fold constant per-channel Mul/Add chains that directly follow a Conv into it (in place)."""
    graph, folds = model.graph, 0
    for conv in [n for n in graph if n.op_type == "Conv" and n.domain in _ONNX]:
        while not isinstance(found := _affine_check(conv), str):
            _fold_into(graph, conv, *found)
            folds += 1
    if folds:
        RemoveUnusedNodesPass()(model)
    return folds


def _unpadded(conv: ir.Node) -> bool:
    pads = conv.attributes["pads"].as_ints() if "pads" in conv.attributes else ()
    auto = conv.attributes["auto_pad"].as_string() if "auto_pad" in conv.attributes else "NOTSET"
    return not any(pads) and auto in ("NOTSET", "VALID")


def _const_operand_op(x: ir.Value, op_type: str, reader: ir.Node, cin: int) -> tuple[ir.Node, ir.Value, np.ndarray] | None:
    """(node, data input, channel vector) when `x` = node(data, constant) is read only by `reader`."""
    node = _producer(x, op_type)
    if node is None or _sole_use(x) is not reader or len(node.inputs) != 2:
        return None
    data = next((v for v in node.inputs if const_array(v) is None), None)
    c = const_array(_other_input(node, data)) if data is not None else None
    vec = _channel_vector(c, cin, 4) if c is not None and c.ndim <= 4 else None
    return (node, data, vec) if vec is not None else None


def _input_affine(conv: ir.Node, cin: int) -> tuple[ir.Value, np.ndarray, np.ndarray, list[ir.Node]] | None:
    """(h, a, beta, nodes) when the Conv's input is ``h * a + beta`` (Mul or Add alone too)."""
    h, a, beta, dead, reader = conv.inputs[0], np.ones(cin), np.zeros(cin), [], conv
    if (add := _const_operand_op(h, "Add", reader, cin)) is not None:
        reader, h, beta = add[0], add[1], add[2]
        dead.append(reader)
    if (mul := _const_operand_op(h, "Mul", reader, cin)) is not None:
        h, a = mul[1], mul[2]
        dead.append(mul[0])
    return (h, a, beta, dead) if dead else None


def _fold_input_into(graph: ir.Graph, conv: ir.Node, h: ir.Value, a: np.ndarray, beta: np.ndarray) -> None:
    w = const_array(conv.inputs[1]).astype(np.float64)
    group = conv.attributes["group"].as_int() if "group" in conv.attributes else 1
    cin_g, cout_g = w.shape[1], w.shape[0] // group
    # input channel of weight [o, j] is (o // cout_g) * cin_g + j
    chan = (np.arange(w.shape[0])[:, None] // cout_g) * cin_g + np.arange(cin_g)[None, :]
    shape = (*chan.shape, *[1] * (w.ndim - 2))
    b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    b = b + (w * beta[chan].reshape(shape)).reshape(w.shape[0], -1).sum(axis=1)
    w = w * a[chan].reshape(shape)
    base, dtype = conv.name or conv.outputs[0].name, const_array(conv.inputs[1]).dtype
    conv.replace_input_with(0, h)
    conv.replace_input_with(1, add_initializer(graph, f"{base}.weight_inaffine", w.astype(dtype)))
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, add_initializer(graph, f"{base}.bias_inaffine", b.astype(dtype)))


def fold_input_affine(model: ir.Model) -> int:
    """Fold constant per-channel Mul/Add in front of unpadded Convs into them (in place)."""
    graph, folds = model.graph, 0
    for conv in [n for n in graph if n.op_type == "Conv" and n.domain in _ONNX]:
        w = const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or not _unpadded(conv):
            continue
        group = conv.attributes["group"].as_int() if "group" in conv.attributes else 1
        if (site := _input_affine(conv, w.shape[1] * group)) is None:
            continue
        h, a, beta, dead = site
        _fold_input_into(graph, conv, h, a, beta)
        graph.remove(dead, safe=True)
        folds += len(dead)
    return folds


def _producer(v: ir.Value | None, op_type: str) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == op_type and p.domain in _ONNX else None


def _gate_input(gate: ir.Node) -> ir.Value | None:
    """x when `gate` computes relu6(x + 3) (a Clip) or hard_sigmoid(x) with alpha 1/6, beta 1/2."""
    if gate.op_type == "HardSigmoid":
        alpha = gate.attributes["alpha"].as_float() if "alpha" in gate.attributes else 0.2
        beta = gate.attributes["beta"].as_float() if "beta" in gate.attributes else 0.5
        return gate.inputs[0] if np.isclose(alpha, 1 / 6) and np.isclose(beta, 0.5) else None
    if len(gate.inputs) < 3 or (_scalar(gate.inputs[1]), _scalar(gate.inputs[2])) != (0.0, 6.0):
        return None
    add = _producer(gate.inputs[0], "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for x, three in (add.inputs, add.inputs[::-1]):
        if _scalar(three) == 3.0 and const_array(x) is None:
            return x
    return None


def _hardswish_site(mul: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node]] | None:
    """(x, output, nodes to remove) when `mul` is the product of x * gate(x) [/ 6]."""
    for gate_v in mul.inputs:
        gate = _producer(gate_v, "Clip") or _producer(gate_v, "HardSigmoid")
        x = _gate_input(gate) if gate is not None else None
        if x is None or _other_input(mul, gate_v) is not x or _sole_use(gate_v) is not mul:
            continue
        if gate.op_type == "HardSigmoid":
            return x, mul.outputs[0], [mul, gate]
        div = _sole_use(mul.outputs[0])
        add = gate.inputs[0].producer()
        if div is None or div.op_type != "Div" or _scalar(div.inputs[1]) != 6.0 or _sole_use(add.outputs[0]) is not gate:
            continue
        return x, div.outputs[0], [div, mul, gate, add]
    return None


def fuse_hardswish(model: ir.Model) -> int:
    """Replace decomposed HardSwish patterns by the HardSwish op, in place.

    HardSwish needs opset 14. A model at opset 13 is moved to 14 when a site is found: the
    ops that changed from 13 to 14 only gained types or attributes whose defaults keep the
    old behaviour (BatchNormalization differs in training mode only).
    """
    graph, fused = model.graph, 0
    opset = model.opset_imports.get("", 0)
    if opset < 13:
        return 0
    for mul in [n for n in graph if n.op_type == "Mul" and n.domain in _ONNX]:
        if mul.graph is None or (site := _hardswish_site(mul)) is None:
            continue
        x, out, dead = site
        hs = ir.node("HardSwish", [x], name=f"{mul.name or out.name}_hardswish")
        graph.insert_before(dead[-1], hs)
        out.replace_all_uses_with(hs.outputs[0], replace_graph_outputs=True)
        name = out.name
        out.name = f"{name}_unfused"
        hs.outputs[0].name = name
        graph.remove(dead, safe=True)
        fused += 1
    if fused and opset == 13:
        model.opset_imports[""] = 14
    return fused
