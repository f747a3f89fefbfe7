"""GPTQ: same integer layout as RTN, lower layer output error on correlated inputs, exact special cases."""

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq.core.errors import ConfigError
from slimq.dynamic.gptq import GPTQConfig, PrecomputedWeights, gptq_quantize, gptq_weights
from slimq.dynamic.graph import INT4_W, INT8_W, WeightCache, WeightFormat, apply_decisions, find_candidates
from slimq.dynamic.method import DynamicConfig, weight_only_format
from slimq.io.model import upgrade_opset

RNG = np.random.default_rng(0)
MIX = RNG.standard_normal((32, 32)) * np.geomspace(3, 0.05, 32)[:, None]  # correlated, uneven inputs


def inputs(n: int) -> np.ndarray:
    return (RNG.standard_normal((n, 32)) @ MIX).astype(np.float32)


X, HELD_OUT = inputs(512), inputs(512)
W = (RNG.standard_normal((32, 64)) * 0.2).astype(np.float32)  # MatMul layout (K, N)
H = X.astype(np.float64).T @ X / len(X)

FORMATS = {"int4 group:16": WeightFormat(INT4_W, 0, 16), "int4 channel": WeightFormat(INT4_W, 1),
           "int8 channel": WeightFormat(INT8_W, 1), "int4 group:8": WeightFormat(INT4_W, 0, 8)}


def rtn(w: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    return WeightCache().get("w", w, fmt)


def dequant(q: np.ndarray, s: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    if fmt.block:
        return q.astype(np.float64) * np.repeat(s, fmt.block, axis=fmt.axis)[: q.shape[0]]
    return q.astype(np.float64) * s.reshape(1, -1)


def out_err(w_hat: np.ndarray, x: np.ndarray = HELD_OUT) -> float:
    return float(((x @ W.astype(np.float64) - x @ w_hat) ** 2).mean())


@pytest.mark.parametrize("label", list(FORMATS))
def test_layout_equals_rtn_and_error_is_lower(label):
    fmt = FORMATS[label]
    q, s = gptq_quantize(W, H, fmt, channel_axis=1)
    q0, s0 = rtn(W, fmt)
    assert q.shape == q0.shape and q.dtype == q0.dtype and s.shape == s0.shape
    np.testing.assert_array_equal(s, s0)
    assert q.min() >= fmt.qtype.qmin and q.max() <= fmt.qtype.qmax
    assert (q != q0).mean() > 0.05
    assert out_err(dequant(q, s, fmt)) < 0.8 * out_err(dequant(q0, s0, fmt)), label


def test_white_inputs_give_round_to_nearest():
    """With H = I no error is worth moving to another column: GPTQ is exactly RTN."""
    for fmt in FORMATS.values():
        q, _ = gptq_quantize(W, np.eye(32), fmt, channel_axis=1, config=GPTQConfig(act_order=False))
        np.testing.assert_array_equal(q, rtn(W, fmt)[0])


def test_lazy_batches_are_exact_and_channel_axis_0_is_the_transpose():
    fmt = FORMATS["int4 group:16"]
    a = gptq_quantize(W, H, fmt, 1, GPTQConfig(block_cols=1))[0]
    b = gptq_quantize(W, H, fmt, 1, GPTQConfig(block_cols=128))[0]
    np.testing.assert_array_equal(a, b)
    t, st = gptq_quantize(np.ascontiguousarray(W.T), H, WeightFormat(INT4_W, 1, 16), channel_axis=0)
    np.testing.assert_array_equal(t, a.T)
    np.testing.assert_array_equal(st, rtn(W, fmt)[1].T)


def test_dead_inputs_and_bad_shapes():
    h = H.copy()
    h[3, :] = h[:, 3] = 0.0  # an input that is always zero
    q, _ = gptq_quantize(W, h, FORMATS["int8 channel"], 1)
    assert not q[3].any()
    with pytest.raises(ConfigError, match="K x K Hessian"):
        gptq_quantize(W, H[:8, :8], FORMATS["int8 channel"], 1)
    with pytest.raises(ConfigError, match="damp"):
        GPTQConfig(damp=0.0)


NET = """
<ir_version: 8, opset_import: ["" : 21]>
g (float[N, 32] x) => (float[N, 16] y) {
    h = MatMul (x, w1)
    r = Relu (h)
    y = Gemm <transB = 1> (r, w2, b2)
}
"""


def test_model_weights_end_to_end_in_onnxruntime():
    arrays = {"w1": W, "w2": RNG.standard_normal((16, 64)) * 0.2, "b2": RNG.normal(0, 0.1, 16)}
    m = onnx.parser.parse_model(NET)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    m = upgrade_opset(m, 21)
    cfg = DynamicConfig(weight_bits=4, granularity="group:32")
    cands, _ = find_candidates(ir.from_proto(m).graph)
    fmts = {c.weight: weight_only_format(c, cfg)[0] for c in cands}
    assert {c.weight: c.channel_axis for c in cands} == {"w1": 1, "w2": 0}
    weights = gptq_weights(m, X, fmts, GPTQConfig(batch_size=64))
    assert sorted(weights) == ["w1", "w2"]
    from slimq.dynamic.graph import Choice, Decision

    decisions = [Decision(c, Choice.WEIGHT_ONLY, fmts[c.weight], "") for c in cands]
    run = lambda model: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": HELD_OUT})[0]
    ref = run(m)
    err_rtn = float(((run(apply_decisions(m, decisions, WeightCache())) - ref) ** 2).mean())
    err_gptq = float(((run(apply_decisions(m, decisions, PrecomputedWeights(weights, fmts))) - ref) ** 2).mean())
    assert err_gptq < 0.8 * err_rtn
