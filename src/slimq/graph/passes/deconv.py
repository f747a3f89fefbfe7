"""ConvTranspose with kernel = stride and no padding, rewritten exactly as a 1x1 Conv + DepthToSpace.

Such a ConvTranspose (the 2x upsampling of FPN-style heads: PP-OCRv4 det has two, kernel = stride = 2)
writes every input pixel into its own k x k output block: ``y[co, k*h+i, k*w+j] = sum_ci x[ci, h, w] *
W[ci, co, i, j] + b[co]``. That is a 1x1 Conv to ``Cout*k*k`` channels (channel ``(i*k + j)*Cout + co``)
followed by DepthToSpace (blocksize k, mode DCR: channels-last, it moves whole channel vectors, see
:mod:`slimq.graph.passes.channels_last`). onnxruntime's CPU provider has no int8 ConvTranspose, but
it runs the Conv as QLinearConv and the DepthToSpace on uint8, so the upsampling becomes int8 as well.

Per-channel constants after the ConvTranspose (a bias ``Add``, a ``Mul``, an inference BatchNormalization:
paddle2onnx emits all three) are folded into it first, and a Relu after the DepthToSpace moves in front
of it (elementwise ops commute with a permutation), so the Conv's int8 output carries the activation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass
from slimq.graph.passes.common import const_array

_ONNX = ("", "ai.onnx")


def _sole_use(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    return uses[0].node if len(uses) == 1 and not v.is_graph_output() else None


def _channel_vector(c: np.ndarray | None, cout: int) -> np.ndarray | None:
    """A constant that broadcasts along axis 1 of an NCHW tensor only, as a per-channel vector."""
    if c is None:
        return None
    if c.size == 1:
        return np.full(cout, float(c.reshape(())))
    shape = (1,) * (4 - c.ndim) + c.shape if c.ndim <= 4 else ()
    return c.reshape(cout).astype(np.float64) if len(shape) == 4 and shape[1] == cout and c.size == cout else None


def _affine(node: ir.Node, x: ir.Value, cout: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of a Mul/Add by a constant or an inference BatchNormalization reading x."""
    if node.domain not in _ONNX:
        return None
    if node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
        vec = _channel_vector(const_array(other), cout)
        if vec is None:
            return None
        return (vec, np.zeros(cout)) if node.op_type == "Mul" else (np.ones(cout), vec)
    if node.op_type == "BatchNormalization" and node.inputs[0] is x and len(node.outputs) == 1:
        p = [const_array(v) for v in node.inputs[1:5]]
        if any(a is None for a in p):
            return None
        scale, beta, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in p)
        eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
        k = scale / np.sqrt(var + eps)
        return k, beta - mean * k
    return None


def _fold_following(b: GraphBuilder, n: ir.Node, w: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the per-channel affine ops that follow ConvTranspose `n` into (w, bias); removes them."""
    w, bias = w.astype(np.float64), bias.astype(np.float64)
    while (nxt := _sole_use(n.outputs[0])) is not None and (ab := _affine(nxt, n.outputs[0], w.shape[1])):
        scale, shift = ab
        w = w * scale.reshape(1, -1, 1, 1)
        bias = bias * scale + shift
        b.replace_uses(nxt.outputs[0], n.outputs[0])
        b.graph.remove(nxt, safe=True)
    return w, bias


def _ints(n: ir.Node, name: str, default: list[int]) -> list[int]:
    return list(n.attributes[name].as_ints()) if name in n.attributes else default


def _block(n: ir.Node) -> int | str:
    """The block size k of a rewritable ConvTranspose, or why it is not rewritable."""
    w = const_array(n.inputs[1]) if len(n.inputs) > 1 else None
    if w is None or w.ndim != 4:
        return "weight is not a constant 4-D tensor"
    kernel = list(w.shape[2:])
    if (n.attributes["group"].as_int() if "group" in n.attributes else 1) != 1:
        return "grouped"
    if kernel[0] != kernel[1] or _ints(n, "strides", [1, 1]) != kernel:
        return f"kernel {kernel} is not square or differs from strides {_ints(n, 'strides', [1, 1])}"
    if any(_ints(n, "pads", [0, 0, 0, 0])) or any(_ints(n, "output_padding", [0, 0])):
        return "padded"
    if _ints(n, "dilations", [1, 1]) != [1, 1] or "output_shape" in n.attributes:
        return "dilated or with an explicit output_shape"
    auto_pad = n.attributes["auto_pad"].as_string() if "auto_pad" in n.attributes else "NOTSET"
    if auto_pad not in ("NOTSET", "VALID"):
        return f"auto_pad {auto_pad}"
    return kernel[0]


class ConvTransposeToDepthToSpacePass(RewritePass):
    """Rewrite every ConvTranspose with kernel = stride, no padding, group 1 as Conv 1x1 + DepthToSpace."""

    def rewrite(self, model: ir.Model) -> int:
        b, done = GraphBuilder(model.graph), 0
        for n in [n for n in model.graph if n.op_type == "ConvTranspose" and n.domain in _ONNX]:
            k = _block(n)
            if isinstance(k, str):
                self.not_fired(node_name(n), k)
                continue
            _replace(b, n, k)
            done += 1
        if done:
            RemoveUnusedNodesPass()(model)
        return done


def _replace(b: GraphBuilder, n: ir.Node, k: int) -> None:
    w0 = const_array(n.inputs[1])
    assert w0 is not None  # checked by _block
    cin, cout = w0.shape[0], w0.shape[1]
    given = const_array(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
    bias0 = np.zeros(cout) if given is None else given
    w, bias = _fold_following(b, n, w0, bias0)
    w2 = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * cout, cin, 1, 1)).astype(w0.dtype)
    base = node_name(n)
    inputs = [n.inputs[0], b.initializer(f"{base}.weight_1x1", w2),
              b.initializer(f"{base}.bias_1x1", np.tile(bias, k * k).astype(w0.dtype))]
    last = b.node("Conv", inputs, {"kernel_shape": [1, 1]}, base=base, name=base, after=n)
    out = n.outputs[0]
    relu = _sole_use(out)
    if relu is not None and relu.op_type == "Relu" and relu.domain in _ONNX:  # the activation before the permutation
        last = b.node("Relu", [last.outputs[0]], base=base, after=last)
        out = relu.outputs[0]
    d2s = b.node("DepthToSpace", [last.outputs[0]], {"blocksize": k, "mode": "DCR"}, base=base, after=last)
    b.replace_uses(out, d2s.outputs[0], take_name=True)
    if relu is not None and out is not n.outputs[0]:
        b.graph.remove(relu, safe=False)
    b.graph.remove(n, safe=False)


def convtranspose_to_depth_to_space(model: ir.Model) -> int:
    """Run the rewrite in place; the number of ConvTransposes rewritten."""
    result = ConvTransposeToDepthToSpacePass()(model)
    return getattr(result, "count", int(result.modified))
