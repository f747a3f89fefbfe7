"""HardSwish in int8 on runtimes without an int8 HardSwish kernel: a QDQ-level rewrite.

onnxruntime's CPU provider has no int8 HardSwish, so every HardSwish of a QDQ model runs as a float island:
DequantizeLinear -> HardSwish (decomposed into HardSigmoid and Mul) -> QuantizeLinear, four passes over
float data. PP-LCNet and MobileNetV3 (all PP-OCR models) have one after almost every convolution.

``HardSwish(x) = x * HardSigmoid(x)`` with ``HardSigmoid(x) = clip(alpha * x + beta, 0, 1)``. On the
quantized input ``q`` (scale ``s``, zero point ``z``) the affine part is a DequantizeLinear of the *same*
integers with scale ``alpha * s`` plus the constant ``beta``; quantizing that sum with scale 1/255 and zero
point 0 clips it to [0, 1] for free (uint8 saturation). So::

    h = QuantizeLinear(DequantizeLinear(q, alpha*s, z) + DequantizeLinear(255, beta/255, 0), 1/255, 0)
    y = QuantizeLinear(DequantizeLinear(q, s, z) * DequantizeLinear(h, 1/255, 0), s_y, z_y)

which onnxruntime runs as QLinearAdd + QLinearMul on uint8. It is not exact: HardSigmoid is held on
a 1/255 grid, which moves ``y`` by at most 3/510 (only where |x| < 3; elsewhere the gate is exactly 0 or 1).
That is a fraction of a step, but the same for every element with the same input integer, so it can shift a
whole tensor's mean: on PP-OCRv4 rec one rewritten site moved its output's mean by +0.036 steps and cost
4 dB of output SQNR, all 26 sites 7 dB (23.94 -> 16.82 dB, CER 1.72 -> 2.16 % on 200 lines), while on
PP-OCRv4 det it gained 0.3 dB. The speed guard therefore keeps it only where it measures faster *and* keeps
the SQNR against FP32 on the held-out samples (:class:`slimq.runtime.speed.QDQRewrite`, ``exact=False``).

A scalar affine tail between HardSwish and its QuantizeLinear (PP-LCNetV3's learnable ``a * x + c``, or the
``+ c`` that :mod:`slimq.graph.passes.fold_input_affine` leaves in front of a padded convolution) goes into
the grids instead of running as float ops: ``a > 0`` divides QLinearMul's output scale, and ``c`` becomes a
zero-point offset ``k = c / s_y``. That is exact where ``c`` lies on the output grid, which the plan arranges
for tensors computed as ``x + c`` (:func:`slimq.core.qmath.grid_through`); elsewhere the tail stays float.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from slimq.core.ops import is_dequantize, is_quantize
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass
from slimq.graph.passes.common import const_array

_ONNX = ("", "ai.onnx")
GRID = 255  # HardSigmoid's values 0..1 on a uint8 grid of 1/255
ON_GRID = 1e-3  # a constant within this many steps of a grid point is on the grid


def _per_tensor_uint8(node: ir.Node) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor uint8 Q/DQ node, else None."""
    s = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    z = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if s is None or z is None or s.size != 1 or z.size != 1 or z.dtype != np.uint8:
        return None
    return float(s.reshape(())), int(z.reshape(()))


def _scalar_operand(node: ir.Node) -> float | None:
    """The scalar constant of a binary Mul/Add with one constant input, else None."""
    if len(node.inputs) != 2:
        return None
    for v in node.inputs:
        arr = const_array(v)
        if v is not None and arr is not None and arr.size == 1 and v.producer() is None:
            return float(arr.reshape(()))
    return None


def _tail(value: ir.Value) -> tuple[list[ir.Node], float, float, ir.Value] | str:
    """The scalar ``Mul(a)``/``Add(c)`` chain read from `value` up to a QuantizeLinear: (nodes, a, c, the
    value the QuantizeLinear reads), or why not."""
    nodes: list[ir.Node] = []
    a, c = 1.0, 0.0
    while True:
        uses = list(value.uses())
        if len(uses) != 1 or value.is_graph_output():
            return "output is read by more than one node"
        node = uses[0].node
        k = _scalar_operand(node) if node.op_type in ("Mul", "Add") and node.domain in _ONNX else None
        if k is None:
            return nodes, a, c, value
        if node.op_type == "Mul":
            if k <= 0 or c != 0.0:
                return "scalar Mul is not positive or follows an Add"
            a *= k
        else:
            c += k
        nodes.append(node)
        value = node.outputs[0]


