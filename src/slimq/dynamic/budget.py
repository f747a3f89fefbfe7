"""Accuracy control for dynamic PTQ: the per-layer fallback driven by the same budget and measure as static
PTQ's search (:class:`slimq.core.budget.Budget`, :class:`slimq.report.measure.BudgetMeasure`).

The fallback demotes the most damaging nodes one step (dynamic -> weight-only -> float), re-measuring every
candidate against the budget; each candidate goes into a trace with the keys of static PTQ's search trace, so
the report and its HTML page show both the same way. If no candidate meets the budget the best one found is
written and the report says how far it is (exit 3), never nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from slimq.core.budget import Budget
from slimq.dynamic.check import Builder, Demotion, search_fallback
from slimq.dynamic.graph import Choice, Decision
from slimq.report.agreement import Reference
from slimq.report.measure import BudgetMeasure, Score

log = logging.getLogger("slimq")


@dataclass
class Trace:
    """Every candidate the budgeted fallback measured, in order."""

    measure: BudgetMeasure
    start: float = field(default_factory=time.perf_counter)
    trials: list[dict[str, Any]] = field(default_factory=list)

    def score(self, model: onnx.ModelProto, phase: str, change: str, floats: list[str]) -> Score:
        t = time.perf_counter()
        s = self.measure(model)
        self.trials.append({"step": len(self.trials), "phase": phase, "change": change, "setting": "",
                            "floats": floats, **s.to_dict(), "meets": s.meets, "latency_ms": None,
                            "int8_share": None, "seconds": round(time.perf_counter() - t, 2)})
        return s


@dataclass(frozen=True)
class Budgeted:
    """The decisions the budgeted fallback chose, what it demoted, its final score and the report's search part."""

    decisions: list[Decision]
    demotions: list[Demotion]
    score: Score
    details: dict[str, Any]


def _float_names(decisions: list[Decision]) -> list[str]:
    return sorted(d.node for d in decisions if d.choice is Choice.FLOAT)


def budgeted_fallback(measure: BudgetMeasure, rank_check: Reference, build: Builder, decisions: list[Decision],
                      budget: Budget, min_cosine: float, weight_only: Callable[[Decision], Decision]) -> Budgeted:
    """Meet `budget` with the fewest demotions (see :func:`slimq.dynamic.check.search_fallback`)."""
    trace = Trace(measure)
    first = trace.score(build(decisions), "configured", "as configured", _float_names(decisions))
    chosen, final, written = decisions, first, 0
    demotions: list[Demotion] = []
    if not first.meets:
        def value(model: onnx.ModelProto) -> float:
            return -trace.score(model, "fallback", "demote the most damaging nodes one step", []).deficit

        chosen, demotions = search_fallback(rank_check, rank_check, build, decisions,
                                            budget.min_cosine or min_cosine, weight_only, value, 0.0)
        final = trace.score(build(chosen), "result", f"{len(demotions)} node(s) demoted", _float_names(chosen))
        written = len(trace.trials) - 1
        all_float = all(d.choice is Choice.FLOAT for d in chosen)
        if final.deficit > first.deficit or all_float:  # worse, or nothing left in int8: keep the configured model
            chosen, demotions, final, written = decisions, [], first, 0
            trace.trials[-1]["change"] += " (every node float: not a quantized model)" if all_float else ""
    details = {"budget": budget.describe(), "time_budget_s": budget.time_budget, "met": final.meets,
               "seconds": round(time.perf_counter() - trace.start, 1), "candidates": len(trace.trials),
               "fp32_latency_ms": None, "chosen": trace.trials[written], "float_units": _float_names(chosen),
               "float_layers": _float_names(chosen),
               "sensitivity": [{"unit": d.node, "recovery": round(d.damage, 6)} for d in demotions],
               "trace": trace.trials}
    return Budgeted(chosen, demotions, final, details)


def budget_warning(result: Budgeted, budget: Budget) -> list[str]:
    """The warning (exit 3) when the written model does not meet the budget."""
    if result.score.meets:
        return []
    terms = ", ".join(f"{k} short by {v:.3g}" for k, v in result.score.terms.items() if v > 0)
    return [f"accuracy budget NOT met ({budget.describe()}): the best quantized model found is written ({terms}; "
            f"worst output cosine {result.score.cosine:.4f}, {len(result.demotions)} node(s) demoted; only float "
            "nodes would do better). Try --mode weight-only, 8-bit weights, or static PTQ with the same budget."]
