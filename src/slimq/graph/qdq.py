"""Insert Q/DQ as a finished plan says (an onnx-ir pass, :class:`InsertQDQPass`).

Weights become integer initializers followed by DequantizeLinear (the file
shrinks about 4x): rounded to nearest, or the integers a weight-rounding method
learned (``weights=``, e.g. AdaRound's, in the same format: the entry's integer
type, axis and symmetric scales); activations get a QuantizeLinear -> DequantizeLinear pair
after their producer; tensors tied by scale-sharing ops use one set of
scale/zero-point initializers. The pass mutates the model in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from slimq.core import qmath
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass
from slimq.graph.plan import BiasEntry, QuantPlan, WeightEntry
from slimq.graph.values import const_of, value_name


def check_precomputed(e: WeightEntry, qt: qmath.QuantizedTensor, w: np.ndarray) -> None:
    """Precomputed integers must be in the entry's format: its integer type and axis, w's shape, one scale per
    channel (or one), zero points 0, values within the type's range."""
    n_scales = 1 if e.axis is None else w.shape[e.axis]
    ok = (qt.qtype == e.qtype and qt.axis == e.axis and e.symmetric and qt.data.shape == w.shape
          and np.size(qt.scale) == n_scales and not np.any(qt.zero_point)
          and qt.data.min(initial=0) >= e.qtype.qmin and qt.data.max(initial=0) <= e.qtype.qmax)
    if not ok:
        raise ValueError(f"precomputed weight {e.tensor} ({qt.qtype.name}, axis {qt.axis}, shape {qt.data.shape}, "
                         f"{np.size(qt.scale)} scales) does not match its plan entry ({e.qtype.name}, axis {e.axis}, "
                         f"shape {w.shape}, symmetric {e.symmetric})")


class _Inserter:
    def __init__(self, model: ir.Model, plan: QuantPlan,
                 precomputed: Mapping[str, qmath.QuantizedTensor] | None = None) -> None:
        self.graph, self.plan = model.graph, plan
        self.precomputed = dict(precomputed or {})
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
            if e.tensor in self.precomputed:
                qt = self.precomputed[e.tensor]
                check_precomputed(e, qt, w)
            elif e.symmetric:
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
    """Insert Q/DQ as a calibrated plan says (topologically sorted afterwards); counts the tensors quantized.

    `weights`: integers to store for some weight tensors instead of rounding them to nearest (a learned
    rounding), in the format of their plan entries (checked)."""

    def __init__(self, plan: QuantPlan, weights: Mapping[str, qmath.QuantizedTensor] | None = None) -> None:
        super().__init__()
        if set(plan.roots) - set(plan.params):
            raise ValueError("insert_qdq needs a calibrated plan (QuantPlan.with_ranges)")
        self.plan, self.weights = plan, dict(weights or {})

    def rewrite(self, model: ir.Model) -> int:
        ins = _Inserter(model, self.plan, self.weights)
        for e in self.plan.weights:
            ins.weight(e)
        for b in self.plan.biases:
            ins.bias(b)
        for tensor, root in self.plan.activations.items():
            ins.activation(tensor, root)
        RemoveUnusedNodesPass()(model)
        TopologicalSortPass()(model)
        return len(self.plan.weights) + len(self.plan.biases) + len(self.plan.activations)


def insert_qdq(model: ir.Model, plan: QuantPlan, weights: Mapping[str, qmath.QuantizedTensor] | None = None) -> None:
    """Apply a calibrated plan to `model` in place (topologically sorted afterwards); `weights`: precomputed
    integers by weight tensor (see :class:`InsertQDQPass`)."""
    InsertQDQPass(plan, weights)(model)
