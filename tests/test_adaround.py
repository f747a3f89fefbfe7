"""AdaRound: learned rounding lowers layer output error against round-to-nearest, in the QDQ integer format."""

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnxruntime as ort
import pytest

from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.static.adaround import AdaRoundConfig, adaround, find_layers

RNG = np.random.default_rng(0)

NET = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 6] y) {
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 0, 1, 0], kernel_shape = [3, 3], strides = [2, 2], group = 8> (r1, w2, b2)
    p = GlobalAveragePool (c2)
    f = Flatten (p)
    h = Gemm <transB = 1> (f, w3, b3)
    y = MatMul (h, w4)
}
"""


def net() -> onnx.ModelProto:
    arrays = {"w1": RNG.standard_normal((8, 4, 3, 3)) * 0.3, "b1": RNG.normal(0, 0.1, 8),
              "w2": RNG.standard_normal((8, 1, 3, 3)) * 0.5, "b2": RNG.normal(0, 0.1, 8),
              "w3": RNG.standard_normal((12, 8)) * 0.4, "b3": RNG.normal(0, 0.1, 12),
              "w4": RNG.standard_normal((12, 6)) * 0.4}
    m = onnx.parser.parse_model(NET)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(m)
    return m


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in weights:
            t.CopyFrom(nh.from_array(weights[t.name].astype(np.float32), t.name))
    return m


def run(model: onnx.ModelProto, x: np.ndarray, output: str = "y") -> np.ndarray:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend([onnx.ValueInfoProto(name=output)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


MIX = RNG.standard_normal((4, 4)) * 0.5 + np.eye(4)


def images(n: int) -> np.ndarray:
    """Correlated inputs (mixed channels, smooth in space), like real feature maps: with white noise
    inputs round-to-nearest is already optimal and there is nothing to learn."""
    z = RNG.standard_normal((n, 4, 10, 10))
    z = (z[:, :, :-2, :-2] + z[:, :, 1:-1, 1:-1] + z[:, :, 2:, 2:] + z[:, :, 2:, :-2]) / 2
    return np.einsum("ij,njhw->nihw", MIX, z).astype(np.float32)


CALIB, HELD_OUT = images(64), images(64)
CFG = dict(time_budget_s=60.0, iters=200, max_rows=1024, batch_rows=256, lr=3e-2)


@pytest.fixture(scope="module")
def model():
    return net()


@pytest.fixture(scope="module")
def w4(model):
    return adaround(model, CALIB, AdaRoundConfig(qtype=qmath.INT4.narrow(), sequential=False, **CFG))


def test_layers_found_with_fused_activation(model):
    layers = {lay.node: lay for lay in find_layers(model)}
    assert sorted(layers) == ["c1", "c2", "h", "y"]
    assert layers["c1"].clamp == (0.0, float("inf")) and layers["c2"].clamp is None
    assert (layers["h"].axis, layers["y"].axis) == (0, 1)  # Gemm transB=1: rows; MatMul: columns


def test_integer_format_matches_the_scales(model, w4):
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    for r in w4.values():
        w = inits[r.tensor]
        assert r.q.shape == w.shape and r.q.dtype == np.int8
        assert r.q.min() >= -7 and r.q.max() <= 7
        rtn = qmath.quantize_weight(w, qmath.INT4.narrow(), r.axis)
        np.testing.assert_array_equal(r.scale, rtn.scale)
        assert np.abs(r.q.astype(int) - rtn.data.astype(int)).max() <= 1  # only the rounding direction changes
        assert (r.q != rtn.data).mean() > 0.01


def test_adaround_lowers_layer_mse_at_4_bits(w4):
    for r in w4.values():
        assert r.adaround and r.mse < 0.85 * r.mse_rtn, (r.node, r.mse, r.mse_rtn)


def test_sequential_rounding_lowers_model_output_error(model):
    """Every layer at 4 bits, later layers fitted to the rounded earlier ones: held-out output closer to FP32."""
    cfg = AdaRoundConfig(qtype=qmath.INT4.narrow(), **{**CFG, "iters": 100})
    ada = adaround(model, CALIB, cfg)
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    rtn = {}
    for r in ada.values():
        qt = qmath.quantize_weight(inits[r.tensor], qmath.INT4.narrow(), r.axis)
        rtn[r.tensor] = qmath.dequantize(qt.data, qt.scale, qt.zero_point, r.axis)
    ref = run(model, HELD_OUT)
    err = lambda w: float(((run(with_weights(model, w), HELD_OUT) - ref) ** 2).mean())  # noqa: E731
    assert err({r.tensor: r.dequantized() for r in ada.values()}) < 0.7 * err(rtn)


def test_first_layer_generalises_to_held_out_data(model, w4):
    """Only c1 quantized: its output error on unseen inputs is lower with AdaRound than with RTN."""
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    ada = with_weights(model, {"w1": w4["c1"].dequantized()})
    rtn_q = qmath.quantize_weight(inits["w1"], qmath.INT4.narrow(), 0)
    rtn = with_weights(model, {"w1": qmath.dequantize(rtn_q.data, rtn_q.scale, rtn_q.zero_point, 0)})
    ref = np.maximum(run(model, HELD_OUT, "c1"), 0)
    err = lambda m: float(((np.maximum(run(m, HELD_OUT, "c1"), 0) - ref) ** 2).mean())  # noqa: E731
    assert err(ada) < 0.85 * err(rtn)


def test_8_bit_per_tensor_never_worse_than_rtn(model):
    out = adaround(model, CALIB[:16], AdaRoundConfig(per_channel=False, time_budget_s=1.0, iters=100,
                                                     max_rows=512, batch_rows=128), nodes=["h", "y"])
    assert sorted(out) == ["h", "y"]
    for r in out.values():
        assert r.axis is None and r.scale.shape == ()
        assert r.mse <= r.mse_rtn and np.abs(r.q).max() <= 127


def test_errors(model):
    with pytest.raises(ConfigError, match="no Conv/Gemm/MatMul"):
        adaround(model, CALIB, AdaRoundConfig(**CFG), nodes=["p"])
    with pytest.raises(ConfigError, match="time_budget_s"):
        AdaRoundConfig(time_budget_s=0)
