"""Run the FP32 model in onnxruntime with intermediate tensors exposed, batch by batch.

Tensors are split into groups whose per-batch size fits a memory budget
(sizes come from shape inference with the real input shapes), so peak memory
is bounded by the budget, not by the model or the data set. Each batch's
outputs go straight into streaming observers and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from tqdm.auto import tqdm

from slimq.core.observers import (
    Algorithm,
    ObserverSettings,
    TensorObserver,
    compute_range,
    make_observer,
)
from slimq.runtime.exposed import ExposedRunner

Feeds = dict[str, np.ndarray]
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
