"""What every framework import shares: the record of a conversion and the FP32 check against the original.

A converted model is compared output by output with the framework that made it on the same inputs; an
output passes when ``max|onnx - original| <= atol + rtol * max|original|``. The worst output is named in
the error, so a broken conversion is refused before any calibration is spent on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimq.core.errors import ConversionError
from slimq.io.model import externalize, is_large
from slimq.io.spec import Feeds

RTOL = 1e-3
ATOL = 1e-4

Runner = Callable[[Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class Conversion:
    """How a non-ONNX model became the FP32 ONNX that slimq quantized, and how closely it matches."""

    framework: str  # "PyTorch", "Paddle"
    source: str  # the path or type the user gave
    exporter: str  # e.g. "torch.onnx.export(dynamo=True), torch 2.13.0"
    checked_samples: int
    max_abs_diff: float | None  # worst |ONNX - original| over all outputs and samples; None: not checked
    seconds: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One report line: what was converted and what the FP32 check found."""
        if self.max_abs_diff is None or not self.checked_samples:
            check = "NOT checked (no samples or example inputs to run)"
        else:
            check = (f"FP32 ONNX matches {self.framework} on {self.checked_samples} sample(s), "
                     f"max |diff| {self.max_abs_diff:.2g}")
        extra = "".join(f"; {n}" for n in self.notes)
        return f"converted from {self.framework} ({self.source}) with {self.exporter} in {self.seconds:.1f} s: {check}{extra}"


def onnx_runner(model: onnx.ModelProto) -> Runner:
    """feeds -> outputs of `model` in onnxruntime (1 thread, basic optimizations: the graph as exported)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        session = _session(model, so)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ConversionError(f"onnxruntime cannot load the converted model: {str(e)[:400]}") from None

    def run(feeds: Feeds) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, dict(feeds))]
    return run


def _session(model: onnx.ModelProto, so: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime session for `model`; over protobuf's 2 GB limit through a temporary external-data file
    (onnxruntime reads the weights at session creation, so the folder may go afterwards)."""
    if not is_large(model):
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="slimq-convert-") as tmp:
        stripped, _ = externalize(model, Path(tmp), "model.onnx.data")
        (Path(tmp) / "model.onnx").write_bytes(stripped.SerializeToString())
        return ort.InferenceSession(str(Path(tmp) / "model.onnx"), so, providers=["CPUExecutionProvider"])


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, max |b|) in float64."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a64 - b64), initial=0.0)), float(np.max(np.abs(b64), initial=0.0))


def compare_outputs(converted: Runner, original: Runner, feeds: Sequence[Feeds], framework: str,
                    names: Sequence[str], rtol: float = RTOL, atol: float = ATOL) -> float | None:
    """Run both on every feed; the worst absolute difference, or ConversionError naming the worst output."""
    if not feeds:
        return None
    worst, excess, where = 0.0, 0.0, ("", 0, 0.0, 0.0)
    for i, feed in enumerate(feeds):
        got, want = converted(feed), original(feed)
        if len(got) != len(want):
            raise ConversionError(f"The converted model has {len(got)} outputs but {framework} returns "
                                  f"{len(want)}; the conversion lost or added outputs.")
        for name, a, b in zip(names, got, want):
            if a.shape != b.shape:
                raise ConversionError(f'Output "{name}" has shape {a.shape} in the converted ONNX but '
                                      f"{b.shape} in {framework} (sample {i}).")
            d, scale = _diff(a, b)
            allowed = atol + rtol * scale
            worst = max(worst, d)
            if d / allowed > excess:
                excess, where = d / allowed, (name, i, d, scale)
    if not excess <= 1.0:
        name, i, d, scale = where
        raise ConversionError(
            f'The FP32 ONNX export does not match {framework}: output "{name}" differs by up to {d:.3g} on sample '
            f"{i} (its largest magnitude is {scale:.3g}; allowed {atol + rtol * scale:.3g}; {len(feeds)} sample(s) "
            "compared). The exporter changed the numbers, so nothing was quantized. Look for ops the exporter may "
            "translate differently (custom ops, in-place updates, data-dependent branches), or export the model "
            "yourself and pass the .onnx file.")
    return worst


def rename_outputs(model: onnx.ModelProto, names: Sequence[str]) -> None:
    """Give the graph outputs `names` (in order), renaming them wherever they are produced or read."""
    taken = {v for n in model.graph.node for v in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    mapping = {o.name: new for o, new in zip(model.graph.output, names) if o.name != new and new not in taken}
    if not mapping:
        return
    for node in model.graph.node:
        node.input[:] = [mapping.get(v, v) for v in node.input]
        node.output[:] = [mapping.get(v, v) for v in node.output]
    for o in model.graph.output:
        o.name = mapping.get(o.name, o.name)
    for vi in model.graph.value_info:
        vi.name = mapping.get(vi.name, vi.name)
