"""Export of a trained QAT model to QDQ ONNX.

Approach: the model is copied, every QAT module is replaced by its export form
(:mod:`slimq.qat.modules`: BN folded, weights pre-quantized, activations as QuantizeLinear/
DequantizeLinear custom ops with the target's storage zero point), and the copy is exported with the
torch.export-based exporter (default; ``exporter="legacy"``: the TorchScript exporter, for
module-swap models only), see :mod:`slimq.qat.onnx_export`. The FP32 reference (the trained network
with fake quantization off) is exported the same way and checked against PyTorch before anything is
written. A small onnx-ir pass then replaces each ``QuantizeLinear`` of a constant weight by an int8
initializer feeding ``DequantizeLinear`` (about 4x smaller file; onnxruntime fuses the result into
QLinearConv / QGemm). Next to the model, ``convert`` writes the fidelity report static PTQ writes
(``<path>.report.json``, :mod:`slimq.qat.fidelity`), with the share of outputs within one output
quantization step of the PyTorch fake-quant model.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx_ir.convenience import get_const_tensor
from onnx_ir.passes.common import (
    ClearMetadataAndDocStringPass,
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
)
from torch import fx, nn

from slimq.core.errors import (
    CalibrationDataError,
    ConfigError,
    FidelityError,
    ModelLoadError,
    unknown_choice,
)
from slimq.core.ops import is_quantize
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import value_name
from slimq.graph.passes.base import RewritePass, rewrite_count
from slimq.qat.add_op import QATAdd
from slimq.qat.config import TARGETS
from slimq.qat.fidelity import build_qat_report, float_network, sample_feeds
from slimq.qat.model import QATModel, as_inputs, unwrap
from slimq.qat.modules import QATConv, QATLinear, export_act
from slimq.qat.onnx_export import DYNAMO_OPSET, check_batch, check_fp32_export, torch_export
from slimq.qat.quantizers import MIN_SCALE, ActQuantizer, WeightQuantizer
from slimq.qat.verify import check_agreement
from slimq.report.publish import QuantResult, check_output, publish

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = {"dynamo": DYNAMO_OPSET, "legacy": 17}
_INT_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def export_network(qmodel: QATModel, target: str) -> fx.GraphModule:
    """An eval-mode copy of the QAT graph with every QAT module in its export (Q/DQ) form."""
    net = copy.deepcopy(qmodel.net).eval()
    act_dtype = TARGETS[target].act_dtype
    for name, module in list(net.named_modules()):
        if isinstance(module, (QATConv, QATLinear, QATAdd)):
            new: nn.Module = module.export_module()
        elif isinstance(module, ActQuantizer):
            new = export_act(module, act_dtype)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    return net.eval()


def _check_ready(qm: QATModel, target: str | None) -> str:
    cfg = qm.config
    target = cfg.target if target is None else target
    if target not in TARGETS:
        raise unknown_choice("QAT target", target, TARGETS)
    if target != cfg.target:
        raise ConfigError(
            f'The model was trained for target "{cfg.target}" (its integer grids depend on it); '
            f'prepare it with QATConfig(target="{target}") to export for "{target}".'
        )
    if cfg.weight_bits != 8 or cfg.act_bits != 8:
        raise ConfigError(
            f"ONNX export supports 8-bit weights and activations; this model uses "
            f"weight_bits={cfg.weight_bits}, act_bits={cfg.act_bits} (simulation only)."
        )
    missing = [name for name, q in qm.quantizers() if not bool(q.initialized)]
    if missing:
        raise CalibrationDataError(
            f"Activation quantizers without a range: {', '.join(missing)}. Run "
            f"slimq.qat.calibrate(qmodel, batches) or at least one training step first."
        )
    _check_learned_scales(qm)
    return target


def _check_learned_scales(qm: QATModel) -> None:
    """PACT/LSQ ranges are trained; one driven to ~0 (too high a learning rate) breaks int8."""
    collapsed = [name for name, q in qm.quantizers()
                 if q.variant != "ste" and float(q.current_scale()) <= 2 * MIN_SCALE]
    collapsed += [
        name for name, m in qm.net.named_modules()
        if isinstance(m, WeightQuantizer) and m.variant == "lsq" and bool((m.scale <= 2 * MIN_SCALE).any())
    ]
    if collapsed:
        raise FidelityError(
            f"Learned quantization ranges collapsed to zero in: {', '.join(collapsed)}. Train with a "
            f"lower learning rate for the PACT alpha / LSQ scale parameters (their own param group)."
        )


def _io_names(net: nn.Module, example: tuple[torch.Tensor, ...], input_names: Sequence[str] | None,
              output_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Graph input/output names: the given ones, else ``input``/``output`` (``_i`` when several)."""
    with torch.no_grad():
        out = net(*example)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    inputs = _names("input", len(example), input_names)
    outputs = _names("output", n_out, output_names)
    if set(inputs) & set(outputs):
        raise ConfigError(f"Input and output names must differ, got {inputs} and {outputs}.")
    return inputs, outputs


