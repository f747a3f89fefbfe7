"""Stream intermediate tensors of the FP32 model, batch by batch, into per-tensor reducers.

The data-driven weight algorithms (AdaRound, GPTQ, SmoothQuant statistics) all need the
inputs of some layers over the calibration data. They never hold whole tensors: each batch's
values go to a reducer (a row subsampler, a Hessian accumulator, a running max) and are dropped.
Peak memory is the exposed-tensor budget of :class:`slimq.runtime.exposed.ExposedRunner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import onnx

from slimq.runtime.exposed import ExposedRunner

Feeds = dict[str, np.ndarray]


def stream_tensors(model: onnx.ModelProto, tensors: list[str], batches: Iterable[Feeds],
                   budget_mb: int = 1024) -> Iterator[tuple[int, str, np.ndarray]]:
    """(batch index, tensor name, value) for every tensor of every batch.

    Graph inputs are read from the feeds instead of being exposed.
    """
    runner: ExposedRunner | None = None
    for b, feeds in enumerate(batches):
        inner = [t for t in tensors if t not in feeds]
        if runner is None and inner:
            runner = ExposedRunner(model, inner, feeds, budget_mb * 2**20)
        for name in tensors:
            if name in feeds:
                yield b, name, feeds[name]
        if runner is not None and inner:
            for name, value in runner.run(feeds):
                yield b, name, value


def last_axis_absmax(model: onnx.ModelProto, tensors: list[str], batches: Iterable[Feeds],
                     budget_mb: int = 1024) -> dict[str, np.ndarray]:
    """max |x| per channel of the last axis (the MatMul reduction axis) over all batches."""
    out: dict[str, np.ndarray] = {}
    for _, name, value in stream_tensors(model, tensors, batches, budget_mb):
        m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
        out[name] = m if name not in out else np.maximum(out[name], m)
    return out
