"""Score a candidate model against an accuracy budget: label-free (cosine, top-1 agreement vs FP32 on
held-back samples) and, with labels, the drop of a task metric. One number ranks candidates:
the *deficit*, the largest shortfall of any budget term relative to its own scale (<= 0: all met)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from slimq.core.budget import Budget
from slimq.io.spec import model_inputs
from slimq.report.agreement import CLASS_SCORES, Reference, Stats, worst_cosine
from slimq.runtime.session import predictor
from slimq.tasks.metrics import Metric, builtin_metric

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Score:
    """What a candidate reached on each budget term, and its deficit (<= 0: the budget is met)."""

    deficit: float
    cosine: float
    agreement: float | None = None  # worst top-1 agreement over class-score outputs
    metric: float | None = None
    metric_drop: float | None = None
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def meets(self) -> bool:
        return self.deficit <= 0.0

    def to_dict(self) -> dict[str, float | None]:
        return {"deficit": round(self.deficit, 6), "cosine": round(self.cosine, 6),
                "agreement": None if self.agreement is None else round(self.agreement, 6),
                "metric": None if self.metric is None else round(self.metric, 6),
                "metric_drop": None if self.metric_drop is None else round(self.metric_drop, 6)}


def worst_agreement(stats: Sequence[Stats]) -> float | None:
    values = [s.top1_agreement for s in stats if s.kind == CLASS_SCORES and s.top1_agreement is not None]
    return min(values) if values else None


def _shortfall(need: float, got: float) -> float:
    """Relative shortfall of a value that must reach `need` on a scale ending at 1."""
    return (need - got) / max(1.0 - need, 1e-6)


class BudgetMeasure:
    """Measures candidates against a budget; FP32 references are computed once."""

    def __init__(self, budget: Budget, fp32: onnx.ModelProto, feeds: Sequence[Feeds], metric: Metric | None = None):
        if budget.max_drop is not None and metric is None:
            raise ValueError("a max_drop budget needs a metric")
        self.budget, self.metric = budget, metric
        self.reference = Reference(fp32, feeds)
        self.metric_fp32 = None if metric is None else metric(predictor(fp32).run)
        self.agreement_ok = budget.min_agreement is None or any(k == CLASS_SCORES for k in self.reference.kinds.values())

    def __call__(self, model: onnx.ModelProto) -> Score:
        stats = self.reference.compare(model)
        cos, agree = worst_cosine(stats), worst_agreement(stats)
        b, terms = self.budget, {}
        if b.min_cosine is not None:
            terms["cosine"] = _shortfall(b.min_cosine, cos)
        if b.min_agreement is not None and agree is not None:
            terms["agreement"] = _shortfall(b.min_agreement, agree)
        value = drop = None
        if self.metric is not None and self.metric_fp32 is not None:
            value = self.metric(predictor(model).run)
            drop = self.metric.drop(self.metric_fp32, value)
            if b.max_drop is not None:
                terms["metric"] = (drop - b.max_drop) / max(b.max_drop, 1e-3)
        deficit = max(terms.values()) if terms else 0.0
        return Score(deficit, cos, agree, value, drop, terms)


def resolve_metric(budget: Budget, metric: Metric | Callable[..., float] | None, eval_data: object,
                   model: str | os.PathLike | onnx.ModelProto, fp32: onnx.ModelProto) -> Metric | None:
    """The task metric of a budget: given as an object/callable, or built in by name on `eval_data`."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(budget.metric or str(getattr(metric, "__name__", "metric")), metric)
    if budget.metric is None:
        return None
    path = None if isinstance(model, onnx.ModelProto) else Path(model)
    return builtin_metric(budget.metric, eval_data, path, [i.name for i in model_inputs(fp32)])
