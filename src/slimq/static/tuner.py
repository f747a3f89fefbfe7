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
from slimq.static.rounding import with_rounding
from slimq.static.steps import Split, apply_plan, observer_settings, plan_static, root_algorithms
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
    """One model the search can build: a setting, per-tensor overrides, and the units kept float
    (a unit is a layer, "node:NAME", or a tensor, "tensor:NAME": every quantized op reading it)."""

    setting: Setting
    floats: frozenset[str] = frozenset()  # unit names
    overrides: tuple[tuple[str, Setting], ...] = ()  # (root tensor, setting)

    def with_floats(self, floats: frozenset[str] | set[str]) -> Candidate:
        return replace(self, floats=frozenset(floats))


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


def quantizable_units(plan: QuantPlan, graph: ir.Graph) -> dict[str, frozenset[str]]:
    """What a search may keep float, as unit name -> the quantized compute nodes it floats: every layer
    ("node:NAME"), and every calibrated tensor ("tensor:NAME": all compute ops reading it or a tensor
    sharing its scale, so the tensor itself stays float — where an activation range is the damage)."""
    compute = {n for n, op in plan.quantized_nodes.items() if op_info(op).role is Role.COMPUTE}
    units = {f"node:{n}": frozenset({n}) for n in compute}
    readers: dict[str, set[str]] = {}
    for node in graph:
        name = node_name(node)
        if name in compute:
            for v in node.inputs:
                if v is not None and v.name in plan.activations:
                    readers.setdefault(plan.activations[v.name], set()).add(name)
    for root, nodes in readers.items():
        if len(nodes) > 1:  # a single reader is already its layer's unit
            units[f"tensor:{root}"] = frozenset(nodes)
    for node in graph:  # a layer with its output: outlier weights and the range they produce
        name = node_name(node)
        out_name = _see_through(node).name
        out_root = plan.activations.get(out_name) if name in compute and out_name is not None else None
        if out_root is not None and out_root in readers:
            units[f"block:{name}"] = frozenset({name} | readers[out_root])
    return units


