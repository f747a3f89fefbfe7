"""Which runtime runs a model fastest on this machine, measured (``backend="auto"``).

Every installed runtime (onnxruntime; OpenVINO with ``pip install 'slimq[openvino]'``) loads the model and
runs it side by side on the same input: short interleaved rounds, the median per runtime, so a burst of
machine load hits all of them alike. Without OpenVINO the choice is onnxruntime, with a note that says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from slimq.io.spec import Feeds, model_inputs
from slimq.runtime.backends import OPENVINO_INSTALL, BackendError, openvino_available

AUTO = "auto"
RUNTIME_NAMES = {"ort": "onnxruntime", "openvino": "OpenVINO"}
SYNTH_DIM = 64  # dynamic non-batch dims of a synthesised timing input

ModelLike = str | os.PathLike | onnx.ModelProto
Run = Callable[[Feeds], object]


def installed_backends() -> tuple[str, ...]:
    """The runtimes `auto` chooses from, onnxruntime first."""
    return ("ort", "openvino") if openvino_available() else ("ort",)


def missing_note() -> str:
    """Why `auto` could only measure onnxruntime (empty when OpenVINO is installed)."""
    if openvino_available():
        return ""
    return f"OpenVINO is not installed ({OPENVINO_INSTALL}), so auto chose onnxruntime without a comparison"


CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def interleaved_ms(runs: Sequence[Run], feeds: Feeds, rounds: int = 3, min_time: float = 0.25,
                   warmup: int = 3, min_runs: int = 5, clock: str = "wall") -> list[float]:
    """Median milliseconds per run of each callable, timed in interleaved rounds (order rotated each round).

    clock "cpu" measures the process's CPU time instead of wall time: at one thread it is the run's own
    compute, unaffected by other jobs competing for the cores (on a 2-core machine at load 8, wall times
    were 2.5x inflated and varied by 20 % between rounds; CPU times by about 1 %).
    """
    now = CLOCKS[clock]
    for run in runs:
        for _ in range(warmup):
            run(feeds)
    times: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for i in [(k + r) % len(runs) for k in range(len(runs))]:
            start = time.perf_counter()
            while len(times[i]) < min_runs * (r + 1) or time.perf_counter() - start < min_time:
                t0 = now()
                runs[i](feeds)
                times[i].append((now() - t0) / 1e6)
    return [float(np.median(t)) for t in times]


def timing_feed(model: onnx.ModelProto, seed: int = 0) -> Feeds:
    """Standard-normal data in the model's input shapes (dynamic batch 1, other dynamic dims 64; integer
    inputs zeros): enough to rank runtimes when no real sample is at hand."""
    rng, feed = np.random.default_rng(seed), Feeds()
    for s in model_inputs(model):
        shape = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else SYNTH_DIM) for i, d in enumerate(s.shape))
        floating = np.issubdtype(s.dtype, np.floating)
        feed[s.name] = rng.standard_normal(shape).astype(s.dtype) if floating else np.zeros(shape, s.dtype)
    return feed


@dataclass(frozen=True)
class RuntimeChoice:
    """The fastest runtime for one model, and the median milliseconds per run of every runtime tried."""

    backend: str
    ms: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1
    note: str = ""

    @property
    def name(self) -> str:
        return RUNTIME_NAMES.get(self.backend, self.backend)

    def line(self) -> str:
        if len(self.ms) < 2:
            return f"runs on {self.name}" + (f" ({self.note})" if self.note else "")
        others = [f"{RUNTIME_NAMES.get(b, b)} {ms:.3f} ms" for b, ms in self.ms.items() if b != self.backend]
        return (f"runs fastest on {self.name}: {self.ms[self.backend]:.3f} ms vs {', '.join(others)} "
                f"at {self.threads} thread(s)")


Loader = Callable[[ModelLike, str, int], Run]  # (model, backend, threads) -> run; raises BackendError


def choose_runtime(model: ModelLike, load: Loader, feeds: Feeds | None = None, threads: int = 1,
                   backends: Sequence[str] | None = None, min_time: float = 0.25) -> RuntimeChoice:
    """Time `model` on every installed runtime (or `backends`), each loaded by `load`; the fastest wins."""
    names = tuple(backends) if backends is not None else installed_backends()
    loaded: dict[str, Run] = {}
    for b in names:
        try:
            loaded[b] = load(model, b, threads)
        except BackendError:
            continue
    note = missing_note() if backends is None else ""
    if len(loaded) < 2:
        only = next(iter(loaded), "ort")
        return RuntimeChoice(only, {}, threads, note or "only one runtime could load the model")
    if feeds is None:
        feeds = timing_feed(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False))
    clock = "cpu" if threads == 1 else "wall"
    ms = dict(zip(loaded, interleaved_ms(list(loaded.values()), feeds, min_time=min_time, clock=clock)))
    return RuntimeChoice(min(ms, key=ms.__getitem__), ms, threads, note)
