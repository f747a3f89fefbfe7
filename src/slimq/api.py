"""The one entry point: ``slimq.quantize(model, config, data, output)``, dispatched by config type.

=====================  =======================================================  ==========================
config                 method                                                   data
=====================  =======================================================  ==========================
``StaticConfig``       static PTQ: calibrate activation ranges, integer kernels  calibration samples
``DynamicConfig``      dynamic PTQ: int8/int4 weights, activations at run time   optional check inputs
``QATConfig``          QAT: convert a trained QAT model, or prepare + calibrate  samples (torch/numpy)
                       + convert a float ``nn.Module``
=====================  =======================================================  ==========================

Every method ends in the same finish step (:func:`slimq.report.publish.publish`): the output location
is checked before any work, strict mode refuses, the model and ``<output>.report.json`` are written
atomically, and the same :class:`QuantResult` comes back.
"""

from __future__ import annotations

import os
from typing import Any

from slimq.core.config import DynamicConfig, StaticConfig
from slimq.core.errors import ConfigError, did_you_mean
from slimq.dynamic.method import quantize_dynamic
from slimq.qat.config import QATConfig
from slimq.report.publish import QuantResult
from slimq.static.method import quantize_static

CONFIG_TYPES = ("StaticConfig", "DynamicConfig", "QATConfig")


def quantize(model: Any, config: StaticConfig | DynamicConfig | QATConfig, data: Any = None,
             output: str | os.PathLike | None = None, **options: Any) -> QuantResult:
    """Quantize `model` with the method `config` selects; write it (and its report) to `output` if given.

    model: static and dynamic: an ONNX path or ModelProto, a PyTorch ``nn.Module`` (with example inputs as
    ``(module, example_inputs)``, or taken from array `data`), a ``torch.export.ExportedProgram`` or ``.pt2``
    file, or a Paddle inference model folder (converted and checked first: :mod:`slimq.io.source`);
    QAT: a torch ``nn.Module`` or a prepared QAT model.
    data: calibration samples (static; required), check inputs (dynamic; optional, synthesised otherwise),
    samples to calibrate and check on (QAT). options: static: ``preprocess`` (image folders: a
    PreprocessSpec), ``eval_data`` and ``metric`` (for a ``max_drop`` budget); dynamic: ``calib_data``
    (inputs GPTQ rounds on, with ``DynamicConfig(weight_rounding="gptq")``); QAT: the keyword options
    of :func:`slimq.qat.convert`.
    """
    if isinstance(config, StaticConfig):
        if data is None:
            raise ConfigError("Static PTQ needs calibration data (a folder of images, .npy/.npz files, or arrays); "
                              "for a data-free model use DynamicConfig.")
        preprocess, eval_data, metric = (options.pop(k, None) for k in ("preprocess", "eval_data", "metric"))
        _no_options(options, "static PTQ", ("preprocess", "eval_data", "metric"))
        return quantize_static(model, data, config, output, preprocess, eval_data=eval_data, metric=metric)
    if isinstance(config, DynamicConfig):
        calib_data = options.pop("calib_data", None)
        _no_options(options, "dynamic PTQ", ("calib_data",))
        return quantize_dynamic(model, config, output, data, calib_data)
    if isinstance(config, QATConfig):
        try:
            from slimq.qat.method import quantize_qat
        except ModuleNotFoundError as e:
            raise ConfigError(f"QAT needs PyTorch ({e.name} is missing): pip install 'slimq[qat]'.") from None
        return quantize_qat(model, config, data, output, **options)
    raise ConfigError(f"config must be one of {', '.join(CONFIG_TYPES)}, got {type(config).__name__}. "
                      "For example slimq.quantize(model, slimq.StaticConfig(algo='hist'), calib_data, 'out.onnx').")



def _no_options(options: dict[str, Any], method: str, valid: tuple[str, ...]) -> None:
    if options:
        name = next(iter(options))
        raise ConfigError(f'Unknown option "{name}" for {method}.{did_you_mean(name, valid)} '
                          f"Valid options: {', '.join(valid) or 'none'}.")


__all__ = ["QuantResult", "quantize", "quantize_dynamic", "quantize_static"]
