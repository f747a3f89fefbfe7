"""Accuracy control for static PTQ: reach the user's budget with the fastest model, or say how close.

Order of the search (every candidate is built and measured; nothing relies on a one-shot ranking):
1. the configured setting; stop if it meets the budget;
2. calibration settings that cost no speed (observer algorithm, percentile, two-sided ranges, bias
   correction) for the whole model, then for the most sensitive tensors one by one;
3. mixed precision: sensitivity (the recovery from keeping each layer float alone, group-tested),
   then layers go float one at a time in that order, each step re-measured and kept only if it
   helps; the ranking is refreshed as the model changes (interactions are real);
4. a speed pass: layers that no longer need to be float go back to int8 while the budget holds.
The result is the fastest measured candidate that meets the budget; if none does within the time
budget, the closest one, reported as such (the caller writes it with exit code 3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from slimq.core.budget import Budget
from slimq.static.sensitivity import cache_key, load_cached
from slimq.static.tuner import Candidate, Clock, Setting, Trial, Tuner, best_of

log = logging.getLogger("slimq")
SWEEP = (Setting("hist", 0.9999), Setting("hist", 0.99999), Setting("hist", 0.999), Setting("mse"), Setting("KL"),
         Setting("emd"), Setting("abs_max"), Setting("avg"))
MAX_GROUP_PROBES = 48
RERANK_EVERY = 4


@dataclass(frozen=True)
class SearchResult:
    """The chosen candidate and everything measured on the way."""

    best: Trial
    trials: tuple[Trial, ...]
    recovery: dict[str, float]
    seconds: float
    fp32_latency_ms: float | None
    float_nodes: frozenset[str] = frozenset()

    @property
    def met(self) -> bool:
        return self.best.score.meets

    def details(self, budget: Budget) -> dict[str, Any]:
        return {"budget": budget.describe(), "time_budget_s": budget.time_budget, "met": self.met,
                "seconds": round(self.seconds, 1), "candidates": len(self.trials),
                "fp32_latency_ms": None if self.fp32_latency_ms is None else round(self.fp32_latency_ms, 3),
                "chosen": self.best.to_dict(), "float_units": sorted(self.best.candidate.floats),
                "float_layers": sorted(self.float_nodes),
                "sensitivity": [{"unit": n, "recovery": round(r, 6)} for n, r in
                                sorted(self.recovery.items(), key=lambda kv: -kv[1])],
                "trace": [t.to_dict() for t in self.trials]}


def _better(a: Trial, b: Trial) -> bool:
    return (a.score.deficit, -a.int8_share) < (b.score.deficit, -b.int8_share)


class Search:
    def __init__(self, tuner: Tuner, budget: Budget) -> None:
        self.t, self.budget = tuner, budget
        self.clock = Clock(budget.time_budget)
        self.recovery: dict[str, float] = {}

    def out_of_time(self) -> bool:
        return self.clock.left <= 0

    # -- 2. calibration settings ---------------------------------------------------------------
    def sweep(self, base: Trial) -> Trial:
        best = base
        for s in SWEEP:  # settings cost no speed: measure them all and keep the widest margin
            if self.out_of_time():
                break
            if s == base.candidate.setting:
                continue
            best = min(best, self.t.trial(replace(base.candidate, setting=s), "settings", f"all tensors: {s.label}"),
                       key=lambda t: (t.score.deficit, -t.int8_share))
        for variant in (replace(best.candidate.setting, two_sided=not best.candidate.setting.two_sided),
                        replace(best.candidate.setting, bias_correction=not best.candidate.setting.bias_correction)):
            if self.out_of_time():
                break
            trial = self.t.trial(replace(best.candidate, setting=variant), "settings", f"all tensors: {variant.label}")
            best = trial if _better(trial, best) else best
        return best

    # -- 3. mixed precision --------------------------------------------------------------------
    def rank(self, state: Trial, units: Sequence[str]) -> dict[str, float]:
        """Recovery (deficit drop) from keeping each unit float, given `state`; group testing."""
        base, c = state.score.deficit, state.candidate
        n_groups = min(len(units), MAX_GROUP_PROBES // 2 or 1)
        size = -(-len(units) // max(n_groups, 1))
        groups = [list(units[i:i + size]) for i in range(0, len(units), size)]
        probed: list[tuple[float, list[str]]] = []
        for g in groups:
            if self.out_of_time():
                break
            d = self.t.deficit(c.with_floats(c.floats | set(g)), "sensitivity", f"float {len(g)} layer(s)")
            probed.append((base - d, g))
        probes = len(probed)
        out: dict[str, float] = {}
        while probed and probes < MAX_GROUP_PROBES * 2 and not self.out_of_time():
            probed.sort(key=lambda p: -p[0])
            rec, g = probed.pop(0)
            if len(g) == 1:
                out[g[0]] = rec
                continue
            for half in (g[: len(g) // 2], g[len(g) // 2:]):
                d = self.t.deficit(c.with_floats(c.floats | set(half)), "sensitivity", f"float {len(half)} layer(s)")
                probed.append((base - d, half))
                probes += 1
        for rec, g in probed:  # not refined: members share the group's recovery
            out.update({u: rec / len(g) for u in g})
        return out

    def try_pairs(self, state: Trial, ranking: dict[str, float], top: int = 6) -> Trial:
        """When no single unit helps any more: units that only help together (a layer and its readers)."""
        best = sorted(self.recovery, key=lambda u: -self.recovery[u])[:top]
        for i, a in enumerate(best):
            for b in best[i + 1:]:
                if self.out_of_time() or {a, b} <= state.candidate.floats:
                    continue
                trial = self.t.trial(state.candidate.with_floats(state.candidate.floats | {a, b}), "mixed precision",
                                     f"keep {a} and {b} float")
                if trial.int8_share >= self.budget.min_int8_share and trial.score.deficit < state.score.deficit:
                    return trial
        return state

    def cached_ranking(self, state: Trial) -> dict[str, float] | None:
        """Recoveries from an earlier `slimq sensitivity` run with the same model, data and budget."""
        if state.candidate.floats:
            return None
        t = self.t
        cached = load_cached(cache_key(t.fp32, t.samples, t.split, self.budget.describe()))
        if cached is None or not set(t.units) <= set(cached):
            return None
        log.info("slimq: accuracy search: using the cached sensitivity of %d units", len(cached))
        return {u: cached[u] for u in t.units}

    def float_greedily(self, state: Trial) -> Trial:
        candidates = [u for u in self.t.units if u not in state.candidate.floats]
        ranking = self.cached_ranking(state) or self.rank(state, candidates)
        self.recovery = dict(ranking)
        accepted = 0
        while not state.score.meets and not self.out_of_time():
            order = [u for u in sorted(ranking, key=lambda u: -ranking[u]) if ranking[u] > 0]
            if not order:
                paired = self.try_pairs(state, ranking)
                if paired is state:
                    break
                state = paired
                ranking = self.rank(state, [u for u in self.t.units if u not in state.candidate.floats])
                continue
            unit = order[0]
            ranking.pop(unit)
            trial = self.t.trial(state.candidate.with_floats(state.candidate.floats | {unit}), "mixed precision",
                                 f"keep {unit} float")
            if trial.int8_share < self.budget.min_int8_share:
                continue
            if trial.score.deficit < state.score.deficit:
                state, accepted = trial, accepted + 1
                if accepted % RERANK_EVERY == 0 and ranking:
                    ranking = self.rank(state, sorted(ranking, key=lambda u: -ranking[u])[:MAX_GROUP_PROBES // 2])
        return state

    # -- 4. speed ------------------------------------------------------------------------------
    def restore(self, state: Trial) -> Trial:
        """Put floated layers back to int8 (least useful first) while the budget still holds."""
        for unit in sorted(state.candidate.floats, key=lambda u: self.recovery.get(u, 0.0)):
            if self.out_of_time():
                break
            trial = self.t.trial(state.candidate.with_floats(state.candidate.floats - {unit}), "speed",
                                 f"{unit} back to int8")
            if trial.score.meets:
                state = trial
        return state

    def run(self) -> SearchResult:
        base = self.t.trial(Candidate(Setting.of(self.t.cfg), overrides=self.t.base_overrides), "start",
                            "configured setting")
        state = self.sweep(base)
        if not state.score.meets and not self.out_of_time():
            state = self.float_greedily(state)
            if state.score.meets:
                state = self.restore(state)
        best = best_of([t for t in self.t.trials if t.phase != "sensitivity"], self.budget.min_int8_share)
        log.info("slimq: accuracy search: %d candidates in %.0f s; %s", len(self.t.trials), self.clock.elapsed,
                 "budget met" if best.score.meets else f"budget NOT met (deficit {best.score.deficit:.3f})")
        return SearchResult(best, tuple(self.t.trials), self.recovery, self.clock.elapsed, self.t.fp32_latency,
                            self.t.nodes_of(best.candidate.floats))


def budget_warning(result: SearchResult, budget: Budget) -> list[str]:
    """The honest line when the budget was not met: how far the best candidate is."""
    if result.met:
        return []
    s = result.best.score
    reached = [f"cosine {s.cosine:.4f}"] + ([f"top-1 agreement {s.agreement * 100:.1f} %"] if s.agreement is not None
                                           else []) + ([f"metric drop {s.metric_drop:.3f}"] if s.metric_drop is not None
                                                       else [])
    return [f"accuracy budget NOT met ({budget.describe()}): the best of {len(result.trials)} candidates in "
            f"{result.seconds:.0f} s reached {', '.join(reached)} with {result.best.int8_share * 100:.0f} % of MACs "
            f"in int8 (layers kept float: {len(result.best.candidate.floats)}). It was written as the best found; "
            "give a larger --time-budget, a looser budget, or more calibration data."]


def search(tuner: Tuner, budget: Budget) -> SearchResult:
    """Run the accuracy search (see the module docstring)."""
    return Search(tuner, budget).run()
