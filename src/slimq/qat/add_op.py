"""Residual adds whose eval mode computes onnxruntime's QLinearAdd bit for bit.

A ``DequantizeLinear x2 -> Add -> QuantizeLinear`` group runs in onnxruntime as QLinearAdd. On x86 with
AVX2 (also AVX-512 machines) MLAS computes it on the *stored* integers ``a``, ``b`` (zero points not
subtracted) with two fused multiply-adds in float32::

    r_a = fl(s_a / s_c), r_b = fl(s_b / s_c), fixed = fl(z_c - fl(fl(r_a * z_a) + fl(r_b * z_b)))
    c = round_half_even(fma(a, r_a, fma(b, r_b, fixed)))  saturated to the storage type

The float formula ``round((a_val + b_val) / s_c)`` that a plain PyTorch add followed by the output
quantizer computes differs on about 3 of a million random inputs; in a deep network one such flip is
amplified like any other tie (``docs/qat_fidelity_findings.md``). :class:`QATAdd` replaces such an add in
the QAT graph; in eval mode, with its two input grids and its output grid bound, its forward value is
the kernel's (the gradient is the plain add's). The FMAs are evaluated in float64: the product of an
8-bit integer and a float32 is exact there, and the single rounding to float32 matches the FMA.
"""

from __future__ import annotations

import torch
from torch import nn

from slimq.qat.quantizers import ActQuantizer

STORAGE_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def zero_point(q: ActQuantizer, act_dtype: str) -> int:
    """The exported zero point of ``q``'s grid (see :func:`slimq.qat.modules.export_act`)."""
    if act_dtype == "uint8":
        return 0 if q.unsigned else 128
    return -128 if q.unsigned else 0


def _fl(x: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).float().double()


def qlinear_add(qa: torch.Tensor, qb: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                zeros: tuple[int, int, int], act_dtype: str) -> torch.Tensor:
    """MLAS's QLinearAdd (AVX2 kernel) on grid integers ``qa``, ``qb`` (zero point 0); returns the output
    grid integers (zero point 0), as float64."""
    s_a, s_b, s_c = (s.detach().float().reshape(()) for s in scales)
    z_a, z_b, z_c = zeros
    r_a, r_b = _fl(s_a / s_c), _fl(s_b / s_c)
    fixed = _fl(float(z_c) - _fl(_fl(r_a * z_a) + _fl(r_b * z_b)))
    inner = _fl((qb.double() + z_b) * r_b + fixed)
    c = _fl((qa.double() + z_a) * r_a + inner)
    low, high = STORAGE_RANGE[act_dtype]
    return torch.clamp(torch.round(c), low, high) - z_c


class QATAdd(nn.Module):
    """``a + b`` of two quantized tensors; eval mode gives onnxruntime's QLinearAdd result (module doc)."""

    grids: tuple[ActQuantizer, ActQuantizer, ActQuantizer] | None  # plain attribute, see bind

    def __init__(self, act_dtype: str) -> None:
        super().__init__()
        self.act_dtype = act_dtype
        object.__setattr__(self, "grids", None)

    def bind(self, a: ActQuantizer, b: ActQuantizer, out: ActQuantizer) -> None:
        """The quantizers of both inputs and the output (plain attribute: they belong to the graph)."""
        object.__setattr__(self, "grids", (a, b, out))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        grids = self.grids
        if self.training or grids is None or not all(_ready(q) for q in grids):
            return y
        with torch.no_grad():
            scales = tuple(q.current_scale() for q in grids)
            qa, qb = torch.round(a / scales[0].float()), torch.round(b / scales[1].float())
            zeros = tuple(zero_point(q, self.act_dtype) for q in grids)
            q = qlinear_add(qa, qb, scales, zeros, self.act_dtype)  # type: ignore[arg-type]
            q = torch.clamp(q, grids[2].qmin, grids[2].qmax)
            exact = (q.float() * scales[2].float()).to(y.dtype)
        return y + (exact - y).detach()

    def export_module(self) -> "QDQAdd":
        return QDQAdd()


class QDQAdd(nn.Module):
    """Export form of :class:`QATAdd`: a plain Add between the Q/DQ pairs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _ready(q: ActQuantizer) -> bool:
    return not q.calibrating and bool(q.initialized)
