"""The peer quantizer: onnxruntime.quantization.quantize_static on the same calibration data.

Two settings per model:

* ``ort-default``: ``quantize_static(fp32, out, reader)`` with onnxruntime's defaults
  (QDQ, s8 activations, s8 per-tensor weights, MinMax calibration).
* ``ort-best``: ``quant_pre_process`` first (retried without symbolic shape inference, then
  skipped, and recorded, when it fails), an upgrade to opset 13 where older, then
  QDQ with u8 activations and s8 per-channel weights (the VNNI path), MinMax.

Failures are recorded, never hidden: the result carries the error text instead of a path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slimq.io.spec import Feeds

PEERS = ("ort-default", "ort-best")


@dataclass
class PeerResult:
    name: str
    path: Path | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _reader(feeds: Sequence[Feeds]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(feeds)

    return Reader()


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return " ".join(text)[:300] if text else type(e).__name__


@contextlib.contextmanager
def _in_temp_dir():
    """Run in a fresh temporary working directory: onnxruntime's symbolic shape inference saves
    `sym_shape_infer_temp.onnx` (+ external data) into the current directory when it fails."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="slimq-ort-pre-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def _preprocess(fp32: Path, out_dir: Path, notes: list[str]) -> Path:
    """quant_pre_process; on failure again without symbolic shape inference; on failure the FP32 model as is."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre = fp32.resolve(), (out_dir / f"{fp32.stem}.ort-pre.onnx").resolve()
    for kwargs in ({}, {"skip_symbolic_shape": True}):
        try:
            with _in_temp_dir():
                quant_pre_process(str(fp32), str(pre), **kwargs)
            notes.append(f"quant_pre_process({', '.join(f'{k}={v}' for k, v in kwargs.items())}): ok")
            return pre
        except Exception as e:  # noqa: BLE001 - peer tool failures are data for the report
            logging.getLogger("slimq").debug(traceback.format_exc())
            notes.append(f"quant_pre_process({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed "
                         f"({_short(e)})")
    notes.append("quantized without pre-processing")
    return fp32


def _opset13(src: Path, out_dir: Path, notes: list[str]) -> Path:
    """Per-channel QDQ needs opset >= 13 (DequantizeLinear axis); upgrade older models first, like slimq does."""
    import onnx

    from slimq.core.errors import ModelLoadError
    from slimq.io.model import default_opset, upgrade_opset

    model = onnx.load(str(src))
    if default_opset(model) >= 13:
        return src
    try:
        dest = out_dir / f"{src.stem}.opset13.onnx"
        onnx.save(upgrade_opset(model, 13), str(dest))
        notes.append(f"upgraded from opset {default_opset(model)} to 13")
        return dest
    except ModelLoadError as e:
        notes.append(f"opset upgrade failed ({_short(e)})")
        return src


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"the quantized model does not load in onnxruntime: {_short(e)}") from None


def quantize_peer(kind: str, fp32: Path, out_dir: Path, calib: Sequence[Feeds]) -> PeerResult:
    """Quantize `fp32` with onnxruntime's quantizer; `kind` is "ort-default" or "ort-best"."""
    import time

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    out = out_dir / f"{fp32.stem}.{kind}.onnx"
    notes: list[str] = []
    t0 = time.perf_counter()
    logging.disable(logging.WARNING)  # the quantizer logs one warning per bias/tensor on the root logger
    try:
        if kind == "ort-default":
            quantize_static(str(fp32), str(out), _reader(calib))
            notes.append("QDQ, s8 activations, s8 per-tensor weights, MinMax (onnxruntime defaults)")
        elif kind == "ort-best":
            src = _opset13(_preprocess(fp32, out_dir, notes), out_dir, notes)
            quantize_static(str(src), str(out), _reader(calib), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=False, calibrate_method=CalibrationMethod.MinMax)
            notes.append("QDQ, u8 activations, s8 per-channel weights, MinMax")
        else:
            raise ValueError(f"unknown peer {kind}; use one of {PEERS}")
        _check_loads(out)
    except Exception as e:  # noqa: BLE001
        return PeerResult(kind, None, time.perf_counter() - t0, notes, _short(e))
    finally:
        logging.disable(logging.NOTSET)
    return PeerResult(kind, out, time.perf_counter() - t0, notes)
