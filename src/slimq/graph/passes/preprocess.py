"""Pre-processing before quantization: opset upgrade, constant folding, BatchNorm folding, shapes.

Shape inference uses ONNX's own (not onnxruntime's symbolic shape inference,
which fails on the PP-OCR models); where it cannot infer a shape the model is
still quantized, the planner only loses per-tensor size estimates.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from slimq.core.errors import ModelLoadError
from slimq.graph.passes.common import add_initializer, const_array
from slimq.graph.passes.fusions import fold_conv_affine, fuse_hardswish
from slimq.io.model import PROTOBUF_LIMIT, upgrade_opset


def _fold_one_bn(graph: ir.Graph, bn: ir.Node) -> str | None:
    """Fold `bn` into the Conv feeding it. Returns None on success, else why it did not fire."""
    conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return "input is not produced by a Conv"
    if len(bn.inputs[0].uses()) != 1 or bn.inputs[0].is_graph_output():
        return "Conv output has other consumers"
    if len([o for o in bn.outputs if o.uses() or o.is_graph_output()]) > 1:
        return "BatchNormalization in training mode"
    params = [const_array(v) for v in bn.inputs[1:5]]
    w = const_array(conv.inputs[1])
    if w is None or any(p is None for p in params):
        return "weights or BN statistics are not constants"
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    k = scale / np.sqrt(var + eps)
    b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    b = np.zeros_like(mean) if b is None else b.astype(np.float64)
    w_new = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
    b_new = ((b - mean) * k + beta).astype(w.dtype)
    base = conv.name or conv.outputs[0].name
    conv.replace_input_with(1, add_initializer(graph, f"{base}.weight_bnfold", w_new))
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, add_initializer(graph, f"{base}.bias_bnfold", b_new))
    bn.outputs[0].replace_all_uses_with(conv.outputs[0], replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    return None


def fold_batchnorm(model: ir.Model) -> bool:
    """Fold every Conv -> BatchNormalization pair in place. Returns True if the model changed."""
    changed = False
    for node in list(model.graph):
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            changed |= _fold_one_bn(model.graph, node) is None
    if changed:
        RemoveUnusedNodesPass()(model)
    return changed


def ort_constant_fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and redundant-node removal with onnxruntime's basic (provider-independent) level."""
    with tempfile.TemporaryDirectory(prefix="slimq-pre-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        large = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT // 2
        onnx.save_model(model, str(src), save_as_external_data=large, location="in.data")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        if large:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "out.data")
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"onnxruntime cannot load the model: {e}. Check that it runs in FP32 first.") from None
        return onnx.load(str(dst))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference (strict off: unknown shapes stay unknown instead of failing)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort; the planner tolerates missing shapes
        return model


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset upgrade to >= 13, constant folding, BatchNorm and affine folding, HardSwish fusion, shapes.

    Every step is exact in FP32; they remove elementwise ops that would otherwise become
    requantization points or float islands in the INT8 model.
    """
    model = upgrade_opset(model)
    model = ort_constant_fold(model)
    irm = ir.from_proto(model)
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0)(irm)
    fold_batchnorm(irm)
    fold_conv_affine(irm)
    fuse_hardswish(irm)
    RemoveUnusedOpsetsPass()(irm)
    return infer_shapes(ir.to_proto(irm))
