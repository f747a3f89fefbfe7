"""What the ops of a ``torch.export`` graph are, in the terms of slimq's one op table.

Each ATen op a captured graph may hold is mapped to the ONNX op it exports as; its role in a QDQ graph
(compute, pass-through, fused activation, float), its activation inputs, whether it multiply-accumulates
and whether a target keeps it float then come from :mod:`slimq.core.ops` and
:mod:`slimq.core.targets`, exactly as static PTQ reads them. Only facts that exist on the PyTorch side
live here: the ATen-to-ONNX mapping, ops that are no-ops in inference, and where an activation's clip
bounds sit among its arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx

from slimq.core.ops import Role, is_float_mac, op_info
from slimq.core.targets import TargetRules

aten = torch.ops.aten

Bounds = tuple[float | None, float | None]


def _arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _hardtanh_bounds(node: fx.Node) -> Bounds:
    lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    return (float(lo) if isinstance(lo, (int, float)) else None, float(hi) if isinstance(hi, (int, float)) else None)


def _clamp_bounds(node: fx.Node) -> Bounds:
    lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
    return (float(lo) if isinstance(lo, (int, float)) else None, float(hi) if isinstance(hi, (int, float)) else None)


# ATen op (overload packet) -> the ONNX op type it exports as.
ATEN_TO_ONNX: dict[object, str] = {
    **{op: "Conv" for op in (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution)},
    aten.conv_transpose1d: "ConvTranspose", aten.conv_transpose2d: "ConvTranspose",
    aten.linear: "Gemm", aten.addmm: "Gemm",
    **{op: "MatMul" for op in (aten.matmul, aten.mm, aten.bmm)},
    aten.add: "Add", aten.add_: "Add", aten.mul: "Mul", aten.mul_: "Mul", aten.cat: "Concat",
    **{op: "AveragePool" for op in (aten.avg_pool1d, aten.avg_pool2d, aten.adaptive_avg_pool1d)},
    aten.adaptive_avg_pool2d: "GlobalAveragePool",
    aten.sigmoid: "Sigmoid", aten.leaky_relu: "LeakyRelu",
    aten.relu: "Relu", aten.relu_: "Relu",
    **{op: "Clip" for op in (aten.hardtanh, aten.hardtanh_, aten.clamp, aten.clamp_, aten.clip, aten.relu6)},
    **{op: "MaxPool" for op in (aten.max_pool1d, aten.max_pool2d)},
    **{op: "Reshape" for op in (aten.view, aten.reshape, aten._unsafe_view)},
    aten.flatten: "Flatten", aten.squeeze: "Squeeze", aten.unsqueeze: "Unsqueeze",
    **{op: "Transpose" for op in (aten.permute, aten.transpose, aten.t)},
    aten.slice: "Slice", aten.expand: "Expand",
    aten.batch_norm: "BatchNormalization", aten._native_batch_norm_legit_no_training: "BatchNormalization",
    aten.pad: "Pad", aten.constant_pad_nd: "Pad",
    aten.softmax: "Softmax", aten._softmax: "Softmax", aten.layer_norm: "LayerNormalization",
    aten.gelu: "Gelu", aten.tanh: "Tanh", aten.hardswish: "HardSwish", aten.hardsigmoid: "HardSigmoid",
}
# Ops that do nothing to the values in inference (the exporter drops them): they keep their input's grid.
NO_OPS = {aten.clone, aten.contiguous, aten.alias, aten.detach, aten.dropout, aten.feature_dropout,
          aten.lift_fresh_copy}
# Where a clip-type activation keeps its bounds.
CLIP_BOUNDS: dict[object, Callable[[fx.Node], Bounds]] = {
    aten.hardtanh: _hardtanh_bounds, aten.hardtanh_: _hardtanh_bounds,
    aten.clamp: _clamp_bounds, aten.clamp_: _clamp_bounds, aten.clip: _clamp_bounds,
    aten.relu6: lambda node: (0.0, 6.0),
}
POOLS = ("AveragePool", "GlobalAveragePool")


def is_aten(node: fx.Node) -> bool:
    """A call of an ATen op overload (what ``torch.export`` graphs hold)."""
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)


def packet(node: fx.Node) -> object:
    return node.target.overloadpacket  # type: ignore[union-attr]


def onnx_op(node: fx.Node) -> str | None:
    """The ONNX op type an ATen node exports as (None: not in the mapping)."""
    return ATEN_TO_ONNX.get(packet(node)) if is_aten(node) else None


def activation_bounds(node: fx.Node) -> Bounds | None:
    """(low, high) of a ReLU/clip-type ATen activation; None for other nodes."""
    if not is_aten(node):
        return None
    if onnx_op(node) == "Relu":
        return 0.0, None
    rule = CLIP_BOUNDS.get(packet(node))
    return rule(node) if rule is not None else None


def is_mac(node: fx.Node) -> bool:
    """An ATen conv/linear/matmul call (multiply-accumulates)."""
    op = onnx_op(node)
    return op is not None and is_float_mac(op)


def _binary_kind(node: fx.Node, op: str) -> str:
    """Add/Mul/MatMul of two activations are quantized ops; with a constant operand they stay float."""
    two_tensors = len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2])
    alpha = _arg(node, 2, "alpha", 1) if op == "Add" else 1
    if not two_tensors or alpha != 1 or any(k != "alpha" for k in node.kwargs):
        return "float"
    return "matmul" if op == "MatMul" else "add"


def _compute_kind(node: fx.Node, op: str) -> str:
    info = op_info(op)
    if op in POOLS:
        return "pool"
    if info.act_inputs == (0, 1):
        return _binary_kind(node, op)
    if info.weight is not None or info.act_inputs != (0,):
        return "float"  # a functional conv/linear not lifted to a module (weight not a parameter), Concat
    return "compute"


def aten_kind(node: fx.Node, rules: TargetRules) -> str:
    """Classify an ATen node like :func:`slimq.qat.graph._kind` classifies modules: conv, linear,
    bn, act, pass, pool, add, matmul, compute (a unary quantized op), neutral or float."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not val.is_floating_point():
        return "neutral"  # sizes, shapes, asserts, index tensors
    if packet(node) in NO_OPS:
        return "pass"
    op = onnx_op(node)
    if op is None or op in dict(rules.float_ops):
        return "float"
    info = op_info(op)
    if info.role is Role.PASSTHROUGH:
        return "pass"
    if info.role is Role.FUSED_ACTIVATION:
        bounds = activation_bounds(node)
        return "act" if bounds is not None and bounds[0] == 0.0 else "float"
    if op == "BatchNormalization":
        return "bn"
    if info.role is Role.COMPUTE:
        return _compute_kind(node, op)
    return "float"


__all__ = ["ATEN_TO_ONNX", "NO_OPS", "activation_bounds", "aten_kind", "is_aten", "is_mac", "onnx_op"]
