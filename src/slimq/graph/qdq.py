"""Insert Q/DQ as a finished plan says (an onnx-ir pass, :class:`InsertQDQPass`).

Weights become integer initializers followed by DequantizeLinear (the file
shrinks about 4x); activations get a QuantizeLinear -> DequantizeLinear pair
after their producer; tensors tied by scale-sharing ops use one set of
scale/zero-point initializers. The pass mutates the model in place.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from slimq.core import qmath
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass
from slimq.graph.plan import BiasEntry, QuantPlan, WeightEntry
from slimq.graph.values import const_of, value_name


class _Inserter:
    def __init__(self, model: ir.Model, plan: QuantPlan) -> None:
        self.graph, self.plan = model.graph, plan
        self.b = GraphBuilder(self.graph)
        self.values: dict[str, ir.Value] = {value_name(v): v for v in self.graph.inputs}
        self.values.update(self.graph.initializers)
        for n in self.graph:
            self.values.update({value_name(o): o for o in n.outputs})
        self.nodes = {node_name(n): n for n in self.graph}
        self.params_cache: dict[str, tuple[ir.Value, ir.Value]] = {}
        self.weight_dq: dict[tuple[str, int | None, str], ir.Value] = {}
        self.weight_scales: dict[tuple, np.ndarray] = {}

    def _dequantized(self, base: str, qt: qmath.QuantizedTensor) -> ir.Value:
        """Initializers for `qt` and the DequantizeLinear that reads them."""
        q = self.b.initializer(f"{base}_quantized", qt.data)
        s = self.b.initializer(f"{base}_scale", qt.scale)
        z = self.b.initializer(f"{base}_zero_point", qt.zero_point)
        return self.b.dequantize(q, s, z, base, axis=qt.axis)

    # -- weights and biases ------------------------------------------------
    def weight(self, e: WeightEntry) -> None:
        key = (e.tensor, e.axis, e.qtype.name)
        if key not in self.weight_dq:
            w = const_of(self.values[e.tensor])
            if e.symmetric:
                qt = qmath.quantize_weight(w, e.qtype, e.axis)
            else:
                s, z = qmath.scale_zero_point(w.min(initial=0.0), w.max(initial=0.0), e.qtype, False)
                qt = qmath.QuantizedTensor(qmath.quantize(w, s, z, e.qtype), s, z, None, e.qtype)
            self.weight_dq[key] = self._dequantized(e.tensor, qt)
            self.weight_scales[key] = qt.scale
        self.weight_scales[(e.node, e.tensor)] = self.weight_scales[key]  # shared weights: every reader
        self.nodes[e.node].replace_input_with(e.input_index, self.weight_dq[key])

    def bias(self, b: BiasEntry) -> None:
        s_in = self.plan.params[self.plan.activations[b.activation]].scale
        s_w = self.weight_scales[(b.node, b.weight)]
        qt = qmath.quantize_bias(const_of(self.values[b.tensor]), s_in, s_w)
        self.nodes[b.node].replace_input_with(b.input_index, self._dequantized(b.tensor, qt))

    # -- activations -------------------------------------------------------
    def scale_zp(self, root: str) -> tuple[ir.Value, ir.Value]:
        if root not in self.params_cache:
            p = self.plan.params[root]
            self.params_cache[root] = (self.b.initializer(f"{root}_scale", np.asarray(p.scale, np.float32)),
                                       self.b.initializer(f"{root}_zero_point",
                                                          np.asarray(p.zero_point, p.qtype.np_dtype)))
        return self.params_cache[root]

    def activation(self, tensor: str, root: str) -> None:
        """A Q/DQ pair after `tensor`; its readers (and a graph output of that name) take the DQ output."""
        v = self.values[tensor]
        uses = list(v.uses())
        if not uses and not v.is_graph_output():
            return
        out = self.b.qdq(v, *self.scale_zp(root), tensor)
        self.b.replace_uses(v, out, readers=uses, rename="prequant")


class InsertQDQPass(RewritePass):
    """Insert Q/DQ as a calibrated plan says (topologically sorted afterwards); counts the tensors quantized."""

    def __init__(self, plan: QuantPlan) -> None:
        super().__init__()
        if set(plan.roots) - set(plan.params):
            raise ValueError("insert_qdq needs a calibrated plan (QuantPlan.with_ranges)")
        self.plan = plan

    def rewrite(self, model: ir.Model) -> int:
        ins = _Inserter(model, self.plan)
        for e in self.plan.weights:
            ins.weight(e)
        for b in self.plan.biases:
            ins.bias(b)
        for tensor, root in self.plan.activations.items():
            ins.activation(tensor, root)
        RemoveUnusedNodesPass()(model)
        TopologicalSortPass()(model)
        return len(self.plan.weights) + len(self.plan.biases) + len(self.plan.activations)


def insert_qdq(model: ir.Model, plan: QuantPlan) -> None:
    """Apply a calibrated plan to `model` in place (topologically sorted afterwards)."""
    InsertQDQPass(plan)(model)
