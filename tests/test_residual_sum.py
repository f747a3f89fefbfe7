"""The residual Add before LayerNormalization as Sum (slimq.graph.passes.residual_sum): exact, blocks
onnxruntime's SkipLayerNormalization fusion, and is kept by the speed guard only when it measures faster."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from slimq import testing
from slimq.core.config import StaticConfig
from slimq.graph.passes.residual_sum import residual_sum
from slimq.runtime.session import Predictor, optimized_graph
from slimq.static.method import quantize_static

# x + x @ w -> LayerNorm (the residual site); the bias Add (constant operand) and `twice` (read by two
# nodes) are not residual sites and must stay Adds.
_BLOCK = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8, 16] x) => (float[1, 8, 16] y, float[1, 8, 16] z) {
    m = MatMul (x, w)
    h = Add (m, bias)
    r = Add (x, h)
    y = LayerNormalization <axis = -1> (r, gamma, beta)
    twice = Add (y, x)
    z = Mul (twice, twice)
}"""


def _model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(_BLOCK)
    for n in m.graph.node:
        n.name = f"n_{n.output[0]}"
    rng = np.random.default_rng(0)
    for name, arr in {"w": rng.normal(0, 0.3, (16, 16)), "bias": rng.normal(0, 0.1, (16,)),
                      "gamma": rng.uniform(0.5, 1.5, (16,)), "beta": rng.normal(0, 0.1, (16,))}.items():
        m.graph.initializer.append(onnx.numpy_helper.from_array(arr.astype(np.float32), name))
    return m


def _rewritten(m: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    irm = ir.from_proto(m)
    n = residual_sum(irm)
    return ir.to_proto(irm), n


def test_only_the_residual_add_becomes_sum_and_outputs_are_unchanged():
    m = _model()
    out, n = _rewritten(m)
    assert n == 1
    ops = {node.output[0]: node.op_type for node in out.graph.node}
    assert ops["r"] == "Sum" and ops["h"] == "Add" and ops["twice"] == "Add"
    x = {"x": np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)}
    for a, b in zip(Predictor(m).run(x), Predictor(out).run(x)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    again, n2 = _rewritten(out)
    assert n2 == 0  # nothing left to rewrite


def test_sum_blocks_the_skip_layer_norm_fusion_in_onnxruntime():
    m = _model()
    before = testing.count_ops(optimized_graph(m, "extended"))
    if "SkipLayerNormalization" not in before:
        pytest.skip(f"this onnxruntime does not fuse Add + LayerNormalization here: {before}")
    after = testing.count_ops(optimized_graph(_rewritten(m)[0], "extended"))
    assert "SkipLayerNormalization" not in after and after.get("LayerNormalization") == 1


def test_an_add_feeding_a_graph_output_or_a_second_reader_is_left_alone():
    m = _model()
    m.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [1, 8, 16]))
    _, n = _rewritten(m)
    assert n == 0


def test_guard_keeps_the_sum_rewrite_only_when_it_measures_faster(monkeypatch):
    import slimq.static.speed_step as step
    from slimq.graph.passes import preprocess
    from slimq.io.samples import load_samples
    from slimq.io.spec import model_inputs
    from slimq.static.speed_step import Built, guard_speed
    from slimq.static.steps import run_calibration, split_samples

    monkeypatch.setattr(step, "MIN_MACS", 0)  # the test model is below the toy-model floor
    m = _model()
    data = [{"x": d} for d in np.random.default_rng(2).standard_normal((16, 1, 8, 16)).astype(np.float32)]
    cfg = StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)
    res = quantize_static(m, data, cfg)
    fp32 = preprocess(m)
    samples = load_samples(data, model_inputs(fp32))
    calib = run_calibration(fp32, ir.from_proto(fp32), res.plan, samples, split_samples(len(samples), cfg).calib, cfg)
    first = Built(res.model, res.plan, 0)

    def has_sum(x: onnx.ModelProto) -> bool:
        return any(n.op_type == "Sum" for n in x.graph.node)

    for sum_ms, expect in ((1.0, True), (3.0, False)):
        def timer(models, sum_ms=sum_ms):  # FP32 4 ms, INT8 2 ms, the Sum form `sum_ms`, anything floated 5 ms
            return [4.0 if not any(n.op_type == "QuantizeLinear" for n in x.graph.node) else sum_ms if has_sum(x)
                    else 2.0 if x is first.model else 5.0 for x in models]

        out = guard_speed(fp32, first, calib, StaticConfig(show_progress=False), data[0], timer=timer)
        assert out.placement is not None
        kept = any("Sum" in r for r in out.placement.rewrites)
        assert kept is expect and has_sum(out.built.model) is expect
