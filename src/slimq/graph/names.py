"""The one naming helper of every graph edit: node names and fresh, collision-free names."""

from __future__ import annotations

import onnx_ir as ir


def node_name(node: ir.Node) -> str:
    """The name slimq reports a node by: its name, else its first output's name."""
    return node.name or node.outputs[0].name or ""


def value_name(value: ir.Value) -> str:
    """A value's name; ValueError for an unnamed one (every value of a loaded graph has a name)."""
    if value.name is None:
        raise ValueError(f"unnamed value {value!r}: slimq refers to values by name")
    return value.name


class UniqueNames:
    """Fresh value and node names that collide with nothing in the graph (nor with each other).

    Names in use are collected once, from the graph inputs, initializers, node outputs and node
    names; every name handed out is recorded, so one instance serves one edit of the graph.
    """

    def __init__(self, graph: ir.Graph) -> None:
        self.used: set[str] = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
        self.used |= {o.name for n in graph for o in n.outputs if o.name} | {n.name for n in graph if n.name}

    def fresh(self, base: str) -> str:
        """`base` itself when free, else `base_1`, `base_2`, ..."""
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def claim(self, name: str) -> str:
        """Record a name chosen by the caller (e.g. a node keeping the name of the one it replaces)."""
        self.used.add(name)
        return name
