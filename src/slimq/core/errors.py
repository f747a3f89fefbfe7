"""Exception types raised by slimq; every message names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlimqError(Exception):
    """Base class of all errors slimq raises for bad input or unsupported cases."""


class ModelLoadError(SlimqError):
    """The model file is missing, corrupt, not ONNX, or uses an unsupported opset."""


class ConversionError(ModelLoadError):
    """A PyTorch or Paddle model could not be converted to ONNX, or the FP32 ONNX does not match the original."""


class CalibrationDataError(SlimqError):
    """Calibration or evaluation data is empty, has NaN/Inf, or does not match the model inputs."""


class ConfigError(SlimqError):
    """A configuration value, recipe key or CLI flag is invalid."""


class OutputPathError(SlimqError):
    """The output path would overwrite the input model or cannot be written."""


class FidelityError(SlimqError):
    """The quantized model disagrees with the FP32 model beyond the allowed tolerance (CLI exit code 4,
    for every method: 0 written, 3 written with warnings, 4 refused)."""

    exit_code = 4


class NothingToQuantizeError(SlimqError):
    """The model has no weights or ops that the chosen method can quantize."""


class RuntimeTooOldError(SlimqError):
    """The installed onnxruntime cannot run the requested quantized format."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_choice(kind: str, word: str, choices: Iterable[str]) -> ConfigError:
    """Build a ConfigError for an unknown name, listing the valid ones and the closest match."""
    choices = sorted(str(c) for c in choices)
    return ConfigError(
        f'Unknown {kind} "{word}".{did_you_mean(word, choices)} Valid values: {", ".join(choices)}.'
    )
