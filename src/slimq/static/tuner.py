"""Build and measure static-PTQ candidates cheaply: calibrate once, then any candidate (calibration
setting per tensor, layers kept float) is a fresh plan + ranges recomputed from the kept observers +
Q/DQ insertion, measured against the budget and timed. Used by the accuracy search and `sensitivity`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import onnx_ir as ir

from slimq.core.budget import Budget
from slimq.core.config import SkipSpec, StaticConfig
from slimq.core.observers import compute_range, get_algorithm
from slimq.core.ops import Role, op_info
from slimq.graph.plan import QuantPlan
from slimq.io.samples import SampleSet
from slimq.report.measure import BudgetMeasure, Score
from slimq.runtime.macs import count_macs
from slimq.runtime.timing import latency_ms
from slimq.static.calibrate import Calibration, calibrate
from slimq.static.steps import Split, apply_plan, observer_settings, plan_static
from slimq.tasks.metrics import Metric


@dataclass(frozen=True)
class Setting:
    """A calibration setting: costs no speed, only changes ranges (and biases)."""

    algo: str = "hist"
    hist_percent: float = 0.9999
    two_sided: bool = False
    bias_correction: bool = True

    @property
    def label(self) -> str:
        pct = f" {self.hist_percent}" if self.algo == "hist" else ""
        return (f"{self.algo}{pct}{' two-sided' if self.two_sided else ''}"
                f"{'' if self.bias_correction else ' no-bias-correction'}")

    @classmethod
    def of(cls, cfg: StaticConfig) -> Setting:
        return cls(cfg.algo, cfg.hist_percent, cfg.two_sided_ranges, cfg.bias_correction)


@dataclass(frozen=True)
class Candidate:
    """One model the search can build: a setting, per-tensor overrides, and the units kept float."""

    setting: Setting
    floats: frozenset[str] = frozenset()
    overrides: tuple[tuple[str, Setting], ...] = ()  # (root tensor, setting)

    def with_floats(self, floats: frozenset[str]) -> Candidate:
        return replace(self, floats=floats)


@dataclass(frozen=True)
class Trial:
    """A measured candidate: what changed, its score, speed and int8 share."""

    step: int
    phase: str
    change: str
    candidate: Candidate
    score: Score
    latency_ms: float | None
    int8_share: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase, "change": self.change, "setting": self.candidate.setting.label,
                "floats": sorted(self.candidate.floats), "overrides": len(self.candidate.overrides),
                **self.score.to_dict(), "meets": self.score.meets,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "int8_share": round(self.int8_share, 4), "seconds": round(self.seconds, 2)}


@dataclass
class Clock:
    budget_s: float
    start: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.budget_s - self.elapsed


def quantizable_units(plan: QuantPlan) -> list[str]:
    """Nodes a search may keep float: quantized compute ops (not pass-through or fused activations)."""
    return [n for n, op in plan.quantized_nodes.items() if op_info(op).role is Role.COMPUTE]


class Tuner:
    """Calibrates once; builds, measures and times candidates."""

    def __init__(self, fp32: onnx.ModelProto, cfg: StaticConfig, samples: SampleSet, split: Split, budget: Budget,
                 metric: Metric | None = None, time_latency: bool = True) -> None:
        self.fp32, self.cfg, self.budget = fp32, cfg, budget
        irm = ir.from_proto(fp32)
        self.plan = plan_static(irm.graph, cfg)
        self.units = quantizable_units(self.plan)
        self.calib = self._calibrate(irm, samples, split)
        check = [samples.sample(i) for i in split.check]
        self.measure = BudgetMeasure(budget, fp32, check, metric)
        self.feed = check[0]
        self.time_latency = time_latency
        self.fp32_latency = latency_ms(fp32, self.feed) if time_latency else None
        self.macs = count_macs(fp32, self.feed).per_node
        self._ranges: dict[tuple[str, Setting], tuple[float, float]] = {}
        self.trials: list[Trial] = []

    def _calibrate(self, irm: ir.Model, samples: SampleSet, split: Split) -> Calibration:
        from slimq.graph.passes.bias_correction import bias_sites

        sites = bias_sites(irm, self.plan)
        cfg = self.cfg
        return calibrate(self.fp32, self.plan.roots, lambda: samples.batches(split.calib, cfg.batch_size),
                         get_algorithm("hist"), observer_settings(self.plan.rules, cfg), cfg.memory_budget_mb,
                         cfg.show_progress, -(-len(split.calib) // cfg.batch_size), self.plan.bounds,
                         mean_tensors=sorted({s.bias.activation for s in sites}), keep_observers=True)

    def _range(self, root: str, s: Setting) -> tuple[float, float]:
        key = (root, s)
        if key not in self._ranges:
            settings = replace(observer_settings(self.plan.rules, self.cfg), hist_percent=s.hist_percent,
                               two_sided=s.two_sided)
            self._ranges[key] = compute_range(self.calib.observers[root], get_algorithm(s.algo), settings)
        return self._ranges[key]

    def config_for(self, c: Candidate) -> StaticConfig:
        skip = self.cfg.skip
        return replace(self.cfg, skip=SkipSpec(skip.names + tuple(sorted(c.floats)), skip.op_types, skip.patterns),
                       algo=c.setting.algo, hist_percent=c.setting.hist_percent,
                       two_sided_ranges=c.setting.two_sided, bias_correction=c.setting.bias_correction)

    def build(self, c: Candidate) -> tuple[onnx.ModelProto, QuantPlan, int]:
        cfg = self.config_for(c)
        irm = ir.from_proto(self.fp32)
        plan = plan_static(irm.graph, cfg)
        overrides = dict(c.overrides)
        full_root = self.plan.activations
        ranges = {}
        for root in plan.roots:
            observed = root if root in self.calib.observers else full_root.get(root, root)
            ranges[root] = self._range(observed, overrides.get(observed, c.setting))
        plan = plan.with_ranges(ranges)
        model, corrected = apply_plan(irm, plan, self.calib, cfg)
        return model, plan, corrected

    def int8_share(self, floats: frozenset[str]) -> float:
        total = sum(self.macs.values())
        lost = sum(self.macs.get(n, 0) for n in floats)
        return 1.0 - lost / total if total else 1.0

    def trial(self, c: Candidate, phase: str, change: str, timed: bool | None = None) -> Trial:
        t0 = time.perf_counter()
        model, _, _ = self.build(c)
        score = self.measure(model)
        timed = self.time_latency if timed is None else timed
        lat = latency_ms(model, self.feed) if timed else None
        t = Trial(len(self.trials), phase, change, c, score, lat, self.int8_share(c.floats), time.perf_counter() - t0)
        self.trials.append(t)
        return t

    def deficit(self, c: Candidate, phase: str, change: str) -> float:
        """Score only (no timing): for sensitivity probes."""
        return self.trial(c, phase, change, timed=False).score.deficit


def best_of(trials: Sequence[Trial]) -> Trial:
    """The fastest trial that meets the budget; else the one closest to it."""
    meeting = [t for t in trials if t.score.meets]
    if meeting:
        return min(meeting, key=lambda t: (t.latency_ms if t.latency_ms is not None else float("inf"),
                                           -t.int8_share, t.score.deficit))
    return min(trials, key=lambda t: (t.score.deficit, -t.int8_share))