def _names(kind: str, count: int, given: Sequence[str] | None) -> list[str]:
    if given is None:
        return [kind] if count == 1 else [f"{kind}_{i}" for i in range(count)]
    names = [given] if isinstance(given, str) else list(given)
    if len(names) != count or not all(isinstance(n, str) and n for n in names) or len(set(names)) != count:
        raise ConfigError(f"{kind}_names must be {count} distinct non-empty name(s) (the model has {count} "
                          f"{kind}(s)), got {given!r}.")
    return names


def onnx_io_names(path: str | Path) -> tuple[list[str], list[str]]:
    """Input and output names of an ONNX model (e.g. the FP32 model a QAT model came from),
    to pass as ``convert(..., input_names=, output_names=)``."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"Cannot read ONNX model {path}: {exc}") from exc
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


def _quantize_constant(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear on numpy: saturate(round_half_even(x / scale) + zero)."""
    shape = [1] * x.ndim
    if scale.ndim == 1 and x.ndim > 0:
        shape[axis] = -1
    lo, hi = _INT_RANGES[zero.dtype]
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32).reshape(shape))
    q = q + zero.astype(np.int32).reshape(shape)
    return np.clip(q, lo, hi).astype(zero.dtype)


def _constant_operands(node: ir.Node) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
    """(input name, x, scale, zero point) of a QuantizeLinear of a constant; None for an activation quantizer."""
    values = [v for v in node.inputs[:3] if v is not None]
    consts = [t for t in (get_const_tensor(v) for v in values) if t is not None]
    if len(consts) < 3:
        return None
    x, scale, zero = (c.numpy() for c in consts)
    return value_name(values[0]), x, scale, zero


class FoldWeightQuantizationPass(RewritePass):
    """Replace QuantizeLinear of constant tensors by int8/uint8 initializers; counts them."""

    def rewrite(self, model: ir.Model) -> int:
        b, folded = GraphBuilder(model.graph), 0
        for node in [n for n in model.graph if is_quantize(n.op_type, n.domain)]:
            operands = _constant_operands(node)
            if operands is None:
                continue  # an activation quantizer
            name, x, scale, zero = operands
            axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
            q = _quantize_constant(x, scale, zero, axis if axis >= 0 else axis + x.ndim)
            b.replace_uses(node.outputs[0], b.initializer(f"{name}_quantized", q, typed=True))
            model.graph.remove(node, safe=True)
            folded += 1
        IdentityEliminationPass()(model)  # the TorchScript exporter aliases equal constants
        LiftConstantsToInitializersPass(size_limit=0)(model)
        RemoveUnusedNodesPass()(model)
        return folded


def fold_weight_quantization(model: ir.Model) -> int:
    """Replace QuantizeLinear of constant tensors by int8/uint8 initializers; returns the count."""
    return rewrite_count(FoldWeightQuantizationPass(), model)


def _export_error(exc: Exception) -> str:
    """The exporter's message without colour codes and boilerplate (the dynamo exporter's summary)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = text.split("## Exception summary", 1)
    return (summary[1] if len(summary) > 1 else text).strip()[:800]


def _export_onnx(net: nn.Module, qm: QATModel, dest: Path, exporter: str, opset: int,
                 names: tuple[list[str], list[str]]) -> ir.Model:
    """Export ``net`` on the model's example inputs; failures name the exporter and the op."""
    try:
        with torch.no_grad():
            torch_export(net, qm.example_inputs, dest, exporter, opset, names)
    except Exception as exc:
        hint = ', or try exporter="dynamo"' if exporter == "legacy" else ""
        raise ModelLoadError(
            f"torch.onnx.export ({exporter} exporter, opset {opset}) cannot export the QAT model: "
            f"{type(exc).__name__}: {_export_error(exc)}. Replace the op named there{hint}."
        ) from exc
    model = ir.load(str(dest))
    if exporter == "dynamo":
        ClearMetadataAndDocStringPass()(model)
    return model


