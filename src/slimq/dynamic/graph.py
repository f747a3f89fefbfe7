"""Dynamic PTQ graph work: find weights worth quantizing, decide per node, rewrite the graph.

Three rewrites, each self-contained per node so that the fidelity fallback can
revert any single node:

* weight-only: the weight becomes an int8 (per-channel or block-wise) or packed
  int4 (block-wise, opset 21) initializer followed by DequantizeLinear; compute
  stays FP32. onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits.
* embedding: a Gather over a constant table gathers int8 rows and per-row scales
  and multiplies them, so only the looked-up rows are dequantized.
* dynamic-activation: MatMul(x, W) becomes DynamicQuantizeLinear ->
  MatMulInteger (u8 x s8) -> Cast -> Mul(scale_x * scale_w), standard ONNX that
  onnxruntime fuses into com.microsoft DynamicQuantizeMatMul.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from slimq.core import qmath
from slimq.core.ops import WeightOnly, op_info, weight_only_info, weight_only_op_types
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name, value_name
from slimq.graph.passes.base import RewritePass, rewrite_count
from slimq.graph.passes.gemm import GemmToMatMulPass, gemm_to_matmul  # noqa: F401 (re-exported)

WEIGHT_OPS = weight_only_op_types()  # MatMul, Gemm, Conv, ConvTranspose, Gather
INT8_W = qmath.INT8.narrow()  # symmetric [-127, 127]
INT4_W = qmath.INT4.narrow()  # symmetric [-7, 7]
BLOCK_OPSET = 21  # DequantizeLinear with block_size and INT4 inputs


class Choice(str, Enum):
    """What happens to one node."""

    DYNAMIC = "dynamic-activation"
    WEIGHT_ONLY = "weight-only"
    FLOAT = "float"


@dataclass(frozen=True)
class Candidate:
    """A node whose weight (a constant float32 input) can be quantized."""

    node: str
    op_type: str
    weight: str
    input_index: int
    channel_axis: int
    block_axis: int | None  # reduction axis that blocks run along (None: blocks not supported)
    dynamic_ok: bool  # MatMul with a 2-D weight and a float32 activation
    shape: tuple[int, ...]

    @property
    def activation_input(self) -> int:
        return 1 - self.input_index

    @property
    def facts(self) -> WeightOnly:
        """How dynamic PTQ treats this op (the op table's weight_only entry)."""
        return weight_only_info(self.op_type)


@dataclass(frozen=True)
class WeightFormat:
    """How one weight is stored."""

    qtype: qmath.QType
    axis: int
    block: int | None = None

    @property
    def label(self) -> str:
        gran = f"group:{self.block}" if self.block else "per-channel"
        return f"int{self.qtype.bits} {gran}"

    @property
    def needs_opset21(self) -> bool:
        return self.block is not None or self.qtype.bits == 4


@dataclass(frozen=True)
class Decision:
    """The choice made for one candidate node, and why."""

    candidate: Candidate
    choice: Choice
    fmt: WeightFormat | None
    reason: str

    @property
    def node(self) -> str:
        return self.candidate.node

    @property
    def weight_format(self) -> WeightFormat:
        """The storage format of a quantized (non-float) decision."""
        if self.fmt is None:
            raise ValueError(f"{self.node}: a {self.choice.value} decision has no weight format")
        return self.fmt

    def to_dict(self) -> dict:
        c = self.candidate
        return {"node": c.node, "op_type": c.op_type, "weight": c.weight, "shape": list(c.shape),
                "choice": self.choice.value, "format": self.fmt.label if self.fmt else "float32",
                "reason": self.reason}


def _float32_const(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT


def _embedding(n: ir.Node) -> Candidate | None:
    """A Gather over a constant 2-D float32 table with data-dependent indices."""
    axis = n.attributes["axis"].as_int() if "axis" in n.attributes else 0
    data, idx = n.inputs[0], op_info(n.op_type, n.domain).index_input
    if idx is None:
        raise ValueError(f"op table: embedding op {n.op_type} has no index_input")
    if axis != 0 or data is None or data.const_value is None or not _float32_const(data):
        return None
    shape, ids = tuple(data.const_value.shape.numpy()), n.inputs[idx]
    if len(shape) != 2 or ids is None or ids.const_value is not None:
        return None
    return Candidate(node_name(n), n.op_type, value_name(data), 0, 0, 1, False, shape)


def _dynamic_ok(n: ir.Node, idx: int, shape: tuple[int, ...]) -> bool:
    """An op with a dynamic-activation kernel, a 2-D weight and a float32 activation."""
    if not weight_only_info(n.op_type, n.domain).dynamic_kernel or len(shape) != 2:
        return False
    x = n.inputs[1 - idx]
    return x is not None and x.dtype in (None, ir.DataType.FLOAT)


def candidate_for(n: ir.Node) -> tuple[Candidate | None, str | None]:
    """The candidate for node `n`, or None with the reason it stays float (None: not a weight op)."""
    info = op_info(n.op_type, n.domain)
    if n.domain not in ("", "ai.onnx") or info.weight_only is None:
        return None, None
    if info.weight_only.embedding:
        return _embedding(n), None
    if info.weight is None:
        raise ValueError(f"op table: {n.op_type} has weight_only facts but no weight entry")
    idx = info.weight.input
    w = n.inputs[idx] if idx < len(n.inputs) else None
    if w is None or w.const_value is None:
        return None, "both inputs are activations (e.g. attention scores): no weight to quantize, stays float"
    if not _float32_const(w):
        return None, f"weight is {w.const_value.dtype.name}, not float32"
    shape = tuple(w.const_value.shape.numpy())
    if not shape:
        return None, "scalar weight"
    channel = info.weight.axes(n, len(shape))[0]
    block = info.weight.block_axis(n, len(shape))
    return Candidate(node_name(n), n.op_type, value_name(w), idx, channel, block, _dynamic_ok(n, idx, shape),
                     shape), None


def find_candidates(graph: ir.Graph) -> tuple[list[Candidate], list[tuple[str, str, str]]]:
    """Every quantizable weight op, plus (node, op_type, reason) of weight ops that must stay float."""
    found, floats = [], []
    for n in graph:
        cand, reason = candidate_for(n)
        if cand is not None:
            found.append(cand)
        elif reason:
            floats.append((node_name(n), n.op_type, reason))
    return found, floats


# -- weight quantization ---------------------------------------------------------------------

def quantize_blocked(w: np.ndarray, qtype: qmath.QType, axis: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block-wise quantization along `axis` (blocks of `block` elements, last one may be short).

    Returns (q, scale); scale has w's shape with ceil(D / block) along `axis` (DequantizeLinear-21 layout).
    """
    wt = np.moveaxis(np.asarray(w, np.float32), axis, 0)
    d, nb = wt.shape[0], -(-wt.shape[0] // block)
    padded = np.concatenate([wt, np.zeros((nb * block - d, *wt.shape[1:]), np.float32)])
    absmax = np.abs(padded.reshape(nb, block, *wt.shape[1:])).max(axis=1)
    scale, zp = qmath.scale_zero_point(-absmax, absmax, qtype, symmetric=True)
    q = qmath.quantize(wt, np.repeat(scale, block, axis=0)[:d], np.repeat(zp, block, axis=0)[:d], qtype)
    return np.moveaxis(q, 0, axis), np.moveaxis(scale, 0, axis)


class WeightCache:
    """Quantized weights by (tensor, format), computed once and shared by every rewrite attempt."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, WeightFormat], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, name: str, w: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
        key = (name, fmt)
        if key not in self._data:
            if fmt.block:
                self._data[key] = quantize_blocked(w, fmt.qtype, fmt.axis, fmt.block)
            else:
                qt = qmath.quantize_weight(w, fmt.qtype, fmt.axis)
                self._data[key] = (qt.data, qt.scale)
        return self._data[key]


def initializer_array(graph: ir.Graph, name: str) -> np.ndarray:
    """The data of initializer `name` (ValueError if it has none)."""
    tensor = graph.initializers[name].const_value
    if tensor is None:
        raise ValueError(f"initializer {name} has no data")
    return tensor.numpy()


def int_tensor(q: np.ndarray, qtype: qmath.QType, name: str) -> ir.TensorProtocol:
    if qtype.bits == 4:
        return ir.PackedTensor(qmath.pack_int4(q), ir.DataType(qtype.onnx_dtype), shape=q.shape, name=name)
    return ir.tensor(q.astype(qtype.np_dtype), name=name)


# -- the rewriter ----------------------------------------------------------------------------

class _Rewriter:
    def __init__(self, model: ir.Model, cache: WeightCache) -> None:
        self.graph, self.cache = model.graph, cache
        self.b = GraphBuilder(self.graph)
        self.nodes = {node_name(n): n for n in self.graph}
        self.done: dict[tuple[str, str, WeightFormat], list[ir.Value]] = {}

    def _weight(self, d: Decision) -> tuple[np.ndarray, np.ndarray]:
        w = initializer_array(self.graph, d.candidate.weight)
        return self.cache.get(d.candidate.weight, w, d.weight_format)

    def _replace(self, c: Candidate, out: ir.Value) -> None:
        self.b.replace_uses(self.nodes[c.node].outputs[0], out)

    def weight_only(self, d: Decision) -> None:
        c, fmt, b = d.candidate, d.weight_format, self.b
        key = (c.weight, "dq", fmt)
        if key not in self.done:
            q, s = self._weight(d)
            qv = b.initializer(f"{c.weight}_quantized", int_tensor(q, fmt.qtype, ""))
            sv = b.initializer(f"{c.weight}_scale", s.astype(np.float32))
            attrs = {"axis": fmt.axis, **({"block_size": fmt.block} if fmt.block else {})}
            self.done[key] = b.op("DequantizeLinear", [qv, sv], c.weight, attrs)
        self.nodes[c.node].replace_input_with(c.input_index, self.done[key][0])

    def embedding(self, d: Decision) -> None:
        c, key, b = d.candidate, (d.candidate.weight, "rows", d.weight_format), self.b
        if key not in self.done:
            q, s = self._weight(d)
            self.done[key] = [b.initializer(f"{c.weight}_quantized", q.astype(np.int8)),
                              b.initializer(f"{c.weight}_row_scale", s.astype(np.float32).reshape(-1, 1))]
        qv, sv = self.done[key]
        ids = self.nodes[c.node].inputs[1]
        rows = b.op("Gather", [qv, ids], c.node, {"axis": 0})[0]
        scales = b.op("Gather", [sv, ids], f"{c.node}_scale", {"axis": 0})[0]
        rows_f = b.op("Cast", [rows], c.node, {"to": ir.DataType.FLOAT})[0]
        self._replace(c, b.op("Mul", [rows_f, scales], c.node)[0])

    def dynamic(self, d: Decision) -> None:
        c, key, b = d.candidate, (d.candidate.weight, "dyn", d.weight_format), self.b
        if key not in self.done:
            q, s = self._weight(d)
            self.done[key] = [b.initializer(f"{c.weight}_quantized", q.astype(np.int8)),
                              b.initializer(f"{c.weight}_scale", s.astype(np.float32)),
                              b.initializer(f"{c.weight}_zero_point", np.zeros(q.shape[1], np.int8))]
        qv, sv, zv = self.done[key]
        x = self.nodes[c.node].inputs[c.activation_input]
        xq, xs, xz = b.op("DynamicQuantizeLinear", [x], c.node, num_outputs=3)
        acc = b.op("MatMulInteger", [xq, qv, xz, zv], c.node)[0]
        acc_f = b.op("Cast", [acc], c.node, {"to": ir.DataType.FLOAT})[0]
        scale = b.op("Mul", [xs, sv], f"{c.node}_scales")[0]
        self._replace(c, b.op("Mul", [acc_f, scale], c.node)[0])


class ApplyDecisionsPass(RewritePass):
    """Apply every non-float decision (dynamic-activation, embedding or weight-only rewrite); counts them."""

    def __init__(self, decisions: Iterable[Decision], cache: WeightCache) -> None:
        super().__init__()
        self.decisions, self.cache = list(decisions), cache

    def rewrite(self, model: ir.Model) -> int:
        rw, applied = _Rewriter(model, self.cache), 0
        for d in self.decisions:
            if d.choice is Choice.FLOAT:
                continue
            if d.choice is Choice.DYNAMIC:
                rw.dynamic(d)
            elif d.candidate.facts.embedding:
                rw.embedding(d)
            else:
                rw.weight_only(d)
            applied += 1
        RemoveUnusedNodesPass()(model)
        TopologicalSortPass()(model)
        return applied


def apply_decisions(base: onnx.ModelProto, decisions: Iterable[Decision], cache: WeightCache) -> onnx.ModelProto:
    """A new model: `base` with every non-float decision applied (base is not modified)."""
    model = ir.from_proto(base)
    rewrite_count(ApplyDecisionsPass(decisions, cache), model)
    return ir.to_proto(model)


def weight_bytes(decisions: Iterable[Decision], cache: WeightCache, base: onnx.ModelProto) -> dict[str, dict]:
    """FP32 vs stored bytes of the quantized weights, by op type (scales included)."""
    inits = {t.name: t for t in base.graph.initializer}
    out: dict[str, dict] = {}
    seen: set[tuple[str, WeightFormat]] = set()
    for d in decisions:
        if d.choice is Choice.FLOAT or (d.candidate.weight, d.weight_format) in seen:
            continue
        seen.add((d.candidate.weight, d.weight_format))
        w = onnx.numpy_helper.to_array(inits[d.candidate.weight])
        q, s = cache.get(d.candidate.weight, w, d.weight_format)
        row = out.setdefault(d.candidate.op_type, {"tensors": 0, "fp32_bytes": 0, "quantized_bytes": 0})
        row["tensors"] += 1
        row["fp32_bytes"] += w.size * 4
        row["quantized_bytes"] += -(-q.size * d.weight_format.qtype.bits // 8) + s.size * 4
    for row in out.values():
        row["ratio"] = round(row["quantized_bytes"] / max(1, row["fp32_bytes"]), 4)
    return out
