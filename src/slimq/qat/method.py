"""QAT as a method of `slimq.quantize`: a trained QAT model is converted; a float PyTorch model is
prepared, calibrated on the data (no training) and converted — the same finish step as PTQ."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import ExportedProgram
from torch.nn.parallel import DataParallel, DistributedDataParallel

from slimq.core.errors import CalibrationDataError, ConfigError, NothingToQuantizeError
from slimq.qat.config import QATConfig
from slimq.qat.export import convert
from slimq.qat.model import QATModel, calibrate, prepare
from slimq.qat.speed import speed_plan
from slimq.report.publish import QuantResult, check_output

CALIB_BATCH = 8
HOLDOUT = 16


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x
    raise ConfigError(f"QAT data must be a tensor or array of samples (N, ...), or a list of batches; got "
                      f"{type(x).__name__}.")


def _samples(data: Any) -> torch.Tensor:
    """All samples as one tensor (single-input models)."""
    if data is None:
        raise CalibrationDataError("slimq.quantize with a QATConfig needs data: a tensor/array of samples or a "
                                   "list of batches to calibrate the float model on.")
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], (int, float)):
        return torch.cat([_as_tensor(b) for b in data])
    return _as_tensor(data)


def _batches(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), size):
        yield x[i:i + size]


def prepare_for_speed(model: nn.Module | ExportedProgram, calib: torch.Tensor, config: QATConfig,
                      speed_guard: bool) -> QATModel:
    """prepare(), after the speed plan (:func:`slimq.qat.speed_plan`, timed on the first calibration batch)
    when ``speed_guard``: layers whose int8 form makes the export slower stay float, as in static PTQ."""
    if not speed_guard:
        return prepare(model, calib[:2], config)
    plan = speed_plan(model, calib[:2], config, batches=[calib[:CALIB_BATCH]])
    if plan.placement.all_float:
        raise NothingToQuantizeError(
            f"{plan.note()}. A QAT export would have no int8 layer left; quantize anyway with speed_guard=False "
            f"(CLI: --no-speed-guard), or deploy the FP32 model.")
    return plan.prepare(model, calib[:2])


def quantize_qat(model: nn.Module, config: QATConfig | None = None, data: Any = None,
                 output: str | os.PathLike | None = None, speed_guard: bool = True,
                 **convert_options: Any) -> QuantResult:
    """Convert a trained QAT model, or prepare -> calibrate -> convert a float one (no training).

    For a float model (an ``nn.Module`` or a ``torch.export`` program), `data` (samples along axis 0, or a
    list of batches) calibrates the activation ranges as static PTQ does (``hist``) and corrects the biases
    layer by layer against FP32 (``bias_correction="empirical"``); the last samples (up to 16, at most a
    fifth) are held back for the report's agreement. ``speed_guard``
    (float models): keep float the layer classes whose int8 form measures slower, as static PTQ does.
    """
    out = check_output(None, output)
    if out is None:
        raise ConfigError("QAT writes an ONNX model: give an output path (output=...).")
    if isinstance(model, (QATModel, DataParallel, DistributedDataParallel)):
        samples = None if data is None else _samples(data)
        return convert(model, out, samples=samples, **convert_options)
    x = _samples(data)
    if len(x) < 2:
        raise CalibrationDataError(f"QAT calibration needs at least 2 samples, got {len(x)}.")
    hold = min(HOLDOUT, len(x) // 5)
    calib, check = (x[:-hold], x[-hold:]) if hold else (x, None)
    qmodel = prepare_for_speed(model, calib, config or QATConfig(), speed_guard)
    calibrate(qmodel, _as_batches(calib), algo="hist", bias_correction="empirical")  # no training follows
    return convert(qmodel, out, samples=check, **convert_options)


def _as_batches(x: torch.Tensor) -> Iterable[torch.Tensor]:
    return list(_batches(x, CALIB_BATCH))
