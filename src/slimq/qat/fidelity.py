"""The fidelity report of a QAT export: the same :class:`slimq.report.schema.Report` every method writes.

- int8 share of MACs: measured where the target runs (:func:`slimq.report.build.mac_share`).
- ops left in float: Conv/ConvTranspose/Gemm/MatMul nodes of the exported graph whose inputs do
  not come from DequantizeLinear, named after their module where the exporter's scope says so,
  plus the non-MAC ops :func:`slimq.qat.prepare` listed as unsupported.
- agreement: onnxruntime INT8 vs an FP32 reference on a few samples. The reference is the
  *trained* network with fake quantization switched off (BatchNorm folded with its running
  statistics, float weights and biases), exported to ONNX the same way; the user's original
  pre-``prepare`` weights would measure training drift, not quantization error.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
import torch
from torch import fx

from slimq.core.config import StaticConfig
from slimq.core.ops import OP_TABLE, is_dequantize, is_float_mac, is_quantize, mac_info
from slimq.qat.config import TARGETS
from slimq.qat.graph import PrepareReport
from slimq.qat.model import QATModel
from slimq.qat.reference import reference_network
from slimq.report.build import Check, Evidence, build_report
from slimq.report.schema import FloatOp, Report
from slimq.runtime.select import RUNTIME_NAMES
from slimq.runtime.session import optimized_graph
from slimq.runtime.speed import SpeedPlacement

log = logging.getLogger("slimq")

MIN_COSINE = StaticConfig.min_cosine
MAC_OPS = tuple(i.op_type for i in OP_TABLE.values() if is_float_mac(i.op_type, i.domain))  # Conv, MatMul, ...
NOT_QUANTIZED = "not quantized in the QAT model (unsupported module or skipped)"
FLOAT_INPUT = ("int8 weights, but it reads the float output of a layer kept float (a quantizer there would let "
               "onnxruntime fuse that layer into int8), so it runs in float")
SKIPPED = "skipped by configuration (QATConfig.skip)"
QAT_ADVICE = ("Train longer or with a lower learning rate, calibrate before training, or leave the guilty "
              "layers in float with QATConfig.skip.")


def float_network(qm: QATModel) -> fx.GraphModule:
    """An eval-mode copy of the QAT graph with fake quantization off (the FP32 reference,
    :func:`slimq.qat.reference.reference_network`), bias corrections added back."""
    return reference_network(qm.net, getattr(qm, "bias_corrections", {}))


def sample_feeds(batch: Sequence[torch.Tensor], input_names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """One onnxruntime feed holding the whole batch (the export has a dynamic batch axis)."""
    return [{name: t.detach().cpu().numpy() for name, t in zip(input_names, batch)}]


def target_description(target: str) -> str:
    """The storage rules of a QAT target, in the words of the static report."""
    rules = TARGETS[target]
    grids = "unsigned grid for non-negative tensors" if rules.unsigned_grid else "signed grids"
    return (f"{target}: {rules.act_dtype} activations ({grids}, symmetric) x int8 [-127,127] weights, "
            f"per-channel")


def _scopes(node: onnx.NodeProto) -> set[str]:
    """Module names the exporter left on ``node``: TorchScript scope names (``/conv2/Conv``),
    torch.export name scopes, and the parameter name of its weight (``layer1.0.conv2.weight``)."""
    scopes = set(node.name.strip("/").split("/")[:-1])
    for prop in node.metadata_props:
        if prop.key.endswith("name_scopes"):
            parts = [p.strip(" '\"") for p in prop.value.strip("[]").split(",")]
            scopes.add(".".join(p for p in parts if p))
    if len(node.input) > 1 and node.input[1].endswith(".weight"):
        scopes.add(node.input[1].removesuffix(".weight"))
    return scopes - {""}


def float_modules(prep: PrepareReport, speed: SpeedPlacement | None = None) -> dict[str, str]:
    """Module path -> why prepare kept it in float (``speed``: the speed plan the model was prepared from)."""
    floats = speed.floats if speed is not None else {}
    where = RUNTIME_NAMES.get(speed.runtime, speed.runtime) if speed is not None else ""
    out = {path: f"kept float for speed ({floats[path]}: int8 was slower on {where})" if path in floats else SKIPPED
           for path in prep.skipped}
    out.update({u.name: f"{u.op} has no int8 form in QAT (left in float by prepare)" for u in prep.unsupported})
    return out


def _module_of(node: onnx.NodeProto, modules: dict[str, str]) -> str | None:
    """The float module ``node`` belongs to (exact scope match first, then a unique leaf name)."""
    scopes = _scopes(node)
    exact = [path for path in modules if path in scopes]
    if exact:
        return max(exact, key=len)
    loose = {path for path in modules for scope in scopes if path.endswith("." + scope)}
    return loose.pop() if len(loose) == 1 else None


def graph_ops(model: onnx.ModelProto, prep: PrepareReport,
              speed: SpeedPlacement | None = None) -> tuple[dict[str, int], list[dict]]:
    """Quantized op counts (data input from DequantizeLinear) and float ops with reasons:
    MAC nodes without Q/DQ inputs, then prepare's other float ops."""
    from_dq = {o for n in model.graph.node if is_dequantize(n.op_type, n.domain) for o in n.output}
    modules = float_modules(prep, speed)
    quantized: Counter = Counter()
    floats: list[dict] = []
    for n in model.graph.node:
        if is_quantize(n.op_type, n.domain) or is_dequantize(n.op_type, n.domain) or not n.input:
            continue
        is_mac = n.op_type in MAC_OPS
        if all(i in from_dq for i in n.input[: 2 if is_mac else 1]):
            quantized[n.op_type] += 1
        elif is_mac:
            module = _module_of(n, modules)
            reason = modules[module] if module else (FLOAT_INPUT if len(n.input) > 1 and n.input[1] in from_dq
                                                     else NOT_QUANTIZED)
            floats.append({"node": n.name or n.output[0], "op_type": n.op_type, "reason": reason, "module": module})
    listed = {f["module"] for f in floats}
    floats += [{"node": u.name, "op_type": u.op, "reason": modules[u.name], "module": None}
               for u in prep.unsupported if u.name not in listed]
    return dict(quantized), floats


