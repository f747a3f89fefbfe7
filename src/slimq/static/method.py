"""Static post-training quantization: plan -> calibrate (one pass) -> apply -> report -> publish."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.io.images import PreprocessSpec
from slimq.io.samples import SampleSet, load_samples
from slimq.io.source import Source, load_source, model_location, with_conversion
from slimq.io.spec import model_inputs
from slimq.report.measure import resolve_metric
from slimq.report.publish import QuantResult, check_output, publish
from slimq.static.mobile import check_mobile_path, mobile_format, with_mobile, write_mobile
from slimq.static.rewrites import Rewrites, prequantize
from slimq.static.search import budget_warning, search
from slimq.static.speed_step import Built, guard_speed, with_speed
from slimq.static.steps import (
    Split,
    apply_plan,
    plan_static,
    run_calibration,
    split_samples,
    static_report,
    static_rules,
)
from slimq.static.tuner import Candidate, Tuner
from slimq.tasks.metrics import Metric

ModelSource = str | os.PathLike | onnx.ModelProto


def quantize_static(model: ModelSource | Any, calib_data: object, config: StaticConfig = StaticConfig(),
                    output: str | os.PathLike | None = None, preprocess_spec: PreprocessSpec | None = None, *,
                    eval_data: object = None, metric: Metric | Callable[..., float] | None = None) -> QuantResult:
    """Quantize `model` with activation ranges calibrated on `calib_data`.

    model: an ONNX path or ModelProto, a PyTorch model (``nn.Module`` with example inputs, an ExportedProgram,
    a ``.pt2`` file) or a Paddle inference model folder; non-ONNX models are converted and checked against
    their framework on the calibration samples first (:func:`slimq.io.source.load_source`).
    calib_data: a folder of images or .npy/.npz files, an array, a dict of arrays, or a list of feed dicts.
    With ``config.budget`` slimq searches calibration settings and mixed precision until the model meets it
    (:mod:`slimq.static.search`); ``eval_data`` and ``metric`` (a built-in name in the budget, or any
    ``metric(predict) -> float`` / :class:`slimq.tasks.metrics.Metric`) serve a ``max_drop`` budget.
    With `output`, the model and `<output>.report.json` are written atomically; the input is never touched.
    """
    out = check_output(model_location(model), output)
    check_mobile_path(out, model_location(model), config)
    src = load_source(model, calib_data, preprocess_spec)
    fp32 = preprocess(src.model)
    samples = load_samples(calib_data, model_inputs(fp32), preprocess_spec)
    split = split_samples(len(samples), config)
    rw = prequantize(fp32, samples, split.calib, config, static_rules(config))
    if config.budget is not None:
        task_metric = resolve_metric(config.budget, metric, eval_data, src.path or src.model, fp32)
        return _with_budget(src, rw, samples, split, config, task_metric, out)
    irm = ir.from_proto(rw.model)
    plan = plan_static(irm.graph, config)
    calib = run_calibration(rw.model, irm, plan, samples, split.calib, config, rw.algo_for)
    plan = plan.with_ranges(calib.ranges)
    int8, corrected = apply_plan(irm, plan, calib, config)
    checks = [samples.sample(i) for i in split.check]
    speed = guard_speed(rw.model, Built(int8, plan, corrected), calib, config, checks[0], checks=checks)
    int8, plan, corrected = speed.built.model, speed.built.plan, speed.built.corrected
    report = static_report(fp32, int8, plan, samples, split, calib, corrected, config, rewrites=rw.details)
    report = with_conversion(with_speed(report, speed), src)
    mobile = mobile_format(int8, config, [samples.sample(i) for i in split.check], out)
    result = publish(int8, with_mobile(report, mobile, out), out, strict=config.strict, source=src.size_source,
                     artifacts={"plan": plan, "speed": speed, "ort_format": mobile})
    return write_mobile(result, mobile)


def _with_budget(src: Source, rw: Rewrites, samples: SampleSet, split: Split, config: StaticConfig,
                 metric: Metric | None, out: Path | None) -> QuantResult:
    budget = config.budget
    assert budget is not None  # checked by the caller
    fp32 = rw.model
    tuner = Tuner(fp32, config, samples, split, budget, metric, algo_for=rw.algo_for)
    result = search(tuner, budget)
    int8, plan, corrected = tuner.build(result.best.candidate)
    speed = guard_speed(tuner.fp32, Built(int8, plan, corrected), tuner.calib, config, tuner.feed,
                        builder=lambda floats: _search_build(tuner, result.best.candidate, floats),
                        checks=[samples.sample(i) for i in split.check])
    int8, plan, corrected = speed.built.model, speed.built.plan, speed.built.corrected
    cfg = tuner.config_for(result.best.candidate)
    check = replace(cfg, min_cosine=budget.min_cosine if budget.min_cosine is not None else cfg.min_cosine)
    report = static_report(fp32, int8, plan, samples, split, tuner.calib, corrected, check,
                           search_details=result.details(budget), budget_warning=budget_warning(result, budget),
                           rewrites=rw.details)
    return publish(int8, with_conversion(with_speed(report, speed), src), out, strict=config.strict,
                   source=src.size_source, artifacts={"plan": plan, "search": result, "speed": speed})


def _search_build(tuner: Tuner, chosen: Candidate, floats: frozenset[str]) -> Built:
    """The search's chosen candidate with `floats` (compute layers) also kept float, built by the tuner."""
    units = {f"node:{n}" for n in floats if f"node:{n}" in tuner.units}
    return Built(*tuner.build(chosen.with_floats(chosen.floats | units)))
