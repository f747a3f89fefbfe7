"""Quantization-aware training in PyTorch, exported to QDQ ONNX.

Typical use::

    qmodel = slimq.qat.prepare(model, example_inputs, QATConfig(target="x86"))
    # or, keeping float the layer classes whose int8 form runs slower on the target (static PTQ's guard):
    # qmodel = slimq.qat.speed_plan(model, example_inputs, QATConfig(target="x86")).prepare(model, example_inputs)
    slimq.qat.calibrate(qmodel, batches)          # optional range initialisation
    ...train qmodel as usual (DDP works: wrap it after prepare)...
    # or, without labels: slimq.qat.distill(qmodel, "calib_images/")  (matches the FP32 model's outputs)
    slimq.qat.convert(qmodel, "model.int8.onnx")

Names are imported lazily: the configuration classes work without PyTorch (so ``slimq``'s
CLI can register its ``qat`` command); everything else needs ``pip install slimq[qat]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimq.qat.config import (
        TARGETS,
        VARIANTS,
        QATConfig,
        QATRecipe,
        TargetRules,
        load_recipe,
    )
    from slimq.qat.distillation import DistillConfig, DistillResult, distill
    from slimq.qat.export import convert, onnx_io_names
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
    from slimq.qat.speed import SpeedPlan, speed_plan
    from slimq.qat.verify import Agreement, check_agreement, ort_optimized_ops

_EXPORTS = {
    "slimq.qat.config": ("TARGETS", "VARIANTS", "QATConfig", "QATRecipe", "TargetRules", "load_recipe"),
    "slimq.qat.distillation": ("DistillConfig", "DistillResult", "distill"),
    "slimq.qat.export": ("convert", "onnx_io_names"),
    "slimq.qat.graph": ("FloatOp", "PrepareReport"),
    "slimq.qat.model": ("QATModel", "QATWarning", "calibrate", "load_checkpoint", "param_groups",
                        "prepare", "save_checkpoint"),
    "slimq.qat.speed": ("SpeedPlan", "speed_plan"),
    "slimq.qat.verify": ("Agreement", "check_agreement", "ort_optimized_ops"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'slimq.qat' has no attribute '{name}'")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "onnxscript"):
            raise ImportError(
                f"slimq.qat.{name} needs PyTorch and onnxscript: pip install 'slimq[qat]'."
            ) from exc
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
