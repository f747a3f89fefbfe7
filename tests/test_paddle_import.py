"""Paddle in: folder detection, the paddle2onnx repairs and the child-process worker; with Paddle
installed (``pip install 'slimq[paddle]'`` or ``$SLIMQ_PADDLE_PYTHON``), a real conversion checked against
paddle.inference and quantized from the Paddle folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnxruntime as ort
import pytest

from slimq.core.config import StaticConfig
from slimq.core.errors import ConfigError, ConversionError, ModelLoadError
from slimq.io import paddle_import as pi
from slimq.io.source import framework_of, load_source

needs_paddle = pytest.mark.skipif(not pi.paddle_available(), reason="Paddle is not installed: pip install "
                                  "'slimq[paddle]' or set SLIMQ_PADDLE_PYTHON to a python that has it")


def _rank0_concat_model() -> onnx.ModelProto:
    """What paddle2onnx emits for a final Reshape: Concat(axis 0) of a 0-D piece and a 1-D constant."""
    nodes = [oh.make_node("Shape", ["x"], ["s"]),
             oh.make_node("Slice", ["s", "st", "en"], ["s0"]),
             oh.make_node("Squeeze", ["s0", "ax"], ["n"]),  # 0-D
             oh.make_node("Concat", ["n", "tail"], ["shape"], axis=0),
             oh.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [nh.from_array(np.array([0], np.int64), "st"), nh.from_array(np.array([1], np.int64), "en"),
             nh.from_array(np.array([0], np.int64), "ax"), nh.from_array(np.array([12], np.int64), "tail")]
    graph = oh.make_graph(nodes, "p2o", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 12])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def test_rank0_shape_concat_is_repaired():
    m = _rank0_concat_model()
    with pytest.raises(Exception, match="(?i)concat|axis|rank"):
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = pi.repair(m)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, x.reshape(2, 12))


def test_constants_become_initializers():
    w = oh.make_node("Constant", [], ["w"], value=nh.from_array(np.ones((3, 3), np.float32), "w"))
    mm = oh.make_node("MatMul", ["x", "w"], ["y"])
    graph = oh.make_graph([w, mm], "c", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])])
    fixed = pi.repair(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]))
    assert [n.op_type for n in fixed.graph.node] == ["MatMul"] and [i.name for i in fixed.graph.initializer] == ["w"]


def test_paddle_folders_are_recognised(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert not pi.is_paddle_model(model)
    (model / "inference.pdmodel").write_bytes(b"x")
    assert not pi.is_paddle_model(model)  # no parameters beside it
    (model / "inference.pdiparams").write_bytes(b"x")
    assert pi.is_paddle_model(model) and framework_of(str(model)) == "paddle"
    assert pi.paddle_files(model) == (model / "inference.pdmodel", model / "inference.pdiparams")
    (model / "other.json").write_bytes(b"{}")
    (model / "other.pdiparams").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="exactly one Paddle program"):
        pi.paddle_files(model)
    with pytest.raises(ModelLoadError, match="not found"):
        pi.paddle_files(tmp_path / "missing")


def test_missing_paddle_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(pi.PADDLE_ENV, raising=False)
    monkeypatch.setattr(pi.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"slimq\[paddle\]"):
        pi.find_paddle_python()
    monkeypatch.setenv(pi.PADDLE_ENV, str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match="does not exist"):
        pi.find_paddle_python()


def test_a_failing_worker_is_a_conversion_error(tmp_path):
    code = "import sys; print('[ERROR] something paddle2onnx says'); sys.exit(255)"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"{code}\"\n")
    fake.chmod(0o755)
    with pytest.raises(ConversionError, match=r"paddle2onnx failed \(exit code 255\): \[ERROR\] something"):
        pi.run_worker(str(fake), "convert", "a", "b", "c", "13", what="paddle2onnx")


MAKE_MODEL = textwrap.dedent("""
    import sys, paddle
    paddle.enable_static()  # paddle.jit.save's dygraph-to-static step crashed (SIGSEGV) with paddle 2.6.2 here
    paddle.seed(0)
    image = paddle.static.data("image", [None, 1, 12, 12], "float32")
    net = paddle.nn.Sequential(paddle.nn.Conv2D(1, 8, 3, padding=1), paddle.nn.BatchNorm2D(8), paddle.nn.ReLU(),
                               paddle.nn.AdaptiveAvgPool2D(1), paddle.nn.Flatten(), paddle.nn.Linear(8, 4))
    logits = net(image)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(paddle.static.default_startup_program())
    program = paddle.static.default_main_program().clone(for_test=True)
    paddle.static.save_inference_model(sys.argv[1] + "/inference", [image], [logits], exe, program=program)
""")


@needs_paddle
def test_paddle_model_is_converted_checked_and_quantized(tmp_path):
    from slimq.static.method import quantize_static

    folder = tmp_path / "paddle_model"
    folder.mkdir()
    subprocess.run([pi.find_paddle_python(), "-c", MAKE_MODEL, str(folder)], check=True, capture_output=True)
    data = np.random.default_rng(0).standard_normal((24, 1, 12, 12)).astype(np.float32)
    src = load_source(str(folder), data)
    assert src.conversion is not None and src.conversion.framework == "Paddle"
    assert src.conversion.checked_samples == 16 and src.conversion.max_abs_diff < 1e-4
    assert [i.name for i in src.model.graph.input] == ["image"]
    res = quantize_static(str(folder), data, StaticConfig(show_progress=False, speed_guard=False,
                                                          compare_runtimes=False))
    assert res.report.details["conversion"]["framework"] == "Paddle" and res.report.int8_mac_share > 0.9
