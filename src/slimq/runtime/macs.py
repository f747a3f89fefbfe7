"""Count multiply-accumulates per op in the graph onnxruntime really runs, int8 vs float."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from slimq.core.ops import Mac, MacKind, mac_info
from slimq.runtime.exposed import ExposedRunner


@dataclass
class MacCount:
    int8_macs: int = 0
    float_macs: int = 0
    int8_ops: Counter = field(default_factory=Counter)
    float_ops: Counter = field(default_factory=Counter)
    float_nodes: list[str] = field(default_factory=list)
    per_node: dict[str, int] = field(default_factory=dict)  # node name -> MACs

    @property
    def int8_share(self) -> float:
        total = self.int8_macs + self.float_macs
        return self.int8_macs / total if total else 0.0

    def to_dict(self) -> dict:
        return {"int8_macs": self.int8_macs, "float_macs": self.float_macs, "int8_share": round(self.int8_share, 4),
                "int8_ops": dict(self.int8_ops), "float_mac_ops": dict(self.float_ops),
                "float_mac_nodes": self.float_nodes[:50]}


def _node_macs(node: onnx.NodeProto, mac: Mac, shapes: dict[str, tuple[int, ...]]) -> int:
    w_idx, a_idx = mac.weight_input, mac.a_input
    if len(node.input) <= w_idx or node.input[w_idx] not in shapes or node.output[0] not in shapes:
        return 0
    w, out = shapes[node.input[w_idx]], shapes[node.output[0]]
    if mac.kind is MacKind.CONV:
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    a = shapes.get(node.input[a_idx])
    if mac.kind is MacKind.CONV_T:
        return int(np.prod(a, dtype=np.int64) * np.prod(w[1:], dtype=np.int64)) if a else 0
    if not a:
        return 0
    trans_a = any(at.name == "transA" and at.i for at in node.attribute)
    k = a[-2] if trans_a else a[-1]
    return int(np.prod(out, dtype=np.int64) * k)


def _shapes(optimized: onnx.ModelProto, nodes: list[onnx.NodeProto], feeds: dict[str, np.ndarray],
            budget_mb: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the MAC nodes' inputs and outputs: initializers, feeds, and one run of the graph."""
    shapes = {i.name: tuple(i.dims) for i in optimized.graph.initializer}
    wanted = sorted({t for n in nodes for t in (*n.input, n.output[0]) if t and t not in shapes})
    graph_inputs = {i.name for i in optimized.graph.input}
    shapes.update({k: v.shape for k, v in feeds.items()})
    runnable = [t for t in wanted if t not in graph_inputs]
    if runnable:
        runner = ExposedRunner(optimized, runnable, feeds, budget_mb * 2**20)
        shapes.update({name: arr.shape for name, arr in runner.run(feeds)})
    return shapes


def count_macs(optimized: onnx.ModelProto, feeds: dict[str, np.ndarray], budget_mb: int = 1024,
               is_int8: Callable[[onnx.NodeProto], bool] | None = None) -> MacCount:
    """MACs of every conv/matmul-type node, split by whether its kernel is integer (facts: slimq.core.ops).

    Activation shapes come from running the optimized graph once on `feeds`. `is_int8` overrides the
    kernel facts (e.g. to judge Q/DQ placement in an unoptimized graph)."""
    macs = [(n, m) for n in optimized.graph.node if (m := mac_info(n.op_type)) is not None]
    shapes = _shapes(optimized, [n for n, _ in macs], feeds, budget_mb)
    count = MacCount()
    for n, mac in macs:
        k = _node_macs(n, mac, shapes)
        count.per_node[n.name or n.output[0]] = k
        if is_int8(n) if is_int8 is not None else mac.integer:
            count.int8_macs += k
            count.int8_ops[n.op_type] += 1
        else:
            count.float_macs += k
            count.float_ops[n.op_type] += 1
            count.float_nodes.append(f"{n.name or n.output[0]} ({n.op_type}, {k} MACs)")
    return count
