"""``slimq::quantize_dequantize``: a custom op that exports as QuantizeLinear + DequantizeLinear.

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


@quantize_dequantize.register_fake
def _quantize_dequantize_fake(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int
) -> torch.Tensor:
    return torch.empty_like(x)


def _legacy_symbolic(g, x, scale, zero_point, axis):  # type: ignore[no-untyped-def]
    from torch.onnx import symbolic_helper

    axis_value = symbolic_helper._maybe_get_const(axis, "i")
    q = g.op("QuantizeLinear", x, scale, zero_point, axis_i=axis_value)
    return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis_value)


def _register_legacy() -> None:
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("slimq::quantize_dequantize", _legacy_symbolic, _OPSET)


def dynamo_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    from onnxscript import opset18 as op

    def translate(x, scale, zero_point, axis: int):  # type: ignore[no-untyped-def]
        q = op.QuantizeLinear(x, scale, zero_point, axis=axis)
        return op.DequantizeLinear(q, scale, zero_point, axis=axis)

    return {torch.ops.slimq.quantize_dequantize.default: translate}


_register_legacy()
