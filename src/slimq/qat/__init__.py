"""Quantization-aware training in PyTorch, exported to QDQ ONNX.

Typical use::

    qmodel = slimq.qat.prepare(model, example_inputs, QATConfig(target="x86"))
    slimq.qat.calibrate(qmodel, batches)          # optional range initialisation
    ...train qmodel as usual (DDP works: wrap it after prepare)...
    slimq.qat.convert(qmodel, "model.int8.onnx")
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "slimq.qat needs PyTorch: install it with `pip install slimq[qat]` (torch>=2.4, onnxscript)."
    ) from exc

from slimq.qat.config import TARGETS, VARIANTS, QATConfig, QATRecipe, TargetRules, load_recipe
from slimq.qat.export import ConvertResult, convert
from slimq.qat.graph import FloatOp, PrepareReport
from slimq.qat.model import (
    QATModel,
    QATWarning,
    calibrate,
    load_checkpoint,
    param_groups,
    prepare,
    save_checkpoint,
)
from slimq.qat.verify import Agreement, check_agreement, ort_optimized_ops

__all__ = [
    "TARGETS", "VARIANTS", "Agreement", "ConvertResult", "FloatOp", "PrepareReport", "QATConfig",
    "QATModel", "QATRecipe", "QATWarning", "TargetRules", "calibrate", "check_agreement",
    "convert", "load_checkpoint", "load_recipe", "ort_optimized_ops", "param_groups", "prepare", "save_checkpoint",
]
