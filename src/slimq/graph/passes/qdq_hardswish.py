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
a 1/255 grid, which moves ``y`` by at most 3/510 (only where |x| < 3; elsewhere the gate is exactly 0 or 1),
a fraction of the output's own quantization step for the usual ranges. On PP-OCRv4 rec the CER on 64
rendered lines was the same with and without it (1.94 %). slimq applies it as a speed candidate
(:mod:`slimq.static.speed`): it is kept only where the whole model measures faster, and the report's
agreement check covers it.
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


def _per_tensor_uint8(node: ir.Node) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor uint8 Q/DQ node, else None."""
    s = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    z = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if s is None or z is None or s.size != 1 or z.size != 1 or z.dtype != np.uint8:
        return None
    return float(s.reshape(())), int(z.reshape(()))


def _site(n: ir.Node) -> tuple[ir.Node, ir.Node] | str:
    """(the DequantizeLinear feeding HardSwish `n`, the QuantizeLinear reading it), or why not."""
    x = n.inputs[0]
    dq = x.producer() if x is not None else None
    if dq is None or not is_dequantize(dq.op_type, dq.domain) or _per_tensor_uint8(dq) is None:
        return "input is not a per-tensor uint8 DequantizeLinear"
    uses = list(n.outputs[0].uses())
    if len(uses) != 1 or n.outputs[0].is_graph_output():
        return "output is read by more than one node"
    q = uses[0].node
    if not is_quantize(q.op_type, q.domain) or _per_tensor_uint8(q) is None:
        return "output is not quantized per tensor to uint8"
    return dq, q


class Int8HardSwishPass(RewritePass):
    """Rewrite DequantizeLinear -> HardSwish -> QuantizeLinear (uint8, per tensor) as QLinearAdd + QLinearMul."""

    def rewrite(self, model: ir.Model) -> int:
        b, done = GraphBuilder(model.graph), 0
        for n in [n for n in model.graph if n.op_type == "HardSwish" and n.domain in _ONNX]:
            site = _site(n)
            if isinstance(site, str):
                self.not_fired(node_name(n), site)
                continue
            _replace(b, n, site[0])
            done += 1
        if done:
            model.graph.sort()  # the new Q/DQ nodes were appended
        return done


def _replace(b: GraphBuilder, n: ir.Node, dq: ir.Node) -> None:
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


def int8_hardswish(model: ir.Model) -> int:
    """Run :class:`Int8HardSwishPass` in place; the number of HardSwish nodes rewritten."""
    result = Int8HardSwishPass()(model)
    return getattr(result, "count", int(result.modified))
