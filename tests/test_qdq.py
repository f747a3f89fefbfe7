"""slimq.graph.qdq.insert_qdq on hand-built plans: what the weights, biases and activations become."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core.config import target_rules
from slimq.graph.names import UniqueNames
from slimq.graph.plan import build_plan
from slimq.graph.qdq import insert_qdq

# x -> Conv(w, b) -> a -> MaxPool -> y (graph output, tied to a)
#   -> Conv(w, b2) -> c -> Relu -> z (graph output); w is shared by both convs
_TWO_HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 8, 8] x) => (float[N, 4, 4, 4] y, float[N, 4, 8, 8] z) {
    a = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, b)
    y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (a)
    c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, b2)
    z = Relu (c)
}"""
RANGES = {"x": (-1.0, 3.0), "a": (-0.5, 2.0), "z": (0.0, 6.0)}
# u8 asymmetric: scale = (hi - lo) / 255, zero point = round(-lo / scale)
EXPECTED_QPARAMS = {"x": (4.0 / 255, 64), "a": (2.5 / 255, 51), "z": (6.0 / 255, 0)}


def two_heads() -> onnx.ModelProto:
    m = onnx.parser.parse_model(_TWO_HEADS)
    rng = np.random.default_rng(0)
    for k, v in {"w": rng.normal(0, 0.3, (4, 2, 3, 3)), "b": rng.normal(0, 0.1, 4), "b2": rng.normal(0, 0.1, 4)}.items():
        m.graph.initializer.append(nh.from_array(v.astype(np.float32), k))
    onnx.checker.check_model(m)
    return m


def quantize(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]):
    irm = ir.from_proto(model)
    plan = build_plan(irm.graph, target_rules("x86", reduce_range=False))
    plan = plan.with_ranges(ranges)
    insert_qdq(irm, plan)
    return ir.to_proto(irm), plan


def parts(model: onnx.ModelProto):
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return inits, producer


