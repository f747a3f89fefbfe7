"""The one finish step every method ends with, and the one result type.

`check_output` runs before any work (a bad output location fails in a second, not after calibration
or training). `publish` refuses in strict mode, then stages the model (and its external data),
``<output>.report.json`` and ``<output>.report.html`` together and renames them into place atomically
with signals deferred: a model on disk always has its report, and nothing partial is ever left at the
output path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from slimq.core.errors import FidelityError
from slimq.io.atomic import Stage
from slimq.io.model import check_output_path, model_size_bytes, report_path, stage_model, staged_size
from slimq.report.html import render_html
from slimq.report.schema import Report, Sizes

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass(frozen=True)
class QuantResult:
    """A quantized model, its report, where both were written, and what the method decided.

    ``artifacts`` holds method-specific results: ``plan`` (static), ``decisions``/``demotions``
    (dynamic), ``target``/``exporter``/``int8_weights``/``quantize_nodes`` (QAT).
    """

    model: onnx.ModelProto
    report: Report
    path: Path | None = None
    artifacts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def report_path(self) -> Path | None:
        return None if self.path is None else report_path(self.path)

    @property
    def plan(self) -> Any:
        return self.artifacts.get("plan")

    @property
    def decisions(self) -> list[Any]:
        return list(self.artifacts.get("decisions", ()))

    @property
    def demotions(self) -> list[Any]:
        return list(self.artifacts.get("demotions", ()))

    @property
    def fell_back(self) -> bool:
        return bool(self.artifacts.get("demotions"))


def check_output(model: ModelSource | None, output: str | os.PathLike | None) -> Path | None:
    """Validate the output location before any work (never the input or its external data)."""
    if output is None:
        return None
    source = None if model is None or isinstance(model, onnx.ModelProto) else model
    return check_output_path(source, output)


def source_size(model: ModelSource) -> int | None:
    """Bytes of the FP32 input on disk (or serialized, for an in-memory model)."""
    if isinstance(model, onnx.ModelProto):
        return staged_size(model)
    try:
        return model_size_bytes(model)
    except OSError:
        return None


def publish(model: onnx.ModelProto, report: Report, out: Path | None, *, strict: bool = False,
            source: ModelSource | None = None, external_data: bool | None = None,
            artifacts: Mapping[str, Any] | None = None) -> QuantResult:
    """Refuse (strict) or write the model and its report atomically; sizes go into the report."""
    if strict and report.warnings:
        raise FidelityError("The quantized model failed the fidelity check (strict mode); nothing was written.\n"
                            + "\n".join(report.warnings))
    fp32_bytes = source_size(source) if source is not None else None
    if out is None:
        report = report.with_sizes(Sizes(fp32_bytes, staged_size(model, external_data)))
        return QuantResult(model, report, None, dict(artifacts or {}))
    with Stage(out) as stage:
        names = stage_model(model, stage, external_data)
        report = report.with_sizes(Sizes(fp32_bytes, sum(stage.path(n).stat().st_size for n in names)))
        rep = report_path(out).name
        stage.path(rep).write_text(report.to_json(), encoding="utf-8")
        page = rep.removesuffix(".json") + ".html"
        stage.path(page).write_text(render_html(report), encoding="utf-8")
        stage.commit([n for n in names if n != out.name] + [rep, page, out.name])
    return QuantResult(model, report, out, dict(artifacts or {}))
