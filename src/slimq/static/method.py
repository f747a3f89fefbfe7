"""Static post-training quantization: calibrate on unlabeled samples, write an INT8 QDQ model."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from slimq.core.config import StaticConfig, target_rules
from slimq.core.errors import FidelityError, NothingToQuantizeError
from slimq.core.observers import ObserverSettings, get_algorithm
from slimq.graph.passes import preprocess
from slimq.graph.passes.bias_correction import bias_sites, correct_biases
from slimq.graph.plan import QuantPlan, build_plan
from slimq.graph.qdq import insert_qdq
from slimq.io.model import check_output_path, load_model, model_size_bytes, save_model
from slimq.io.samples import SampleSet, load_samples
from slimq.io.spec import model_inputs
from slimq.report.agreement import measure_agreement
from slimq.report.fidelity import Report, fidelity_warnings, mac_summary
from slimq.runtime.backends import openvino_available
from slimq.runtime.cpu import cpu_info
from slimq.static.calibrate import calibrate, channel_means

log = logging.getLogger("slimq")


@dataclass
class QuantResult:
    """The quantized model, its report, the plan that produced it, and where it was written."""

    model: onnx.ModelProto
    report: Report
    plan: QuantPlan
    path: Path | None = None


def _load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _split(samples: SampleSet, cfg: StaticConfig) -> tuple[list[int], list[int], bool]:
    """Calibration indices and held-back indices (in-sample when the set is too small)."""
    n = min(len(samples), cfg.max_samples + cfg.holdout)
    hold = min(cfg.holdout, n // 5)
    calib = list(range(n - hold))
    if hold:
        return calib, list(range(n - hold, n)), False
    return calib, calib[: min(4, len(calib))], True


def resolve_reduce_range(cfg: StaticConfig) -> bool:
    if cfg.reduce_range is not None:
        return cfg.reduce_range
    return cfg.target in ("x86", "openvino") and not cpu_info().vnni


def quantize_static(model: str | os.PathLike | onnx.ModelProto, calib_data, config: StaticConfig = StaticConfig(),
                    output: str | os.PathLike | None = None, preprocess_spec=None) -> QuantResult:
    """Quantize `model` with activation ranges calibrated on `calib_data`.

    calib_data: a folder of images or .npy/.npz files, an array, a dict of arrays, or a list of feed dicts.
    With `output`, the model and `<output>.report.json` are written atomically; the input is never touched.
    """
    out = check_output_path(model if not isinstance(model, onnx.ModelProto) else None, output) if output else None
    fp32 = preprocess(_load(model))
    samples = load_samples(calib_data, model_inputs(fp32), preprocess_spec)
    calib_idx, check_idx, in_sample = _split(samples, config)
    rules = target_rules(config.target, resolve_reduce_range(config), config.per_channel)
    irm = ir.from_proto(fp32)
    plan = build_plan(irm.graph, rules, config.skip, config.op_types)
    if not plan.quantized_nodes:
        raise NothingToQuantizeError("No op in this model can be quantized statically (no Conv/MatMul/Gemm/... on "
                                     "float data). Nothing was written.")
    algo = get_algorithm(config.algo)
    settings = ObserverSettings(config.hist_percent, config.bins, rules.activation_qtype.qmax
                                - rules.activation_qtype.qmin + 1, rules.activation_symmetric,
                                min_values_to_clip=1024, two_sided=config.two_sided_ranges)
    ranges = calibrate(fp32, plan.roots, lambda: samples.batches(calib_idx, config.batch_size), algo, settings,
                       config.memory_budget_mb, config.show_progress, _num_batches(samples, calib_idx, config),
                       plan.bounds)
    plan = plan.with_ranges(ranges)
    if config.bias_correction:
        _correct_biases(fp32, irm, plan, lambda: samples.batches(calib_idx, config.batch_size), config)
    insert_qdq(irm, plan)
    int8 = ir.to_proto(irm)
    report = build_report("static", fp32, int8, plan, samples, check_idx, in_sample, config)
    if config.strict and report.warnings:
        raise FidelityError("INT8 model failed the fidelity check; nothing was written.\n" + "\n".join(report.warnings))
    if out is not None:
        save_model(int8, out)
        report.size_bytes["int8"] = model_size_bytes(out)
        if not isinstance(model, onnx.ModelProto):
            report.size_bytes["fp32"] = model_size_bytes(model)
        report.write(out.with_name(out.name + ".report.json"))
    return QuantResult(int8, report, plan, out)


def _correct_biases(fp32: onnx.ModelProto, irm: ir.Model, plan: QuantPlan, batches, config: StaticConfig) -> None:
    sites = bias_sites(irm, plan)
    if sites:
        means = channel_means(fp32, sorted({s.bias.activation for s in sites}), batches, config.memory_budget_mb)
        log.info("slimq: bias correction on %d layers", correct_biases(irm, plan, means))


def _num_batches(samples: SampleSet, idx: list[int], cfg: StaticConfig) -> int:
    return -(-len(idx) // cfg.batch_size)


def build_report(method: str, fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: QuantPlan, samples: SampleSet,
                 check_idx: list[int], in_sample: bool, config: StaticConfig) -> Report:
    macs = mac_summary(int8, samples.sample(check_idx[0]), config.target)
    agreement = measure_agreement(fp32, int8, (samples.sample(i) for i in check_idx))
    warnings = fidelity_warnings(agreement, config.min_cosine)
    if macs.int8_share < 0.5 and macs.int8_macs + macs.float_macs > 0:
        warnings.append(f"only {macs.int8_share * 100:.0f} % of MACs run in int8 in onnxruntime; "
                        f"float MAC nodes: {', '.join(macs.float_nodes[:5])}")
    ops: dict[str, int] = {}
    for op in plan.quantized_nodes.values():
        ops[op] = ops.get(op, 0) + 1
    report = Report(method, plan.rules.description, macs.int8_share, macs.to_dict(), ops,
                    [f.__dict__ for f in plan.float_nodes], [a.to_dict() for a in agreement], len(check_idx),
                    in_sample, warnings=warnings, extra={"algo": config.algorithm_name, "plan": plan.summary()},
                    mac_runtime="OpenVINO" if config.target == "openvino" and openvino_available() else "onnxruntime")
    for w in warnings:
        log.warning("slimq: %s", w)
    return report
