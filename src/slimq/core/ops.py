"""The one table of per-op quantization facts.

Each entry (an :class:`OpInfo`) says how an op takes part in a QDQ graph (its
:class:`Role`), which inputs are activations, which is the weight and how it is
quantized per channel or per block (:class:`Weight`), which is the bias, how
dynamic PTQ treats it (:class:`WeightOnly`), how its multiply-accumulates are
counted in an optimized onnxruntime graph and whether that kernel is integer
(:class:`Mac`, also for onnxruntime's fused and quantized ops), on which targets
it stays float and, where an op stays float, why. The planner, dynamic PTQ, the
MAC counter and the runtime read only this table; nothing else compares op-type
strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import onnx_ir as ir

ONNX_DOMAINS = ("", "ai.onnx")
MS_DOMAIN = "com.microsoft"
QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"

Bounds = tuple[float, float]


class Role(Enum):
    """How an op takes part in static quantization."""

    COMPUTE = "compute"  # int8 kernel with its own output scale (QLinearConv, QLinearAdd, ...)
    PASSTHROUGH = "passthrough"  # data movement: output shares the input's scale (no Q/DQ ping-pong)
    FUSED_ACTIVATION = "fused_activation"  # Relu/Clip folded into the producer's output quantization
    FLOAT = "float"  # stays float


class MacKind(Enum):
    """How the multiply-accumulates of a MAC op are counted."""

    CONV = "conv"  # every output element sums over weight[1:] (Cin/g x kernel)
    CONV_T = "convT"  # every input element spreads over weight[1:] (Cout/g x kernel)
    MATMUL = "matmul"  # every output element sums over K, the last dim of A (or A's rows with transA)


@dataclass(frozen=True)
class Mac:
    """A multiply-accumulate op of an (optimized) onnxruntime graph."""

    kind: MacKind
    weight_input: int  # input holding the weight (B) tensor
    a_input: int = 0  # input holding the activation (A) tensor
    integer: bool = False  # the kernel multiplies integers (int8 MACs)
    a_trans_attr: str | None = None  # attribute that, when set, transposes A (Gemm's transA): K runs along its rows

    def a_transposed(self, node: ir.Node) -> bool:
        """Whether this node reads its activation (A) transposed."""
        return self.a_trans_attr is not None and _int_attr(node, self.a_trans_attr, 0) != 0


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


@dataclass(frozen=True)
class Weight:
    """The constant weight input of a compute op and how it is quantized."""

    input: int
    axis: int  # output-channel axis (negative: from the end)
    reduce_axis: int  # input-channel (reduction) axis: group-wise blocks run along it
    axis_attr: str | None = None  # attribute that, when set, swaps the two axes (Gemm's transB)
    required: bool = True  # without a constant weight the op stays float (MatMul may multiply two activations)
    per_channel_rank: int | None = None  # per-channel only for weights of this rank (else per-tensor)
    grouped_per_tensor: bool = False  # grouped (group > 1) weights are quantized per tensor

    def axes(self, node: ir.Node, ndim: int) -> tuple[int, int]:
        """(channel axis, reduction axis) of this node's weight of rank `ndim`, non-negative."""
        swapped = self.axis_attr is not None and _int_attr(node, self.axis_attr, 0) != 0
        axis, reduce = (self.reduce_axis, self.axis) if swapped else (self.axis, self.reduce_axis)
        return axis % ndim, reduce % ndim

    def block_axis(self, node: ir.Node, ndim: int) -> int | None:
        """The axis group-wise blocks run along (None for weights of rank < 2)."""
        return self.axes(node, ndim)[1] if ndim >= 2 else None

    def per_channel_axis(self, node: ir.Node, ndim: int) -> int | None:
        """The axis of per-channel scales in a QDQ graph, or None where it must be per-tensor."""
        if ndim == 0 or (self.per_channel_rank is not None and ndim != self.per_channel_rank):
            return None
        if self.grouped_per_tensor and _int_attr(node, "group", 1) > 1:
            return None
        return self.axes(node, ndim)[0]


@dataclass(frozen=True)
class WeightOnly:
    """How dynamic PTQ quantizes the op's constant weight ahead of time."""

    embedding: bool = False  # a Gather over a constant table: int8 rows, dequantized after the lookup
    low_bit: bool = True  # int4 and group-wise weights have a kernel (else they stay int8 per channel)
    fused_kernel: str = ""  # onnxruntime fuses DequantizeLinear -> op into this kernel
    dynamic_kernel: str = ""  # onnxruntime kernel that quantizes the activation at run time (dynamic-activation)
    float_with_dynamic_activation: bool = False  # kept float in dynamic-activation mode (no fast integer kernel)


