"""--target arm: the ORT-format file for onnxruntime Mobile beside the QDQ model (``model.int8.ort``)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from slimq.core.config import StaticConfig
from slimq.core.errors import OutputPathError
from slimq.io.spec import Feeds
from slimq.report.publish import QuantResult
from slimq.report.schema import Report
from slimq.runtime.ort_format import OrtFormat, ort_format_path, to_ort_format

MOBILE_TARGETS = ("arm",)


def check_mobile_path(out: Path | None, source: object, cfg: StaticConfig) -> None:
    """Before any work: the .ort file of a mobile target must not overwrite the input model."""
    if out is None or cfg.target not in MOBILE_TARGETS or not isinstance(source, (str, os.PathLike)):
        return
    ort_path = ort_format_path(out)
    if Path(source).exists() and ort_path.exists() and ort_path.resolve() == Path(source).resolve():
        raise OutputPathError(f"--target {cfg.target} also writes {ort_path}, which is the input model; slimq never "
                              "overwrites its input. Choose another -o path.")
    if ort_path.is_dir():
        raise OutputPathError(f"{ort_path} (the ORT-format model of -o {out}) is a directory; remove it or choose "
                              "another -o path.")


def mobile_format(model: onnx.ModelProto, cfg: StaticConfig, feeds: list[Feeds], out: Path | None) -> OrtFormat | None:
    """The checked ORT-format model for mobile targets (None for the others)."""
    return to_ort_format(model, feeds) if cfg.target in MOBILE_TARGETS else None


def with_mobile(report: Report, mobile: OrtFormat | None, out: Path | None) -> Report:
    if mobile is None:
        return report
    name = ort_format_path(out).name if out is not None else "(in memory: QuantResult.artifacts['ort_format'])"
    details: dict[str, Any] = {**report.details, "ort_format": {"bytes": len(mobile.data), "samples": mobile.samples,
                                                                "max_abs_diff": mobile.max_abs_diff}}
    return replace(report, notes=(*report.notes, mobile.note(name)), details=details)


def write_mobile(result: QuantResult, mobile: OrtFormat | None) -> QuantResult:
    """Write ``<output>.ort`` after the model and its report are in place."""
    if mobile is not None and result.path is not None:
        mobile.write(ort_format_path(result.path))
    return result
