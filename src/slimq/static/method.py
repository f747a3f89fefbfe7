"""Static post-training quantization: plan -> calibrate (one pass) -> apply -> report -> publish."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx
import onnx_ir as ir

from slimq.core.budget import Budget
from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.io.images import PreprocessSpec
from slimq.io.model import load_model
from slimq.io.samples import SampleSet, load_samples
from slimq.io.spec import model_inputs
from slimq.report.publish import QuantResult, check_output, publish
from slimq.static.rewrites import Rewrites, prequantize
from slimq.static.search import budget_warning, search
from slimq.static.steps import (
    Split,
    apply_plan,
    plan_static,
    run_calibration,
    split_samples,
    static_report,
    static_rules,
)
from slimq.static.tuner import Tuner
from slimq.tasks.metrics import Metric, builtin_metric

ModelSource = str | os.PathLike | onnx.ModelProto


def quantize_static(model: ModelSource, calib_data: object, config: StaticConfig = StaticConfig(),
                    output: str | os.PathLike | None = None, preprocess_spec: PreprocessSpec | None = None, *,
                    eval_data: object = None, metric: Metric | Callable[..., float] | None = None) -> QuantResult:
    """Quantize `model` with activation ranges calibrated on `calib_data`.

    calib_data: a folder of images or .npy/.npz files, an array, a dict of arrays, or a list of feed dicts.
    With ``config.budget`` slimq searches calibration settings and mixed precision until the model meets it
    (:mod:`slimq.static.search`); ``eval_data`` and ``metric`` (a built-in name in the budget, or any
    ``metric(predict) -> float`` / :class:`slimq.tasks.metrics.Metric`) serve a ``max_drop`` budget.
    With `output`, the model and `<output>.report.json` are written atomically; the input is never touched.
    """
    out = check_output(model, output)
    fp32 = preprocess(model if isinstance(model, onnx.ModelProto) else load_model(model))
    samples = load_samples(calib_data, model_inputs(fp32), preprocess_spec)
    split = split_samples(len(samples), config)
    rw = prequantize(fp32, samples, split.calib, config, static_rules(config))
    if config.budget is not None:
        task_metric = resolve_metric(config.budget, metric, eval_data, model, fp32)
        return _with_budget(model, rw, samples, split, config, task_metric, out)
    irm = ir.from_proto(rw.model)
    plan = plan_static(irm.graph, config)
    calib = run_calibration(rw.model, irm, plan, samples, split.calib, config, rw.algo_for)
    plan = plan.with_ranges(calib.ranges)
    int8, corrected = apply_plan(irm, plan, calib, config)
    report = static_report(fp32, int8, plan, samples, split, calib, corrected, config, rewrites=rw.details)
    return publish(int8, report, out, strict=config.strict, source=model, artifacts={"plan": plan})


def resolve_metric(budget: Budget, metric: Metric | Callable[..., float] | None, eval_data: object,
                   model: ModelSource, fp32: onnx.ModelProto) -> Metric | None:
    """The task metric of a budget: given as an object/callable, or built in by name on `eval_data`."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(budget.metric or str(getattr(metric, "__name__", "metric")), metric)
    if budget.metric is None:
        return None
    path = None if isinstance(model, onnx.ModelProto) else Path(model)
    return builtin_metric(budget.metric, eval_data, path, [i.name for i in model_inputs(fp32)])


def _with_budget(model: ModelSource, rw: Rewrites, samples: SampleSet, split: Split, config: StaticConfig,
                 metric: Metric | None, out: Path | None) -> QuantResult:
    budget = config.budget
    assert budget is not None  # checked by the caller
    fp32 = rw.model
    tuner = Tuner(fp32, config, samples, split, budget, metric, algo_for=rw.algo_for)
    result = search(tuner, budget)
    int8, plan, corrected = tuner.build(result.best.candidate)
    cfg = tuner.config_for(result.best.candidate)
    check = replace(cfg, min_cosine=budget.min_cosine if budget.min_cosine is not None else cfg.min_cosine)
    report = static_report(fp32, int8, plan, samples, split, tuner.calib, corrected, check,
                           search_details=result.details(budget), budget_warning=budget_warning(result, budget),
                           rewrites=rw.details)
    return publish(int8, report, out, strict=config.strict, source=model,
                   artifacts={"plan": plan, "search": result})