@dataclass(frozen=True)
class OpInfo:
    op_type: str
    role: Role
    domain: str = ""
    act_inputs: tuple[int, ...] = (0,)  # inputs quantized as activations (-1: all inputs)
    weight: Weight | None = None
    bias_input: int | None = None
    bias_vector: bool = False  # the bias must be a 1-D constant, else the op stays float (Gemm's C broadcasts)
    bias_correction: bool = False  # the weight-rounding shift can be folded into the bias
    float_output_ok: bool = False  # runtime has an int8 kernel with float output (MatMulIntegerToFloat, QGemm)
    constant_affine: bool = False  # with a constant operand it is an exact affine step (x * c, x + c)
    constant_shift: bool = False  # with a scalar constant operand it shifts every value by it (x + c)
    commutes_with_clip: bool = True  # pass-through ops: clipping the input first gives the same output
    saturation: Callable[[ir.Node], Bounds | None] | None = None  # see input_saturation
    float_on: tuple[tuple[str, str], ...] = ()  # (target, reason): targets whose runtime has no faster int8 kernel
    weight_only: WeightOnly | None = None  # None: dynamic PTQ does not quantize this op
    mac: Mac | None = None
    quantizes_activations: bool = False  # its output is an integer activation (the model is not weight-only)
    index_input: int | None = None  # input holding integer row indices into input 0 (Gather)
    keeps_values: bool = False  # output holds input 0's values (casts, reshapes): index ranges flow through
    float_by_design: str = ""  # why dynamic PTQ leaves this op float on purpose
    two_activations: str = ""  # non-empty: with no constant weight (activation x activation) it stays float, why
    note: str = ""


ALL_INPUTS = (-1,)
# Inputs of pass-through ops that carry data (the rest are shapes, indices, axes).
PASSTHROUGH_DATA_INPUT = 0


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].as_float() if name in node.attributes else default


def _hard_sigmoid_bounds(node: ir.Node) -> Bounds | None:
    alpha, beta = _attr_float(node, "alpha", 0.2), _attr_float(node, "beta", 0.5)
    return (-beta / alpha, (1 - beta) / alpha) if alpha > 0 else None


def _clip_bounds(node: ir.Node) -> Bounds | None:
    lo, hi = _attr_float(node, "min", -math.inf), _attr_float(node, "max", math.inf)  # opset < 11
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None:
            continue
        if v.const_value is None or v.const_value.numpy().size != 1:
            return None
        bound = float(v.const_value.numpy().reshape(()))
        lo, hi = (bound, hi) if i == 1 else (lo, bound)
    return lo, hi


NO_KERNEL = "no int8 kernel for this op in onnxruntime"
_X86_CONVT = ("x86", "onnxruntime's CPU EP has no int8 ConvTranspose kernel (it would run float behind "
                     "DequantizeLinear)")
_OV_ELEMENTWISE = ("openvino", "OpenVINO fuses elementwise ops into the convolution epilogue in float; "
                               "Q/DQ here would add kernels")
_CONV_W = WeightOnly(low_bit=False, float_with_dynamic_activation=True)


def _custom(domain: str) -> str:
    return f"custom domain '{domain}' has no int8 kernel"


def _mac(op_type: str, kind: MacKind, weight_input: int, integer: bool, domain: str = "") -> OpInfo:
    """An op of onnxruntime's optimized graphs that counts as multiply-accumulates."""
    return OpInfo(op_type, Role.FLOAT, domain, mac=Mac(kind, weight_input, 0, integer),
                  quantizes_activations=integer, note=_custom(domain) if domain else NO_KERNEL)


_ATTENTION = ("activation x activation MatMul (attention scores/context) stays float: its Softmax-probability "
              "input loses most of its resolution on one per-tensor grid (measured on MiniLM: static INT8 "
              "cosine 0.87 with it, 0.99 without)")


