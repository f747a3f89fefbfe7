"""slimq.runtime.backends: backend names and errors, the OpenVINO session, and benchmarks across backends."""

from __future__ import annotations

import numpy as np
import pytest

from slimq.bench.data import LabeledEvaluator
from slimq.bench.results import TimingConfig
from slimq.bench.runner import benchmark
from slimq.bench.tables import result_markdown
from slimq.cli.main import main
from slimq.core.errors import ConfigError
from slimq.runtime import backends
from slimq.runtime.backends import OPENVINO_INSTALL, check_backend, parse_backends
from slimq.runtime.session import Predictor

FAST = TimingConfig(warmup=1, min_iters=3, min_time=0.01, rounds=2)


@pytest.fixture(scope="module")
def pair(conv_int8_files):
    return conv_int8_files


def test_unknown_backend_names_the_closest_one():
    with pytest.raises(ConfigError, match='Unknown backend "openvno". Did you mean "openvino"'):
        parse_backends("ort,openvno")
    with pytest.raises(ConfigError, match="at least one backend"):
        parse_backends(" , ")
    assert parse_backends("ort, ort") == ("ort",)


def test_missing_openvino_says_how_to_install(monkeypatch, pair, capsys):
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'slimq\[openvino\]'"):
        check_backend("openvino")
    with pytest.raises(ConfigError, match="openvino"):
        Predictor(pair[0], backend="openvino")
    fp32, int8 = pair
    assert main(["bench", str(fp32), str(int8), "--backend", "ort,openvino", "--rounds", "1"]) == 2
    assert OPENVINO_INSTALL in capsys.readouterr().err


def test_cli_rejects_an_unknown_backend(pair, capsys):
    fp32, int8 = pair
    assert main(["bench", str(fp32), str(int8), "--backend", "onnxrt", "--rounds", "1"]) == 2
    assert "Unknown backend" in capsys.readouterr().err


# ---------------------------------------------------------------- with OpenVINO installed


def _gemm_input_step_bound(int8_path) -> np.ndarray:
    """Per logit: what one quantization step on every element of the final Gemm's int8 input moves it by,
    s_in * sum_k |W_jk| (W dequantized)."""
    import onnx
    import onnx.numpy_helper as nh

    m = onnx.load(str(int8_path))
    inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    s_in = float(inits[dq[gemm.input[0]].input[1]])
    wq, ws, wz = (inits[t] for t in dq[gemm.input[1]].input)
    w = (wq.astype(np.float64) - wz[:, None]) * ws[:, None]
    return s_in * np.abs(w).sum(axis=1)


def test_openvino_matches_onnxruntime_and_runs_int8(pair):
    pytest.importorskip("openvino")
    fp32, int8 = pair
    x = {"input": np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    for path, tol in ((fp32, 1e-4), (int8, None)):
        ref = Predictor(path).run(x)[0]
        out = Predictor(path, backend="openvino").run(x)[0]
        assert out.shape == ref.shape and out.dtype == np.float32
        if tol:
            np.testing.assert_allclose(out, ref, atol=tol, rtol=1e-4)
        else:  # int8 kernels may round a requantization differently: at most one step of the
            # classifier's int8 input apart (intermediate off-by-ones are averaged by the global pool)
            bound = _gemm_input_step_bound(int8)
            assert (np.abs(out - ref) <= bound[None] + 1e-5).all(), (np.abs(out - ref) / bound).max()
    assert backends.openvino_mac_count(int8, x).int8_share == 1.0
    float_count = backends.openvino_mac_count(fp32, x)
    assert float_count.int8_share == 0.0 and float_count.float_macs > 0


def test_openvino_outputs_are_not_overwritten_by_the_next_run(pair):
    pytest.importorskip("openvino")
    pred = Predictor(pair[1], backend="openvino")
    rng = np.random.default_rng(0)
    a_in, b_in = ({"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(2))
    first = pred.run(a_in)[0]
    kept = first.copy()
    pred.run(b_in)
    np.testing.assert_array_equal(first, kept)


def test_benchmark_across_backends_labels_rows_and_ratios(pair):
    pytest.importorskip("openvino")
    fp32, int8 = pair
    rng = np.random.default_rng(2)
    ev = LabeledEvaluator({"input": rng.standard_normal((12, 3, 16, 16)).astype(np.float32)}, rng.integers(0, 10, 12))
    r = benchmark([fp32, int8], evaluator=ev, threads=(1,), timing=FAST, names=["FP32", "INT8"],
                  backends=("ort", "openvino"))
    labels = [s.model for s in r.speed]
    assert labels == ["FP32 (ort)", "INT8 (ort)", "FP32 (openvino)", "INT8 (openvino)"]
    ref_ort, ref_ov = r.speed_of("FP32", 1, "ort"), r.speed_of("FP32", 1, "openvino")
    q_ov = r.speed_of("INT8", 1, "openvino")
    assert q_ov.ratio == pytest.approx(q_ov.samples_per_s / ref_ort.samples_per_s)
    assert q_ov.backend_ratio == pytest.approx(q_ov.samples_per_s / ref_ov.samples_per_s)
    assert r.speed_of("FP32", 1) is ref_ort and r.machine["openvino"]
    assert list(r.accuracy) == labels
    assert r.accuracy["FP32 (openvino)"] == r.accuracy["FP32 (ort)"]  # same float model: same predictions
    md = result_markdown(r)
    assert "| INT8 | openvino | 1 |" in md and "vs FP32 same backend" in md and "openvino " in md


def test_openvino_compile_failure_is_a_backend_error():
    pytest.importorskip("openvino")
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(backends.BackendError, match="OpenVINO cannot compile the model: .*NoSuchOp"):
        backends.OpenVINOSession(model)


def test_a_model_one_backend_cannot_load_is_reported_not_fatal(pair, monkeypatch):
    pytest.importorskip("openvino")
    fp32, int8 = pair
    real = backends.OpenVINOSession.__init__

    def refuse_int8(self, model, *args, **kwargs):
        if str(model) == str(int8):
            raise backends.BackendError("OpenVINO cannot compile it: test")
        real(self, model, *args, **kwargs)

    monkeypatch.setattr(backends.OpenVINOSession, "__init__", refuse_int8)
    r = benchmark([fp32, int8], threads=(1,), timing=FAST, names=["FP32", "INT8"], backends=("ort", "openvino"))
    assert r.failed == {"INT8 (openvino)": "OpenVINO cannot compile it: test"}
    assert [s.model for s in r.speed] == ["FP32 (ort)", "INT8 (ort)", "FP32 (openvino)"]
    assert "- not run: INT8 (openvino): OpenVINO cannot compile it: test" in result_markdown(r)


def test_openvino_alone_is_the_reference_backend(pair):
    pytest.importorskip("openvino")
    fp32, int8 = pair
    r = benchmark([fp32, int8], threads=(1,), timing=FAST, names=["FP32", "INT8"], backends=("openvino",))
    assert [(s.model, s.backend) for s in r.speed] == [("FP32", "openvino"), ("INT8", "openvino")]
    assert r.speed_of("INT8", 1).ratio == pytest.approx(r.speed_of("INT8", 1).backend_ratio)
    assert "backends: openvino;" in result_markdown(r)