def ort_int8_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes onnxruntime's optimized graph runs with integer MAC kernels."""
    return {n.name for n in optimized_graph(model, "extended").graph.node
            if (mac := mac_info(n.op_type)) is not None and mac.integer}


def flag_requantized(floats: list[dict], model: onnx.ModelProto) -> list[str]:
    """Float MAC nodes that onnxruntime quantizes anyway (quantized input and output: it
    quantizes the float weight itself); their reasons are amended. Returns the warnings."""
    macs = [f for f in floats if f["op_type"] in MAC_OPS]
    int8 = ort_int8_nodes(model) if macs else set()
    hit = [f for f in macs if f["node"] in int8]
    for f in hit:
        f["reason"] += "; but onnxruntime runs it in int8 (quantized input and output)"
    if not hit:
        return []
    names = ", ".join(f["module"] or f["node"] for f in hit)
    return [f"{len(hit)} MAC op(s) kept in float by QAT run in int8 in onnxruntime: {names}. Their input and "
            "output are quantized, so onnxruntime quantizes their float weights itself (never trained for); "
            "compare the agreement; to keep them float, the ops that read their output must stay float too."]


def build_qat_report(qm: QATModel, int8: onnx.ModelProto, fp32: onnx.ModelProto,
                     feeds: list[dict[str, np.ndarray]], target: str, given_samples: bool,
                     extra: dict | None = None) -> Report:
    """The fidelity report of ``int8`` (method "qat"), built like every other method's."""
    quantized, floats = graph_ops(int8, qm.report, qm.speed)
    prep = qm.report
    info = {"variant": qm.config.variant, "steps": int(qm.step),
            "reference": "trained network with fake quantization off (BatchNorm folded), exported to ONNX",
            "agreement_inputs": "samples argument of convert()" if given_samples else "example_inputs of prepare()",
            "calibration": dict(qm.calibration),
            "prepare": {"quantized": len(prep.quantized), "skipped": list(prep.skipped),
                        "unsupported": [f"{u.name} ({u.op})" for u in prep.unsupported]}}
    inputs = "samples given to convert()" if given_samples else "example inputs given to prepare() (in-sample)"
    ev = Evidence("qat", target, target_description(target), fp32, int8, feeds, inputs, not given_samples,
                  quantized, [FloatOp(f["node"], f["op_type"], f["reason"], f["module"]) for f in floats],
                  warnings=flag_requantized(floats, int8), details={**info, **(extra or {})})
    report = build_report(ev, Check(MIN_COSINE, advice=QAT_ADVICE))
    if qm.speed is None:
        return report
    note = qm.speed.note("QAT speed plan")
    return replace(report, notes=(*report.notes, note), details={**report.details, "speed": qm.speed.to_dict()})
