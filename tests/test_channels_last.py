"""The nearest-Resize-as-Expand rewrite: exact where it fires, left alone (with a reason) where it is not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from slimq import testing
from slimq.core.config import StaticConfig
from slimq.graph.passes.channels_last import NearestRepeatPass, is_repeat, nearest_repeat
from slimq.runtime.session import Predictor, optimized_graph
from slimq.static.method import quantize_static


def _model(coord: str, nearest: str, scales: tuple[float, ...]) -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4, 6, 5] x) => (float[N, 4, ?, ?] y) {{
        a = Conv <kernel_shape = [1, 1]> (x, w1)
        r = Resize <mode = "nearest", coordinate_transformation_mode = "{coord}", nearest_mode = "{nearest}"> (a, , s)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2)
    }}"""
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
        onnx.numpy_helper.from_array(np.array(scales, np.float32), "s")])
    return m


def test_is_repeat_follows_the_onnx_coordinate_formulas():
    assert is_repeat("asymmetric", "floor", 2) and is_repeat("asymmetric", "floor", 3)
    assert is_repeat("half_pixel", "round_prefer_floor", 2) and is_repeat("pytorch_half_pixel", "round_prefer_ceil", 2)
    assert is_repeat("tf_half_pixel_for_nn", "floor", 4)
    assert not is_repeat("asymmetric", "ceil", 2)  # output pixel 1 reads input pixel 1
    assert not is_repeat("align_corners", "floor", 2) and not is_repeat("tf_crop_and_resize", "floor", 2)


@pytest.mark.parametrize("coord,nearest,scales", [("asymmetric", "floor", (1, 1, 2, 2)),
                                                  ("half_pixel", "round_prefer_floor", (1, 1, 3, 2))])
def test_rewrite_is_exact_in_float_and_in_the_int8_model(coord, nearest, scales):
    m = _model(coord, nearest, scales)
    x = np.random.default_rng(1).standard_normal((3, 4, 6, 5)).astype(np.float32)
    irm = ir.from_proto(m)
    assert nearest_repeat(irm) == 1
    rewritten = ir.to_proto(irm)
    assert "Resize" not in testing.count_ops(rewritten) and testing.count_ops(rewritten)["Expand"] == 1
    np.testing.assert_array_equal(Predictor(rewritten).run({"x": x})[0], Predictor(m).run({"x": x})[0])
    q = quantize_static(m, x, StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)).model
    irq = ir.from_proto(q)
    assert nearest_repeat(irq) == 1
    q2 = ir.to_proto(irq)
    np.testing.assert_array_equal(Predictor(q2).run({"x": x})[0], Predictor(q).run({"x": x})[0])
    ops = testing.count_ops(optimized_graph(q2, "extended"))  # the shape is read from the uint8 tensor:
    assert ops.get("DequantizeLinear") == 1 and ops.get("QLinearConv") == 2, ops  # only the output is dequantized


@pytest.mark.parametrize("coord,nearest,scales,why", [
    ("align_corners", "floor", (1, 1, 2, 2), "does not map output pixel i"),
    ("asymmetric", "floor", (1, 1, 1.5, 2), "not whole spatial factors"),
    ("asymmetric", "floor", (1, 2, 2, 2), "not whole spatial factors")])
def test_other_resizes_are_left_alone_with_a_reason(coord, nearest, scales, why, caplog):
    irm = ir.from_proto(_model(coord, nearest, scales))
    with caplog.at_level("DEBUG", logger="slimq"):
        assert not NearestRepeatPass()(irm).modified
    assert why in caplog.text and "Resize" in testing.count_ops(ir.to_proto(irm))


def _d2s_model(mode: str, k: int = 2) -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 5, 6] x) => (float[N, 2, ?, ?] y) {{
        a = Conv <kernel_shape = [1, 1]> (x, w1)
        d = DepthToSpace <blocksize = {k}, mode = "{mode}"> (a)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (d, w2)
    }}"""
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.normal(0, 1, (2 * k * k, 3, 1, 1)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (2, 2, 3, 3)).astype(np.float32), "w2")])
    return m


@pytest.mark.parametrize("k", [2, 3])
def test_dcr_depth_to_space_rewrite_is_exact(k):
    from slimq.graph.passes.channels_last import depth_to_space_nhwc

    m = _d2s_model("DCR", k)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 6)).astype(np.float32)
    irm = ir.from_proto(m)
    assert depth_to_space_nhwc(irm) == 1
    rewritten = ir.to_proto(irm)
    assert "DepthToSpace" not in testing.count_ops(rewritten)
    np.testing.assert_array_equal(Predictor(rewritten).run({"x": x})[0], Predictor(m).run({"x": x})[0])


def test_crd_depth_to_space_is_left_alone(caplog):
    from slimq.graph.passes.channels_last import DepthToSpaceNHWCPass

    irm = ir.from_proto(_d2s_model("CRD"))
    with caplog.at_level("DEBUG", logger="slimq"):
        assert not DepthToSpaceNHWCPass()(irm).modified
    assert "mode CRD" in caplog.text
