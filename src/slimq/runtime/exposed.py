"""Run a model in onnxruntime with intermediate tensors exposed as outputs, in memory-bounded groups.

Tensors are split into groups whose per-batch size fits a memory budget (sizes come from shape
inference with the real input shapes), so peak memory is bounded by the budget, not by the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from slimq.graph.passes.preprocess import infer_shapes
from slimq.runtime.source import SharedWeights

Feeds = dict[str, np.ndarray]


_DTYPE_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}


def _tensor_bytes(model: onnx.ModelProto, feeds: Feeds) -> dict[str, int]:
    """Bytes of every value for these concrete input shapes (unknown: 0, i.e. not budgeted)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for inp in fixed.graph.input:
        if inp.name in feeds:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, feeds[inp.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    inferred = infer_shapes(fixed)
    sizes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        sizes[vi.name] = int(np.prod(dims)) * _DTYPE_BYTES.get(t.elem_type, 4) if dims else 4
    return sizes


def group_tensors(names: list[str], sizes: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Greedy split of `names` into groups whose summed sizes stay within the budget."""
    groups: list[list[str]] = [[]]
    total = 0
    for n in names:
        b = sizes.get(n, 0)
        if groups[-1] and total + b > budget_bytes:
            groups.append([])
            total = 0
        groups[-1].append(n)
        total += b
    return groups


def expose(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """Copy of `model` whose graph outputs are exactly `tensors`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    return m


def _session(source: str | bytes, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


class ExposedRunner:
    """Runs a model with a set of intermediate tensors as outputs, in memory-bounded groups."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str], first_feeds: Feeds, budget_bytes: int):
        sizes = _tensor_bytes(model, first_feeds)
        self.groups = group_tensors(list(tensors), sizes, budget_bytes)
        weights = SharedWeights(model)  # over 2 GB: the weights are written once for every group's session
        try:
            self.sessions = [_session(weights.source(expose(weights.model, g))) for g in self.groups]
        finally:
            weights.close()

    def run(self, feeds: Feeds) -> Iterator[tuple[str, np.ndarray]]:
        for group, sess in zip(self.groups, self.sessions):
            outs = sess.run(group, feeds)
            yield from zip(group, outs)
            del outs
