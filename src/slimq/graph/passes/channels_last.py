"""Upsampling written channels-last: exact rewrites of nearest Resize and DepthToSpace, kept for speed.

onnxruntime runs the int8 tensors between its QLinear kernels in NHWC and moves data-movement ops there
too, where its uint8 kernels for these two are slow generic loops. Written explicitly as NHWC reshapes,
the work is copies of whole channel vectors, and the explicit transposes at both ends cancel the ones
onnxruntime puts around its NHWC kernels.

**Nearest Resize.**
A ``Resize`` in ``nearest`` mode whose spatial scales are whole numbers ``f`` (and whose coordinate mode maps
output pixel ``i`` to input pixel ``i // f``) only repeats each pixel ``f x f`` times. onnxruntime moves an
int8 Resize between QLinear kernels to NHWC, and its uint8 NHWC nearest Resize is a slow generic loop:
with onnxruntime 1.32 on x86, (1, 120, 120, 96) uint8 upsampled 2x took 3.3 ms against 0.37 ms for the same
repeat written as ``Transpose (NHWC) -> Unsqueeze -> Expand -> Reshape -> Transpose (NCHW)``; the explicit
transposes cancel the ones onnxruntime puts around its NHWC kernels. On PP-OCRv4 det (six such Resizes in the
neck) the INT8 model went from 2.10x to 2.35-2.41x of FP32.

**DepthToSpace** in DCR mode (channel ``(i * k + j) * C + c`` goes to pixel offset ``(i, j)``): in NHWC
that is ``Reshape (N, H, W, k, k, C) -> Transpose (0, 1, 3, 2, 4, 5) -> Reshape (N, H*k, W*k, C)``, moving
C-element blocks: (1, 120, 120, 96) uint8, blocksize 2, took 0.24 ms against 1.1 ms for onnxruntime's
DepthToSpace (before its layout transposes). CRD mode would gather single bytes in NHWC (3.5 ms) and is
left alone; slimq's ConvTranspose rewrite (:mod:`slimq.graph.passes.deconv`) emits DCR.

The values are identical, so the speed guard (:mod:`slimq.runtime.speed`) may try them; each is kept only
where the whole model measures faster.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from slimq.core.ops import is_dequantize
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass, rewrite_count
from slimq.graph.passes.common import const_array

_ONNX = ("", "ai.onnx")
_PROBE = 8  # input length on which a coordinate mode is checked to be a plain repeat
_ROUND = {"floor": math.floor, "ceil": math.ceil,
          "round_prefer_floor": lambda x: math.ceil(x - 0.5), "round_prefer_ceil": lambda x: math.floor(x + 0.5)}
_COORD = {"asymmetric": lambda i, f: i / f, "half_pixel": lambda i, f: (i + 0.5) / f - 0.5,
          "pytorch_half_pixel": lambda i, f: (i + 0.5) / f - 0.5, "tf_half_pixel_for_nn": lambda i, f: (i + 0.5) / f}


def _attr(node: ir.Node, name: str, default: str) -> str:
    return node.attributes[name].as_string() if name in node.attributes else default


def is_repeat(coord: str, nearest: str, factor: int) -> bool:
    """True when ONNX Resize (nearest, this coordinate transformation and rounding mode) maps output pixel
    ``i`` to input pixel ``i // factor`` for every ``i``, checked on a probe length."""
    if coord not in _COORD or nearest not in _ROUND:
        return False
    src = [min(max(_ROUND[nearest](_COORD[coord](i, factor)), 0), _PROBE - 1) for i in range(_PROBE * factor)]
    return src == [i // factor for i in range(_PROBE * factor)]


def _site(node: ir.Node) -> tuple[int, int] | str:
    """The whole (height, width) factors of a 4-D nearest Resize that only repeats pixels, or why not."""
    if _attr(node, "mode", "nearest") != "nearest" or "axes" in node.attributes:
        return "not a nearest Resize over all axes"
    scales = const_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if scales is None or scales.shape != (4,) or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return "no constant 4-D scales"
    if not np.all(scales == np.round(scales)) or not np.all(scales >= 1) or scales[0] != 1 or scales[1] != 1:
        return "scales are not whole spatial factors"
    fh, fw = int(scales[2]), int(scales[3])
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if not all(is_repeat(coord, nearest, f) for f in {fh, fw}):
        return f"{coord} / {nearest} does not map output pixel i to input pixel i // factor"
    return fh, fw


def _nhwc_shape(b: GraphBuilder, node: ir.Node, base: str) -> ir.Value:
    """The NHWC shape of `node`'s NCHW input, read from the integer tensor behind its DequantizeLinear when
    there is one (a Shape of the float tensor would make onnxruntime dequantize all of it)."""
    x = node.inputs[0]
    dq = x.producer() if x is not None else None
    source = dq.inputs[0] if dq is not None and is_dequantize(dq.op_type, dq.domain) else x
    shape = b.node("Shape", [source], base=base, before=node).outputs[0]
    order = b.initializer(f"{base}.nhwc_order", np.array([0, 2, 3, 1], np.int64))
    return b.node("Gather", [shape, order], base=base, before=node).outputs[0]


def _back_to_nchw(b: GraphBuilder, node: ir.Node, nhwc: ir.Value) -> None:
    """Transpose `nhwc` back to NCHW in place of `node`'s output, and remove `node`."""
    back = b.node("Transpose", [nhwc], {"perm": [0, 3, 1, 2]}, base=node_name(node), before=node).outputs[0]
    b.replace_uses(node.outputs[0], back, take_name=True)
    b.graph.remove(node, safe=True)


def _replace(b: GraphBuilder, node: ir.Node, fh: int, fw: int) -> None:
    """``node`` becomes NHWC Unsqueeze -> Expand -> Reshape between two Transposes."""
    base, x = node_name(node), node.inputs[0]
    nhwc = b.node("Transpose", [x], {"perm": [0, 2, 3, 1]}, base=base, before=node).outputs[0]
    shape = _nhwc_shape(b, node, base)
    out_shape = b.node("Mul", [shape, b.initializer(f"{base}.factors", np.array([1, fh, fw, 1], np.int64))],
                       base=base, before=node).outputs[0]
    six = b.node("Unsqueeze", [nhwc, b.initializer(f"{base}.axes", np.array([2, 4], np.int64))],
                 base=base, before=node).outputs[0]
    wide = b.node("Expand", [six, b.initializer(f"{base}.repeat", np.array([1, 1, fh, 1, fw, 1], np.int64))],
                  base=base, before=node).outputs[0]
    _back_to_nchw(b, node, b.node("Reshape", [wide, out_shape], base=base, before=node).outputs[0])


class _ChannelsLastPass(RewritePass):
    """Rewrite every node of ``op_type`` for which ``site`` finds parameters (else logs its reason)."""

    op_type = ""

    def site(self, node: ir.Node) -> tuple[int, ...] | str:
        raise NotImplementedError

    def replace(self, b: GraphBuilder, node: ir.Node, *params: int) -> None:
        raise NotImplementedError

    def rewrite(self, model: ir.Model) -> int:
        b, done = GraphBuilder(model.graph), 0
        for n in [n for n in model.graph if n.op_type == self.op_type and n.domain in _ONNX]:
            site = self.site(n)
            if isinstance(site, str):
                self.not_fired(node_name(n), site)
                continue
            self.replace(b, n, *site)
            done += 1
        return done


class NearestRepeatPass(_ChannelsLastPass):
    """Rewrite each nearest Resize that repeats pixels by whole factors as a channels-last Expand."""

    op_type = "Resize"

    def site(self, node: ir.Node) -> tuple[int, ...] | str:
        return _site(node)

    def replace(self, b: GraphBuilder, node: ir.Node, *params: int) -> None:
        _replace(b, node, *params)


def _block(node: ir.Node) -> int | str:
    """The block size of a DCR DepthToSpace, or why it is not rewritten."""
    mode = _attr(node, "mode", "DCR")
    if mode != "DCR":
        return f"mode {mode}: its channels-last form gathers single elements (slower than DepthToSpace)"
    return node.attributes["blocksize"].as_int() if "blocksize" in node.attributes else "no blocksize"


def _replace_d2s(b: GraphBuilder, node: ir.Node, k: int) -> None:
    """``node`` becomes NHWC Reshape -> Transpose -> Reshape between two Transposes."""
    base, x = node_name(node), node.inputs[0]
    nhwc = b.node("Transpose", [x], {"perm": [0, 2, 3, 1]}, base=base, before=node).outputs[0]
    shape = _nhwc_shape(b, node, base)
    spread = b.node("Mul", [shape, b.initializer(f"{base}.spread", np.array([1, k, k, 1], np.int64))],
                    base=base, before=node).outputs[0]
    out_shape = b.node("Div", [spread, b.initializer(f"{base}.gather", np.array([1, 1, 1, k * k], np.int64))],
                       base=base, before=node).outputs[0]
    six = b.node("Reshape", [nhwc, b.initializer(f"{base}.blocks", np.array([0, 0, 0, k, k, -1], np.int64))],
                 base=base, before=node).outputs[0]
    moved = b.node("Transpose", [six], {"perm": [0, 1, 3, 2, 4, 5]}, base=base, before=node).outputs[0]
    _back_to_nchw(b, node, b.node("Reshape", [moved, out_shape], base=base, before=node).outputs[0])


class DepthToSpaceNHWCPass(_ChannelsLastPass):
    """Rewrite each DCR DepthToSpace as a channels-last block transpose."""

    op_type = "DepthToSpace"

    def site(self, node: ir.Node) -> tuple[int, ...] | str:
        k = _block(node)
        return k if isinstance(k, str) else (k,)

    def replace(self, b: GraphBuilder, node: ir.Node, *params: int) -> None:
        _replace_d2s(b, node, *params)


def nearest_repeat(model: ir.Model) -> int:
    """Run :class:`NearestRepeatPass` in place; the number of Resizes rewritten."""
    return rewrite_count(NearestRepeatPass(), model)


def depth_to_space_nhwc(model: ir.Model) -> int:
    """Run :class:`DepthToSpaceNHWCPass` in place; the number of DepthToSpace nodes rewritten."""
    return rewrite_count(DepthToSpaceNHWCPass(), model)