def node_name(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or ""


def _see_through(node: ir.Node) -> ir.Value:
    """The tensor a node's result is quantized as: its output, or that of a fused Relu/Clip reading it."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and op_info(uses[0].node.op_type).role is Role.FUSED_ACTIVATION:
        return uses[0].node.outputs[0]
    return out


class Tuner:
    """Calibrates once; builds, measures and times candidates."""

    def __init__(self, fp32: onnx.ModelProto, cfg: StaticConfig, samples: SampleSet, split: Split, budget: Budget,
                 metric: Metric | None = None, time_latency: bool = True,
                 algo_for: dict[str, str] | None = None) -> None:
        self.fp32, self.cfg, self.budget = fp32, cfg, budget
        self.samples, self.split = samples, split
        irm = ir.from_proto(fp32)
        self.plan = plan_static(irm.graph, cfg)
        self.units = quantizable_units(self.plan, irm.graph)
        self.base_overrides = tuple((r, Setting(a)) for r, a in sorted(root_algorithms(self.plan, algo_for or {}).items()))
        self.calib = self._calibrate(irm, samples, split)
        check = [samples.sample(i) for i in split.check]
        self.measure = BudgetMeasure(budget, fp32, check, metric)
        self.feed = check[0]
        self.time_latency = time_latency
        self.fp32_latency = latency_ms(fp32, self.feed) if time_latency else None
        self.macs = count_macs(fp32, self.feed).per_node
        self._data_input = {(n.name or n.outputs[0].name): n.inputs[0].name for n in irm.graph
                            if n.inputs and n.inputs[0] is not None}
        self._ranges: dict[tuple[str, Setting], tuple[float, float]] = {}
        self.trials: list[Trial] = []

    def _calibrate(self, irm: ir.Model, samples: SampleSet, split: Split) -> Calibration:
        from slimq.graph.passes.bias_correction import bias_sites

        sites = bias_sites(irm, self.plan)
        cfg = self.cfg
        calib = calibrate(self.fp32, self.plan.roots, lambda: samples.batches(split.calib, cfg.batch_size),
                          get_algorithm("hist"), observer_settings(self.plan.rules, cfg), cfg.memory_budget_mb,
                          cfg.show_progress, -(-len(split.calib) // cfg.batch_size), self.plan.bounds,
                          mean_tensors=sorted({s.bias.activation for s in sites}), keep_observers=True)
        return with_rounding(calib, self.fp32, self.plan, samples, split.calib, cfg)  # learned once, every candidate

    def _range(self, root: str, s: Setting) -> tuple[float, float]:
        key = (root, s)
        if key not in self._ranges:
            settings = replace(observer_settings(self.plan.rules, self.cfg), hist_percent=s.hist_percent,
                               two_sided=s.two_sided)
            self._ranges[key] = compute_range(self.calib.observers[root], get_algorithm(s.algo), settings)
        return self._ranges[key]

    def nodes_of(self, units: frozenset[str] | set[str]) -> frozenset[str]:
        return frozenset().union(*(self.units[u] for u in units)) if units else frozenset()

    def config_for(self, c: Candidate) -> StaticConfig:
        skip = self.cfg.skip
        nodes = tuple(sorted(self.nodes_of(c.floats)))
        return replace(self.cfg, skip=SkipSpec(skip.names + nodes, skip.op_types, skip.patterns),
                       algo=c.setting.algo, hist_percent=c.setting.hist_percent,
                       two_sided_ranges=c.setting.two_sided, bias_correction=c.setting.bias_correction)

    def build(self, c: Candidate) -> tuple[onnx.ModelProto, QuantPlan, int]:
        cfg = self.config_for(c)
        irm = ir.from_proto(self.fp32)
        plan = plan_static(irm.graph, cfg, allow_empty=True)
        overrides = dict(c.overrides)
        full_root = self.plan.activations
        ranges = {}
        for root in plan.roots:
            observed = root if root in self.calib.observers else full_root.get(root, root)
            ranges[root] = self._range(observed, overrides.get(observed, c.setting))
        plan = plan.with_ranges(ranges)
        model, corrected = apply_plan(irm, plan, self.calib, cfg)
        return model, plan, corrected

    def int8_share(self, plan: QuantPlan) -> float:
        """Share of MACs in compute nodes the plan runs in int8 (quantized, with a quantized data input)."""
        total = sum(self.macs.values())
        int8 = sum(m for n, m in self.macs.items()
                   if n in plan.quantized_nodes and self._data_input.get(n) in plan.activations)
        return int8 / total if total else 1.0

    def trial(self, c: Candidate, phase: str, change: str, timed: bool | None = None) -> Trial:
        t0 = time.perf_counter()
        model, plan, _ = self.build(c)
        score = self.measure(model)
        timed = self.time_latency if timed is None else timed
        lat = latency_ms(model, self.feed) if timed else None
        t = Trial(len(self.trials), phase, change, c, score, lat, self.int8_share(plan), time.perf_counter() - t0)
        self.trials.append(t)
        return t

    def deficit(self, c: Candidate, phase: str, change: str) -> float:
        """Score only (no timing): for sensitivity probes."""
        return self.trial(c, phase, change, timed=False).score.deficit


def best_of(trials: Sequence[Trial], min_int8_share: float = 0.0) -> Trial:
    """The fastest trial that meets the budget (fewest MACs kept float; measured latencies are too noisy
    to separate candidates of equal structure), widest margin first; else the one closest to the budget.
    Trials below the int8-share floor are not eligible (the first trial, all int8, always is)."""
    trials = [t for t in trials if t.int8_share >= min_int8_share] or list(trials[:1])
    meeting = [t for t in trials if t.score.meets]
    if meeting:
        return min(meeting, key=lambda t: (-round(t.int8_share, 4), len(t.candidate.floats), t.score.deficit))
    return min(trials, key=lambda t: (t.score.deficit, -t.int8_share))
