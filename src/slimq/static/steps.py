"""The steps of static PTQ: split the samples, plan, calibrate (one pass), apply, report."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx
import onnx_ir as ir

from slimq.core import qmath
from slimq.core.config import StaticConfig, TargetRules, target_rules
from slimq.core.errors import NothingToQuantizeError
from slimq.core.observers import ObserverSettings, get_algorithm
from slimq.graph.passes.bias_correction import bias_sites, correct_biases
from slimq.graph.plan import QuantPlan, build_plan
from slimq.graph.qdq import insert_qdq
from slimq.io.samples import SampleSet
from slimq.report.build import Check, Evidence, build_report, op_counts
from slimq.report.schema import FloatOp, Report
from slimq.runtime.cpu import cpu_info
from slimq.static.calibrate import Calibration, calibrate
from slimq.static.diagnostics import diagnostics
from slimq.static.rounding import rounded_weights, rounding_notes, with_rounding, without_learned_biases

log = logging.getLogger("slimq")

ModelSource = str | os.PathLike | onnx.ModelProto
W4 = qmath.INT4.narrow()  # weight_bits=4: [-7, 7]


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


def static_rules(cfg: StaticConfig) -> TargetRules:
    rules = target_rules(cfg.target, resolve_reduce_range(cfg), cfg.per_channel)
    if cfg.weight_bits == 4:  # int4 values in int8 initializers: no u8 x s8 saturation, so no reduced range
        rules = replace(rules, weight_qtype=W4)
    return rules


def plan_static(graph: ir.Graph, cfg: StaticConfig, allow_empty: bool = False) -> QuantPlan:
    """Which tensors get which quantization (no data needed); `allow_empty` for search candidates."""
    plan = build_plan(graph, static_rules(cfg), cfg.skip, cfg.op_types)
    if not plan.quantized_nodes and not allow_empty:
        raise NothingToQuantizeError("No op in this model can be quantized statically (no Conv/MatMul/Gemm/... on "
                                     "float data). Nothing was written.")
    return plan


def observer_settings(rules: TargetRules, cfg: StaticConfig) -> ObserverSettings:
    qt = rules.activation_qtype
    return ObserverSettings(cfg.hist_percent, cfg.bins, qt.qmax - qt.qmin + 1, rules.activation_symmetric,
                            min_values_to_clip=1024, two_sided=cfg.two_sided_ranges)


def root_algorithms(plan: QuantPlan, algo_for: dict[str, str]) -> dict[str, str]:
    """Per-tensor calibration algorithms, moved to the roots whose range those tensors share."""
    return {plan.activations[t]: a for t, a in algo_for.items() if t in plan.activations}


def run_calibration(fp32: onnx.ModelProto, irm: ir.Model, plan: QuantPlan, samples: SampleSet, idx: list[int],
                    cfg: StaticConfig, algo_for: dict[str, str] | None = None) -> Calibration:
    """Ranges of the plan's root tensors and, with bias correction, the means its sites need: one pass.
    `algo_for` overrides the configured algorithm for some tensors (e.g. KL after SmoothQuant). Then, with
    ``weight_rounding="adaround"``, the learned weight rounding (:mod:`slimq.static.rounding`)."""
    sites = bias_sites(irm, plan) if cfg.bias_correction else []
    per_root = {r: get_algorithm(a) for r, a in root_algorithms(plan, algo_for or {}).items()}
    calib = calibrate(fp32, plan.roots, lambda: samples.batches(idx, cfg.batch_size), get_algorithm(cfg.algo),
                      observer_settings(plan.rules, cfg), cfg.memory_budget_mb, cfg.show_progress,
                      -(-len(idx) // cfg.batch_size), plan.bounds,
                      mean_tensors=sorted({s.bias.activation for s in sites}), keep_observers=True,
                      algo_for=per_root)
    return with_rounding(calib, fp32, plan, samples, idx, cfg)


def apply_plan(irm: ir.Model, plan: QuantPlan, calib: Calibration, cfg: StaticConfig) -> tuple[onnx.ModelProto, int]:
    """Bias correction (if on; not of layers whose rounding was learned) and Q/DQ insertion (with the learned
    integers where there are any, round-to-nearest elsewhere); returns the INT8 model and the corrected-layer
    count."""
    weights = rounded_weights(calib, cfg)
    corrected = correct_biases(irm, without_learned_biases(plan, calib, cfg), calib.means) \
        if cfg.bias_correction and calib.means else 0
    if corrected:
        log.debug("slimq: bias correction on %d layers", corrected)
    insert_qdq(irm, plan, weights)
    return ir.to_proto(irm), corrected


def _constant_warning(constant: tuple[str, ...]) -> list[str]:
    if not constant:
        return []
    names = ", ".join(constant[:6]) + (f" and {len(constant) - 6} more" if len(constant) > 6 else "")
    return [f"{len(constant)} activation tensor(s) had one constant value on every calibration sample ({names}): "
            "their int8 range is degenerate, and other values at run time will saturate. Check that the "
            "calibration data is representative (not blank or all-zero)."]


def static_report(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: QuantPlan, samples: SampleSet, split: Split,
                  calib: Calibration, corrected: int, cfg: StaticConfig, search_details: dict | None = None,
                  budget_warning: Sequence[str] = (), rewrites: dict | None = None) -> Report:
    details = {"algo": get_algorithm(cfg.algo).name, "plan": plan.summary(), "bias_corrected_layers": corrected,
               "calibration": {"samples": len(split.calib), "batches": calib.batches,
                               "held_back": 0 if split.in_sample else len(split.check)},
               "constant_tensors": list(calib.constant)}
    rounding, rounding_note = rounding_notes(calib)
    details.update(rounding)
    if search_details is not None:
        details["search"] = search_details
    if rewrites:
        details["rewrites"] = rewrites
    check = [samples.sample(i) for i in split.check]
    if calib.observers:
        details.update(diagnostics(fp32, int8, plan, calib, check))
    inputs = "samples also used for calibration (none held back)" if split.in_sample else "held-back samples"
    ev = Evidence("static", cfg.target, plan.rules.description, fp32, int8, check,
                  inputs, split.in_sample, op_counts(list(plan.quantized_nodes.values())),
                  [FloatOp(f.node, f.op_type, f.reason) for f in plan.float_nodes],
                  warnings=[*budget_warning, *_constant_warning(calib.constant)], details=details,
                  notes=[*rounding_note, *search_notes(search_details)])
    return build_report(ev, Check(cfg.min_cosine))


def search_notes(d: dict | None) -> list[str]:
    """The accuracy search in two lines: what was asked, what was chosen, what it cost."""
    if not d:
        return []
    c = d["chosen"]
    lat = ""
    if c.get("latency_ms") and d.get("fp32_latency_ms"):
        lat = f", {d['fp32_latency_ms'] / c['latency_ms']:.2f}x faster than FP32 at 1 thread"
    return [f"accuracy search ({d['budget']}): {'met' if d['met'] else 'NOT met'} after {d['candidates']} "
            f"candidates in {d['seconds']:.0f} s",
            f"chosen: {c['setting']}, {len(d['float_layers'])} layer(s) kept float, "
            f"{c['int8_share'] * 100:.1f} % of MACs int8{lat}"]
