"""The one graph builder every slimq graph edit goes through.

A :class:`GraphBuilder` adds initializers and nodes under fresh names (one
:class:`~slimq.graph.names.UniqueNames` per edit), builds QuantizeLinear /
DequantizeLinear pairs, and reroutes the readers of a value to another one while
graph outputs keep their names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from slimq.core.ops import DEQUANTIZE, QUANTIZE
from slimq.graph.names import UniqueNames


class GraphBuilder:
    """Adds to one graph under names that collide with nothing already in it."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.names = UniqueNames(graph)

    def fresh(self, base: str) -> str:
        return self.names.fresh(base)

    def initializer(self, base: str, data: np.ndarray | np.generic | ir.TensorProtocol,
                    dtype: ir.DataType | None = None, typed: bool = False) -> ir.Value:
        """A new initializer named after `base` holding `data` (an array or numpy scalar, or a tensor such
        as ir.PackedTensor). typed: also record its type and shape on the value (written as value_info)."""
        name = self.fresh(base)
        tensor: ir.TensorProtocol
        if isinstance(data, (np.ndarray, np.generic)):
            tensor = ir.tensor(data, dtype=dtype, name=name)
        else:
            tensor = data
            tensor.name = name
        value = ir.Value(name=name, const_value=tensor)
        if typed:
            value.shape, value.type = ir.Shape(tensor.shape.numpy()), ir.TensorType(ir.DataType(tensor.dtype))
        self.graph.register_initializer(value)
        return value

    def node(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None, *,
             base: str, outputs: Sequence[str] | int = 1, name: str | None = None, domain: str = "",
             after: ir.Node | None = None, before: ir.Node | None = None) -> ir.Node:
        """Add a node (appended, or right after `after`, or right before `before`).

        Its name is `name` verbatim when given (e.g. a node taking over the name of the one it replaces),
        else fresh from ``{base}_{op_type}``; `outputs` is a count (fresh ``{base}_{op_type}_out{i}``) or
        the base names of its outputs."""
        bases = [f"{base}_{op_type}_out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        values = [ir.Value(name=self.fresh(b)) for b in bases]
        node_name = self.names.claim(name) if name is not None else self.fresh(f"{base}_{op_type}")
        node = ir.node(op_type, inputs, dict(attrs or {}), domain=domain, outputs=values, name=node_name)
        if after is not None:
            self.graph.insert_after(after, node)
        elif before is not None:
            self.graph.insert_before(before, node)
        else:
            self.graph.append(node)
        return node

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], base: str, attrs: Mapping[str, Any] | None = None,
           num_outputs: int = 1) -> list[ir.Value]:
        """Append a node and return its outputs."""
        return list(self.node(op_type, inputs, attrs, base=base, outputs=num_outputs).outputs)

    def dequantize(self, q: ir.Value, scale: ir.Value, zero_point: ir.Value | None, base: str,
                   axis: int | None = None, block_size: int | None = None) -> ir.Value:
        """``DequantizeLinear(q, scale[, zero_point])``, output ``{base}_dq``."""
        attrs = {k: v for k, v in (("axis", axis), ("block_size", block_size)) if v is not None}
        inputs = [q, scale] if zero_point is None else [q, scale, zero_point]
        return self.node(DEQUANTIZE, inputs, attrs, base=base, outputs=[f"{base}_dq"]).outputs[0]

    def quantize(self, x: ir.Value, scale: ir.Value, zero_point: ir.Value, base: str) -> ir.Value:
        """``QuantizeLinear(x, scale, zero_point)`` (per tensor), output ``{base}_q``."""
        return self.node(QUANTIZE, [x, scale, zero_point], base=base, outputs=[f"{base}_q"]).outputs[0]

    def qdq(self, x: ir.Value, scale: ir.Value, zero_point: ir.Value, base: str) -> ir.Value:
        """A QuantizeLinear -> DequantizeLinear pair on `x` (per tensor); returns the dequantized value."""
        return self.dequantize(self.quantize(x, scale, zero_point, base), scale, zero_point, base)

    def replace_uses(self, old: ir.Value, new: ir.Value, *, readers: Iterable[tuple[ir.Node, int]] | None = None,
                     rename: str = "replaced", take_name: bool = False) -> None:
        """Route the readers of `old` (all of them, or those in `readers`) to `new`.

        A graph output keeps its name, type and shape: `new` takes its place, its name (and, where `new`
        has none, its type and shape), and `old` is renamed ``{name}_{rename}``. With `take_name` (`old`
        is about to be removed) `new` takes the name anyway."""
        for node, idx in list(old.uses()) if readers is None else readers:
            node.replace_input_with(idx, new)
        is_output = old.is_graph_output()
        if is_output and new.is_graph_output():
            raise ValueError(f"cannot route graph output {old.name!r} to {new.name!r}, which is one already: "
                             "insert an Identity in front of one of them first")
        if is_output:  # a graph output keeps its place, and its declared type and shape
            outputs = self.graph.outputs
            for i, o in enumerate(outputs):
                if o is old:
                    outputs[i] = new
            new.type = new.type if new.type is not None else old.type
            new.shape = new.shape if new.shape is not None else old.shape
        if is_output or take_name:
            name = old.name
            old.name = self.fresh(f"{name}_{rename}")
            new.name = name
