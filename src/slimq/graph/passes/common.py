"""Small helpers shared by the graph passes (new initializers and nodes: :mod:`slimq.graph.builder`)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The value of a constant input, or None when it is data (or absent)."""
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()
