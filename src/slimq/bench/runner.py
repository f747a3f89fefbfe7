"""Benchmark FP32 and INT8 models side by side: speed, latency, size and task accuracy.

Timing is interleaved: for each thread count, every model gets a warm-up, then the
models take turns (round-robin, order rotated each round) with a time-based minimum per
turn, so slow drift of the machine (thermal, other load) hits all models alike.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimq.bench.data import BenchInputs, resolve_inputs
from slimq.bench.results import (
    BenchResult,
    ModelInfo,
    SpeedResult,
    TimingConfig,
    entry_label,
)
from slimq.core.errors import ConfigError
from slimq.io.model import model_size_bytes
from slimq.io.samples import validate_feeds
from slimq.io.source import load_source
from slimq.io.spec import Feeds, model_inputs
from slimq.runtime.backends import BackendError, parse_backends
from slimq.runtime.cpu import cpu_info
from slimq.runtime.select import CLOCKS
from slimq.runtime.session import Predictor, resolve_threads
from slimq.tasks.base import Evaluator, collect_outputs

ModelLike = str | os.PathLike | onnx.ModelProto
Progress = Callable[[str], None]


def machine_info(backends: Sequence[str] = ("ort",)) -> dict:
    """CPU, runtime versions and date, recorded with every benchmark."""
    from slimq.runtime.backends import backend_version

    extra = {"openvino": backend_version("openvino")} if "openvino" in backends else {}
    return {"cpu": cpu_info().to_dict(), "onnxruntime": ort.__version__, **extra,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _name_models(models: Sequence[ModelLike], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ConfigError(f"Give one distinct name per model: {len(models)} models, names {list(names)}.")
        return list(names)
    out = []
    for i, m in enumerate(models):
        base = f"model{i}" if isinstance(m, onnx.ModelProto) else Path(m).name.removesuffix(".onnx")
        out.append(base if base not in out else f"{base}#{i}")
    return out


def _signature(model: onnx.ModelProto) -> tuple[list[tuple[str, int]], list[int | None]]:
    """Input (name, rank) pairs and output ranks (outputs are matched by position, not name)."""
    ins = [(s.name, len(s.shape)) for s in model_inputs(model)]
    outs = [len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None
            for o in model.graph.output]
    return ins, outs


def check_compatible(protos: Sequence[onnx.ModelProto], names: Sequence[str]) -> None:
    """All models must have the first one's input names and ranks, and as many outputs of the same ranks."""
    ref_in, ref_out = _signature(protos[0])
    for proto, name in zip(protos[1:], names[1:]):
        ins, outs = _signature(proto)
        same_out = len(outs) == len(ref_out) and all(a is None or b is None or a == b for a, b in zip(outs, ref_out))
        if ins != ref_in or not same_out:
            raise ConfigError(
                f'Model "{name}" is not comparable with "{names[0]}": inputs (name, rank) {ins} vs {ref_in}, '
                f"output ranks {outs} vs {ref_out}. Benchmark an FP32 model together with INT8 versions of the "
                "same model.")


def _time_turn(run: Callable[[Feeds], object], feeds: Feeds, timing: TimingConfig) -> list[float]:
    times: list[float] = []
    now = CLOCKS[timing.clock]
    start = time.perf_counter()
    while len(times) < timing.min_iters or time.perf_counter() - start < timing.min_time:
        t0 = now()
        run(feeds)
        times.append((now() - t0) / 1e6)
    return times


def _entries(models: Sequence[ModelLike], names: Sequence[str], backends: Sequence[str],
             skip: Collection[str] = ()) -> list[tuple[str, str, ModelLike, str]]:
    """(label, name, model, backend) for every backend, then every model: the first entry is the reference.

    Labels in `skip` (models a backend cannot load) are left out."""
    entries = [(entry_label(n, b, backends), n, m, b) for b in backends for m, n in zip(models, names)]
    return [e for e in entries if e[0] not in skip]


def probe_backends(models: Sequence[ModelLike], names: Sequence[str], backends: Sequence[str]) -> dict[str, str]:
    """Load every model on every backend but the first; return {row label: error} for those that fail."""
    failed = {}
    for label, _, model, backend in _entries(models, names, backends):
        if backend != backends[0]:
            try:
                Predictor(model, threads=1, backend=backend)
            except BackendError as e:
                failed[label] = str(e)
    return failed


def _speed_results(entries: list, times: list[list[float]], threads: int, batch: int) -> list[SpeedResult]:
    out = []
    for (label, name, _, backend), t in zip(entries, times):
        a = np.asarray(t)
        out.append(SpeedResult(label, threads, batch, len(a), float(a.sum() / 1e3),
                               float(batch * len(a) / a.sum() * 1e3), float(np.percentile(a, 50)),
                               float(np.percentile(a, 90)), 1.0, backend, name))
    base = out[0].samples_per_s
    first = {s.backend: s.samples_per_s for s in out if s.model_name == out[0].model_name}
    return [SpeedResult(**{**asdict(s), "ratio": s.samples_per_s / base,
                           "backend_ratio": s.samples_per_s / first.get(s.backend, float("nan"))}) for s in out]


