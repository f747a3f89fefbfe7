"""Deployment targets: the integer types each one runs fast, for static PTQ and QAT alike.

One :class:`TargetRules` per target, from :func:`target_rules`. Static PTQ reads all of
it; QAT reads the activation storage type (:attr:`TargetRules.act_dtype`) and whether
non-negative tensors use the unsigned grid (:attr:`TargetRules.unsigned_grid`). Which
ops a target keeps float, and why, is a fact of the op table (``OpInfo.float_on``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from slimq.core import qmath
from slimq.core.errors import unknown_choice
from slimq.core.ops import target_float_ops

TARGETS = ("x86", "tensorrt", "arm", "openvino")
QAT_TARGETS = ("x86", "tensorrt", "arm")


@dataclass(frozen=True)
class TargetRules:
    """Integer types a deployment target runs fast."""

    name: str
    activation_qtype: qmath.QType
    activation_symmetric: bool
    weight_qtype: qmath.QType
    per_channel: bool = True
    # op types the target runs no faster in int8, with the reason (they stay float)
    float_ops: tuple[tuple[str, str], ...] = ()
    # int8 conv/matmul kernels may write float: outputs are quantized only for quantized readers
    float_outputs: bool = False
    # Add/Mul with a constant operand (BN-like affine, scalar scales) run in float: exact, and an
    # int8 version would only add a requantization step
    float_constant_affine: bool = False
    # QAT: a tensor known to be non-negative (after ReLU) uses the grid [0, 2**b - 1] (TensorRT: symmetric
    # int8 only)
    unsigned_grid: bool = False

    @property
    def act_dtype(self) -> Literal["uint8", "int8"]:
        """How activations are stored in the exported model."""
        return "int8" if self.activation_qtype.signed else "uint8"

    @property
    def description(self) -> str:
        sym = "symmetric" if self.activation_symmetric else "asymmetric"
        return (f"{self.name}: {self.activation_qtype.name} {sym} activations x {self.weight_qtype.name} "
                f"[{self.weight_qtype.qmin},{self.weight_qtype.qmax}] weights, "
                f"{'per-channel' if self.per_channel else 'per-tensor'}")


_W8 = qmath.INT8.narrow()  # weights in [-127, 127] on every target
_RULES = {
    "x86": TargetRules("x86", qmath.UINT8, False, _W8, float_ops=target_float_ops("x86"),
                       float_constant_affine=True, unsigned_grid=True),
    "tensorrt": TargetRules("tensorrt", qmath.INT8, True, _W8, float_ops=target_float_ops("tensorrt")),
    "arm": TargetRules("arm", qmath.INT8, True, _W8, float_ops=target_float_ops("arm"), unsigned_grid=True),
    "openvino": TargetRules("openvino", qmath.UINT8, False, _W8, float_ops=target_float_ops("openvino"),
                            float_outputs=True),
}


def target_rules(target: str, reduce_range: bool = False, per_channel: bool = True) -> TargetRules:
    """x86: u8 activations x s8 weights (VNNI path; reduce_range without VNNI).
    tensorrt: symmetric s8 activations. arm: s8 activations, weights in [-127, 127].
    openvino: x86's types, but Q/DQ only on the inputs of int8 ops (NNCF-style placement):
    elementwise ops stay float, which OpenVINO fuses into its int8 convolutions.
    reduce_range (7-bit weights) applies to u8-activation targets only (u8 x s8 pair sums saturate
    without VNNI)."""
    if target not in TARGETS:
        raise unknown_choice("target", target, TARGETS)
    rules = _RULES[target]
    weight = rules.weight_qtype.reduced() if reduce_range and rules.act_dtype == "uint8" else rules.weight_qtype
    return replace(rules, weight_qtype=weight, per_channel=per_channel)


__all__ = ["QAT_TARGETS", "TARGETS", "TargetRules", "target_rules"]
