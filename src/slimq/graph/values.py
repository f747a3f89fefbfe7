"""Typed access to onnx-ir values: names, constant arrays."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def value_name(v: ir.Value | None) -> str:
    """The name of a value ("" for an absent or unnamed one; every value of a loaded model has a name)."""
    return v.name or "" if v is not None else ""


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The value of a constant input, or None when it is data (or absent)."""
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()


def const_of(v: ir.Value | None) -> np.ndarray:
    """The array of a value known to be constant (the caller checked); ValueError otherwise."""
    array = const_array(v)
    if array is None:
        raise ValueError(f"graph value {value_name(v)!r} was expected to be a constant (an initializer)")
    return array