def axis_of(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def test_plan_of_the_two_head_model():
    _, plan = quantize(two_heads(), RANGES)
    assert plan.activations == {"x": "x", "a": "a", "y": "a", "z": "z"}  # y shares a's range (MaxPool)
    assert [(w.node, w.tensor, w.axis) for w in plan.weights] == [("a", "w", 0), ("c", "w", 0)]


def test_shared_weight_is_quantized_once_per_channel_with_narrow_int8():
    m = two_heads()
    w = nh.to_array(next(i for i in m.graph.initializer if i.name == "w")).astype(np.float64)
    q, _ = quantize(m, RANGES)
    inits, producer = parts(q)
    assert "w" not in inits  # the float weight is gone: the file holds int8
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and convs[0].input[1] == convs[1].input[1]  # one DequantizeLinear serves both
    dq = producer[convs[0].input[1]]
    assert dq.op_type == "DequantizeLinear" and axis_of(dq) == 0
    assert sum(n.op_type == "DequantizeLinear" and n.input[0] == dq.input[0] for n in q.graph.node) == 1
    data, scale, zp = (inits[t] for t in dq.input)
    want_scale = np.abs(w).reshape(4, -1).max(1) / 127
    np.testing.assert_allclose(scale, want_scale, rtol=1e-6)
    assert data.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()
    np.testing.assert_array_equal(data, np.clip(np.rint(w / want_scale[:, None, None, None]), -127, 127))
    assert np.abs(data).reshape(4, -1).max(1).tolist() == [127] * 4  # abs-max channels hit the narrow limit


def test_biases_become_int32_with_input_times_weight_scale():
    m = two_heads()
    q, _ = quantize(m, RANGES)
    inits, producer = parts(q)
    float_inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    s_x = np.float32(EXPECTED_QPARAMS["x"][0])
    for conv, bias in zip((n for n in q.graph.node if n.op_type == "Conv"), ("b", "b2")):
        w_scale = inits[producer[conv.input[1]].input[1]]
        dq = producer[conv.input[2]]
        data, scale, zp = (inits[t] for t in dq.input)
        assert data.dtype == np.int32 and axis_of(dq) == 0 and not zp.any()
        np.testing.assert_allclose(scale, s_x * w_scale, rtol=1e-6)
        np.testing.assert_array_equal(data, np.rint(float_inits[bias].astype(np.float64) / scale.astype(np.float64)))


def test_activations_get_q_dq_pairs_and_tied_tensors_share_one_scale():
    q, _ = quantize(two_heads(), RANGES)
    inits, producer = parts(q)
    pairs = {}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            (dq,) = [d for d in q.graph.node if d.op_type == "DequantizeLinear" and d.input[0] == n.output[0]]
            assert dq.input[1:] == n.input[1:]  # the DQ undoes exactly its Q
            pairs[n.input[0]] = n
    # y's quantizer reads MaxPool's output under its new name; it reuses a's initializers
    assert set(pairs) == {"x", "a", "z_prequant", "y_prequant"}
    assert pairs["y_prequant"].input[1:] == pairs["a"].input[1:]
    for tensor, (scale, zp) in EXPECTED_QPARAMS.items():
        node = pairs[tensor if tensor in pairs else f"{tensor}_prequant"]
        got_scale, got_zp = inits[node.input[1]], inits[node.input[2]]
        assert got_scale.dtype == np.float32 and got_scale == pytest.approx(scale, rel=1e-6)
        assert got_zp.dtype == np.uint8 and int(got_zp) == zp
    scales = [n.input[1] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert len(set(scales)) == 3  # x, a (with y), z: one set of initializers per calibrated root


def test_graph_outputs_keep_their_names_and_come_from_dequantize():
    m = two_heads()
    q, _ = quantize(m, RANGES)
    _, producer = parts(q)
    assert [o.name for o in q.graph.output] == ["y", "z"]
    assert producer["y"].op_type == "DequantizeLinear" and producer["z"].op_type == "DequantizeLinear"
    s = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in s.get_outputs()] == ["y", "z"]


def test_quantized_graph_outputs_keep_their_type_and_shape():
    # The output value that takes over a quantized graph output's name must keep its type and shape:
    # without them onnx.checker rejects the model ("Field 'type' of 'value_info' is required").
    m = two_heads()
    q, _ = quantize(m, RANGES)
    assert [o.type for o in q.graph.output] == [o.type for o in m.graph.output]
    onnx.checker.check_model(q)


def test_qdq_model_computes_the_fake_quantized_float_model():
    """ORT on the QDQ graph (no fusions) = the float model fed with fake-quantized x and dequantized
    weights/biases, its outputs fake-quantized: equal up to a rounding flip at exact ties."""
    m = two_heads()
    q, _ = quantize(m, RANGES)
    inits, producer = parts(q)
    x = np.random.default_rng(1).uniform(-1.5, 3.5, (3, 2, 8, 8)).astype(np.float32)

    def fq(v, tensor):
        s, z = EXPECTED_QPARAMS[tensor]
        return ((np.clip(np.rint(v / np.float32(s)) + z, 0, 255) - z) * np.float32(s)).astype(np.float32)

    def deq(name):
        data, scale, zp = (inits[t] for t in producer[name].input)
        shape = (-1,) + (1,) * (data.ndim - 1)
        return ((data.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)

    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(m)
    del ref_model.graph.initializer[:]
    ref_model.graph.initializer.extend([nh.from_array(deq(convs[0].input[1]), "w"), nh.from_array(deq(convs[0].input[2]), "b"),
                                        nh.from_array(deq(convs[1].input[2]), "b2")])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda model, feed: ort.InferenceSession(model.SerializeToString(), so,  # noqa: E731
                                                   providers=["CPUExecutionProvider"]).run(None, {"x": feed})
    y_ref, z_ref = run(ref_model, fq(x, "x"))  # y = MaxPool(a): fake-quantizing a, then pooling = the reverse
    y, z = run(q, x)
    for got, want, tensor in ((y, fq(y_ref, "a"), "a"), (z, fq(z_ref, "z"), "z")):
        step = EXPECTED_QPARAMS[tensor][0]
        assert np.abs(got - want).max() <= step * 1.0001
        assert np.mean(got == want) > 0.99


def test_matmul_weights_are_quantized_per_output_column():
    m = testing.matmul_net()
    w1 = nh.to_array(next(i for i in m.graph.initializer if i.name == "w1")).astype(np.float64)  # (32, 64)
    irm = ir.from_proto(m)
    plan = build_plan(irm.graph, target_rules("x86", reduce_range=False))
    q, _ = quantize(m, {r: (-4.0, 4.0) for r in plan.roots})
    inits, producer = parts(q)
    mm = next(n for n in q.graph.node if n.op_type == "MatMul" and producer[n.input[1]].input[0].startswith("w1"))
    dq = producer[mm.input[1]]
    data, scale, _ = (inits[t] for t in dq.input)
    assert axis_of(dq) == 1 and scale.shape == (64,)
    np.testing.assert_allclose(scale, np.abs(w1).max(0) / 127, rtol=1e-6)
    np.testing.assert_array_equal(data, np.clip(np.rint(w1 / (np.abs(w1).max(0) / 127)), -127, 127))


def test_uncalibrated_plan_is_refused():
    irm = ir.from_proto(two_heads())
    plan = build_plan(irm.graph, target_rules("x86", reduce_range=False))
    with pytest.raises(ValueError, match="calibrated plan"):
        insert_qdq(irm, plan)


def test_new_names_never_collide_with_existing_ones():
    irm = ir.from_proto(two_heads())
    names = UniqueNames(irm.graph)
    assert names.fresh("w") == "w_1" and names.fresh("w") == "w_2"  # "w" is an initializer
    assert names.fresh("a") == "a_1" and names.fresh("new") == "new"
