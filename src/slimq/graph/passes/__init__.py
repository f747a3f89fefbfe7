"""Graph passes: each is a small function on an onnx-ir model that says whether it changed it."""

from slimq.graph.passes.fusions import (
    fold_conv_affine,
    fold_input_affine,
    fuse_hardswish,
)
from slimq.graph.passes.preprocess import (
    fold_batchnorm,
    infer_shapes,
    ort_constant_fold,
    preprocess,
)

__all__ = ["fold_conv_affine", "fold_input_affine", "fuse_hardswish", "fold_batchnorm", "infer_shapes", "ort_constant_fold", "preprocess"]