def measure_speed(models: Sequence[ModelLike], names: Sequence[str], feeds: Feeds, threads: int,
                  timing: TimingConfig = TimingConfig(), progress: Progress | None = None,
                  backends: Sequence[str] = ("ort",), skip: Collection[str] = ()) -> list[SpeedResult]:
    """Interleaved timing of all models on all backends at one thread count (latencies in ms per batch).

    skip: row labels to leave out (see probe_backends)."""
    entries = _entries(models, names, backends, skip)
    runs = [Predictor(m, threads=threads, backend=b).run for _, _, m, b in entries]
    for run in runs:
        for _ in range(timing.warmup):
            run(feeds)
    times: list[list[float]] = [[] for _ in runs]
    for r in range(timing.rounds):
        order = [(i + r) % len(runs) for i in range(len(runs))]
        for i in order:
            times[i] += _time_turn(runs[i], feeds, timing)
        if progress:
            progress(f"  threads={threads}: round {r + 1}/{timing.rounds} done")
    return _speed_results(entries, times, threads, len(next(iter(feeds.values()))))


def evaluate_models(models: Sequence[ModelLike], names: Sequence[str], evaluator: Evaluator,
                    progress: Progress | None = None,
                    backends: Sequence[str] = ("ort",), skip: Collection[str] = ()) -> dict[str, dict[str, float]]:
    """Task metrics of every model on every backend on the evaluator's data (all cores), keyed by row label."""
    out = {}
    for label, _, model, backend in _entries(models, names, backends, skip):
        if progress:
            progress(f"  evaluating {label} ({evaluator.name})")
        pred = Predictor(model, threads="all", backend=backend)
        out[label] = evaluator.score(collect_outputs(pred.run, evaluator))
    return out


def _load_models(models: Sequence[ModelLike], names: Sequence[str]
                 ) -> tuple[list[ModelLike], list[onnx.ModelProto]]:
    """Paths (or in-memory protos) to run and their protos; .pt2 / Paddle folders are converted (and checked)."""
    sources = [load_source(m) for m in models]
    protos = [s.model for s in sources]
    check_compatible(protos, names)
    return [s.model if s.path is None else s.path for s in sources], protos


def _model_infos(names: Sequence[str], models: Sequence[ModelLike], protos: Sequence[onnx.ModelProto]
                 ) -> list[ModelInfo]:
    return [ModelInfo(n, None if isinstance(m, onnx.ModelProto) else str(m),
                      p.ByteSize() if isinstance(m, onnx.ModelProto) else model_size_bytes(m))
            for n, m, p in zip(names, models, protos)]


def benchmark(models: Sequence[ModelLike], data=None, threads: Sequence[int | str] = (1, "all"),
              evaluator: Evaluator | None = None, batch: int = 1, task: str = "auto",
              timing: TimingConfig = TimingConfig(), names: Sequence[str] | None = None, limit: int | None = None,
              progress: Progress | None = None, title: str = "", backends: Sequence[str] = ("ort",)) -> BenchResult:
    """Time and evaluate `models` (the first is the reference, usually FP32) on the same data.

    data: an .npz (inputs + optional `labels`), `"fashion-mnist"`, an .npy/folder/array/feed list, or None
    (random data, or the evaluator's first batch). threads: counts or "all"; above the core count they are
    clamped with a warning. evaluator: any `slimq.tasks.Evaluator`; task: "auto", "classification",
    "ocr-rec", "ocr-det" or "none". limit: use only the first N labelled samples / evaluation items.
    backends: "ort" and/or "openvino" (slimq.runtime.backends); with several, every model runs on each, interleaved,
    rows are labelled "name (backend)", and speed-ups are given against the first model on the first backend
    (`ratio`) and on the same backend (`backend_ratio`).
    """
    if not models:
        raise ConfigError("Give at least one model to benchmark.")
    names = _name_models(models, names)
    backends = parse_backends(backends)
    models, protos = _load_models(models, names)
    inputs = model_inputs(protos[0])
    first = models[0]
    first_path = None if isinstance(first, onnx.ModelProto) else Path(first)
    bi: BenchInputs = resolve_inputs(data, inputs, batch, task, evaluator, first_path, limit)
    for proto, name in zip(protos, names):
        validate_feeds(bi.feeds, model_inputs(proto), f"{bi.source}, model {name}")
    counts = list(dict.fromkeys(resolve_threads(t) for t in threads))
    runnable = [p if isinstance(m, onnx.ModelProto) else m for m, p in zip(models, protos)] if backends != ("ort",) \
        else protos  # OpenVINO reads the files itself; onnxruntime gets the already loaded protos
    failed = probe_backends(runnable, names, backends) if len(backends) > 1 else {}
    for label, error in failed.items():
        if progress:
            progress(f"  not run: {label}: {error}")
    accuracy = (evaluate_models(runnable, names, bi.evaluator, progress, backends, failed)
                if bi.evaluator is not None else None)
    speed: list[SpeedResult] = []
    for t in counts:
        if progress:
            progress(f"timing {len(protos)} models on {', '.join(backends)} at {t} thread(s), batch {batch} "
                     f"({timing.rounds} rounds)")
        speed += measure_speed(runnable, names, bi.feeds, t, timing, progress, backends, failed)
    infos = _model_infos(names, models, protos)
    ev = None if bi.evaluator is None else {"name": bi.evaluator.name, "primary_metric": bi.evaluator.primary_metric,
                                            "higher_is_better": bi.evaluator.higher_is_better}
    settings = {"batch": batch, "threads": counts, "data": bi.source, "backends": list(backends), **asdict(timing)}
    return BenchResult(infos, speed, accuracy, ev, settings, machine_info(backends), title, list(backends), failed)
