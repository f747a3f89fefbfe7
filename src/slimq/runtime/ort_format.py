"""The ORT format (``.ort``) that onnxruntime Mobile loads, written from a QDQ model and checked.

onnxruntime's own converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``) saves a session's
graph with ``session.save_model_format = ORT``; slimq does the same at the *basic* optimization level, the
provider-independent one, so the file carries no x86-only layouts (NCHWc) and runs on ARM. The QDQ
structure stays in the file: onnxruntime Mobile fuses it into int8 kernels when it loads the model. The file
is then loaded back here and run beside the QDQ model on the check samples.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimq.core.errors import ModelLoadError
from slimq.io.atomic import write_bytes
from slimq.io.spec import Feeds
from slimq.runtime.source import ort_model

ORT_SUFFIX = ".ort"


@dataclass(frozen=True)
class OrtFormat:
    """An ORT-format model and how closely it agrees with the QDQ model it was made from."""

    data: bytes
    max_abs_diff: float
    samples: int

    def note(self, name: str) -> str:
        return (f"ORT format for onnxruntime Mobile: {name} ({len(self.data) / 1e6:.2f} MB), loads in onnxruntime "
                f"{ort.__version__} and matches the QDQ model on {self.samples} sample(s) (max |diff| "
                f"{self.max_abs_diff:.2g})")

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically, with the user's umask (slimq.io.atomic)."""
        return write_bytes(path, self.data)


def ort_format_path(onnx_path: str | os.PathLike) -> Path:
    """Where the .ort file of a model written to `onnx_path` goes: the same name with .ort."""
    return Path(onnx_path).with_suffix(ORT_SUFFIX)


def to_ort_format(model: onnx.ModelProto, feeds: Sequence[Feeds]) -> OrtFormat:
    """Convert `model` to the ORT format, load the result and compare it with `model` on `feeds`."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="slimq-ort-") as tmp, ort_model(model) as src:
        so.optimized_model_filepath = str(Path(tmp) / "model.ort")
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        data = (Path(tmp) / "model.ort").read_bytes()
    try:
        mobile = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"onnxruntime cannot load the ORT-format model it wrote: {e}") from None
    with ort_model(model) as src:
        qdq = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in feeds:
        for a, b in zip(mobile.run(None, dict(feed)), qdq.run(None, dict(feed))):
            worst = max(worst, float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                                            initial=0.0)))
    return OrtFormat(data, worst, len(feeds))
