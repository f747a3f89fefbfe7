"""What dynamic PTQ adds to the common report: per-node decisions, weight sizes, runtime notes, fallback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import onnxruntime as ort

from slimq.core.config import DynamicConfig
from slimq.core.ops import FLOAT_BY_DESIGN, WeightOnly, op_info
from slimq.dynamic.check import Demotion
from slimq.dynamic.gptq import GPTQResult
from slimq.dynamic.graph import Choice, Decision, WeightCache, weight_bytes
from slimq.report.agreement import Stats
from slimq.report.build import Check, Evidence, build_report
from slimq.report.schema import FloatOp, Report

NBITS_NOTE = ("onnxruntime runs DequantizeLinear -> MatMul as MatMulNBits, which by default "
              "(session config session.qdq_matmulnbits_accuracy_level=4) quantizes activations to int8 per block: "
              "faster, slightly less exact; set it to 1 for float compute. The fidelity check measured the default.")
CONV_REASON = ("dynamic-activation keeps Conv float: ConvInteger is slower than float Conv in onnxruntime "
               "(onnxruntime#12854), and int8 weights would be dequantized at every run; use --mode weight-only "
               "to shrink conv weights")
DQ_NOTE = ("onnxruntime keeps DequantizeLinear of Conv weights in the graph and runs it at every inference; with "
           "session config session.disable_quant_qdq=1 it folds them at load (FP32 speed)")
ADVICE = "Use --on-collapse fallback (the default), give real --check-data, or skip the damaging layers."


@dataclass(frozen=True)
class Findings:
    """What the dynamic method decided and measured."""

    decisions: Sequence[Decision]
    demotions: Sequence[Demotion]
    floats: Sequence[tuple[str, str, str]]  # (node, op_type, reason) of weight ops that must stay float
    agreement: Sequence[Stats]
    warnings: Sequence[str]
    models_checked: int
    rounding: GPTQResult | None = None  # GPTQ's integers and gains; None: round to nearest
    search: dict | None = None  # the budgeted fallback's trace (slimq.dynamic.budget), when a budget was given


def _weight_only(op_type: str) -> WeightOnly:
    return op_info(op_type).weight_only or WeightOnly()


def node_name_proto(n: onnx.NodeProto) -> str:
    return n.name or n.output[0]


def float_ops(work: onnx.ModelProto, found: Findings) -> list[FloatOp]:
    out = [FloatOp(n, op, why) for n, op, why in found.floats]
    out += [FloatOp(d.node, d.candidate.op_type, d.reason) for d in found.decisions if d.choice is Choice.FLOAT]
    out += [FloatOp(node_name_proto(n), n.op_type, FLOAT_BY_DESIGN[n.op_type])
            for n in work.graph.node if n.op_type in FLOAT_BY_DESIGN]
    return out


def _notes(weights: dict[str, dict], found: Findings, quantized_ops: dict[str, int], config: DynamicConfig
           ) -> tuple[list[str], dict[str, Any]]:
    notes = [f"{op} weights: {r['tensors']} tensors, {r['fp32_bytes'] / 1e6:.2f} MB -> "
             f"{r['quantized_bytes'] / 1e6:.2f} MB ({r['ratio']:.3f}x)" for op, r in weights.items()]
    extra: dict[str, Any] = {}
    convs = [d for d in found.decisions if _weight_only(d.candidate.op_type).float_with_dynamic_activation]
    if config.mode == "dynamic-activation" and convs:
        extra["conv_note"] = CONV_REASON
    if any(d.choice is Choice.WEIGHT_ONLY for d in convs):
        extra["conv_note"] = DQ_NOTE
    if quantized_ops.get("MatMul (weight-only)"):
        extra["matmulnbits_note"] = NBITS_NOTE
    notes += [f"Conv: {extra['conv_note']}"] if "conv_note" in extra else []
    notes += [f"weight-only MatMul: {NBITS_NOTE}"] if "matmulnbits_note" in extra else []
    notes += [f"fallback: {d.node} ({d.op_type}) {d.before.value} -> {d.after.value}, damage alone {d.damage:.4f}"
              for d in found.demotions]
    if found.rounding is not None:
        notes.append(found.rounding.note())
        extra["weight_rounding"] = found.rounding.summary()
    return notes, extra


def dynamic_report(fp32: onnx.ModelProto, quantized: onnx.ModelProto, work: onnx.ModelProto,
                   feeds: Sequence[dict], source: str, found: Findings, config: DynamicConfig,
                   cache: WeightCache) -> Report:
    ops = Counter(f"{d.candidate.op_type} ({d.choice.value})" for d in found.decisions if d.choice is not Choice.FLOAT)
    weights = weight_bytes(found.decisions, cache, work)
    notes, extra = _notes(weights, found, dict(ops), config)
    details = {"config": config.description, "check_inputs": source, "onnxruntime": ort.__version__,
               "weights": weights, "nodes": [d.to_dict() for d in found.decisions],
               "fallback": [d.to_dict() for d in found.demotions], "models_checked": found.models_checked, **extra,
               **({"search": found.search} if found.search is not None else {})}
    ev = Evidence("dynamic", "x86", config.description, fp32, quantized, feeds, source, False, dict(ops),
                  float_ops(work, found), agreement=found.agreement, warnings=found.warnings, notes=notes,
                  details=details, expect_int8_macs=False)
    # collapse is handled by the method (fallback/warn/refuse) on its own check inputs
    return build_report(ev, Check(min_cosine=0.0, min_top1=0.0, advice=ADVICE))
