"""The one report builder: measures the int8 MAC share on the target's runtime, compares with FP32,
and turns what it finds into warnings that name the problem and what to try.

Where the int8 share is measured, by target:
* x86 (and dynamic PTQ): onnxruntime's optimized CPU graph, the kernels that really run;
* openvino: OpenVINO's execution graph when OpenVINO is installed (else onnxruntime, and it says so);
* tensorrt, arm: neither runtime is here, so the Q/DQ placement is checked statically: a conv/matmul
  counts as int8 when its data input and its weight both come from DequantizeLinear (what TensorRT's
  explicit-quantization builder and ARM's QDQ kernels fuse). The report names which was used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from slimq.core.ops import is_dequantize
from slimq.graph.subgraphs import subgraph_ops, subgraph_warning
from slimq.report.agreement import CLASS_SCORES, Stats, measure_agreement
from slimq.report.schema import AgreementRow, FloatOp, MacShare, Report
from slimq.runtime.backends import BackendError, openvino_available, openvino_mac_count
from slimq.runtime.macs import MacCount, count_macs
from slimq.runtime.session import optimized_graph

log = logging.getLogger("slimq")

Feeds = dict[str, np.ndarray]
ORT, OPENVINO, PLACEMENT = "onnxruntime", "OpenVINO", "Q/DQ placement (static check)"
STATIC_PLACEMENT_TARGETS = ("tensorrt", "arm")
MIN_MAC_SHARE = 0.5


@dataclass(frozen=True)
class Check:
    """The fidelity check: worst output cosine and top-1 agreement (class scores only) to accept."""

    min_cosine: float = 0.98
    min_top1: float = 0.9
    advice: str = ("Try another --algo (hist, KL, mse), more calibration data, or leave the guilty layers "
                   "in float with --skip.")


def agreement_rows(stats: Sequence[Stats]) -> tuple[AgreementRow, ...]:
    return tuple(AgreementRow(s.name, s.kind, round(s.cosine, 6), round(s.sqnr_db, 2),
                              None if s.top1_agreement is None else round(s.top1_agreement, 4),
                              s.reference_is_zero) for s in stats)


def fidelity_warnings(rows: Sequence[AgreementRow], check: Check) -> list[str]:
    """Warnings for outputs whose cosine or (class scores) top-1 agreement with FP32 is too low."""
    out = []
    for a in rows:
        if a.reference_is_zero:
            out.append(f'output "{a.output}" of the FP32 model is all zero on the check samples, so agreement '
                       "cannot be measured: check the calibration/check data (all-zero or constant inputs?).")
            continue
        if a.cosine < check.min_cosine:
            out.append(f'output "{a.output}": cosine {a.cosine:.4f} < {check.min_cosine} — INT8 disagrees with '
                       f"FP32. {check.advice}")
        if a.kind == CLASS_SCORES and a.top1_agreement is not None and a.top1_agreement < check.min_top1:
            out.append(f'output "{a.output}": only {a.top1_agreement * 100:.1f} % top-1 agreement with FP32 '
                       f"(< {check.min_top1 * 100:.0f} %).")
    return out


def _share(count: MacCount, runtime: str, note: str = "") -> MacShare:
    return MacShare(runtime, count.int8_macs, count.float_macs, dict(count.int8_ops), dict(count.float_ops),
                    tuple(count.float_nodes[:50]), note)


def _placement_int8(model: onnx.ModelProto):
    dq_out = {o for n in model.graph.node if is_dequantize(n.op_type, n.domain) for o in n.output}

    def is_int8(node: onnx.NodeProto) -> bool:
        data = [i for i in node.input[:2] if i]
        return len(data) == 2 and all(i in dq_out for i in data)
    return is_int8


def mac_share(model: onnx.ModelProto, feeds: Feeds, target: str = "x86") -> MacShare:
    """The int8 share of conv/matmul MACs, measured where `target` runs (see the module docstring)."""
    if target in STATIC_PLACEMENT_TARGETS:
        note = (f"{target} does not run here: counted from the Q/DQ placement (conv/matmul with dequantized "
                "data and weight inputs), not measured in that runtime")
        return _share(count_macs(model, feeds, is_int8=_placement_int8(model)), PLACEMENT, note)
    if target == "openvino":
        if openvino_available():
            try:
                return _share(openvino_mac_count(model, feeds), OPENVINO)
            except BackendError as e:
                return _share(count_macs(optimized_graph(model, "extended"), feeds), ORT,
                              f"measured in onnxruntime: OpenVINO could not compile the model ({e})")
        return _share(count_macs(optimized_graph(model, "extended"), feeds), ORT,
                      "measured in onnxruntime: OpenVINO is not installed (pip install 'slimq[openvino]')")
    return _share(count_macs(optimized_graph(model, "extended"), feeds), ORT)


def mac_warnings(macs: MacShare) -> list[str]:
    if not macs.measured or macs.int8_share >= MIN_MAC_SHARE:
        return []
    return [f"only {macs.int8_share * 100:.0f} % of MACs run in int8 ({macs.runtime}); float MAC nodes: "
            f"{', '.join(macs.float_mac_nodes[:5])}"]


def op_counts(op_types: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in op_types:
        counts[op] = counts.get(op, 0) + 1
    return counts


@dataclass(frozen=True)
class Evidence:
    """What a method hands the builder: the models, the check inputs, and its own findings."""

    method: str
    target: str  # target name: x86, openvino, tensorrt, arm (dynamic PTQ: x86)
    target_description: str
    fp32: onnx.ModelProto
    quantized: onnx.ModelProto
    feeds: Sequence[Feeds]
    agreement_inputs: str
    in_sample: bool = False
    quantized_ops: Mapping[str, int] | None = None
    float_ops: Sequence[FloatOp] = ()
    agreement: Sequence[Stats] | None = None  # already measured (e.g. by a fallback search)
    warnings: Sequence[str] = ()
    notes: Sequence[str] = ()
    details: Mapping[str, Any] | None = None
    expect_int8_macs: bool = True  # False where float compute is the design (weight-only)


def build_report(ev: Evidence, check: Check) -> Report:
    """Measure, compare and assemble the report; its warnings are also logged."""
    macs = mac_share(ev.quantized, ev.feeds[0], ev.target)
    stats = ev.agreement if ev.agreement is not None else measure_agreement(ev.fp32, ev.quantized, ev.feeds)
    rows = agreement_rows(stats)
    subs = subgraph_ops(ev.fp32.graph)
    listed = {f.node for f in ev.float_ops}
    float_ops = tuple(ev.float_ops) + tuple(FloatOp(o.node, o.op_type, o.reason) for o in subs if o.node not in listed)
    warnings = list(ev.warnings) + [w for w in [subgraph_warning(subs)] if w] + fidelity_warnings(rows, check) \
        + (mac_warnings(macs) if ev.expect_int8_macs else [])
    samples = sum(int(next(iter(f.values())).shape[0]) if f else 1 for f in ev.feeds)
    report = Report(ev.method, ev.target_description, macs, dict(ev.quantized_ops or {}), float_ops,
                    rows, samples, ev.agreement_inputs, ev.in_sample, warnings=tuple(warnings),
                    notes=tuple(ev.notes), details=dict(ev.details or {}))
    for w in warnings:
        log.warning("slimq: %s", w)
    return report
