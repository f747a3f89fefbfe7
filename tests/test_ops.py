"""The op table and the target table: lookups that replaced op-type string branches."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import pytest

from slimq import testing
from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.core.ops import (
    FLOAT_BY_DESIGN,
    OP_TABLE,
    MacKind,
    Role,
    input_saturation,
    is_dequantize,
    is_float_mac,
    is_quantize,
    mac_info,
    op_info,
    target_float_ops,
    weight_only_op_types,
)
from slimq.core.targets import QAT_TARGETS, TARGETS, target_rules
from slimq.dynamic.check import index_ranges
from slimq.runtime.macs import count_macs


def _node(op_type: str, n_inputs: int = 2, **attrs) -> ir.Node:
    inputs = [ir.Value(name=f"i{k}") for k in range(n_inputs)]
    return ir.node(op_type, inputs, attrs)


@pytest.mark.parametrize("op,attrs,ndim,expected", [
    ("Conv", {}, 4, (0, 1)),
    ("ConvTranspose", {}, 4, (1, 0)),
    ("MatMul", {}, 2, (1, 0)),
    ("MatMul", {}, 3, (2, 1)),
    ("Gemm", {}, 2, (1, 0)),
    ("Gemm", {"transB": 1}, 2, (0, 1)),
    ("Gemm", {"transB": 0}, 2, (1, 0)),
])
def test_weight_channel_and_reduction_axes(op, attrs, ndim, expected):
    w = op_info(op).weight
    assert w.axes(_node(op, **attrs), ndim) == expected
    assert w.block_axis(_node(op, **attrs), ndim) == expected[1]


def test_per_channel_rules():
    conv_t, matmul = op_info("ConvTranspose").weight, op_info("MatMul").weight
    assert conv_t.per_channel_axis(_node("ConvTranspose"), 4) == 1
    assert conv_t.per_channel_axis(_node("ConvTranspose", group=2), 4) is None  # grouped: per tensor
    assert op_info("Conv").weight.per_channel_axis(_node("Conv", group=2), 4) == 0  # grouped Conv stays per channel
    assert matmul.per_channel_axis(_node("MatMul"), 2) == 1
    assert matmul.per_channel_axis(_node("MatMul"), 3) is None  # batched weights: per tensor
    assert matmul.block_axis(_node("MatMul"), 1) is None
    assert op_info("Conv").weight.per_channel_axis(_node("Conv"), 0) is None


def test_constant_weight_required_except_matmul():
    assert all(op_info(op).weight.required for op in ("Conv", "ConvTranspose", "Gemm"))
    assert not op_info("MatMul").weight.required  # attention: both inputs may be activations
    assert op_info("Gemm").bias_vector and not op_info("Conv").bias_vector


def test_dynamic_ptq_facts():
    assert set(weight_only_op_types()) == {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather"}
    assert op_info("Gather").weight_only.embedding and op_info("Gather").index_input == 1
    assert op_info("MatMul").weight_only.dynamic_kernel == "DynamicQuantizeMatMul"
    assert op_info("MatMul").weight_only.fused_kernel == "MatMulNBits"
    assert not op_info("Gemm").weight_only.dynamic_kernel  # rewritten to MatMul first
    for conv in ("Conv", "ConvTranspose"):
        facts = op_info(conv).weight_only
        assert not facts.low_bit and facts.float_with_dynamic_activation
    assert op_info("Relu").weight_only is None


def test_mac_facts_cover_onnxruntime_fused_and_quantized_ops():
    integer = {"QLinearConv", "ConvInteger", "QLinearConvTranspose", "QLinearMatMul", "MatMulInteger",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm"}
    floats = {"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm",
              "FusedGemm", "MatMulNBits"}
    for op in integer | floats:
        assert mac_info(op).integer == (op in integer), op
    assert mac_info("QLinearConv").weight_input == 3 and mac_info("QGemm").weight_input == 3
    assert mac_info("ConvTranspose").kind is MacKind.CONV_T and mac_info("FusedGemm").kind is MacKind.MATMUL
    assert mac_info("Relu") is None and mac_info("DequantizeLinear") is None
    assert op_info("FusedConv", "com.microsoft").mac.kind is MacKind.CONV


def test_float_mac_is_onnx_float_compute_only():
    assert [op for op in ("Conv", "ConvTranspose", "MatMul", "Gemm") if is_float_mac(op)] == \
        ["Conv", "ConvTranspose", "MatMul", "Gemm"]
    assert not is_float_mac("QLinearConv") and not is_float_mac("FusedConv", "com.microsoft")
    assert not is_float_mac("Conv", "custom.domain") and not is_float_mac("Add")


def test_qdq_helpers_check_the_domain():
    assert is_quantize("QuantizeLinear") and is_dequantize("DequantizeLinear", "ai.onnx")
    assert not is_dequantize("DequantizeLinear", "com.microsoft") and not is_quantize("DequantizeLinear")


def test_unknown_and_custom_domain_ops_stay_float_with_a_reason():
    assert op_info("NonZero").role is Role.FLOAT and "no int8 kernel" in op_info("NonZero").note
    custom = op_info("Conv", "my.domain")
    assert custom.role is Role.FLOAT and custom.weight is None and "my.domain" in custom.note
    assert op_info("Conv", "ai.onnx") is op_info("Conv")


def test_float_by_design_reasons():
    assert set(FLOAT_BY_DESIGN) == {"LayerNormalization", "Softmax", "Erf", "Gelu", "Tanh"}
    assert FLOAT_BY_DESIGN["Erf"] == "GELU stays float"
    assert all(op_info(op).role is Role.FLOAT for op in FLOAT_BY_DESIGN)


def test_input_saturation_from_the_table():
    assert input_saturation(_node("Relu", 1)) == (0.0, math.inf)
    assert input_saturation(_node("HardSwish", 1)) == (-3.0, math.inf)
    assert input_saturation(_node("HardSigmoid", 1)) == pytest.approx((-2.5, 2.5))
    assert input_saturation(_node("Sigmoid", 1)) is None
    assert input_saturation(ir.node("Relu", [ir.Value(name="x")], domain="custom")) is None


def test_table_keys_match_entries():
    assert all(key == (info.domain, info.op_type) for key, info in OP_TABLE.items())


# -- targets ---------------------------------------------------------------------------------

def test_target_float_ops_come_from_the_op_table():
    assert dict(target_float_ops("x86")).keys() == {"ConvTranspose"}
    assert set(dict(target_float_ops("openvino"))) == {"Add", "Mul", "Sigmoid", "LeakyRelu"}
    assert target_float_ops("tensorrt") == () and target_float_ops("arm") == ()
    assert target_rules("openvino").float_ops == target_float_ops("openvino")


@pytest.mark.parametrize("target,act,sym,unsigned", [
    ("x86", "uint8", False, True), ("tensorrt", "int8", True, False), ("arm", "int8", True, True),
    ("openvino", "uint8", False, False),
])
def test_target_rules(target, act, sym, unsigned):
    rules = target_rules(target)
    assert (rules.act_dtype, rules.activation_symmetric, rules.unsigned_grid) == (act, sym, unsigned)
    assert rules.weight_qtype.qmin == -127 and rules.per_channel
    reduced = target_rules(target, reduce_range=True, per_channel=False).weight_qtype
    assert reduced.qmax == (63 if act == "uint8" else 127)  # 7-bit weights only against u8 activations
    assert not target_rules(target, per_channel=False).per_channel


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="tensorrt"):
        target_rules("tpu")
    assert set(QAT_TARGETS) < set(TARGETS)


def test_qat_targets_derive_from_the_one_target_table():
    pytest.importorskip("torch")
    from slimq.qat.config import TARGETS as QAT
    from slimq.qat.config import QATConfig

    assert set(QAT) == set(QAT_TARGETS)
    assert all(QAT[t] == target_rules(t) for t in QAT_TARGETS)
    assert QATConfig(target="tensorrt").rules.act_dtype == "int8"
    assert QATConfig(target="x86").rules.activation_qtype == qmath.UINT8


# -- readers of the table --------------------------------------------------------------------

def test_index_ranges_follow_value_keeping_ops():
    m = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int32[N, S] ids, int64[N, S] pos) => (float[N, S, 4] y, float[N, S, 4] z) {
            i = Cast <to = 7> (ids)
            y = Gather (table, i)
            z = Gather (small, pos)
        }""")
    m.graph.initializer.extend([nh.from_array(np.zeros((100, 4), np.float32), "table"),
                                nh.from_array(np.zeros((7, 4), np.float32), "small")])
    assert index_ranges(m) == {"ids": 100, "pos": 7}


def test_count_macs_of_float_and_int8_graphs():
    m = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 5] y) {
            c = Conv <kernel_shape = [3, 3]> (x, w)
            f = Flatten (c)
            y = MatMul (f, wm)
        }""")
    m.graph.initializer.extend([nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
                                nh.from_array(np.ones((144, 5), np.float32), "wm")])
    count = count_macs(m, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert count.float_macs == 4 * 6 * 6 * 27 + 144 * 5 and count.int8_macs == 0
    assert dict(count.float_ops) == {"Conv": 1, "MatMul": 1}


def test_dequantize_at_load_only_for_weight_only_convs():
    from slimq.core.config import StaticConfig
    from slimq.dynamic.method import DynamicConfig, quantize_dynamic
    from slimq.runtime.session import dequantize_at_load
    from slimq.static.method import quantize_static

    conv = testing.conv_net()
    assert dequantize_at_load(quantize_dynamic(conv, DynamicConfig()).model)
    assert not dequantize_at_load(conv)  # no DequantizeLinear at all
    static = quantize_static(conv, testing.random_inputs(conv, 4), StaticConfig(show_progress=False, holdout=1))
    assert not dequantize_at_load(static.model)  # activations are quantized too
