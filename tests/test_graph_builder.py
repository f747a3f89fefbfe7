"""The naming helper, the graph builder, and graph edits as onnx-ir passes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core import qmath
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import UniqueNames, node_name
from slimq.graph.passes import (
    FoldBatchNormPass,
    FoldConvAffinePass,
    FuseHardSwishPass,
    GemmToMatMulPass,
    RewriteResult,
    gemm_to_matmul,
    ir_passes,
)

RNG = np.random.default_rng(0)


def _model(text: str, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(m)
    return m


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


RELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    h = Relu (x)
    y = Add (h, c)
}
"""


def _relu_model() -> ir.Model:
    return ir.from_proto(_model(RELU, {"c": np.float32(0.5)}))


def test_unique_names_avoid_every_name_in_the_graph():
    graph = _relu_model().graph
    graph.node(0).name = "relu"
    names = UniqueNames(graph)
    assert [names.fresh(b) for b in ("x", "c", "h", "y", "relu", "new", "new")] == \
        ["x_1", "c_1", "h_1", "y_1", "relu_1", "new", "new_1"]
    assert names.claim("kept") == "kept" and names.fresh("kept") == "kept_1"
    assert node_name(graph.node(1)) == "y"  # unnamed node: its first output's name


def test_initializers_get_fresh_names_and_hold_the_data():
    model = _relu_model()
    b = GraphBuilder(model.graph)
    first = b.initializer("c", np.arange(3, dtype=np.int8))
    scalar = b.initializer("c", np.float32(0.25), typed=True)
    assert (first.name, scalar.name) == ("c_1", "c_2")
    assert model.graph.initializers["c_1"].const_value.numpy().tolist() == [0, 1, 2]
    assert scalar.type == ir.TensorType(ir.DataType.FLOAT) and scalar.shape == ir.Shape([])


def test_qdq_pair_keeps_the_graph_output_name_and_quantizes():
    model = _relu_model()
    b, y = GraphBuilder(model.graph), model.graph.outputs[0]
    scale, zp = b.initializer("y_scale", np.float32(0.1)), b.initializer("y_zero_point", np.uint8(0))
    out = b.qdq(y, scale, zp, "y")
    b.replace_uses(y, out, readers=[], rename="prequant")
    proto = ir.to_proto(model)
    assert [o.name for o in proto.graph.output] == ["y"] and y.name == "y_prequant"
    assert testing.count_ops(proto) == {"Relu": 1, "Add": 1, "QuantizeLinear": 1, "DequantizeLinear": 1}
    x = np.array([[-1.0, 0.123, 0.5, 30.0]], np.float32)
    expected = np.clip(np.round((np.maximum(x, 0) + 0.5) / 0.1), 0, 255) * 0.1
    np.testing.assert_allclose(_run(proto, {"x": x})[0], expected, rtol=1e-6)


def test_replace_uses_reroutes_readers_and_refuses_two_outputs():
    model = _relu_model()
    b, (relu, add) = GraphBuilder(model.graph), list(model.graph)
    neg = b.node("Neg", [relu.outputs[0]], base="h", after=relu)
    b.replace_uses(relu.outputs[0], neg.outputs[0], readers=list(relu.outputs[0].uses())[:1])
    assert add.inputs[0] is neg.outputs[0] and neg.name == "h_Neg" and neg.outputs[0].name == "h_Neg_out0"
    x = np.array([[1.0, 2.0, -3.0, 0.0]], np.float32)
    np.testing.assert_allclose(_run(ir.to_proto(model), {"x": x})[0], -np.maximum(x, 0) + 0.5)
    other = b.node("Identity", [add.outputs[0]], base="z")
    model.graph.outputs.append(other.outputs[0])
    with pytest.raises(ValueError, match="Identity"):
        b.replace_uses(add.outputs[0], other.outputs[0])


def test_node_keeps_a_verbatim_name_and_is_placed():
    model = _relu_model()
    b, relu = GraphBuilder(model.graph), model.graph.node(0)
    n = b.node("Identity", [relu.inputs[0]], base="ignored", name="exact", before=relu)
    assert n.name == "exact" and model.graph.node(0) is n and b.fresh("exact") == "exact_1"


