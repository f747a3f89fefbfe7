"""Accuracy-budget flags shared by the commands that produce or analyse a model."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from slimq.core.budget import Budget
from slimq.tasks.metrics import BUILTIN_METRICS

BUDGET_HELP = """\
accuracy control (static PTQ): with any of --min-cosine, --min-agreement or --max-drop, slimq searches
calibration settings, then keeps the most sensitive layers float (re-measuring after each step) until the
model meets the budget; the fastest model that meets it is written (exit 0), or, if none does within
--time-budget, the closest one, with a warning saying how far it is (exit 3; --strict: nothing written,
exit 4). The search trace is in the report (.report.json and .report.html).
"""


DYNAMIC_BUDGET_HELP = """\
accuracy control (dynamic PTQ): with --min-agreement or --max-drop (and --min-cosine), the per-layer fallback
demotes the most damaging nodes one step (dynamic -> weight-only -> float), re-measuring each candidate, until
the model meets the budget; if none does, the best one found is written with a warning (exit 3). The trace is
in the report (.report.json and .report.html).
"""


def add_budget_flags(p: argparse.ArgumentParser, min_cosine: bool = True, help_text: str = BUDGET_HELP) -> None:
    """The budget flags; min_cosine=False where the command has its own --min-cosine (dynamic PTQ)."""
    g = p.add_argument_group("accuracy budget", help_text)
    if min_cosine:
        g.add_argument("--min-cosine", type=float, help="label-free: every output's cosine to FP32 >= C (e.g. 0.995)")
    g.add_argument("--min-agreement", type=float,
                   help="label-free: top-1 agreement with FP32 >= P on class-score outputs (e.g. 0.99)")
    g.add_argument("--max-drop", type=float, help="with labels: the metric may drop at most D (in its own unit)")
    g.add_argument("--metric", help=f"metric for --max-drop: {', '.join(BUILTIN_METRICS)}")
    g.add_argument("--eval", dest="eval_data",
                   help="evaluation data for --metric: .npz with labels, fashion-mnist, ocr-rec[:N], ocr-det[:N]")
    g.add_argument("--time-budget", type=float, help="seconds for the whole search (default 600)")
    g.add_argument("--min-int8-share", type=float, help="never keep so much float that less of the MACs stay int8 "
                                                       "(default 0.5)")


def budget_from_args(args: argparse.Namespace, recipe: Budget | None, triggers: tuple[str, ...] = ()) -> Budget | None:
    """The recipe's budget with the flags applied; None when neither asks for one (with `triggers`, only
    those flags ask for one: the others then only shape it)."""
    keys = ("min_cosine", "min_agreement", "max_drop", "metric", "time_budget", "min_int8_share")
    given: dict[str, Any] = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if not given or (triggers and recipe is None and not any(k in given for k in triggers)):
        return recipe
    return replace(recipe, **given) if recipe is not None else Budget(**given)
