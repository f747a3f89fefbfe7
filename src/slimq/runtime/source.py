"""How a model reaches onnxruntime: serialized bytes, or — beyond protobuf's 2 GB limit — a temporary
folder with the weights in one external-data file. onnxruntime reads the weights when a session is created,
so the folder may go once the sessions exist. `SharedWeights` writes the weights once for many variants of
one model (the exposed-tensor copies of calibration), which then differ only in their small graph files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from slimq.io.model import externalize, is_large

ModelSource = str | os.PathLike | onnx.ModelProto


@contextlib.contextmanager
def ort_model(model: ModelSource) -> Iterator[str | bytes]:
    """What to hand onnxruntime's InferenceSession for `model` (a path is passed through)."""
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
        return
    if not is_large(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="slimq-large-") as tmp:
        stripped, _ = externalize(model, Path(tmp), "model.onnx.data")
        path = Path(tmp) / "model.onnx"
        path.write_bytes(stripped.SerializeToString())
        yield str(path)


class SharedWeights:
    """One model's weights written once; `source(variant)` gives onnxruntime a variant with the same weights."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.large = is_large(model)
        self._tmp = tempfile.TemporaryDirectory(prefix="slimq-shared-") if self.large else None
        self.model = externalize(model, Path(self._tmp.name), "weights.data")[0] if self._tmp else model
        self._count = 0

    def source(self, variant: onnx.ModelProto) -> str | bytes:
        """`variant` must be derived from `self.model` (same initializers, external where it has them)."""
        if self._tmp is None:
            return variant.SerializeToString()
        self._count += 1
        path = Path(self._tmp.name) / f"variant{self._count}.onnx"
        path.write_bytes(variant.SerializeToString())
        return str(path)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
