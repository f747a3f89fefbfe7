"""Static post-training quantization: plan -> calibrate (one pass) -> apply -> report -> publish."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import onnx
import onnx_ir as ir

from slimq.core.config import StaticConfig, TargetRules, target_rules
from slimq.core.errors import NothingToQuantizeError
from slimq.core.observers import ObserverSettings, get_algorithm
from slimq.graph.passes import preprocess
from slimq.graph.passes.bias_correction import bias_sites, correct_biases
from slimq.graph.plan import QuantPlan, build_plan
from slimq.graph.qdq import insert_qdq
from slimq.io.images import PreprocessSpec
from slimq.io.model import load_model
from slimq.io.samples import SampleSet, load_samples
from slimq.io.spec import model_inputs
from slimq.report.build import Check, Evidence, build_report, op_counts
from slimq.report.publish import QuantResult, check_output, publish
from slimq.report.schema import FloatOp, Report
from slimq.runtime.cpu import cpu_info
from slimq.static.calibrate import Calibration, calibrate

log = logging.getLogger("slimq")

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass(frozen=True)
class Split:
    """Which samples calibrate and which are held back to check agreement with FP32."""

    calib: list[int]
    check: list[int]
    in_sample: bool


def split_samples(n_samples: int, cfg: StaticConfig) -> Split:
    """At most `max_samples` calibrate; `holdout` (at most a fifth of the data) are held back. With too
    little data the check reuses the first calibration samples and says so."""
    hold = min(cfg.holdout, n_samples // 5)
    calib = list(range(min(cfg.max_samples, n_samples - hold)))
    if hold:
        return Split(calib, list(range(n_samples - hold, n_samples)), False)
    return Split(calib, calib[: min(4, len(calib))], True)


def resolve_reduce_range(cfg: StaticConfig) -> bool:
    if cfg.reduce_range is not None:
        return cfg.reduce_range
    return cfg.target in ("x86", "openvino") and not cpu_info().vnni


def plan_static(graph: ir.Graph, cfg: StaticConfig) -> QuantPlan:
    """Which tensors get which quantization (no data needed)."""
    rules = target_rules(cfg.target, resolve_reduce_range(cfg), cfg.per_channel)
    plan = build_plan(graph, rules, cfg.skip, cfg.op_types)
    if not plan.quantized_nodes:
        raise NothingToQuantizeError("No op in this model can be quantized statically (no Conv/MatMul/Gemm/... on "
                                     "float data). Nothing was written.")
    return plan


def observer_settings(rules: TargetRules, cfg: StaticConfig) -> ObserverSettings:
    qt = rules.activation_qtype
    return ObserverSettings(cfg.hist_percent, cfg.bins, qt.qmax - qt.qmin + 1, rules.activation_symmetric,
                            min_values_to_clip=1024, two_sided=cfg.two_sided_ranges)


def run_calibration(fp32: onnx.ModelProto, irm: ir.Model, plan: QuantPlan, samples: SampleSet, idx: list[int],
                    cfg: StaticConfig) -> Calibration:
    """Ranges of the plan's root tensors and, with bias correction, the means its sites need: one pass."""
    sites = bias_sites(irm, plan) if cfg.bias_correction else []
    return calibrate(fp32, plan.roots, lambda: samples.batches(idx, cfg.batch_size), get_algorithm(cfg.algo),
                     observer_settings(plan.rules, cfg), cfg.memory_budget_mb, cfg.show_progress,
                     -(-len(idx) // cfg.batch_size), plan.bounds,
                     mean_tensors=sorted({s.bias.activation for s in sites}))


def apply_plan(irm: ir.Model, plan: QuantPlan, calib: Calibration, cfg: StaticConfig) -> tuple[onnx.ModelProto, int]:
    """Bias correction (if on) and Q/DQ insertion; returns the INT8 model and the corrected-layer count."""
    corrected = correct_biases(irm, plan, calib.means) if cfg.bias_correction and calib.means else 0
    if corrected:
        log.info("slimq: bias correction on %d layers", corrected)
    insert_qdq(irm, plan)
    return ir.to_proto(irm), corrected


def _constant_warning(constant: tuple[str, ...]) -> list[str]:
    if not constant:
        return []
    names = ", ".join(constant[:6]) + (f" and {len(constant) - 6} more" if len(constant) > 6 else "")
    return [f"{len(constant)} activation tensor(s) had one constant value on every calibration sample ({names}): "
            "their int8 range is degenerate, and other values at run time will saturate. Check that the "
            "calibration data is representative (not blank or all-zero)."]


def static_report(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: QuantPlan, samples: SampleSet, split: Split,
                  calib: Calibration, corrected: int, cfg: StaticConfig) -> Report:
    details = {"algo": get_algorithm(cfg.algo).name, "plan": plan.summary(), "bias_corrected_layers": corrected,
               "calibration": {"samples": len(split.calib), "batches": calib.batches,
                               "held_back": 0 if split.in_sample else len(split.check)},
               "constant_tensors": list(calib.constant)}
    inputs = "samples also used for calibration (none held back)" if split.in_sample else "held-back samples"
    ev = Evidence("static", cfg.target, plan.rules.description, fp32, int8, [samples.sample(i) for i in split.check],
                  inputs, split.in_sample, op_counts(list(plan.quantized_nodes.values())),
                  [FloatOp(f.node, f.op_type, f.reason) for f in plan.float_nodes],
                  warnings=_constant_warning(calib.constant), details=details)
    return build_report(ev, Check(cfg.min_cosine))


def quantize_static(model: ModelSource, calib_data: object, config: StaticConfig = StaticConfig(),
                    output: str | os.PathLike | None = None,
                    preprocess_spec: PreprocessSpec | None = None) -> QuantResult:
    """Quantize `model` with activation ranges calibrated on `calib_data`.

    calib_data: a folder of images or .npy/.npz files, an array, a dict of arrays, or a list of feed dicts.
    With `output`, the model and `<output>.report.json` are written atomically; the input is never touched.
    """
    out = check_output(model, output)
    fp32 = preprocess(model if isinstance(model, onnx.ModelProto) else load_model(model))
    samples = load_samples(calib_data, model_inputs(fp32), preprocess_spec)
    split = split_samples(len(samples), config)
    irm = ir.from_proto(fp32)
    plan = plan_static(irm.graph, config)
    calib = run_calibration(fp32, irm, plan, samples, split.calib, config)
    plan = plan.with_ranges(calib.ranges)
    int8, corrected = apply_plan(irm, plan, calib, config)
    report = static_report(fp32, int8, plan, samples, split, calib, corrected, config)
    return publish(int8, report, out, strict=config.strict, source=model, artifacts={"plan": plan})