def _compute_ops() -> tuple[OpInfo, ...]:
    mm = MacKind.MATMUL
    return (
        OpInfo("Conv", Role.COMPUTE, weight=Weight(1, 0, 1), bias_input=2, bias_correction=True,
               mac=Mac(MacKind.CONV, 1), weight_only=_CONV_W),
        OpInfo("ConvTranspose", Role.COMPUTE, weight=Weight(1, 1, 0, grouped_per_tensor=True), bias_input=2,
               mac=Mac(MacKind.CONV_T, 1), weight_only=_CONV_W, float_on=(_X86_CONVT,)),
        OpInfo("MatMul", Role.COMPUTE, act_inputs=(0, 1), weight=Weight(1, -1, -2, required=False, per_channel_rank=2),
               float_output_ok=True, mac=Mac(mm, 1), two_activations=_ATTENTION,
               weight_only=WeightOnly(fused_kernel="MatMulNBits", dynamic_kernel="DynamicQuantizeMatMul")),
        OpInfo("Gemm", Role.COMPUTE, weight=Weight(1, 1, 0, axis_attr="transB"), bias_input=2, bias_vector=True,
               bias_correction=True, float_output_ok=True, mac=Mac(mm, 1, a_trans_attr="transA"),
               weight_only=WeightOnly()),
        OpInfo("Add", Role.COMPUTE, act_inputs=(0, 1), constant_affine=True, constant_shift=True,
               float_on=(_OV_ELEMENTWISE,)),
        OpInfo("Mul", Role.COMPUTE, act_inputs=(0, 1), constant_affine=True, float_on=(_OV_ELEMENTWISE,)),
        OpInfo("Concat", Role.COMPUTE, act_inputs=ALL_INPUTS),
        OpInfo("AveragePool", Role.COMPUTE),
        OpInfo("GlobalAveragePool", Role.COMPUTE),
        OpInfo("Sigmoid", Role.COMPUTE, float_on=(_OV_ELEMENTWISE,)),
        OpInfo("LeakyRelu", Role.COMPUTE, float_on=(_OV_ELEMENTWISE,)),
        OpInfo("Relu", Role.FUSED_ACTIVATION, saturation=lambda n: (0.0, math.inf)),
        OpInfo("Clip", Role.FUSED_ACTIVATION, saturation=_clip_bounds),
    )


def _data_ops() -> tuple[OpInfo, ...]:
    p = Role.PASSTHROUGH
    return (
        OpInfo("MaxPool", p),
        OpInfo("Resize", p, commutes_with_clip=False),  # linear interpolation mixes values
        OpInfo("Reshape", p, keeps_values=True),
        OpInfo("Transpose", p),
        OpInfo("DepthToSpace", p),  # onnxruntime runs it on uint8 between Q/DQ (ConvTranspose rewrite, graph.passes)
        OpInfo("Flatten", p, keeps_values=True),
        OpInfo("Squeeze", p, keeps_values=True),
        OpInfo("Unsqueeze", p, keeps_values=True),
        OpInfo("Slice", p),
        OpInfo("Gather", p, index_input=1, weight_only=WeightOnly(embedding=True, low_bit=False)),
        OpInfo("Expand", p),
        OpInfo("Tile", p),
        OpInfo("Split", p),
        OpInfo("Cast", Role.FLOAT, keeps_values=True, note=NO_KERNEL),
        OpInfo("Identity", Role.FLOAT, keeps_values=True, note=NO_KERNEL),
    )


def _float_ops() -> tuple[OpInfo, ...]:
    f, gelu = Role.FLOAT, "GELU stays float"
    return (
        OpInfo("HardSigmoid", f, saturation=_hard_sigmoid_bounds,
               note="onnxruntime has no int8 HardSigmoid kernel on CPU"),
        OpInfo("HardSwish", f, saturation=lambda n: (-3.0, math.inf),
               note="onnxruntime has no int8 HardSwish kernel on CPU"),
        OpInfo("Softmax", f, float_by_design="kept float for accuracy (attention probabilities)",
               note="kept float for accuracy (attention/probabilities)"),
        OpInfo("LayerNormalization", f, float_by_design="normalisation stays float for accuracy",
               note="normalisation stays float for accuracy"),
        OpInfo("BatchNormalization", f, note="not preceded by a Conv, so it could not be folded"),
        OpInfo("Erf", f, float_by_design=gelu, note=NO_KERNEL),
        OpInfo("Gelu", f, float_by_design=gelu, note=NO_KERNEL),
        OpInfo("Tanh", f, float_by_design="activation stays float", note=NO_KERNEL),
        OpInfo(QUANTIZE, f, quantizes_activations=True, note=NO_KERNEL),
        OpInfo(DEQUANTIZE, f, note=NO_KERNEL),
        OpInfo("DynamicQuantizeLinear", f, quantizes_activations=True, note=NO_KERNEL),
    )


