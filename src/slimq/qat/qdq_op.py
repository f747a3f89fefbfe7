"""Custom ops that export as ONNX QuantizeLinear/DequantizeLinear.

``slimq::quantize_dequantize`` (activations, weights) exports as QuantizeLinear +
DequantizeLinear; ``slimq::dequantize_linear`` (int32 biases) as a lone DequantizeLinear.

Why a custom op: ``torch.fake_quantize_per_*_affine`` export fine with the TorchScript exporter,
but in torch 2.13 they have no fake (meta) kernel, so the torch.export-based exporter fails as
soon as the batch dimension is dynamic. This op carries its zero point as a uint8/int8 tensor
(the ONNX storage type), has a fake kernel, and is registered with both exporters.
"""

from __future__ import annotations

import torch

_OPSET = 13  # first opset with per-axis QuantizeLinear/DequantizeLinear


@torch.library.custom_op("slimq::quantize_dequantize", mutates_args=())
def quantize_dequantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
) -> torch.Tensor:
    """ONNX QuantizeLinear then DequantizeLinear (per-tensor when ``scale`` is 0-d)."""
    low, high = (0, 255) if zero_point.dtype == torch.uint8 else (-128, 127)
    zp = zero_point.to(torch.int32)
    if scale.dim() == 0:
        return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp, low, high)
    return torch.fake_quantize_per_channel_affine(x, scale.float(), zp, axis, low, high)


@torch.library.custom_op("slimq::dequantize_linear", mutates_args=())
def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX DequantizeLinear of an integer tensor (here: int32 biases), ``(q - zp) * scale``."""
    shape = [1] * q.dim()
    if scale.dim() == 1 and q.dim() > 0:
        shape[axis] = -1
    diff = q.to(torch.float32) - zero_point.to(torch.float32).reshape(shape)
    return diff * scale.float().reshape(shape)


@dequantize_linear.register_fake
def _dequantize_linear_fake(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                            axis: int) -> torch.Tensor:
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


@quantize_dequantize.register_fake
def _quantize_dequantize_fake(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
) -> torch.Tensor:
    return torch.empty_like(x)


def _legacy_symbolic(g, x, scale, zero_point, axis):
    from torch.onnx import symbolic_helper

    axis_value = symbolic_helper._maybe_get_const(axis, "i")
    q = g.op("QuantizeLinear", x, scale, zero_point, axis_i=axis_value)
    return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis_value)


def _legacy_dequantize_symbolic(g, q, scale, zero_point, axis):
    from torch.onnx import symbolic_helper

    return g.op("DequantizeLinear", q, scale, zero_point, axis_i=symbolic_helper._maybe_get_const(axis, "i"))


def _register_legacy() -> None:
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("slimq::quantize_dequantize", _legacy_symbolic, _OPSET)
    register_custom_op_symbolic("slimq::dequantize_linear", _legacy_dequantize_symbolic, _OPSET)


def dynamo_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    from onnxscript import opset18 as op

    def translate(x, scale, zero_point, axis: int):
        q = op.QuantizeLinear(x, scale, zero_point, axis=axis)
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    def translate_dq(q, scale, zero_point, axis: int):
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    return {torch.ops.slimq.quantize_dequantize.default: translate,
            torch.ops.slimq.dequantize_linear.default: translate_dq}


_register_legacy()
