"""Ops inside subgraphs (If branches, Loop and Scan bodies): slimq plans and rewrites only the main graph,
so these always stay float. They are listed so a report never leaves them out silently."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from slimq.core.ops import Role, op_info


@dataclass(frozen=True)
class SubgraphOp:
    node: str
    op_type: str
    parent: str  # the If/Loop/Scan node whose subgraph holds it
    parent_op: str
    quantizable: bool  # slimq would quantize this op type in the main graph

    @property
    def reason(self) -> str:
        return f'inside a subgraph of {self.parent_op} "{self.parent}": slimq does not quantize subgraphs'


def _name(n: onnx.NodeProto) -> str:
    return n.name or (n.output[0] if n.output else n.op_type)


def _subgraphs(n: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def subgraph_ops(graph: onnx.GraphProto) -> list[SubgraphOp]:
    """Every node inside a subgraph of `graph`, at any depth, named with its outermost parent node."""
    out: list[SubgraphOp] = []
    for parent in graph.node:
        stack = list(_subgraphs(parent))
        while stack:
            g = stack.pop(0)
            for n in g.node:
                role = op_info(n.op_type, n.domain).role
                out.append(SubgraphOp(_name(n), n.op_type, _name(parent), parent.op_type, role is Role.COMPUTE))
                stack += list(_subgraphs(n))
    return out


def subgraph_warning(ops: list[SubgraphOp]) -> str | None:
    """One warning naming the ops slimq would quantize that stay float inside subgraphs (None if there are none)."""
    hits = [o for o in ops if o.quantizable]
    if not hits:
        return None
    parents = sorted({f'{o.parent_op} "{o.parent}"' for o in hits})
    names = ", ".join(f"{o.node} ({o.op_type})" for o in hits[:6]) + (f" and {len(hits) - 6} more" if len(hits) > 6
                                                                          else "")
    return (f"{len(hits)} quantizable op(s) inside subgraphs of {', '.join(parents)} stay float: {names}. slimq does "
            "not quantize subgraphs (If/Loop/Scan); their compute runs in FP32.")
