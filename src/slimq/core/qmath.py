"""Pure quantization math: integer types, scale/zero-point, quantize/dequantize.

Every function here is a pure numpy function so it can be tested against a
reference formula and reused by static PTQ, dynamic PTQ and QAT export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

_EPS = np.float32(2.0**-24)


@dataclass(frozen=True)
class QType:
    """An integer type that tensors can be quantized to."""

    name: str
    qmin: int
    qmax: int
    np_dtype: type
    onnx_dtype: int
    bits: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    def narrow(self) -> "QType":
        """The symmetric-narrow variant, e.g. int8 [-127, 127] (no -128)."""
        return QType(f"{self.name}_narrow", self.qmin + 1, self.qmax, self.np_dtype, self.onnx_dtype, self.bits)

    def reduced(self) -> "QType":
        """One bit less of range (reduce_range) to avoid u8s8 saturation without VNNI."""
        half_min = self.qmin // 2 if self.signed else 0
        half_max = (self.qmax + 1) // 2 - 1 if self.signed else self.qmax // 2
        return QType(f"{self.name}_reduced", half_min, half_max, self.np_dtype, self.onnx_dtype, self.bits)


INT8 = QType("int8", -128, 127, np.int8, onnx.TensorProto.INT8, 8)
UINT8 = QType("uint8", 0, 255, np.uint8, onnx.TensorProto.UINT8, 8)
INT16 = QType("int16", -32768, 32767, np.int16, onnx.TensorProto.INT16, 16)
UINT16 = QType("uint16", 0, 65535, np.uint16, onnx.TensorProto.UINT16, 16)
INT4 = QType("int4", -8, 7, np.int8, onnx.TensorProto.INT4, 4)
UINT4 = QType("uint4", 0, 15, np.uint8, onnx.TensorProto.UINT4, 4)
INT32 = QType("int32", -(2**31), 2**31 - 1, np.int32, onnx.TensorProto.INT32, 32)

QTYPES: dict[str, QType] = {t.name: t for t in (INT8, UINT8, INT16, UINT16, INT4, UINT4)}


def scale_zero_point(
    rmin: np.ndarray | float,
    rmax: np.ndarray | float,
    qtype: QType,
    symmetric: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point mapping the real range [rmin, rmax] onto qtype.

    The range is widened to include 0 so that zero is exactly representable.
    Symmetric mode uses max(|rmin|, |rmax|); for unsigned types its zero point is
    the middle of the range (128 for uint8).
    Works element-wise, so per-channel ranges give per-channel results.
    """
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if symmetric:
        absmax = np.maximum(-rmin, rmax)
        if qtype.signed:
            scale = absmax / float(qtype.qmax)
            zp = np.zeros_like(scale)
        else:
            scale = 2.0 * absmax / float(qtype.qmax - qtype.qmin)
            zp = np.full_like(scale, float((qtype.qmax + qtype.qmin + 1) // 2))
    else:
        scale = (rmax - rmin) / float(qtype.qmax - qtype.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qtype.qmin - rmin / safe), qtype.qmin, qtype.qmax)
    scale = np.where(scale > _EPS, scale, 1.0).astype(np.float32)
    return scale, zp.astype(qtype.np_dtype)


def grid_through(c: float, scale: float, max_finer: float = 0.02, max_change: float = 0.25) -> float | None:
    """A scale near `scale` whose grid holds the constant `c` (``c = k * scale'`` for an integer k >= 1), so
    that adding `c` to a tensor on that grid is a whole shift of its zero point; None when every such scale is
    more than `max_change` away or more than `max_finer` finer (a finer grid clips the calibrated range)."""
    ratio = abs(c) / scale if scale > 0 else 0.0
    best: float | None = None
    for k in {math.floor(ratio), math.ceil(ratio)}:
        if k < 1:
            continue
        cand = abs(c) / k
        if cand < (1.0 - max_finer) * scale or abs(cand / scale - 1.0) > max_change:
            continue
        if best is None or abs(math.log(cand / scale)) < abs(math.log(best / scale)):
            best = cand
    return best


def _bcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = -1
    return param.reshape(shape)


def quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType, axis: int | None = None
) -> np.ndarray:
    """ONNX QuantizeLinear semantics: saturate(round_half_even(x / scale) + zp)."""
    s = _bcast(np.asarray(scale, np.float32), x.ndim, axis)
    z = _bcast(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    q = np.rint(x.astype(np.float32) / s).astype(np.int64) + z
    return np.clip(q, qtype.qmin, qtype.qmax).astype(qtype.np_dtype)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear semantics: (q - zp) * scale."""
    s = _bcast(np.asarray(scale, np.float32), q.ndim, axis)
    z = _bcast(np.asarray(zero_point).astype(np.int64), q.ndim, axis)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qtype: QType, axis: int | None = None) -> np.ndarray:
    """Quantize then dequantize: the value a QDQ pair produces."""
    return dequantize(quantize(x, scale, zero_point, qtype, axis), scale, zero_point, axis)


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer data with the parameters that dequantize it."""

    data: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    qtype: QType


def channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| over every axis except `axis` (one value per output channel)."""
    axis = axis % w.ndim
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    return np.abs(w).max(axis=reduce_axes) if reduce_axes else np.abs(w)


def quantize_weight(w: np.ndarray, qtype: QType, axis: int | None) -> QuantizedTensor:
    """Symmetric weight quantization: `abs_max` (axis=None) or `channel_wise_abs_max`."""
    w = np.asarray(w, dtype=np.float32)
    absmax = np.abs(w).max(initial=0.0) if axis is None else channel_absmax(w, axis)
    scale, zp = scale_zero_point(-absmax, absmax, qtype, symmetric=True)
    axis_n = None if axis is None else axis % w.ndim
    return QuantizedTensor(quantize(w, scale, zp, qtype, axis_n), scale, zp, axis_n, qtype)


def quantize_bias(bias: np.ndarray, input_scale: float | np.ndarray, weight_scale: np.ndarray) -> QuantizedTensor:
    """Bias to int32 with scale = s_in * s_w (zero point 0), as QLinearConv expects."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32) if scale.ndim else scale
    zp = np.zeros(scale.shape, dtype=np.int32)
    axis = 0 if scale.ndim else None
    q = np.clip(np.rint(bias.astype(np.float64) / scale), INT32.qmin, INT32.qmax).astype(np.int32)
    return QuantizedTensor(q, scale, zp, axis, INT32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack 4-bit values (stored one per int8/uint8) two per byte, low nibble first (ONNX layout)."""
    flat = (q.astype(np.int16).reshape(-1) & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = np.asarray(reference, np.float64).ravel()
    noise = np.sum((ref - np.asarray(test, np.float64).ravel()) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return float("inf")
    return float(10.0 * np.log10(max(signal, 1e-30) / noise))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flattened tensors (1.0 for two zero tensors)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
