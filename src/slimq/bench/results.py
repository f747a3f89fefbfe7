"""Benchmark result types: timing settings, per-model info, speed and accuracy results."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slimq.core.errors import ConfigError
from slimq.io.atomic import write_text


def entry_label(model: str, backend: str, backends: Sequence[str]) -> str:
    """A model's row label: its name alone with one backend, "name (backend)" with several."""
    return model if len(backends) <= 1 else f"{model} ({backend})"


@dataclass(frozen=True)
class TimingConfig:
    """How long to time: per model and round, at least `min_time` seconds and `min_iters` runs."""

    warmup: int = 5
    min_iters: int = 10
    min_time: float = 2.0
    rounds: int = 3
    clock: str = "wall"  # "cpu": process CPU time (1 thread on a shared machine; see slimq.runtime.select)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iters < 1 or self.rounds < 1 or self.min_time < 0:
            raise ConfigError(f"Invalid timing settings {self}: warmup >= 0, iters >= 1, rounds >= 1, "
                              "min_time >= 0.")
        if self.clock not in ("wall", "cpu"):
            raise ConfigError(f'Unknown clock "{self.clock}": "wall" (elapsed time) or "cpu" (process CPU time, '
                              "for 1-thread timing on a busy machine).")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str | None
    size_bytes: int


@dataclass(frozen=True)
class SpeedResult:
    """Throughput and batch latency of one model at one thread count."""

    model: str
    threads: int
    batch: int
    iterations: int
    seconds: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    ratio: float  # samples/s relative to the first model (on the first backend) at the same thread count
    backend: str = "ort"
    model_name: str = ""  # the model's name without the backend suffix ("" = same as model)
    backend_ratio: float = 1.0  # samples/s relative to the first model on the same backend and thread count


@dataclass
class BenchResult:
    """Everything `benchmark` measured; `slimq.bench.tables.result_markdown` formats it."""

    models: list[ModelInfo]
    speed: list[SpeedResult]
    accuracy: dict[str, dict[str, float]] | None = None
    evaluator: dict | None = None  # name, primary_metric, higher_is_better
    settings: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    title: str = ""
    backends: list[str] = field(default_factory=lambda: ["ort"])
    failed: dict[str, str] = field(default_factory=dict)  # row label -> why that backend could not load it
    notes: list[str] = field(default_factory=list)  # e.g. which runtime `--backend auto` found fastest

    def label(self, model: str, backend: str | None = None) -> str:
        """The row label of `model` on `backend` (default: the first backend) in tables and `accuracy`."""
        return entry_label(model, backend or self.backends[0], self.backends)

    def to_dict(self) -> dict:
        return asdict(self)

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_json([self], path)

    def speed_of(self, model: str, threads: int, backend: str | None = None) -> SpeedResult:
        """The timing of a row label, or of a model name on `backend` (default: the first backend)."""
        label = self.label(model, backend)
        for s in self.speed:
            if s.threads == threads and (s.model == label or (backend is None and s.model == model)):
                return s
        raise KeyError((model, threads, backend))


def write_json(results: Sequence[BenchResult], path: str | os.PathLike) -> Path:
    """Write one or more results as JSON, atomically."""
    payload = results[0].to_dict() if len(results) == 1 else {"results": [r.to_dict() for r in results]}
    return write_text(path, json.dumps(payload, indent=2, default=str))
