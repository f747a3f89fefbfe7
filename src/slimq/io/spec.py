"""The inputs a model declares (name, shape, dtype) and the feed-dict type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

Feeds = dict[str, np.ndarray]


_ONNX_TO_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
               onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
               onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | str | None, ...]  # int: static, str/None: dynamic
    dtype: type


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of a model (initializers listed as inputs are excluded)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(InputSpec(i.name, shape, _ONNX_TO_NP.get(t.elem_type, np.float32)))
    return specs


def static_batch(inputs: Sequence[InputSpec]) -> int | None:
    """The fixed batch size of the model, or None when the batch dim is dynamic."""
    dims = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int)}
    return dims.pop() if len(dims) == 1 else None
