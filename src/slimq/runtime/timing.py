"""Quick latency measurements for comparing candidate models inside one process (search loops).

`slimq bench` is the tool for reported speed-ups (interleaved rounds, warm-up, both thread counts);
here a candidate gets a short warm-up and the median of runs over a fixed wall time, at one thread,
which is enough to rank candidates against each other and against FP32 measured the same way.
"""

from __future__ import annotations

import os
import time

import numpy as np
import onnx

from slimq.runtime.session import predictor

Feeds = dict[str, np.ndarray]


def latency_ms(model: onnx.ModelProto | str | os.PathLike, feeds: Feeds, threads: int = 1,
               min_time: float = 0.3, warmup: int = 2, min_runs: int = 5) -> float:
    """Median latency in milliseconds of one run on `feeds`."""
    run = predictor(model, threads=threads).run
    for _ in range(warmup):
        run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter_ns()
        run(feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.median(times))
