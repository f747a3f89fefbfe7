"""The one transform that edits the graph: insert Q/DQ as a finished plan says.

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
from slimq.graph.plan import QuantPlan, WeightEntry


class UniqueNames:
    """Fresh, unique value/node names."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used = {v.name for v in graph.inputs} | set(graph.initializers)
        self.used |= {o.name for n in graph for o in n.outputs} | {n.name for n in graph if n.name}

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


class _Inserter:
    def __init__(self, model: ir.Model, plan: QuantPlan) -> None:
        self.graph, self.plan = model.graph, plan
        self.names = UniqueNames(self.graph)
        self.values: dict[str, ir.Value] = {v.name: v for v in self.graph.inputs}
        self.values.update(self.graph.initializers)
        for n in self.graph:
            self.values.update({o.name: o for o in n.outputs})
        self.nodes = {(n.name or n.outputs[0].name): n for n in self.graph}
        self.params_cache: dict[str, tuple[ir.Value, ir.Value]] = {}
        self.weight_dq: dict[tuple[str, int | None, str], ir.Value] = {}
        self.weight_scales: dict[tuple, np.ndarray] = {}

    def const(self, base: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
        name = self.names.fresh(base)
        v = ir.Value(name=name, const_value=ir.tensor(array, dtype=dtype, name=name))
        self.graph.register_initializer(v)
        return v

    def dq(self, q: ir.Value, scale: ir.Value, zp: ir.Value, axis: int | None, base: str) -> ir.Value:
        attrs = {"axis": axis} if axis is not None else {}
        out = ir.Value(name=self.names.fresh(f"{base}_dq"))
        self.graph.append(ir.node("DequantizeLinear", [q, scale, zp], attrs, outputs=[out],
                                  name=self.names.fresh(f"{base}_DequantizeLinear")))
        return out

    # -- weights and biases ------------------------------------------------
    def weight(self, e: WeightEntry) -> None:
        key = (e.tensor, e.axis, e.qtype.name)
        if key not in self.weight_dq:
            w = self.values[e.tensor].const_value.numpy()
            if e.symmetric:
                qt = qmath.quantize_weight(w, e.qtype, e.axis)
            else:
                s, z = qmath.scale_zero_point(w.min(initial=0.0), w.max(initial=0.0), e.qtype, False)
                qt = qmath.QuantizedTensor(qmath.quantize(w, s, z, e.qtype), s, z, None, e.qtype)
            q = self.const(f"{e.tensor}_quantized", qt.data)
            s = self.const(f"{e.tensor}_scale", qt.scale)
            z = self.const(f"{e.tensor}_zero_point", qt.zero_point)
            self.weight_dq[key] = self.dq(q, s, z, qt.axis, e.tensor)
            self.weight_scales[key] = qt.scale
        self.weight_scales[(e.node, e.tensor)] = self.weight_scales[key]  # shared weights: every reader
        self.nodes[e.node].replace_input_with(e.input_index, self.weight_dq[key])

    def bias(self, node_name: str, index: int, tensor: str, activation: str, weight: str) -> None:
        root = self.plan.activations[activation]
        s_in = self.plan.params[root].scale
        s_w = self.weight_scales[(node_name, weight)]
        b = self.values[tensor].const_value.numpy()
        qt = qmath.quantize_bias(b, s_in, s_w)
        q = self.const(f"{tensor}_quantized", qt.data)
        s = self.const(f"{tensor}_scale", qt.scale)
        z = self.const(f"{tensor}_zero_point", qt.zero_point)
        self.nodes[node_name].replace_input_with(index, self.dq(q, s, z, qt.axis, tensor))

    # -- activations -------------------------------------------------------
    def scale_zp(self, root: str) -> tuple[ir.Value, ir.Value]:
        if root not in self.params_cache:
            p = self.plan.params[root]
            self.params_cache[root] = (self.const(f"{root}_scale", np.asarray(p.scale, np.float32)),
                                       self.const(f"{root}_zero_point", np.asarray(p.zero_point, p.qtype.np_dtype)))
        return self.params_cache[root]

    def activation(self, tensor: str, root: str) -> None:
        v = self.values[tensor]
        uses = list(v.uses())
        if not uses and not v.is_graph_output():
            return
        scale, zp = self.scale_zp(root)
        q = ir.Value(name=self.names.fresh(f"{tensor}_q"))
        self.graph.append(ir.node("QuantizeLinear", [v, scale, zp], outputs=[q],
                                  name=self.names.fresh(f"{tensor}_QuantizeLinear")))
        out = self.dq(q, scale, zp, None, tensor)
        for use in uses:
            use.node.replace_input_with(use.idx, out)
        if v.is_graph_output():
            self._take_over_output(v, out)

    def _take_over_output(self, v: ir.Value, out: ir.Value) -> None:
        """Graph outputs keep their names: the DQ output takes the name, the original is renamed."""
        name = v.name
        v.name = self.names.fresh(f"{name}_prequant")
        out.name = name
        out.type, out.shape = v.type, v.shape
        outputs = self.graph.outputs
        for i, o in enumerate(outputs):
            if o is v:
                outputs[i] = out


def insert_qdq(model: ir.Model, plan: QuantPlan) -> None:
    """Apply a calibrated plan to `model` in place (topologically sorted afterwards)."""
    if set(plan.roots) - set(plan.params):
        raise ValueError("insert_qdq needs a calibrated plan (QuantPlan.with_ranges)")
    ins = _Inserter(model, plan)
    for e in plan.weights:
        ins.weight(e)
    for b in plan.biases:
        ins.bias(b.node, b.input_index, b.tensor, b.activation, b.weight)
    for tensor, root in plan.activations.items():
        ins.activation(tensor, root)
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
