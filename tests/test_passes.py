"""Exact FP32 rewrites (affine folding, HardSwish fusion), bias correction and saturation bounds."""

import math

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core import qmath
from slimq.core.config import StaticConfig, target_rules
from slimq.graph.passes import (
    fold_conv_affine,
    fold_input_affine,
    fuse_hardswish,
    preprocess,
)
from slimq.graph.passes.bias_correction import output_shift
from slimq.graph.plan import WeightEntry, build_plan
from slimq.static.method import quantize_static

RNG = np.random.default_rng(0)


def model_from_text(text: str, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(m)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rewrite(model: onnx.ModelProto, fn) -> tuple[onnx.ModelProto, int]:
    irm = ir.from_proto(model)
    n = fn(irm)
    return ir.to_proto(irm), n


AFFINE = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {{
    c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, b)
    m = Mul (c, {mul})
    y = Add (m, beta)
}}
"""


def affine_model(mul_shape=(1, 4, 1, 1), mul_input="gamma") -> onnx.ModelProto:
    arrays = {"w": RNG.standard_normal((4, 3, 3, 3)), "b": RNG.standard_normal(4),
              "gamma": RNG.uniform(0.5, 2, mul_shape), "beta": np.float32(0.3)}
    return model_from_text(AFFINE.format(mul=mul_input), arrays)


def test_fold_conv_affine_is_exact_and_removes_ops():
    m = affine_model()
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    folded, n = rewrite(m, fold_conv_affine)
    assert n == 2
    assert testing.count_ops(folded) == {"Conv": 1}
    np.testing.assert_allclose(run(folded, x), run(m, x), rtol=1e-5, atol=1e-5)


def test_fold_conv_affine_skips_constants_not_per_channel():
    folded, n = rewrite(affine_model(mul_shape=(1, 1, 1, 8)), fold_conv_affine)
    assert n == 0 and testing.count_ops(folded) == {"Conv": 1, "Mul": 1, "Add": 1}  # varies along the width


def test_fold_conv_affine_skips_non_constant_operand():
    m = affine_model(mul_input="x")  # Mul(c, x): the operand is data, not a constant
    folded, n = rewrite(m, fold_conv_affine)
    assert n == 0 and testing.count_ops(folded) == {"Conv": 1, "Mul": 1, "Add": 1}


HSWISH = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y, float[N, 4, 8, 8] z) {{
    three = Constant <value = float {{3.0}}> ()
    zero = Constant <value = float {{0.0}}> ()
    six = Constant <value = float {{6.0}}> ()
    div = Constant <value = float {{{div}}}> ()
    a = Add (x, three)
    c = Clip (a, zero, six)
    m = Mul (x, c)
    y = Div (m, div)
    hs = HardSigmoid <alpha = 0.16666667, beta = 0.5> (x)
    z = Mul (hs, x)
}}
"""