def _site(n: ir.Node) -> tuple[ir.Node, ir.Node, list[ir.Node], float, float] | str:
    """(the DequantizeLinear feeding HardSwish `n`, the QuantizeLinear after it and its scalar tail, a, c),
    or why not."""
    x = n.inputs[0]
    dq = x.producer() if x is not None else None
    if dq is None or not is_dequantize(dq.op_type, dq.domain) or _per_tensor_uint8(dq) is None:
        return "input is not a per-tensor uint8 DequantizeLinear"
    tail = _tail(n.outputs[0])
    if isinstance(tail, str):
        return tail
    nodes, a, c, value = tail
    q = next(iter(value.uses())).node
    if not is_quantize(q.op_type, q.domain) or (params := _per_tensor_uint8(q)) is None:
        return "output is not quantized per tensor to uint8"
    k = round(c / params[0])
    if abs(c / params[0] - k) > ON_GRID or not 0 <= params[1] + k <= 255:
        return "the constant added after it is not on the output grid"
    return dq, q, nodes, a, c


class Int8HardSwishPass(RewritePass):
    """Rewrite DequantizeLinear -> HardSwish -> QuantizeLinear (uint8, per tensor) as QLinearAdd + QLinearMul."""

    def rewrite(self, model: ir.Model) -> int:
        b, done = GraphBuilder(model.graph), 0
        for n in [n for n in model.graph if n.op_type == "HardSwish" and n.domain in _ONNX]:
            site = _site(n)
            if isinstance(site, str):
                self.not_fired(node_name(n), site)
                continue
            product = _replace(b, n, site[0])
            if site[2]:
                _absorb_tail(b, product, *site[1:])
            done += 1
        if done:
            model.graph.sort()  # the new Q/DQ nodes were appended
        return done


def _replace(b: GraphBuilder, n: ir.Node, dq: ir.Node) -> ir.Value:
    """The HardSwish `n` reading `dq` becomes Add (the gate) + Mul between uint8 Q/DQ pairs."""
    scale, zero = _per_tensor_uint8(dq)  # type: ignore[misc]  # checked by _site
    base, alpha, beta = node_name(n), 1.0 / 6.0, 0.5
    ints = dq.inputs[0]
    assert ints is not None
    zp = b.initializer(f"{base}.zp", np.array(zero, np.uint8))
    affine = b.dequantize(ints, b.initializer(f"{base}.alpha_scale", np.array(scale * alpha, np.float32)), zp,
                          f"{base}_alpha")
    offset = b.dequantize(b.initializer(f"{base}.beta_q", np.array(GRID, np.uint8)),
                          b.initializer(f"{base}.beta_scale", np.array(beta / GRID, np.float32)),
                          b.initializer(f"{base}.beta_zp", np.array(0, np.uint8)), f"{base}_beta")
    total = b.node("Add", [affine, offset], base=base, after=n).outputs[0]
    grid_s = b.initializer(f"{base}.grid_scale", np.array(1.0 / GRID, np.float32))
    grid_z = b.initializer(f"{base}.grid_zp", np.array(0, np.uint8))
    gate = b.qdq(total, grid_s, grid_z, f"{base}_gate")
    product = b.node("Mul", [dq.outputs[0], gate], base=base, name=base).outputs[0]
    b.replace_uses(n.outputs[0], product, take_name=True)
    b.graph.remove(n, safe=True)  # the QuantizeLinear after it now reads the product: QLinearMul's output
    return product


def _absorb_tail(b: GraphBuilder, product: ir.Value, q: ir.Node, tail: list[ir.Node], a: float, c: float) -> None:
    """Fold the scalar tail ``a * y + c`` into `q`, which now quantizes QLinearMul's product: scale / a, zero
    point + c / scale. Its readers keep the grid they had."""
    scale, zero = _per_tensor_uint8(q)  # type: ignore[misc]  # checked by _site
    base = node_name(q)
    q.replace_input_with(0, product)
    q.replace_input_with(1, b.initializer(f"{base}.tail_scale", np.array(scale / a, np.float32)))
    q.replace_input_with(2, b.initializer(f"{base}.tail_zp", np.array(zero + round(c / scale), np.uint8)))
    for node in reversed(tail):
        b.graph.remove(node, safe=True)


def int8_hardswish(model: ir.Model) -> int:
    """Run :class:`Int8HardSwishPass` in place; the number of HardSwish nodes rewritten."""
    result = Int8HardSwishPass()(model)
    return getattr(result, "count", int(result.modified))
