"""Cross-layer equalization and high-bias absorption: FP32 exactness, balanced ranges, op rewrites."""

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.graph.passes.cle import absorb_high_bias, equalization_scales, equalize, find_pairs

RNG = np.random.default_rng(0)

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 10, 10] x) => (float[N, 4, 10, 10] y) {
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], group = 8> (r1, w2, b2)
    r2 = Clip (c2, lo, hi)
    c3 = Conv <kernel_shape = [1, 1]> (r2, w3, b3)
    y = Conv <kernel_shape = [1, 1]> (c3, w4, b4)
}
"""


def chain_model(hi: float = 6.0) -> onnx.ModelProto:
    """Conv -> ReLU -> depthwise Conv -> Clip(0, hi) -> 1x1 Conv -> 1x1 Conv, channel ranges 100x apart."""
    spread = np.geomspace(0.05, 5.0, 8)
    arrays = {"w1": RNG.standard_normal((8, 3, 3, 3)) * 0.3 * spread[:, None, None, None],
              "b1": RNG.normal(0.2, 0.1, 8) * spread,
              "w2": RNG.standard_normal((8, 1, 3, 3)) / spread[:, None, None, None], "b2": RNG.normal(0, 0.1, 8),
              "lo": np.float32(0.0), "hi": np.float32(hi),
              "w3": RNG.standard_normal((4, 8, 1, 1)) * 0.3, "b3": RNG.normal(0, 0.1, 4),
              "w4": RNG.standard_normal((4, 4, 1, 1)) * np.array([10, 1, 0.1, 1])[None, :, None, None],
              "b4": RNG.normal(0, 0.1, 4)}
    m = onnx.parser.parse_model(CHAIN)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(m)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def apply(model: onnx.ModelProto, fn, *args, **kw) -> tuple[onnx.ModelProto, int]:
    irm = ir.from_proto(model)
    n = fn(irm, *args, **kw)
    return ir.to_proto(irm), n


def conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]


def imbalance(w: np.ndarray) -> float:
    r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    return float(r.max() / r.min())


def per_tensor_output_sqnr(model: onnx.ModelProto, x: np.ndarray, bits_qtype=qmath.INT8.narrow()) -> float:
    """SQNR of the output when every Conv weight is fake-quantized per tensor (nothing else quantized)."""
    q = onnx.ModelProto()
    q.CopyFrom(model)
    conv_w = {n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    for t in q.graph.initializer:
        if t.name in conv_w:
            qt = qmath.quantize_weight(nh.to_array(t), bits_qtype, None)
            t.CopyFrom(nh.from_array(qmath.dequantize(qt.data, qt.scale, qt.zero_point), t.name))
    return qmath.sqnr_db(run(model, x), run(q, x))


X = RNG.standard_normal((4, 3, 10, 10)).astype(np.float32)


def test_scales_equalize_ranges():
    r1, r2 = np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0])
    s = equalization_scales(r1, r2)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])
    np.testing.assert_allclose((r1 / s)[:2], (r2 * s)[:2])


def test_find_pairs_kinds():
    pairs = find_pairs(ir.from_proto(chain_model()))
    assert [(p.first.outputs[0].name, p.second.outputs[0].name, p.bounded) for p in pairs] == [
        ("c1", "c2", False), ("c2", "c3", True), ("c3", "y", False)]


@pytest.mark.parametrize("mode,pairs,ops", [
    ("skip", 2, {"Conv": 4, "Relu": 1, "Clip": 1}),
    ("exact", 3, {"Conv": 4, "Relu": 2, "Min": 1}),
])
def test_equalize_is_exact_in_fp32(mode, pairs, ops):
    m = chain_model()
    out, n = apply(m, equalize, relu6=mode)
    assert n == pairs
    assert testing.count_ops(out) == ops
    assert [o.name for o in out.graph.output] == ["y"]
    ref = run(m, X)
    assert np.abs(ref).max() > 1.0 and (run(m, X * 3) > 0).any()
    np.testing.assert_allclose(run(out, X), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    big = X * 5  # the clip bound is active for many values: the per-channel Min keeps it exact
    np.testing.assert_allclose(run(out, big), run(m, big), rtol=1e-5, atol=1e-5 * np.abs(run(m, big)).max())


def test_equalize_balances_channel_ranges_and_helps_per_tensor_weights():
    m = chain_model()
    out, _ = apply(m, equalize, relu6="exact")
    before, after = conv_weights(m), conv_weights(out)
    for i in (0, 1):  # first conv and the depthwise conv: 100x spread before
        assert imbalance(before[i]) > 50
        assert imbalance(after[i]) < imbalance(before[i]) / 10
    assert per_tensor_output_sqnr(out, X) > per_tensor_output_sqnr(m, X) + 6.0  # >= 1 bit better


def test_relu_mode_drops_the_upper_bound():
    m = chain_model(hi=1e6)  # a bound never reached: replacing it by ReLU changes nothing here
    out, n = apply(m, equalize, relu6="relu")
    assert n == 3 and testing.count_ops(out) == {"Conv": 4, "Relu": 2}
    np.testing.assert_allclose(run(out, X), run(m, X), rtol=1e-5, atol=1e-5 * np.abs(run(m, X)).max())


def test_shared_intermediate_is_not_equalized():
    m = chain_model()
    m.graph.output.append(onnx.helper.make_tensor_value_info("r1", onnx.TensorProto.FLOAT, None))
    pairs = find_pairs(ir.from_proto(m))
    assert ("c1", "c2") not in [(p.first.outputs[0].name, p.second.outputs[0].name) for p in pairs]
    out, n = apply(m, equalize)
    assert n == 1  # only c3 -> y
    for a, b in zip(run_all(out, X), run_all(m, X)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="relu6 mode"):
        equalize(ir.from_proto(chain_model()), relu6="relu8")


def test_absorb_high_bias_exact_on_data_and_shrinks_range():
    m = chain_model()
    # min of the pre-activation over the data; c3 -> y has no activation: exact for any shift
    c3 = run_all(_exposed(m, ["c3"]), X)[0]
    out, n = apply(m, absorb_high_bias, {"c3": c3.min(axis=(0, 2, 3)), "c1": np.full(8, 0.5)})
    assert n == 1  # c1 -> c2: depthwise conv is padded, not absorbed
    ref = run(m, X)
    np.testing.assert_allclose(run(out, X), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    shifted = run_all(_exposed(out, ["c3"]), X)[0]
    assert shifted.min(axis=(0, 2, 3)) == pytest.approx(np.zeros(4), abs=1e-5)


def _exposed(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names)
    return m