def test_fuse_hardswish_both_forms_exact_and_opset_bumped():
    m = onnx.parser.parse_model(HSWISH.format(div="6.0"))
    x = (RNG.standard_normal((1, 4, 8, 8)) * 4).astype(np.float32)
    pre = ir.from_proto(m)
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(pre)
    fused, n = rewrite(ir.to_proto(pre), fuse_hardswish)
    assert n == 2
    assert testing.count_ops(fused) == {"HardSwish": 2}
    assert fused.opset_import[0].version == 14
    assert [o.name for o in fused.graph.output] == ["y", "z"]
    for a, b in zip(run(fused, x), run(m, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fuse_hardswish_ignores_other_divisors():
    m = onnx.parser.parse_model(HSWISH.format(div="5.0"))
    pre = ir.from_proto(m)
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(pre)
    fused, n = rewrite(ir.to_proto(pre), fuse_hardswish)
    assert n == 1 and testing.count_ops(fused)["Div"] == 1


@pytest.mark.parametrize("group", [1, 4])
def test_bias_shift_matches_brute_force(group):
    cin, cout = 8, 8
    w = RNG.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
    entry = WeightEntry("conv", 1, "w", 0, qmath.INT8.narrow())
    mean_x = RNG.uniform(0.5, 3, cin)
    qt = qmath.quantize_weight(w, entry.qtype, 0)
    dw = qmath.dequantize(qt.data, qt.scale, qt.zero_point, 0).astype(np.float64) - w
    # the change of one interior output pixel for a constant input image with these channel means
    x = np.broadcast_to(mean_x.reshape(group, cin // group, 1, 1), (group, cin // group, 3, 3))
    ref = np.array([np.sum(dw[o] * x[o // (cout // group)]) for o in range(cout)])
    np.testing.assert_allclose(output_shift(w, entry, mean_x, "Conv", group), ref, rtol=1e-9, atol=1e-9)


def test_bias_correction_removes_mean_output_error():
    """A conv on inputs with a large mean: weight rounding shifts the output mean; correction removes it."""
    m = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 16, 6, 6] x) => (float[N, 16, 6, 6] y) {
            y = Conv <kernel_shape = [1, 1]> (x, w, b)
        }""", {"w": RNG.standard_normal((16, 16, 1, 1)) * 0.1, "b": np.zeros(16)})
    data = (RNG.standard_normal((64, 16, 6, 6)) * 0.2 + 5.0).astype(np.float32)
    ref = run(m, data).mean(axis=(0, 2, 3))
    errs = {}
    for on in (False, True):
        cfg = StaticConfig(algo="min_max", bias_correction=on, holdout=0, show_progress=False)
        q = quantize_static(m, data, cfg).model
        errs[on] = np.abs(run(q, data).mean(axis=(0, 2, 3)) - ref).mean()
    assert errs[True] < errs[False] / 3, errs


BOUNDED = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y, float[N, 4, 8, 8] z) {
    c = Conv <kernel_shape = [1, 1]> (x, w, b)
    h = HardSwish (c)
    y = Conv <kernel_shape = [1, 1]> (h, w2, b2)
    c2 = Conv <kernel_shape = [1, 1]> (x, w3, b3)
    h2 = HardSwish (c2)
    s = Add (c2, h2)
    z = Conv <kernel_shape = [1, 1]> (s, w2, b2)
}
"""


def test_saturation_bounds_only_where_every_reader_saturates():
    arrays = {k: RNG.standard_normal(s) for k, s in
              (("w", (4, 3, 1, 1)), ("b", 4), ("w2", (4, 4, 1, 1)), ("b2", 4), ("w3", (4, 3, 1, 1)), ("b3", 4))}
    arrays["b"] = arrays["b"] - 8  # most of c is far below -3
    m = model_from_text(BOUNDED, arrays)
    plan = build_plan(ir.from_proto(m).graph, target_rules("x86"))
    assert plan.bounds == {"c": (-3.0, math.inf)}  # c2 is also read by Add: no bound
    x = RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)
    res = quantize_static(m, x, StaticConfig(algo="min_max", holdout=0, show_progress=False))
    p = res.plan.params["c"]
    assert p.rmin >= -3.0 and res.plan.params["c2"].rmin < -3.0
    # exact: nothing below -3 changes HardSwish, so the clipped grid is finer at no cost
    y_fp, y_q = run(m, x), run(res.model, x)
    assert qmath.cosine(y_fp, y_q) > 0.999


def test_preprocess_runs_the_rewrites_exactly():
    m = affine_model()
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    pre = preprocess(m)
    assert "Mul" not in testing.count_ops(pre)
    np.testing.assert_allclose(run(pre, x), run(m, x), rtol=1e-5, atol=1e-5)


HEAD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 2, 16, 16] up, float[N, 10] p) {
    c = Conv <kernel_shape = [1, 1]> (x, w, b)
    r = Relu (c)
    up = ConvTranspose <kernel_shape = [2, 2], strides = [2, 2]> (r, wt, bt)
    g = GlobalAveragePool (r)
    f = Flatten (g)
    mm = MatMul (f, wfc)
    logits = Add (mm, bfc)
    p = Softmax (logits)
}
"""


def head_model() -> onnx.ModelProto:
    arrays = {"w": RNG.standard_normal((4, 4, 1, 1)), "b": RNG.standard_normal(4),
              "wt": RNG.standard_normal((4, 2, 2, 2)), "bt": RNG.standard_normal(2),
              "wfc": RNG.standard_normal((4, 10)), "bfc": RNG.standard_normal(10)}
    return model_from_text(HEAD, arrays)


def test_target_float_ops_and_float_fed_constant_add():
    graph = ir.from_proto(head_model()).graph
    x86 = build_plan(graph, target_rules("x86"))
    floats = {f.op_type: f.reason for f in x86.float_nodes}
    assert "ConvTranspose" in floats and "int8 ConvTranspose" in floats["ConvTranspose"]
    assert "Add" in floats and "constant" in floats["Add"]  # x86: constant affine ops stay float
    assert "MatMul" in x86.quantized_nodes.values() and "mm" not in x86.activations  # int8 in, float out
    trt = build_plan(graph, target_rules("tensorrt"))
    assert "ConvTranspose" in trt.quantized_nodes.values()
    trt_floats = {f.op_type: f.reason for f in trt.float_nodes}
    assert "only float ops read" in trt_floats["Add"]  # the logits bias before Softmax: only Softmax reads it


def test_openvino_target_quantizes_only_int8_op_inputs():
    plan = build_plan(ir.from_proto(head_model()).graph, target_rules("openvino"))
    assert set(plan.quantized_nodes.values()) >= {"Conv", "ConvTranspose", "MatMul"}
    assert "up" not in plan.activations  # ConvTranspose output: no quantized reader, stays float
    assert "r" in plan.activations  # Relu output feeds ConvTranspose and the pool
    floats = {f.op_type: f.reason for f in plan.float_nodes}
    assert "OpenVINO" in floats["Add"]



INPUT_AFFINE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y, float[N, 4, 6, 6] z) {
    h = Relu (x)
    m = Mul (h, a)
    s = Add (m, beta)
    y = Conv <kernel_shape = [1, 1], group = 2> (s, w, b)
    m2 = Mul (h, a)
    z = Conv <kernel_shape = [3, 3]> (m2, w2, b2)
}
"""


def test_fold_input_affine_exact_for_unpadded_convs_only():
    arrays = {"a": RNG.uniform(0.5, 2, (1, 4, 1, 1)), "beta": RNG.standard_normal((4, 1, 1)),
              "w": RNG.standard_normal((6, 2, 1, 1)), "b": RNG.standard_normal(6),
              "w2": RNG.standard_normal((4, 4, 3, 3)), "b2": RNG.standard_normal(4)}
    m = model_from_text(INPUT_AFFINE, arrays)
    x = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    folded, n = rewrite(m, fold_input_affine)
    assert n == 3  # Mul+Add into the grouped 1x1 conv, Mul into the unpadded 3x3 conv
    assert testing.count_ops(folded) == {"Relu": 1, "Conv": 2}
    for a, b in zip(run_all(folded, x), run_all(m, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    padded = model_from_text(INPUT_AFFINE.replace("kernel_shape = [3, 3]", "kernel_shape = [3, 3], pads = [1, 1, 1, 1]")
                             .replace("float[N, 4, 6, 6] z", "float[N, 4, 8, 8] z"), arrays)
    _, n = rewrite(padded, fold_input_affine)
    assert n == 2  # the padded conv keeps its Mul: padding zeros would not be scaled


SCALAR_AFFINE_PADDED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y, float[N, 4, 8, 8] z) {
    h = Relu (x)
    m = Mul (h, a)
    s = Add (m, beta)
    y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (s, w, b)
    m2 = Mul (h, a2)
    z = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (m2, w2)
}
"""


@pytest.mark.parametrize("a", [1.7, -0.6])
def test_a_scalar_scale_moves_into_a_padded_conv_and_its_add_stays(a):
    arrays = {"a": np.array(a), "beta": RNG.standard_normal((1, 4, 1, 1)), "w": RNG.standard_normal((4, 1, 3, 3)),
              "b": RNG.standard_normal(4), "a2": np.array(0.5), "w2": RNG.standard_normal((4, 4, 3, 3))}
    m = model_from_text(SCALAR_AFFINE_PADDED, arrays)
    x = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    folded, n = rewrite(m, fold_input_affine)
    assert n == 2  # both Muls; the Add (beta / a) stays in front of the padded depthwise conv
    assert testing.count_ops(folded) == {"Relu": 1, "Add": 1, "Conv": 2}
    for got, want in zip(run_all(folded, x), run_all(m, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    zero = model_from_text(SCALAR_AFFINE_PADDED, {**arrays, "a": np.array(0.0)})
    assert rewrite(zero, fold_input_affine)[1] == 1  # a zero scale cannot move (beta / 0): only the other Mul


def run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def test_skipped_conv_really_runs_float_in_onnxruntime():
    """With Q/DQ on both sides onnxruntime would quantize a skipped conv's float weight itself."""
    from slimq.core.config import SkipSpec
    from slimq.runtime.session import optimized_graph

    m = testing.conv_net()
    x = testing.random_inputs(m, 4, batch=4)
    res = quantize_static(m, x, StaticConfig(skip=SkipSpec(names=("c3",)), holdout=0, show_progress=False))
    ops = testing.count_ops(optimized_graph(res.model, "extended"))
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 1
    assert "c3" in " ".join(res.report.macs.float_mac_nodes)
