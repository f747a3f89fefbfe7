"""The report of dynamic PTQ: per-node decisions, weight sizes, agreement with FP32, runtime notes."""

from __future__ import annotations

import logging
from collections import Counter

import onnx
import onnxruntime as ort

from slimq.dynamic.graph import Choice, Decision, weight_bytes
from slimq.report.fidelity import Report, mac_summary

log = logging.getLogger("slimq")

FLOAT_BY_DESIGN = {"LayerNormalization": "normalisation stays float for accuracy",
                   "Softmax": "kept float for accuracy (attention probabilities)",
                   "Erf": "GELU stays float", "Gelu": "GELU stays float", "Tanh": "activation stays float"}
NBITS_NOTE = ("onnxruntime runs DequantizeLinear -> MatMul as MatMulNBits, which by default "
              "(session config session.qdq_matmulnbits_accuracy_level=4) quantizes activations to int8 per block: "
              "faster, slightly less exact; set it to 1 for float compute. The fidelity check measured the default.")
CONV_REASON = ("dynamic-activation keeps Conv float: ConvInteger is slower than float Conv in onnxruntime "
               "(onnxruntime#12854), and int8 weights would be dequantized at every run; use --mode weight-only "
               "to shrink conv weights")
DQ_NOTE = ("onnxruntime keeps DequantizeLinear of Conv weights in the graph and runs it at every inference; with "
           "session config session.disable_quant_qdq=1 it folds them at load (FP32 speed)")



def float_ops(work: onnx.ModelProto, floats, decisions: list[Decision]) -> list[dict]:
    out = [{"node": n, "op_type": op, "reason": why} for n, op, why in floats]
    out += [{"node": d.node, "op_type": d.candidate.op_type, "reason": d.reason}
            for d in decisions if d.choice is Choice.FLOAT]
    out += [{"node": node_name_proto(n), "op_type": n.op_type, "reason": FLOAT_BY_DESIGN[n.op_type]}
            for n in work.graph.node if n.op_type in FLOAT_BY_DESIGN]
    return out


def node_name_proto(n: onnx.NodeProto) -> str:
    return n.name or n.output[0]


def build_report(fp32, quantized, decisions, floats, agree, feeds, source, demotions, warnings, config, cache,
            work) -> Report:
    macs = mac_summary(quantized, feeds[0])
    ops = Counter(f"{d.candidate.op_type} ({d.choice.value})" for d in decisions if d.choice is not Choice.FLOAT)
    extra = {"config": config.description, "check_inputs": source, "onnxruntime": ort.__version__,
             "weights": weight_bytes(decisions, cache, work), "nodes": [d.to_dict() for d in decisions],
             "fallback": [d.to_dict() for d in demotions]}
    if config.mode == "dynamic-activation" and any(d.candidate.op_type == "Conv" for d in decisions):
        extra["conv_note"] = CONV_REASON
    if any(d.candidate.op_type in ("Conv", "ConvTranspose") and d.choice is Choice.WEIGHT_ONLY for d in decisions):
        extra["conv_note"] = DQ_NOTE
    if macs.float_ops.get("MatMulNBits"):
        extra["matmulnbits_note"] = NBITS_NOTE
    report = Report("dynamic", config.description, macs.int8_share, macs.to_dict(), dict(ops),
                    float_ops(work, floats, decisions), [a.to_dict() for a in agree], len(feeds), False,
                    warnings=list(warnings), extra=extra)
    report.size_bytes["fp32_in_memory"] = fp32.ByteSize()
    report.size_bytes["quantized_in_memory"] = quantized.ByteSize()
    for w in warnings:
        log.warning("slimq: %s", w)
    return report


def format_report(report: Report) -> str:
    """Human-readable summary of a dynamic quantization report."""
    x = report.extra
    lines = [f"slimq dynamic quantization: {x['config']}"]
    if report.size_bytes.get("fp32") and report.size_bytes.get("quantized"):
        lines.append(f"  file size: {report.size_bytes['fp32'] / 1e6:.2f} MB -> "
                     f"{report.size_bytes['quantized'] / 1e6:.2f} MB ({x['size_ratio']:.3f}x)")
    for op, r in x["weights"].items():
        lines.append(f"  {op} weights: {r['tensors']} tensors, {r['fp32_bytes'] / 1e6:.2f} MB -> "
                     f"{r['quantized_bytes'] / 1e6:.2f} MB ({r['ratio']:.3f}x)")
    lines.append(f"  int8 share of MACs in onnxruntime's optimized graph: {report.int8_mac_share * 100:.1f} %")
    lines.append("  per node: " + ", ".join(f"{n} x {op}" for op, n in sorted(report.quantized_ops.items())))
    lines.append(f"  FP32 vs quantized on {report.agreement_samples} {x['check_inputs']}:")
    lines += [f"    {a['output']}: cosine {a['cosine']:.4f}, SQNR {a['sqnr_db']:.1f} dB" for a in report.agreement]
    by_reason = Counter((f["op_type"], f["reason"]) for f in report.float_ops)
    if by_reason:
        lines.append("  left in float:")
        lines += [f"    {n} x {op}: {why}" for (op, why), n in sorted(by_reason.items())]
    if x.get("conv_note"):
        lines.append(f"  Conv: {x['conv_note']}")
    if x.get("matmulnbits_note"):
        lines.append(f"  weight-only MatMul: {x['matmulnbits_note']}")
    lines += [f"  fallback: {d['node']} ({d['op_type']}) {d['from']} -> {d['to']}, damage alone {d['damage']:.4f}"
              for d in x["fallback"]]
    lines += [f"  WARNING: {w}" for w in report.warnings]
    return "\n".join(lines)