def export_pair(qm: QATModel, target: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The FP32 reference and the INT8 QDQ model in memory (dynamo exporter, default names, weights folded),
    without the checks and report of :func:`convert`: for timing candidates (:mod:`slimq.qat.speed`)."""
    net, reference = export_network(qm, target), float_network(qm)
    names = _io_names(net, qm.example_inputs, None, None)
    with tempfile.TemporaryDirectory(prefix="slimq-qat-") as tmp:
        model = _export_onnx(net, qm, Path(tmp) / "int8.onnx", "dynamo", DYNAMO_OPSET, names)
        fp32 = _export_onnx(reference, qm, Path(tmp) / "fp32.onnx", "dynamo", DYNAMO_OPSET, names)
    fold_weight_quantization(model)
    return ir.serde.serialize_model(fp32), ir.serde.serialize_model(model)


def _check_options(qm: QATModel, exporter: str, opset: int | None) -> int:
    if exporter not in EXPORTERS:
        raise unknown_choice("ONNX exporter", exporter, EXPORTERS)
    if exporter == "legacy" and qm.report.capture == "export":
        raise ConfigError("The legacy TorchScript exporter fixes the sizes it traces through in torch.export-captured "
                          "models (e.g. the batch in a view); export them with exporter=\"dynamo\" (the default).")
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ConfigError(f"opset must be an integer >= 13 (per-channel QuantizeLinear), got {opset!r}.")
    return opset


def _agreement_batch(qm: QATModel, samples: object) -> tuple[torch.Tensor, ...]:
    """The batch the report's agreement runs on: ``samples``, else the example inputs."""
    if samples is None:
        return qm.example_inputs
    batch = as_inputs(samples, "samples")
    example = qm.example_inputs
    if len(batch) != len(example) or any(t.dtype != e.dtype or t.shape[1:] != e.shape[1:]
                                         for t, e in zip(batch, example)):
        raise ConfigError(f"samples must match the example inputs given to prepare() except in the batch "
                          f"size: got {[(tuple(t.shape), t.dtype) for t in batch]}, expected "
                          f"{[(tuple(e.shape), e.dtype) for e in example]}.")
    return batch


def convert(qmodel: nn.Module, path: str | Path, target: str | None = None, *,
            exporter: str = "dynamo", opset: int | None = None, input_names: Sequence[str] | None = None,
            output_names: Sequence[str] | None = None, samples: object = None, strict: bool = False) -> QuantResult:
    """Export a trained QAT model (or its DDP wrapper) to a QDQ ONNX file at ``path``, and its
    fidelity report (int8 MAC share, float ops, INT8-vs-FP32 agreement) to ``<path>.report.json``.

    ``exporter``: "dynamo" (torch.export-based, default; opset 18) or "legacy" (TorchScript, opset 17; not
    for torch.export-captured models). The FP32 export is checked against PyTorch first (FidelityError, nothing
    written, when it differs); the INT8 export's agreement with the PyTorch fake-quant model (share of outputs
    within one output step) is in the report's details and in ``artifacts["export_agreement"]``.
    ``target`` defaults to the one in the model's QATConfig; another target raises ConfigError.
    ``input_names``/``output_names`` name the graph's inputs/outputs in order (default
    ``input``/``output``); to keep an FP32 ONNX model's names pass :func:`onnx_io_names` of it.
    ``samples``: a batch (tensor or tuple of tensors) for the agreement check; default the
    example inputs given to ``prepare``. The FP32 reference is the trained network with fake
    quantization off (:func:`slimq.qat.fidelity.float_network`). ``strict``: refuse (write nothing,
    FidelityError) when the report has warnings. Returns the common :class:`QuantResult`; its
    ``artifacts`` hold ``target``, ``exporter``, ``int8_weights`` (folded) and ``quantize_nodes``.
    """
    qm = unwrap(qmodel)
    target = _check_ready(qm, target)
    opset = _check_options(qm, exporter, opset)
    batch = _agreement_batch(qm, samples)
    out = check_output(None, path)
    net = export_network(qm, target)
    try:
        names = _io_names(net, qm.example_inputs, input_names, output_names)
    except ConfigError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"The QAT model's export form fails on the example inputs: "
                             f"{type(exc).__name__}: {str(exc)[:800]}") from exc
    reference = float_network(qm)
    with tempfile.TemporaryDirectory(prefix="slimq-qat-") as tmp:
        model = _export_onnx(net, qm, Path(tmp) / "int8.onnx", exporter, opset, names)
        fp32 = ir.serde.serialize_model(_export_onnx(reference, qm, Path(tmp) / "fp32.onnx", exporter, opset, names))
    fp32_diff = check_fp32_export(reference, fp32, check_batch(batch, qm.example_inputs), exporter)
    folded = fold_weight_quantization(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    within = check_agreement(qm, proto, check_batch(batch, qm.example_inputs))
    extra = {"exporter": exporter, "opset": opset, "capture": qm.report.capture,
             "fp32_export_max_abs_diff": fp32_diff, "int8_export_within_one_step": within.fraction_within_step,
             "int8_export_max_diff_steps": within.max_diff_steps}
    report = build_qat_report(qm, proto, fp32, sample_feeds(batch, names[0]), target, samples is not None,
                              extra=extra)
    n_q = sum(1 for n in proto.graph.node if is_quantize(n.op_type, n.domain))
    return publish(proto, report, out, strict=strict, source=fp32,
                   artifacts={"target": target, "exporter": exporter, "int8_weights": folded, "quantize_nodes": n_q,
                              "export_agreement": within})
