"""The quantization plan: which tensors get which quantization, decided as data.

`build_plan` reads the graph and the op table and returns a :class:`QuantPlan`
(activation tensors with their scale-sharing ties, weights, biases, float
nodes with reasons). Calibration fills in activation ranges with
`QuantPlan.with_ranges`. `slimq.graph.qdq.insert_qdq` then edits the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from slimq.core import qmath
from slimq.core.config import SkipSpec
from slimq.core.ops import (
    ALL_INPUTS,
    PASSTHROUGH_DATA_INPUT,
    Bounds,
    OpInfo,
    Role,
    input_saturation,
    op_info,
)
from slimq.core.targets import TargetRules
from slimq.graph.names import node_name
from slimq.graph.values import const_of, value_name

_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


@dataclass(frozen=True)
class ActivationParams:
    scale: np.ndarray  # float32 scalar
    zero_point: np.ndarray  # scalar of the activation dtype
    qtype: qmath.QType
    rmin: float
    rmax: float


@dataclass(frozen=True)
class WeightEntry:
    node: str
    input_index: int
    tensor: str
    axis: int | None
    qtype: qmath.QType
    symmetric: bool = True


@dataclass(frozen=True)
class BiasEntry:
    node: str
    input_index: int
    tensor: str
    activation: str  # the node's quantized activation input
    weight: str


@dataclass(frozen=True)
class FloatNode:
    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class QuantPlan:
    rules: TargetRules
    activations: dict[str, str]  # tensor -> root tensor whose calibrated range it shares
    weights: tuple[WeightEntry, ...]
    biases: tuple[BiasEntry, ...]
    quantized_nodes: dict[str, str]  # node name -> op type
    float_nodes: tuple[FloatNode, ...]
    params: dict[str, ActivationParams] = field(default_factory=dict)  # root -> params
    # root -> interval outside which no reader's output changes (e.g. HardSwish below -3):
    # calibration clips to it, so the integer grid is spent where it matters
    bounds: dict[str, Bounds] = field(default_factory=dict)
    # root -> scalar constant c of an ``x + c`` that produced it: its grid is chosen to hold c (qmath.grid_through),
    # so the add can later move into an integer zero point exactly (slimq.graph.passes.qdq_hardswish)
    offsets: dict[str, float] = field(default_factory=dict)

    @property
    def roots(self) -> list[str]:
        return sorted(set(self.activations.values()))

    def with_ranges(self, ranges: dict[str, tuple[float, float]]) -> "QuantPlan":
        """Turn calibrated ranges of the root tensors into scales and zero points."""
        qt, sym = self.rules.activation_qtype, self.rules.activation_symmetric
        params = {}
        for root in self.roots:
            lo, hi = ranges[root]
            s, z = qmath.scale_zero_point(lo, hi, qt, sym)
            snapped = qmath.grid_through(self.offsets[root], float(s)) if root in self.offsets and not sym else None
            if snapped is not None:
                s = np.asarray(snapped, np.float32)
                z = np.asarray(np.clip(np.round(qt.qmin - min(lo, 0.0) / snapped), qt.qmin, qt.qmax), qt.np_dtype)
            params[root] = ActivationParams(s, z, qt, float(lo), float(hi))
        return replace(self, params=params)

    def summary(self) -> dict:
        return {
            "target": self.rules.description,
            "quantized_nodes": len(self.quantized_nodes),
            "activation_tensors": len(self.activations),
            "calibrated_tensors": len(self.roots),
            "weights": len(self.weights),
            "float_nodes": len(self.float_nodes),
        }


def _is_float(v: ir.Value | None) -> bool:
    return v is not None and (v.dtype is None or v.dtype in _FLOATS)


def _is_const(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None


def _act_indices(node: ir.Node, info: OpInfo) -> list[int]:
    idx = range(len(node.inputs)) if info.act_inputs == ALL_INPUTS else info.act_inputs
    return [i for i in idx if i < len(node.inputs) and node.inputs[i] is not None]


def _has_weight(node: ir.Node, info: OpInfo) -> bool:
    return info.weight is not None and info.weight.input < len(node.inputs) and _is_const(node.inputs[info.weight.input])


def _info(node: ir.Node) -> OpInfo:
    return op_info(node.op_type, node.domain)


def _const_operand_affine(node: ir.Node, info: OpInfo) -> bool:
    """An elementwise affine step with a constant operand (x * c, x + c)."""
    return info.constant_affine and any(_is_const(v) for v in node.inputs)


class _Planner:
    """Builds one plan; holds the graph-walk state so the steps stay small."""

    def __init__(self, graph: ir.Graph, rules: TargetRules, skip: SkipSpec, op_types: tuple[str, ...] | None):
        self.graph, self.rules, self.skip, self.op_types = graph, rules, skip, op_types
        self.nodes = list(graph)
        self.reasons: dict[str, str] = {}
        self.eligible: set[str] = set()
        self.acts: dict[str, str] = {}
        self.quantized: dict[str, str] = {}
        self.weights: list[WeightEntry] = []
        self.biases: list[BiasEntry] = []

    def run(self) -> QuantPlan:
        for n in self.nodes:
            self._classify(n)
        for n in reversed(self.nodes):
            self._drop_float_fed_elementwise(n)
        for n in self.nodes:
            if self._name(n) in self.eligible:
                self._plan_compute(n)
        for n in self.nodes:
            self._plan_passthrough(n)
        floats = tuple(FloatNode(self._name(n), n.op_type, self._reason(n)) for n in self.nodes
                       if self._name(n) not in self.quantized and self._on_data_path(n))
        return QuantPlan(self.rules, dict(self.acts), tuple(self.weights), tuple(self.biases),
                         dict(self.quantized), floats, bounds=self._saturation_bounds(), offsets=self._offsets())

    @staticmethod
    def _name(n: ir.Node) -> str:
        return node_name(n)

    @staticmethod
    def _on_data_path(n: ir.Node) -> bool:
        """False for shape/index arithmetic, which has no float activation input."""
        return any(_is_float(v) and not _is_const(v) for v in n.inputs)

    def _reason(self, n: ir.Node) -> str:
        role = _info(n).role
        default = {Role.FUSED_ACTIVATION: "not directly after a quantized op; runs in float",
                   Role.PASSTHROUGH: "its input is not quantized"}.get(role, "not quantized")
        return self.reasons.get(self._name(n), default)

    def _classify(self, n: ir.Node) -> None:
        name, info = self._name(n), _info(n)
        if not self._on_data_path(n):
            return
        reason = self._float_reason(n, info)
        if reason:
            self.reasons[name] = reason
        elif info.role is Role.COMPUTE:
            self.eligible.add(name)

    def _float_reason(self, n: ir.Node, info: OpInfo) -> str | None:
        if self.skip.matches(self._name(n), n.op_type):
            return "skipped by configuration"
        if info.role is Role.FLOAT:
            return info.note
        target_reason = dict(self.rules.float_ops).get(n.op_type)
        if target_reason:
            return f"{self.rules.name}: {target_reason}"
        if self.rules.float_constant_affine and _const_operand_affine(n, info):
            return f"{self.rules.name}: Add/Mul with a constant stays float (exact; int8 would add a requantization)"
        if self.op_types is not None and n.op_type not in self.op_types and info.role is Role.COMPUTE:
            return "op type not selected for quantization"
        return self._compute_reason(n, info) if info.role is Role.COMPUTE else None

    def _compute_reason(self, n: ir.Node, info: OpInfo) -> str | None:
        """Why a compute op's inputs keep it float (None: they do not)."""
        if any(not _is_float(n.inputs[i]) for i in _act_indices(n, info)):
            return "non-float inputs"
        if info.weight is not None and info.weight.required and not _has_weight(n, info):
            return "weight is not a constant"
        if info.two_activations and info.weight is not None and not _has_weight(n, info):
            return info.two_activations
        bias = n.inputs[info.bias_input] if info.bias_input is not None and len(n.inputs) > info.bias_input else None
        if info.bias_vector and bias is not None and not (_is_const(bias) and const_of(bias).ndim == 1):
            return f"{n.op_type} bias is not a 1-D constant"
        return None

    def _drop_float_fed_elementwise(self, n: ir.Node) -> None:
        """An elementwise op (Add, Mul, Concat, pooling, ...) whose output only float ops read gains nothing
        from int8 and only adds a rounding step: keep it float. Measured: the classifier bias before
        Softmax, and transformers' residual Adds feeding LayerNorm (quantizing those dominated the error of
        a static INT8 MiniLM; see docs/static_ptq.md)."""
        name = self._name(n)
        if name not in self.eligible or _info(n).weight is not None:
            return
        out = n.outputs[0]
        if self._wants_quantized(out) or self._fused_activation(n) is not None:
            return
        self.eligible.discard(name)
        self.reasons[name] = "only float ops read its output: int8 would add rounding, not speed"

    def _fused_activation(self, n: ir.Node) -> ir.Node | None:
        """The Relu/Clip that is the sole consumer of a compute node's output, if any."""
        out = n.outputs[0]
        uses = list(out.uses())
        if len(uses) != 1 or out.is_graph_output():
            return None
        act = uses[0].node
        fusable = (_info(act).role is Role.FUSED_ACTIVATION
                   and not self.skip.matches(self._name(act), act.op_type)
                   and all(_is_const(v) for v in act.inputs[1:] if v is not None))
        return act if fusable else None

    def _from_float_mac(self, v: ir.Value) -> bool:
        """True when `v` comes (through Relu/Clip or pass-through ops) from a Conv/MatMul/Gemm kept float.
        Its output must stay unquantized: with Q/DQ on both sides onnxruntime quantizes the float weight
        itself and runs the node in int8 anyway, silently undoing a skip."""
        p = v.producer()
        see_through = (Role.FUSED_ACTIVATION, Role.PASSTHROUGH)
        while p is not None and _info(p).role in see_through and p.inputs:
            p = p.inputs[0].producer() if p.inputs[0] is not None else None
        if p is None or self._name(p) not in self.reasons or _info(p).weight is None:
            return False
        acts = _act_indices(p, _info(p))
        return bool(acts) and self._input_quantized(p.inputs[acts[0]])

    def _feeds_float_mac(self, v: ir.Value) -> bool:
        return any(self._name(u.node) in self.reasons and _info(u.node).weight is not None for u in v.uses())

    def _input_quantized(self, x: ir.Value | None) -> bool:
        """Whether `x` has (or, through pass-through ops, will have) Q/DQ. A float MAC node whose input is
        float can have a quantized output: onnxruntime only re-quantizes it between Q/DQ on both sides."""
        while x is not None:
            if value_name(x) in self.acts:
                return True
            p = x.producer()
            if (p is None or _info(p).role is not Role.PASSTHROUGH or self._name(p) in self.reasons
                    or not self._wants_quantized(x) or not p.inputs):
                return False
            x = p.inputs[PASSTHROUGH_DATA_INPUT]
        return False

    def _wants_quantized(self, v: ir.Value) -> bool:
        for use in v.uses():
            info = _info(use.node)
            name = self._name(use.node)
            if name in self.eligible and use.idx in _act_indices(use.node, info):
                return True
            if info.role is Role.PASSTHROUGH and use.idx == PASSTHROUGH_DATA_INPUT and name not in self.reasons:
                return True
        return False

    def _mark(self, v: ir.Value) -> None:
        name = value_name(v)
        if name not in self.acts:
            self.acts[name] = name

    def _plan_compute(self, n: ir.Node) -> None:
        name, info = self._name(n), _info(n)
        self.quantized[name] = n.op_type
        weight_idx = info.weight.input if info.weight is not None and _has_weight(n, info) else None
        for i in _act_indices(n, info):
            v = n.inputs[i]
            if v is None:
                continue
            if i == weight_idx or _is_const(v):
                self._add_weight(n, i, v, info if i == weight_idx else None)
            elif not self._from_float_mac(v):
                self._mark(v)
        act = self._fused_activation(n)
        out = act.outputs[0] if act is not None else n.outputs[0]
        if not ((info.float_output_ok or self.rules.float_outputs) and not self._wants_quantized(out)):
            self._mark(out)
            if act is not None:
                self.quantized[self._name(act)] = act.op_type
        if info.bias_input is not None and weight_idx is not None and len(n.inputs) > info.bias_input:
            b, x = n.inputs[info.bias_input], n.inputs[_act_indices(n, info)[0]]
            if b is not None and _is_const(b) and value_name(x) in self.acts:  # int32 bias needs the input scale
                w = value_name(n.inputs[weight_idx])
                self.biases.append(BiasEntry(name, info.bias_input, value_name(b), value_name(x), w))
        if weight_idx is not None and weight_idx not in _act_indices(n, info):
            self._add_weight(n, weight_idx, n.inputs[weight_idx], info)

    def _add_weight(self, n: ir.Node, idx: int, v: ir.Value | None, info: OpInfo | None) -> None:
        if info is None:  # a constant operand of Add/Mul/Concat: per-tensor, activation type
            qt, sym = self.rules.activation_qtype, self.rules.activation_symmetric
            self.weights.append(WeightEntry(self._name(n), idx, value_name(v), None, qt, sym))
            return
        self.weights.append(WeightEntry(self._name(n), idx, value_name(v), self._weight_axis(n, info, v),
                                        self.rules.weight_qtype, True))

    def _weight_axis(self, n: ir.Node, info: OpInfo, v: ir.Value | None) -> int | None:
        if not self.rules.per_channel or info.weight is None:
            return None
        return info.weight.per_channel_axis(n, const_of(v).ndim)

    def _offsets(self) -> dict[str, float]:
        """Quantized tensors computed as ``x + c`` (c a scalar constant), by root: QuantPlan.offsets."""
        out: dict[str, float] = {}
        for n in self.nodes:
            if not _info(n).constant_shift or len(n.inputs) != 2:
                continue
            consts = [const_of(v) for v in n.inputs if _is_const(v)]
            root = self.acts.get(value_name(n.outputs[0]))
            if len(consts) == 1 and consts[0].size == 1 and root is not None and float(consts[0].reshape(())) != 0.0:
                out[root] = float(consts[0].reshape(()))
        return out

    def _saturation_bounds(self) -> dict[str, Bounds]:
        """Per root, the union of its readers' saturation intervals, where every reader has one."""
        values = {v.name: v for v in self.graph.inputs} | {o.name: o for n in self.nodes for o in n.outputs}
        union: dict[str, Bounds] = {}
        for tensor, root in self.acts.items():
            lo, hi = self._reader_bounds(values.get(tensor))
            prev = union.get(root, (math.inf, -math.inf))
            union[root] = (min(prev[0], lo), max(prev[1], hi))
        return {r: b for r, b in union.items() if b[0] <= b[1] and (b[0] > -math.inf or b[1] < math.inf)}

    def _reader_bounds(self, v: ir.Value | None) -> Bounds:
        """Union of the saturation intervals of the ops reading `v` ((-inf, inf) if one has none)."""
        unbounded = (-math.inf, math.inf)
        if v is None or v.is_graph_output():
            return unbounded
        lo, hi = math.inf, -math.inf
        for use in v.uses():
            node, info = use.node, _info(use.node)
            tied = info.role is Role.PASSTHROUGH and use.idx == PASSTHROUGH_DATA_INPUT and self._name(node) in self.quantized
            if tied and info.commutes_with_clip:
                continue  # its outputs share the root and are checked themselves
            b = input_saturation(node) if use.idx == 0 and not tied else None
            if b is None:
                return unbounded
            lo, hi = min(lo, b[0]), max(hi, b[1])
        return lo, hi

    def _plan_passthrough(self, n: ir.Node) -> None:
        name, info = self._name(n), _info(n)
        if info.role is not Role.PASSTHROUGH or name in self.reasons or not n.inputs:
            return
        x = n.inputs[PASSTHROUGH_DATA_INPUT]
        if x is None or value_name(x) not in self.acts or not _is_float(x):
            return
        if any(self._feeds_float_mac(o) for o in n.outputs) and not any(self._wants_quantized(o) for o in n.outputs):
            return  # a float conv/matmul reads it: keep its input float so onnxruntime cannot re-quantize it
        self.quantized[name] = n.op_type
        for o in n.outputs:
            self.acts[value_name(o)] = self.acts[value_name(x)]


def build_plan(graph: ir.Graph, rules: TargetRules, skip: SkipSpec = SkipSpec(),
               op_types: tuple[str, ...] | None = None) -> QuantPlan:
    """Decide the quantization of every tensor of a topologically sorted graph."""
    skip.validate([_Planner._name(n) for n in graph], {n.op_type for n in graph})
    return _Planner(graph, rules, skip, op_types).run()
