"""One calibration pass over the FP32 model: activation ranges and per-channel means together.

The model runs in onnxruntime with the needed tensors exposed, in groups whose per-batch size fits a
memory budget (:class:`slimq.runtime.exposed.ExposedRunner`), so peak memory is bounded by the budget,
not by the model or the data set. Each batch's values go straight into streaming reducers (range
observers for the tensors to quantize, channel-mean sums for the bias-correction sites) and are
dropped: the reduce x aggregate scheme of NNCF's statistics collectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from slimq.core.errors import CalibrationDataError
from slimq.core.observers import Algorithm, ObserverSettings, TensorObserver, compute_range, make_observer
from slimq.io.samples import VariationWatch
from slimq.runtime.exposed import ExposedRunner

Feeds = dict[str, np.ndarray]
Bounds = tuple[float, float]


def channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean of each channel (axis 1; for 2-D tensors the last axis, which is axis 1 too)."""
    axes = tuple(i for i in range(a.ndim) if i != 1) if a.ndim > 2 else (0,)
    return a.astype(np.float64).mean(axis=axes)


@dataclass
class _MeanReducer:
    total: np.ndarray | float = 0.0
    count: int = 0

    def update(self, value: np.ndarray) -> None:
        self.total = self.total + channel_mean(value)
        self.count += 1

    def result(self) -> np.ndarray:
        return np.asarray(self.total) / max(self.count, 1)


@dataclass(frozen=True)
class Calibration:
    """What one pass over the calibration data found."""

    ranges: dict[str, Bounds]
    means: dict[str, np.ndarray] = field(default_factory=dict)
    constant: tuple[str, ...] = ()  # tensors with one value on every sample (e.g. all zero)
    batches: int = 0
    observers: dict[str, TensorObserver] = field(default_factory=dict)  # kept on request (searches)
    rounding: Any = None  # learned weight rounding (slimq.static.rounding.WeightRounding), weight_rounding="adaround"


def calibrate(model: onnx.ModelProto, tensors: Sequence[str], batches: Callable[[], Iterable[Feeds]],
              algo: Algorithm, settings: ObserverSettings, budget_mb: int = 1024, show_progress: bool = True,
              total: int | None = None, bounds: dict[str, Bounds] | None = None,
              mean_tensors: Sequence[str] = (), keep_observers: bool = False,
              algo_for: dict[str, Algorithm] | None = None) -> Calibration:
    """Calibrated [rmin, rmax] of each tensor in `tensors`, and the per-channel means of `mean_tensors`,
    in one pass over all batches. `bounds` clips a tensor's values before they are observed
    (see `QuantPlan.bounds`). Raises CalibrationDataError when every float input is constant (also per
    channel: blank images after normalisation), see `slimq.io.samples.VariationWatch`."""
    bounds = bounds or {}
    algos = {t: (algo_for or {}).get(t, algo) for t in tensors}
    observers: dict[str, TensorObserver] = {t: make_observer(algos[t], settings) for t in tensors}
    means = {t: _MeanReducer() for t in mean_tensors}
    watch, runner, count = VariationWatch(), None, 0
    bar = tqdm(total=total, desc=f"calibrating ({algo.name})", unit="batch", disable=not show_progress)
    for feeds in batches():
        watch.update(feeds)
        if runner is None:
            exposed = [t for t in dict.fromkeys([*tensors, *mean_tensors]) if t not in feeds]
            runner = ExposedRunner(model, exposed, feeds, budget_mb * 2**20)
        values = [(t, feeds[t]) for t in dict.fromkeys([*tensors, *mean_tensors]) if t in feeds]
        for name, value in [*values, *runner.run(feeds)]:
            if name in means:
                means[name].update(value)
            if name in observers:
                observers[name].update(np.clip(value, *bounds[name]) if name in bounds else value)
        count += 1
        bar.update(1)
    bar.close()
    if count == 0:
        raise CalibrationDataError("The calibration data yielded no batches; give at least one sample.")
    watch.check("calibration", count)
    ranges = {t: compute_range(o, algos[t], settings) for t, o in observers.items()}
    constant = tuple(t for t, o in observers.items() if o.seen and o.min == o.max)
    return Calibration(ranges, {t: m.result() for t, m in means.items()}, constant, count,
                       observers if keep_observers else {})
