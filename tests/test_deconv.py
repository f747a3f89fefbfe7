"""ConvTranspose with kernel = stride as Conv 1x1 + DepthToSpace: exact in FP32, int8 in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq.core.config import StaticConfig
from slimq.graph.passes.deconv import convtranspose_to_depth_to_space
from slimq.static.method import quantize_static
from slimq.testing import count_ops


def _model(k: int, bias: bool, tail: tuple[str, ...], pads: tuple[int, ...] = (0, 0, 0, 0)) -> onnx.ModelProto:
    """x (N,4,5,6) -> ConvTranspose(4->3, kernel = stride = k) [-> Add(c) -> BatchNormalization -> Relu]."""
    rng = np.random.default_rng(k)
    inits = [nh.from_array(rng.normal(0, 0.5, (4, 3, k, k)).astype(np.float32), "w")]
    inputs = ["x", "w"] + (["b"] if bias else [])
    if bias:
        inits.append(nh.from_array(rng.normal(0, 0.5, 3).astype(np.float32), "b"))
    nodes = [oh.make_node("ConvTranspose", inputs, ["t0"], kernel_shape=[k, k], strides=[k, k], pads=list(pads))]
    last = "t0"
    for i, op in enumerate(tail):
        out = f"t{i + 1}"
        if op == "Add":
            inits.append(nh.from_array(rng.normal(0, 0.5, (1, 3, 1, 1)).astype(np.float32), "c"))
            nodes.append(oh.make_node("Add", [last, "c"], [out]))
        elif op == "BatchNormalization":
            for name, v in (("g", rng.uniform(0.5, 2, 3)), ("be", rng.normal(0, 1, 3)), ("mu", rng.normal(0, 1, 3)),
                            ("var", rng.uniform(0.5, 2, 3))):
                inits.append(nh.from_array(v.astype(np.float32), name))
            nodes.append(oh.make_node("BatchNormalization", [last, "g", "be", "mu", "var"], [out]))
        else:
            nodes.append(oh.make_node(op, [last], [out]))
        last = out
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 5, 6])],
                          [oh.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None)], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("k,bias,tail", [(2, True, ()), (3, False, ()), (2, True, ("Add", "BatchNormalization", "Relu")),
                                         (2, False, ("Relu",))])
def test_rewrite_is_exact(k, bias, tail):
    m = _model(k, bias, tail)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)).astype(np.float32)
    irm = ir.from_proto(m)
    assert convtranspose_to_depth_to_space(irm) == 1
    out = ir.to_proto(irm)
    ops = count_ops(out)
    assert "ConvTranspose" not in ops and ops["Conv"] == 1 and ops["DepthToSpace"] == 1
    assert "Add" not in ops and "BatchNormalization" not in ops  # folded into the 1x1 conv
    assert ops.get("Relu", 0) == ("Relu" in tail)
    if "Relu" in tail:  # the activation moved in front of the permutation, right after the conv
        order = [n.op_type for n in out.graph.node]
        assert order.index("Relu") < order.index("DepthToSpace")
    assert out.graph.output[0].name == m.graph.output[0].name
    np.testing.assert_allclose(_run(out, x), _run(m, x), rtol=1e-5, atol=1e-5)


def test_padded_convtranspose_is_left_alone():
    m = _model(2, True, (), pads=(0, 0, 1, 1))
    irm = ir.from_proto(m)
    assert convtranspose_to_depth_to_space(irm) == 0
    assert count_ops(ir.to_proto(irm))["ConvTranspose"] == 1


def test_upsampling_runs_int8_after_static_ptq():
    from slimq.runtime.macs import count_macs
    from slimq.runtime.session import optimized_graph

    m = _model(2, True, ("Add", "Relu"))
    data = np.random.default_rng(3).standard_normal((32, 4, 5, 6)).astype(np.float32)
    res = quantize_static(m, data, StaticConfig(show_progress=False))
    c = count_macs(optimized_graph(res.model, "extended"), {"x": data[:1]})
    assert c.int8_share == 1.0 and dict(c.int8_ops) == {"QLinearConv": 1}
    assert res.report.worst_cosine > 0.99
