"""One place that turns whatever model the user holds into the FP32 ONNX slimq works on.

=====================================================  ==========================================
model                                                  what happens
=====================================================  ==========================================
``.onnx`` path or ``onnx.ModelProto``                  loaded and validated (:func:`load_model`)
``nn.Module`` / ``(nn.Module, example_inputs)``        exported with the dynamo exporter, checked
``torch.export.ExportedProgram`` / ``.pt2`` path       against PyTorch (:mod:`slimq.io.torch_import`)
Paddle inference model folder / ``.pdmodel`` path      paddle2onnx in a child process, checked against
                                                       ``paddle.inference`` (:mod:`slimq.io.paddle_import`)
=====================================================  ==========================================

Converted models are checked against their framework on the calibration samples (or the program's
example inputs) before anything is quantized; the check goes into the report as a note and under
``details["conversion"]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from slimq.io.convert import Conversion
from slimq.io.model import load_model


@dataclass(frozen=True)
class Source:
    """The FP32 ONNX of the user's model, and how it was obtained."""

    model: onnx.ModelProto
    path: Path | None  # the .onnx file the model was read from (None: in memory or converted)
    conversion: Conversion | None = None

    @property
    def size_source(self) -> str | os.PathLike | onnx.ModelProto:
        """What the report's FP32 size is measured on: the .onnx file, else the (converted) model."""
        return self.path if self.path is not None else self.model


def model_location(model: Any) -> str | os.PathLike | None:
    """The path a model argument names (for output-path checks), or None for in-memory models."""
    return model if isinstance(model, (str, os.PathLike)) else None


def framework_of(model: Any) -> str:
    """"onnx", "pytorch" or "paddle": which importer a model argument needs (no import of torch/paddle)."""
    from slimq.io.paddle_import import is_paddle_model
    from slimq.io.torch_import import PT2_SUFFIX, is_torch_model

    if isinstance(model, onnx.ModelProto):
        return "onnx"
    if is_torch_model(model) or (isinstance(model, tuple) and len(model) == 2 and is_torch_model(model[0])):
        return "pytorch"
    if isinstance(model, (str, os.PathLike)):
        if Path(model).suffix.lower() == PT2_SUFFIX:
            return "pytorch"
        if is_paddle_model(model):
            return "paddle"
    return "onnx"


def load_source(model: Any, data: Any = None, preprocess: Any = None, **options: Any) -> Source:
    """The FP32 ONNX of `model` (see the module docstring); conversions are checked on `data`'s samples.

    options: ``example_inputs`` (PyTorch modules), ``check_samples`` (how many samples the check runs).
    """
    kind = framework_of(model)
    if kind == "pytorch":
        from slimq.io.torch_import import import_torch

        proto, conversion = import_torch(model, data, preprocess, **options)
        return Source(proto, None, conversion)
    if kind == "paddle":
        from slimq.io.paddle_import import import_paddle

        proto, conversion = import_paddle(model, data, preprocess, **options)
        return Source(proto, None, conversion)
    if isinstance(model, onnx.ModelProto):
        return Source(model, None)
    return Source(load_model(model), Path(model))


def with_conversion(report: Any, source: Source) -> Any:
    """`report` (any frozen report with ``notes`` and ``details``) with the conversion line and record added."""
    if source.conversion is None:
        return report
    return replace(report, notes=(source.conversion.line(), *report.notes),
                   details={**report.details, "conversion": source.conversion.to_dict()})
