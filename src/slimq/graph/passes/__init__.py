"""Graph passes: onnx-ir in-place passes whose results say whether (and how often) they changed the model."""

from slimq.graph.passes.base import RewritePass, RewriteResult, rewrite_count
from slimq.graph.passes.fusions import (
    FoldConvAffinePass,
    FoldInputAffinePass,
    FuseHardSwishPass,
    fold_conv_affine,
    fold_input_affine,
    fuse_hardswish,
)
from slimq.graph.passes.gemm import GemmToMatMulPass, gemm_to_matmul
from slimq.graph.passes.preprocess import (
    FoldBatchNormPass,
    fold_batchnorm,
    infer_shapes,
    ir_passes,
    ort_constant_fold,
    preprocess,
)

__all__ = ["FoldBatchNormPass", "FoldConvAffinePass", "FoldInputAffinePass", "FuseHardSwishPass", "GemmToMatMulPass",
           "RewritePass", "RewriteResult", "fold_batchnorm", "fold_conv_affine", "fold_input_affine", "fuse_hardswish",
           "gemm_to_matmul", "infer_shapes", "ir_passes", "ort_constant_fold", "preprocess", "rewrite_count"]
