"""Gemm -> MatMul (+ Add), so that Gemm weights get the MatMul kernels (dynamic PTQ's MatMulNBits,
DynamicQuantizeMatMul). Exact in FP32."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass


def _attr(n: ir.Node, name: str, default: float) -> float:
    return n.attributes[name].value if name in n.attributes else default


class GemmToMatMulPass(RewritePass):
    """Rewrite plain Gemm nodes (alpha=beta=1, no transA, constant float32 B) as MatMul (+ Add).

    The MatMul keeps the Gemm's name (decisions and skip lists name it); `done` lists the names."""

    def __init__(self) -> None:
        super().__init__()
        self.done: list[str] = []

    def _why_not(self, n: ir.Node) -> str | None:
        w = n.inputs[1]
        if w is None or w.const_value is None or w.const_value.dtype != ir.DataType.FLOAT:
            return "B is not a float32 constant"
        if _attr(n, "alpha", 1.0) != 1.0 or _attr(n, "beta", 1.0) != 1.0 or _attr(n, "transA", 0):
            return "alpha, beta or transA differ from a plain x @ B + C"
        return None

    def rewrite(self, model: ir.Model) -> int:
        graph, b = model.graph, GraphBuilder(model.graph)
        transposed: dict[str, ir.Value] = {}
        self.done = []
        for n in [n for n in graph if n.op_type == "Gemm" and n.domain in ("", "ai.onnx")]:
            if (why := self._why_not(n)) is not None:
                self.not_fired(node_name(n), why)
                continue
            name, wv = node_name(n), n.inputs[1]
            assert wv is not None and wv.const_value is not None and wv.name is not None  # checked by _why_not
            if _attr(n, "transB", 0):
                if wv.name not in transposed:
                    transposed[wv.name] = b.initializer(f"{wv.name}_kn", np.ascontiguousarray(wv.const_value.numpy().T))
                wv = transposed[wv.name]
            last = mm = b.node("MatMul", [n.inputs[0], wv], base=name, name=name, after=n)
            c = n.inputs[2] if len(n.inputs) > 2 else None
            if c is not None:
                last = b.node("Add", [mm.outputs[0], c], base=name, name=b.fresh(f"{name}_bias"), after=mm)
            b.replace_uses(n.outputs[0], last.outputs[0], take_name=True)
            graph.remove(n, safe=True)
            self.done.append(name)
        return len(self.done)


def gemm_to_matmul(model: ir.Model) -> list[str]:
    """Rewrite plain Gemm nodes as MatMul (+ Add), in place; returns the names of the rewritten nodes."""
    rewrite = GemmToMatMulPass()
    rewrite(model)
    return rewrite.done
