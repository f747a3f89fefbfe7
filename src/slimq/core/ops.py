"""The one table of per-op quantization facts.

Each entry says how an op takes part in a QDQ graph, which inputs are
activations, which is the weight (and its channel axis), which is the bias,
and, where an op stays float, why. The planner reads only this table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import onnx_ir as ir


class Role(Enum):
    """How an op takes part in quantization."""

    COMPUTE = "compute"  # int8 kernel with its own output scale (QLinearConv, QLinearAdd, ...)
    PASSTHROUGH = "passthrough"  # data movement: output shares the input's scale (no Q/DQ ping-pong)
    FUSED_ACTIVATION = "fused_activation"  # Relu/Clip folded into the producer's output quantization
    FLOAT = "float"  # stays float


@dataclass(frozen=True)
class OpInfo:
    op_type: str
    role: Role
    act_inputs: tuple[int, ...] = (0,)  # inputs quantized as activations (-1: all inputs)
    weight_input: int | None = None  # input holding the weight when it is an initializer
    weight_axis: int = 0  # output-channel axis of the weight (negative: from the end)
    bias_input: int | None = None
    float_output_ok: bool = False  # runtime has an int8 kernel with float output (MatMulIntegerToFloat, QGemm)
    weight_axis_attr: str | None = None  # attribute that flips the weight axis (Gemm's transB)
    note: str = ""
    commutes_with_clip: bool = True  # pass-through ops: clipping the input first gives the same output


ALL_INPUTS = (-1,)

OP_TABLE: dict[str, OpInfo] = {
    i.op_type: i
    for i in (
        OpInfo("Conv", Role.COMPUTE, weight_input=1, weight_axis=0, bias_input=2),
        OpInfo("ConvTranspose", Role.COMPUTE, weight_input=1, weight_axis=1, bias_input=2),
        OpInfo("MatMul", Role.COMPUTE, act_inputs=(0, 1), weight_input=1, weight_axis=-1, float_output_ok=True),
        OpInfo("Gemm", Role.COMPUTE, weight_input=1, weight_axis=1, bias_input=2, float_output_ok=True,
               weight_axis_attr="transB"),
        OpInfo("Add", Role.COMPUTE, act_inputs=(0, 1)),
        OpInfo("Mul", Role.COMPUTE, act_inputs=(0, 1)),
        OpInfo("Concat", Role.COMPUTE, act_inputs=ALL_INPUTS),
        OpInfo("AveragePool", Role.COMPUTE),
        OpInfo("GlobalAveragePool", Role.COMPUTE),
        OpInfo("Sigmoid", Role.COMPUTE),
        OpInfo("LeakyRelu", Role.COMPUTE),
        OpInfo("Relu", Role.FUSED_ACTIVATION),
        OpInfo("Clip", Role.FUSED_ACTIVATION),
        OpInfo("MaxPool", Role.PASSTHROUGH),
        OpInfo("Resize", Role.PASSTHROUGH, commutes_with_clip=False),  # linear interpolation mixes values
        OpInfo("Reshape", Role.PASSTHROUGH),
        OpInfo("Transpose", Role.PASSTHROUGH),
        OpInfo("Flatten", Role.PASSTHROUGH),
        OpInfo("Squeeze", Role.PASSTHROUGH),
        OpInfo("Unsqueeze", Role.PASSTHROUGH),
        OpInfo("Slice", Role.PASSTHROUGH),
        OpInfo("Gather", Role.PASSTHROUGH),
        OpInfo("Expand", Role.PASSTHROUGH),
        OpInfo("Tile", Role.PASSTHROUGH),
        OpInfo("Split", Role.PASSTHROUGH),
        OpInfo("HardSigmoid", Role.FLOAT, note="onnxruntime has no int8 HardSigmoid kernel on CPU"),
        OpInfo("HardSwish", Role.FLOAT, note="onnxruntime has no int8 HardSwish kernel on CPU"),
        OpInfo("Softmax", Role.FLOAT, note="kept float for accuracy (attention/probabilities)"),
        OpInfo("LayerNormalization", Role.FLOAT, note="normalisation stays float for accuracy"),
        OpInfo("BatchNormalization", Role.FLOAT, note="not preceded by a Conv, so it could not be folded"),
    )
}

Bounds = tuple[float, float]


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].as_float() if name in node.attributes else default


def _hard_sigmoid_bounds(node: ir.Node) -> Bounds | None:
    alpha, beta = _attr_float(node, "alpha", 0.2), _attr_float(node, "beta", 0.5)
    return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else None


def _clip_bounds(node: ir.Node) -> Bounds | None:
    lo, hi = _attr_float(node, "min", -math.inf), _attr_float(node, "max", math.inf)  # opset < 11
    for i, default in ((1, -math.inf), (2, math.inf)):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None:
            continue
        if v.const_value is None or v.const_value.numpy().size != 1:
            return None
        bound = float(v.const_value.numpy().reshape(()))
        lo, hi = (bound, hi) if i == 1 else (lo, bound)
    return lo, hi


# Ops whose output no longer changes once their data input leaves an interval: a quantized
# tensor read only by such ops can be calibrated (and clipped) to that interval at no cost.
INPUT_SATURATION: dict[str, Callable[[ir.Node], Bounds | None]] = {
    "Relu": lambda n: (0.0, math.inf),
    "HardSwish": lambda n: (-3.0, math.inf),
    "HardSigmoid": _hard_sigmoid_bounds,
    "Clip": _clip_bounds,
}


def input_saturation(node: ir.Node) -> Bounds | None:
    """Interval outside which `node`'s output does not depend on its data input (None: nowhere)."""
    rule = INPUT_SATURATION.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return rule(node) if rule is not None else None


# Inputs of pass-through ops that carry data (the rest are shapes, indices, axes).
PASSTHROUGH_DATA_INPUT = 0


def op_info(op_type: str, domain: str = "") -> OpInfo:
    """Table entry for an op; unknown ops stay float with a reason."""
    if domain not in ("", "ai.onnx"):
        return OpInfo(op_type, Role.FLOAT, note=f"custom domain '{domain}' has no int8 kernel")
    return OP_TABLE.get(op_type, OpInfo(op_type, Role.FLOAT, note="no int8 kernel for this op in onnxruntime"))


def quantizable_op_types() -> tuple[str, ...]:
    return tuple(k for k, v in OP_TABLE.items() if v.role is not Role.FLOAT)