def test_dequantize_block_attributes():
    model = _relu_model()
    b = GraphBuilder(model.graph)
    q = b.initializer("w_q", np.zeros((4, 8), np.int8))
    s = b.initializer("w_s", np.ones((4, 2), np.float32))
    dq = b.dequantize(q, s, None, "w", axis=1, block_size=4).producer()
    assert {k: a.value for k, a in dq.attributes.items()} == {"axis": 1, "block_size": 4}
    assert len(dq.inputs) == 2 and dq.outputs[0].name == "w_dq"


# -- passes ----------------------------------------------------------------------------------

AFFINE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, b)
    y = Mul (c, gamma)
}
"""


def _affine(gamma_shape=(1, 4, 1, 1)) -> onnx.ModelProto:
    return _model(AFFINE, {"w": RNG.standard_normal((4, 3, 3, 3)), "b": RNG.standard_normal(4),
                           "gamma": RNG.uniform(0.5, 2, gamma_shape)})


def test_pass_result_counts_and_keeps_the_output_name():
    m = _affine()
    irm = ir.from_proto(m)
    result = FoldConvAffinePass()(irm)
    assert isinstance(result, RewriteResult) and result.modified and result.count == 1
    folded = ir.to_proto(irm)
    assert testing.count_ops(folded) == {"Conv": 1} and [o.name for o in folded.graph.output] == ["y"]
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, {"x": x})[0], _run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_pattern_that_does_not_fire_says_why(caplog):
    irm = ir.from_proto(_affine(gamma_shape=(1, 1, 1, 8)))
    with caplog.at_level(logging.DEBUG, logger="slimq.passes"):
        result = FoldConvAffinePass()(irm)
    assert not result.modified and result.count == 0
    assert "does not broadcast per output channel" in caplog.text and "FoldConvAffinePass" in caplog.text


def test_pass_manager_composes_the_preprocess_passes():
    irm = ir.from_proto(testing.conv_net())
    result = ir_passes()(irm)
    assert result.modified and "BatchNormalization" not in testing.count_ops(ir.to_proto(irm))
    again = ir.passes.PassManager([FoldBatchNormPass(), FoldConvAffinePass(), FuseHardSwishPass()])(irm)
    assert not again.modified  # nothing left to rewrite


GEMM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 6] x) => (float[N, 5] y, float[N, 5] z) {
    y = Gemm <transB = 1> (x, w, b)
    z = Gemm <alpha = 0.5> (x, w2)
}
"""


def test_gemm_to_matmul_keeps_node_and_output_names():
    m = _model(GEMM, {"w": RNG.standard_normal((5, 6)), "b": RNG.standard_normal(5),
                      "w2": RNG.standard_normal((6, 5))})
    m.graph.node[0].name = "fc"
    irm = ir.from_proto(m)
    rewrite = GemmToMatMulPass()
    result = rewrite(irm)
    assert result.count == 1 and rewrite.done == ["fc"]
    out = ir.to_proto(irm)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add", "Gemm"]
    assert out.graph.node[0].name == "fc" and [o.name for o in out.graph.output] == ["y", "z"]
    assert "w_kn" in {t.name for t in out.graph.initializer}
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    for a, e in zip(_run(out, {"x": x}), _run(m, {"x": x})):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    assert gemm_to_matmul(irm) == []  # nothing left


def test_fold_weight_quantization_avoids_name_collisions():
    pytest.importorskip("torch")
    from slimq.qat.export import fold_weight_quantization

    m = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 3] y) {
            q = QuantizeLinear <axis = 1> (w, s, zp)
            d = DequantizeLinear <axis = 1> (q, s, zp)
            y = MatMul (x, d)
        }""")
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    m.graph.initializer.extend([nh.from_array(w, "w"), nh.from_array(np.full(3, 0.02, np.float32), "s"),
                                nh.from_array(np.zeros(3, np.int8), "zp"),
                                nh.from_array(np.zeros(1, np.float32), "w_quantized")])  # the name it would take
    irm = ir.from_proto(m)
    assert fold_weight_quantization(irm) == 1
    out = ir.to_proto(irm)
    inits = {t.name: nh.to_array(t) for t in out.graph.initializer}
    assert "QuantizeLinear" not in testing.count_ops(out) and inits["w_quantized_1"].dtype == np.int8
    expected = qmath.quantize(w, np.full(3, 0.02, np.float32).reshape(1, 3), np.zeros((1, 3), np.int8),
                              qmath.INT8)
    np.testing.assert_array_equal(inits["w_quantized_1"], expected)
