"""Exact FP32 rewrites that make a model easier to quantize, applied before the plan (static PTQ).

* Cross-layer equalization (``StaticConfig.cle``, off by default; data-free): Conv -> ReLU -> (depthwise)
  Conv pairs get per-channel scales that balance their weight ranges (Nagel et al. 2019). It matters with
  per-tensor weights, where one wide channel sets the step of all others.
* SmoothQuant (``StaticConfig.smoothquant``, "auto" by default): activation outlier channels feeding
  MatMul/Gemm move into the weights (Xiao et al. 2023), per site only where the simulated int8 error
  drops; the smoothed activations are then calibrated with KL (a percentile would clip the spread-out
  channels SmoothQuant just produced). A model without MatMul/Gemm sites pays nothing.
Both rewrites are exact in FP32; the report says what they did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnx_ir as ir

from slimq.core.config import StaticConfig
from slimq.core.targets import TargetRules
from slimq.graph.passes.cle import equalize
from slimq.graph.passes.smoothquant import find_sites
from slimq.io.samples import SampleSet
from slimq.static.smoothing import SmoothQuantConfig, smooth_model

log = logging.getLogger("slimq")
SMOOTHED_ALGO = "KL"



@dataclass(frozen=True)
class Rewrites:
    """The rewritten FP32 model, what changed, and the tensors to calibrate with another algorithm."""

    model: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)
    algo_for: dict[str, str] = field(default_factory=dict)  # tensor -> calibration algorithm


def _cle(model: onnx.ModelProto, cfg: StaticConfig) -> tuple[onnx.ModelProto, dict[str, Any]]:
    irm = ir.from_proto(model)
    pairs = equalize(irm, relu6=cfg.cle_relu6)
    log.info("slimq: cross-layer equalization on %d conv pair(s)", pairs)
    return (ir.to_proto(irm) if pairs else model), {"pairs": pairs, "relu6": cfg.cle_relu6}


def _smoothquant(model: onnx.ModelProto, samples: SampleSet, idx: list[int], cfg: StaticConfig,
                 rules: TargetRules) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, str]]:
    if not find_sites(ir.from_proto(model)):
        return model, {}, {}
    sq = SmoothQuantConfig(alpha=cfg.smoothquant_alpha, batch_size=cfg.batch_size, max_samples=cfg.max_samples,
                           memory_budget_mb=cfg.memory_budget_mb)
    smoothed, reports = smooth_model(model, [samples.sample(i) for i in idx], sq, rules.activation_qtype,
                                     rules.activation_symmetric, rules.weight_qtype)
    done = [r for r in reports if r.alpha is not None]
    details = {"sites": len(reports), "smoothed": len(done), "new_muls": sum(r.new_mul for r in done),
               "per_site": [r.to_dict() for r in reports]}
    log.info("slimq: SmoothQuant on %d of %d MatMul/Gemm input(s)", len(done), len(reports))
    if not done:
        return model, details, {}
    return smoothed, details, {t: SMOOTHED_ALGO for t in _smoothed_inputs(smoothed, done)}


def _smoothed_inputs(model: onnx.ModelProto, done: list[Any]) -> set[str]:
    """The tensors the smoothed sites' linear layers read now (X itself, or the Mul in front of them)."""
    names = {r.activation for r in done}
    return names | {n.output[0] for n in model.graph.node if n.input and n.input[0] in names
                    and n.output[0].startswith(tuple(f"{a}_smooth" for a in names))}


def prequantize(fp32: onnx.ModelProto, samples: SampleSet, calib_idx: list[int], cfg: StaticConfig,
                rules: TargetRules) -> Rewrites:
    """Apply the enabled rewrites in order (CLE, then SmoothQuant)."""
    model, details, algo_for = fp32, {}, {}  # type: tuple[onnx.ModelProto, dict[str, Any], dict[str, str]]
    if cfg.cle:
        model, details["cle"] = _cle(model, cfg)
    if cfg.smoothquant != "off":
        model, sq, algo_for = _smoothquant(model, samples, calib_idx, cfg, rules)
        if sq:
            details["smoothquant"] = sq
    return Rewrites(model, details, algo_for)
