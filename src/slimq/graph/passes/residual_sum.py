"""The residual Add in front of a LayerNormalization written as Sum: an exact rewrite, kept for speed.

onnxruntime fuses ``Add(x, residual) -> LayerNormalization`` into its contrib SkipLayerNormalization
kernel. With onnxruntime 1.32 on x86 at one thread that kernel was measured about ten times slower than
the separate Add and LayerNormalization it replaces (MiniLM-L6, 128 tokens: 13 fused nodes took 2.6 ms of
a 9.4 ms INT8 run, against 0.6 ms unfused). ``Sum`` of two inputs computes the same values as ``Add``
(both broadcast the same way) and onnxruntime does not fuse it. The result is identical in real numbers,
so the speed guard (:mod:`slimq.runtime.speed`) may try it: it is kept only where the whole model measures
faster on the runtime, so a runtime with a fast fused kernel keeps the Add.
"""

from __future__ import annotations

import onnx_ir as ir

from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass

_ONNX = ("", "ai.onnx")


def _site(node: ir.Node) -> str | None:
    """Why `node` is not a residual Add feeding only a LayerNormalization (None: it is one)."""
    if len(node.inputs) != 2 or any(v is None or v.const_value is not None for v in node.inputs):
        return "not an Add of two activations"
    users = list(node.outputs[0].uses())
    if len(users) != 1 or users[0].node.op_type != "LayerNormalization" or users[0].idx != 0:
        return "its output is not read by one LayerNormalization alone"
    if node.outputs[0].is_graph_output():
        return "its output is a graph output"
    return None


class ResidualSumPass(RewritePass):
    """Rewrite each Add of two activations read only by a LayerNormalization as a two-input Sum."""

    def rewrite(self, model: ir.Model) -> int:
        done = 0
        for n in [n for n in model.graph if n.op_type == "Add" and n.domain in _ONNX]:
            why = _site(n)
            if why is not None:
                self.not_fired(node_name(n), why)
                continue
            n.op_type = "Sum"
            done += 1
        return done


def residual_sum(model: ir.Model) -> int:
    """Run :class:`ResidualSumPass` in place; the number of Adds rewritten."""
    result = ResidualSumPass()(model)
    return getattr(result, "count", int(result.modified))
