"""The inputs a model declares (name, shape, dtype, the table an id input indexes) and the feed-dict type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from slimq.core.ops import op_info

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
    index_rows: int | None = None  # an integer input that indexes a constant Gather table: its row count


def index_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """Integer graph inputs that index a constant Gather table (directly or through Cast/Reshape/...): table rows."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, int] = {}
    for inp in model.graph.input:
        frontier, seen = [inp.name], set()
        while frontier:
            t = frontier.pop()
            seen.add(t)
            for n in consumers.get(t, []):
                info = op_info(n.op_type, n.domain)
                idx = info.index_input
                if idx is not None and len(n.input) > idx and n.input[idx] == t and n.input[0] in inits:
                    rows = inits[n.input[0]].dims[0] if inits[n.input[0]].dims else 0
                    out[inp.name] = min(out.get(inp.name, rows), rows)
                elif info.keeps_values and n.input[0] == t:
                    frontier += [o for o in n.output if o not in seen]
    return out


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    """A static dim as an int; dynamic dims (a name, nothing, or an exporter's 0 / -1) as the name or None."""
    if d.HasField("dim_value") and d.dim_value > 0:
        return d.dim_value
    return d.dim_param or None


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of a model (initializers listed as inputs are excluded)."""
    inits = {i.name for i in model.graph.initializer}
    rows = index_ranges(model)
    specs = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = tuple(_dim(d) for d in t.shape.dim)
        specs.append(InputSpec(i.name, shape, _ONNX_TO_NP.get(t.elem_type, np.float32), rows.get(i.name)))
    return specs


def static_batch(inputs: Sequence[InputSpec]) -> int | None:
    """The fixed batch size of the model, or None when the batch dim is dynamic."""
    dims = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int)}
    return dims.pop() if len(dims) == 1 else None
