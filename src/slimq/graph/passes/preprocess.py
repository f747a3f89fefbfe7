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
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass
from slimq.graph.passes.common import const_array
from slimq.graph.passes.deconv import ConvTransposeToDepthToSpacePass
from slimq.graph.passes.fusions import FoldConvAffinePass, FoldInputAffinePass, FuseHardSwishPass
from slimq.io.model import PROTOBUF_LIMIT, upgrade_opset


def _fold_one_bn(b: GraphBuilder, bn: ir.Node) -> str | None:
    """Fold `bn` into the Conv feeding it. Returns None on success, else why it did not fire."""
    x = bn.inputs[0]
    conv = x.producer() if x is not None else None
    if x is None or conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return "input is not produced by a Conv"
    if len(x.uses()) != 1 or x.is_graph_output():
        return "Conv output has other consumers"
    if len([o for o in bn.outputs if o.uses() or o.is_graph_output()]) > 1:
        return "BatchNormalization in training mode"
    params = [p for p in (const_array(v) for v in bn.inputs[1:5]) if p is not None]
    w = const_array(conv.inputs[1])
    if w is None or len(params) != 4:
        return "weights or BN statistics are not constants"
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    k = scale / np.sqrt(var + eps)
    bias = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    bias = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    w_new = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
    b_new = ((bias - mean) * k + beta).astype(w.dtype)
    base = node_name(conv)
    conv.replace_input_with(1, b.initializer(f"{base}.weight_bnfold", w_new))
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, b.initializer(f"{base}.bias_bnfold", b_new))
    b.replace_uses(bn.outputs[0], conv.outputs[0])
    b.graph.remove(bn, safe=True)
    return None


class FoldBatchNormPass(RewritePass):
    """Fold every Conv -> BatchNormalization pair into the Conv."""

    def rewrite(self, model: ir.Model) -> int:
        b, folded = GraphBuilder(model.graph), 0
        for node in [n for n in model.graph if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")]:
            why = _fold_one_bn(b, node)
            if why is None:
                folded += 1
            else:
                self.not_fired(node_name(node), why)
        if folded:
            RemoveUnusedNodesPass()(model)
        return folded


def fold_batchnorm(model: ir.Model) -> bool:
    """Fold every Conv -> BatchNormalization pair in place. Returns True if the model changed."""
    return FoldBatchNormPass()(model).modified


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


def ir_passes() -> ir.passes.PassManager:
    """The exact onnx-ir rewrites of :func:`preprocess`, in order."""
    return ir.passes.PassManager([
        LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0),
        FoldBatchNormPass(),
        FoldConvAffinePass(),
        FuseHardSwishPass(),
        FoldInputAffinePass(),
        ConvTransposeToDepthToSpacePass(),
        RemoveUnusedOpsetsPass(),
    ], early_stop=False)  # one step; early_stop would only log that nothing changed


def preprocess(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset upgrade to >= 13, constant folding, BatchNorm and affine folding, HardSwish fusion, ConvTranspose
    with kernel = stride as Conv 1x1 + DepthToSpace (:mod:`slimq.graph.passes.deconv`), shapes.

    Every step is exact in FP32; they remove elementwise ops that would otherwise become
    requantization points or float islands in the INT8 model. The onnx-ir steps run as one
    pass manager (:func:`ir_passes`).
    """
    model = upgrade_opset(model)
    model = ort_constant_fold(model)
    irm = ir.from_proto(model)
    ir_passes()(irm)
    return infer_shapes(ir.to_proto(irm))