def _runtime_ops() -> tuple[OpInfo, ...]:
    """onnxruntime's quantized and fused MAC ops (they appear in its optimized graphs)."""
    conv, conv_t, mm, ms = MacKind.CONV, MacKind.CONV_T, MacKind.MATMUL, MS_DOMAIN
    return (
        _mac("QLinearConv", conv, 3, True), _mac("ConvInteger", conv, 1, True),
        _mac("QLinearMatMul", mm, 3, True), _mac("MatMulInteger", mm, 1, True),
        _mac("FusedConv", conv, 1, False, ms), _mac("NhwcFusedConv", conv, 1, False, ms),
        _mac("QLinearConvTranspose", conv_t, 3, True, ms),
        _mac("FusedMatMul", mm, 1, False, ms), _mac("FusedGemm", mm, 1, False, ms),
        _mac("MatMulIntegerToFloat", mm, 1, True, ms), _mac("DynamicQuantizeMatMul", mm, 1, True, ms),
        _mac("QGemm", mm, 3, True, ms), _mac("MatMulNBits", mm, 1, False, ms),  # NBits: float (or int8-per-block) math
    )


OP_TABLE: dict[tuple[str, str], OpInfo] = {
    (i.domain, i.op_type): i for i in (*_compute_ops(), *_data_ops(), *_float_ops(), *_runtime_ops())
}


def _by_op_type(facts: Callable[[OpInfo], object]) -> dict[str, OpInfo]:
    """Entries with a fact, keyed by op type alone (onnxruntime's fused-op names are unique)."""
    out: dict[str, OpInfo] = {}
    for info in OP_TABLE.values():
        if facts(info):
            if info.op_type in out:
                raise ValueError(f"op table: {info.op_type} has the fact in two domains; key it by domain")
            out[info.op_type] = info
    return out


_MACS = _by_op_type(lambda i: i.mac)
# Ops dynamic PTQ leaves float on purpose, with the reason (by op type, in any domain).
FLOAT_BY_DESIGN: dict[str, str] = {k: v.float_by_design for k, v in _by_op_type(lambda i: i.float_by_design).items()}


def op_info(op_type: str, domain: str = "") -> OpInfo:
    """Table entry for an op; unknown ops stay float with a reason."""
    domain = "" if domain in ONNX_DOMAINS else domain
    info = OP_TABLE.get((domain, op_type))
    if info is not None:
        return info
    return OpInfo(op_type, Role.FLOAT, domain, note=_custom(domain) if domain else NO_KERNEL)


def weight_only_info(op_type: str, domain: str = "") -> WeightOnly:
    """How dynamic PTQ quantizes an op it quantizes (ValueError for any other op)."""
    facts = op_info(op_type, domain).weight_only
    if facts is None:
        raise ValueError(f"op table: dynamic PTQ does not quantize {op_type} (no weight_only entry)")
    return facts


def mac_info(op_type: str) -> Mac | None:
    """How to count the MACs of an op of an optimized onnxruntime graph (None: not a MAC op).

    Looked up by op type alone: onnxruntime's layout domains (com.microsoft.nchwc) reuse the ONNX names."""
    info = _MACS.get(op_type)
    return info.mac if info is not None else None


def is_float_mac(op_type: str, domain: str = "") -> bool:
    """A standard ONNX conv/matmul-type op with float compute (Conv, ConvTranspose, MatMul, Gemm)."""
    mac = op_info(op_type, domain).mac
    return domain in ONNX_DOMAINS and mac is not None and not mac.integer


def is_quantize(op_type: str, domain: str = "") -> bool:
    return op_type == QUANTIZE and domain in ONNX_DOMAINS


def is_dequantize(op_type: str, domain: str = "") -> bool:
    return op_type == DEQUANTIZE and domain in ONNX_DOMAINS


def target_float_ops(target: str) -> tuple[tuple[str, str], ...]:
    """(op type, reason) of the ops `target` runs no faster in int8: they stay float there."""
    return tuple((i.op_type, reason) for i in OP_TABLE.values() for t, reason in i.float_on if t == target)


def input_saturation(node: ir.Node) -> Bounds | None:
    """Interval outside which `node`'s output does not depend on its data input (None: nowhere)."""
    rule = op_info(node.op_type, node.domain).saturation
    return rule(node) if rule is not None else None


def quantizable_op_types() -> tuple[str, ...]:
    return tuple(i.op_type for i in OP_TABLE.values() if i.role is not Role.FLOAT)


def weight_only_op_types() -> tuple[str, ...]:
    """Op types dynamic PTQ quantizes (their constant weight, ahead of time)."""
    return tuple(i.op_type for i in OP_TABLE.values() if i.weight_only is not None)


__all__ = ["ALL_INPUTS", "Bounds", "DEQUANTIZE", "FLOAT_BY_DESIGN", "Mac", "MacKind", "OP_TABLE", "OpInfo",
           "PASSTHROUGH_DATA_INPUT", "QUANTIZE", "Role", "Weight", "WeightOnly", "input_saturation", "is_dequantize",
           "is_float_mac", "is_quantize", "mac_info", "op_info", "quantizable_op_types", "target_float_ops",
           "weight_only_info", "weight_only_op_types"]
