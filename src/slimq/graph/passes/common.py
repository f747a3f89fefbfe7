"""Small helpers shared by the graph passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The value of a constant input, or None when it is data (or absent)."""
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()


def add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer named `base` (suffixed when the name is taken)."""
    name, i = base, 1
    while name in graph.initializers:
        name, i = f"{base}_{i}", i + 1
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value
