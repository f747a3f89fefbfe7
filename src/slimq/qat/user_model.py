"""QAT of a user's PyTorch model from files: ``module:factory`` or a ``.pt2`` program, calibration/training
data folders or ``.npy``/``.npz`` files (what ``slimq quantize qat --model ...`` runs).

Pipeline: load the model -> the speed plan (:func:`slimq.qat.speed_plan`, as static PTQ's speed guard; on by
default) -> :func:`slimq.qat.prepare` -> :func:`slimq.qat.calibrate` (static PTQ's ``hist``
ranges, empirical bias correction) -> optionally :func:`slimq.qat.distill` on unlabeled training data ->
:func:`slimq.qat.convert`. The last samples of the calibration data (up to 16, at most a fifth) are
held back for the report's FP32-vs-INT8 agreement.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.export import ExportedProgram

from slimq.core.errors import CalibrationDataError, ConfigError, ModelLoadError
from slimq.io.samples import load_samples
from slimq.io.spec import InputSpec
from slimq.qat.config import QATConfig
from slimq.qat.distillation import DistillConfig, distill
from slimq.qat.export import convert
from slimq.qat.method import CALIB_BATCH, HOLDOUT, prepare_for_speed
from slimq.qat.model import calibrate
from slimq.report.publish import QuantResult


def is_user_model(spec: str) -> bool:
    """``module:factory`` or a ``.pt2`` file (anything else names a shipped zoo model)."""
    return ":" in spec or spec.lower().endswith(".pt2")


def _factory_model(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f'--model "{spec}" should be module:factory, e.g. mypackage.models:build_model.')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user code next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f'Cannot import module "{module_name}" for --model {spec}: {exc}. Run from the folder '
                             f"that holds it or add that folder to PYTHONPATH.") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f'Module "{module_name}" has no callable "{attr}" (for --model {spec}).')
    try:
        model = factory()
    except Exception as exc:
        raise ModelLoadError(f"--model {spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--model {spec}: {attr}() returned {type(model).__name__}, expected a torch nn.Module.")
    return model.eval()


def load_model(spec: str) -> nn.Module | ExportedProgram:
    """A float model from ``module:factory`` (called without arguments) or a ``torch.export`` ``.pt2`` file."""
    if not spec.lower().endswith(".pt2"):
        return _factory_model(spec)
    path = Path(spec)
    if not path.is_file():
        raise ModelLoadError(f"--model {spec}: no such file.")
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"Cannot load the torch.export program {path}: {type(exc).__name__}: {exc}. Save it "
                             f"with torch.export.save(torch.export.export(model, args, dynamic_shapes=...), path).") from exc


def _program_shape(program: ExportedProgram) -> tuple[Any, ...] | None:
    users = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in users and isinstance(val, torch.Tensor):
            return tuple(d if isinstance(d, int) else None for d in val.shape[1:])
    return None


def _data_shape(data: str | Path) -> tuple[Any, ...] | None:
    """Sample shape of the first .npy/.npz array of a file or folder (None for image folders)."""
    path = Path(data)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    arrays = [p for p in files if p.suffix in (".npy", ".npz")]
    if not arrays:
        return None
    try:
        if arrays[0].suffix == ".npz":
            with np.load(arrays[0], allow_pickle=False) as z:
                return tuple(z[z.files[0]].shape[1:]) if z.files else None
        return tuple(np.load(arrays[0], allow_pickle=False, mmap_mode="r").shape[1:])
    except (OSError, ValueError) as exc:
        raise CalibrationDataError(f"Cannot read {arrays[0]}: {exc}. Save arrays with numpy.save / numpy.savez.") from None


def input_spec(model: nn.Module | ExportedProgram, data: str | Path, shape: Sequence[int] | None,
               image_size: tuple[int, int] | None, channels: int) -> InputSpec:
    """The model's (single) input: from ``shape`` (C,H,W...), the program, the data, or the image size."""
    dims: tuple[Any, ...] | None = tuple(shape) if shape else None
    if dims is None and isinstance(model, ExportedProgram):
        dims = _program_shape(model)
    if dims is None:
        dims = _data_shape(data)
    if dims is None and image_size is not None:
        dims = (channels, *image_size)
    if dims is None:
        raise ConfigError("The model's input shape is unknown: give --input-shape C,H,W (or --size H,W for image "
                          "folders), or use .npy/.npz data.")
    return InputSpec("input", (None, *dims), np.float32)


def load_tensor(data: str | Path, spec: InputSpec, preprocess: Any, what: str) -> torch.Tensor:
    """All samples of a data folder/file as one float tensor, validated against the input spec."""
    samples = load_samples(data, [spec], preprocess)
    if len(samples) < 2:
        raise CalibrationDataError(f"{what} {data} holds {len(samples)} sample; QAT needs at least 2.")
    return torch.from_numpy(np.concatenate([samples.sample(i)["input"] for i in range(len(samples))]))


def quantize_user_model(model_spec: str, calib: str | Path, output: str | Path, config: QATConfig, *,
                        train: str | Path | None = None, distill_config: DistillConfig | None = None,
                        input_shape: Sequence[int] | None = None, preprocess: Any = None,
                        calib_algo: str = "hist", log: Any = None, speed_guard: bool = True) -> QuantResult:
    """Load, prepare (after the speed plan when ``speed_guard``), calibrate, optionally distill, and convert a
    user model; returns the QuantResult."""
    model = load_model(model_spec)
    size = preprocess.size if preprocess is not None and preprocess.size else None
    channels = 1 if preprocess is not None and preprocess.color == "GRAY" else 3
    spec = input_spec(model, calib, input_shape, size, channels)
    x = load_tensor(calib, spec, preprocess, "Calibration data")
    hold = min(HOLDOUT, len(x) // 5)
    calib_x, check = (x[:-hold], x[-hold:]) if hold else (x, None)
    qmodel = prepare_for_speed(model, calib_x, config, speed_guard)
    calibrate(qmodel, [calib_x[i:i + CALIB_BATCH] for i in range(0, len(calib_x), CALIB_BATCH)], algo=calib_algo,
              bias_correction="empirical")
    if distill_config is not None:
        data = load_tensor(train, spec, preprocess, "Training data") if train is not None else calib_x
        distill(qmodel, data, config=distill_config, log=log)
    return convert(qmodel, output, samples=check)


__all__ = ["input_spec", "is_user_model", "load_model", "load_tensor", "quantize_user_model"]
