"""slimq.runtime.macs.count_macs: exact MAC counts by hand, and the int8/float split of a QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as nh
import pytest

from slimq.core.config import StaticConfig
from slimq.runtime.macs import count_macs
from slimq.runtime.session import optimized_graph
from slimq.static.method import quantize_static

_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x) => (float[N, 2, 8, 8] t, float[N, 10] o1, float[N, 5] o2, float[N, 6, 4] o3) {
    a = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], strides = [2, 2]> (x, w1, b1)
    d = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 6> (a, wd)
    t = ConvTranspose <kernel_shape = [2, 2], strides = [2, 2]> (d, wt)
    f = Flatten (d)
    ft = Transpose <perm = [1, 0]> (f)
    o1 = Gemm <transA = 1, transB = 1> (ft, wfc, bfc)
    o2 = MatMul (f, wm)
    r = Reshape (d, shape)
    o3 = MatMul (r, wb)
}"""
SHAPES = {"w1": (6, 3, 3, 3), "b1": (6,), "wd": (6, 1, 3, 3), "wt": (6, 2, 2, 2), "wfc": (10, 96), "bfc": (10,),
          "wm": (96, 5), "wb": (16, 4)}
# MACs per sample, by hand:
PER_SAMPLE = {
    "a": 6 * 4 * 4 * (3 * 3 * 3),  # stride 2: 6x4x4 outputs, each 3x3x3 = 27 MACs -> 2592
    "d": 6 * 4 * 4 * (1 * 3 * 3),  # depthwise: one input channel per output -> 864
    "t": (6 * 4 * 4) * (2 * 2 * 2),  # ConvTranspose: every input value meets 2 out-ch x 2x2 weights -> 768
    "o1": 10 * 96,  # Gemm with transA: K is A's first axis (96) -> 960
    "o2": 5 * 96,  # MatMul (N, 96) x (96, 5) -> 480
    "o3": 6 * 4 * 16,  # batched MatMul (N, 6, 16) x (16, 4) -> 384
}
OP_TYPE = {"a": "Conv", "d": "Conv", "t": "ConvTranspose", "o1": "Gemm", "o2": "MatMul", "o3": "MatMul"}


def mac_model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(_MODEL)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend(nh.from_array(rng.normal(0, 0.3, s).astype(np.float32), k) for k, s in SHAPES.items())
    m.graph.initializer.append(nh.from_array(np.array([0, 6, 16], np.int64), "shape"))
    onnx.checker.check_model(m)
    return m


def feeds(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("batch", [1, 3])
def test_float_model_macs_match_the_hand_count(batch):
    c = count_macs(mac_model(), feeds(batch))
    assert c.int8_macs == 0 and c.int8_share == 0.0 and not c.int8_ops
    assert c.float_macs == batch * sum(PER_SAMPLE.values()) == batch * 6048
    assert dict(c.float_ops) == {"Conv": 2, "ConvTranspose": 1, "Gemm": 1, "MatMul": 2}
    assert c.float_nodes == [f"{n} ({OP_TYPE[n]}, {batch * macs} MACs)" for n, macs in PER_SAMPLE.items()]


def test_qdq_model_splits_int8_and_float_macs():
    # x86 static PTQ: Conv, Gemm and MatMul get int8 kernels in onnxruntime. onnxruntime has no int8
    # ConvTranspose, but this one (kernel = stride = 2, no padding) is rewritten exactly as a 1x1 Conv +
    # DepthToSpace (slimq.graph.passes.deconv), so it runs as a third QLinearConv with the same MACs.
    m = mac_model()
    data = np.random.default_rng(2).standard_normal((40, 3, 8, 8)).astype(np.float32)
    q = quantize_static(m, data, StaticConfig(show_progress=False)).model
    c = count_macs(optimized_graph(q, "extended"), feeds(2))
    assert (c.int8_macs, c.float_macs) == (2 * sum(PER_SAMPLE.values()), 0)
    assert c.int8_share == 1.0
    assert dict(c.int8_ops) == {"QLinearConv": 3, "QGemm": 1, "MatMulIntegerToFloat": 2}
    assert not c.float_ops and not c.float_nodes


def test_padded_convtranspose_stays_float():
    # with padding the rewrite does not apply: onnxruntime runs the ConvTranspose in float
    m = mac_model()
    t = next(n for n in m.graph.node if n.op_type == "ConvTranspose")
    t.attribute.extend([onnx.helper.make_attribute("pads", [0, 0, 1, 1]), onnx.helper.make_attribute("output_padding", [1, 1])])
    data = np.random.default_rng(2).standard_normal((40, 3, 8, 8)).astype(np.float32)
    q = quantize_static(m, data, StaticConfig(show_progress=False)).model
    c = count_macs(optimized_graph(q, "extended"), feeds(2))
    assert dict(c.float_ops) == {"ConvTranspose": 1}
    assert dict(c.int8_ops) == {"QLinearConv": 2, "QGemm": 1, "MatMulIntegerToFloat": 2}
