"""Run the FP32 model in onnxruntime with intermediate tensors exposed, batch by batch.

Tensors are split into groups whose per-batch size fits a memory budget
(sizes come from shape inference with the real input shapes), so peak memory
is bounded by the budget, not by the model or the data set. Each batch's
outputs go straight into streaming observers and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
from tqdm.auto import tqdm

from .observers import Algorithm, ObserverSettings, TensorObserver, compute_range, make_observer
from .passes.preprocess import infer_shapes

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


def _session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class ExposedRunner:
    """Runs a model with a set of intermediate tensors as outputs, in memory-bounded groups."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str], first_feeds: Feeds, budget_bytes: int):
        sizes = _tensor_bytes(model, first_feeds)
        self.groups = group_tensors(list(tensors), sizes, budget_bytes)
        self.sessions = [_session(expose(model, g)) for g in self.groups]

    def run(self, feeds: Feeds) -> Iterator[tuple[str, np.ndarray]]:
        for group, sess in zip(self.groups, self.sessions):
            outs = sess.run(group, feeds)
            yield from zip(group, outs)
            del outs


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Callable[[], Iterable[Feeds]],
    algo: Algorithm,
    settings: ObserverSettings,
    budget_mb: int = 1024,
    show_progress: bool = True,
    total: int | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> dict[str, tuple[float, float]]:
    """Calibrated [rmin, rmax] of each tensor in `tensors` over all batches.

    `bounds` clips a tensor's values before they are observed (see `QuantPlan.bounds`).
    """
    bounds = bounds or {}
    observers: dict[str, TensorObserver] = {t: make_observer(algo, settings) for t in tensors}
    runner: ExposedRunner | None = None
    bar = tqdm(total=total, desc=f"calibrating ({algo.name})", unit="batch", disable=not show_progress)
    for feeds in batches():
        if runner is None:
            runner = ExposedRunner(model, tensors, feeds, budget_mb * 2**20)
        for name, value in runner.run(feeds):
            if name in bounds:
                value = np.clip(value, *bounds[name])
            observers[name].update(value)
        bar.update(1)
    bar.close()
    return {t: compute_range(o, algo, settings) for t, o in observers.items()}


def _channel_mean(a: np.ndarray) -> np.ndarray:
    axes = tuple(i for i in range(a.ndim) if i != 1) if a.ndim > 2 else (0,)
    return a.astype(np.float64).mean(axis=axes)


def channel_means(model: onnx.ModelProto, tensors: list[str], batches: Callable[[], Iterable[Feeds]],
                  budget_mb: int = 1024) -> dict[str, np.ndarray]:
    """Mean over all batches of each tensor's channels (axis 1; last axis of 2-D tensors is axis 1 too).

    Every batch weighs the same, which is exact for equal batch sizes and close otherwise.
    Graph inputs are read from the feeds instead of being exposed.
    """
    sums: dict[str, np.ndarray] = {}
    count = 0
    runner: ExposedRunner | None = None
    for feeds in batches():
        inner = [t for t in tensors if t not in feeds]
        if runner is None:
            runner = ExposedRunner(model, inner, feeds, budget_mb * 2**20)
        values = list(runner.run(feeds)) if inner else []
        values += [(t, feeds[t]) for t in tensors if t in feeds]
        for name, value in values:
            sums[name] = sums.get(name, 0.0) + _channel_mean(value)
        count += 1
    return {t: s / count for t, s in sums.items()} if count else {}
