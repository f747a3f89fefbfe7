import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core.config import SkipSpec, StaticConfig, target_rules
from slimq.core.errors import ConfigError, NothingToQuantizeError
from slimq.graph.passes import fold_batchnorm, preprocess
from slimq.graph.plan import build_plan
from slimq.static.method import quantize_static

QUIET = dict(show_progress=False)


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def init(model, name):
    return next(nh.to_array(i) for i in model.graph.initializer if i.name == name)


def q_nodes(model):
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear"]


def test_fold_batchnorm_preserves_outputs(conv_model):
    x = testing.random_inputs(conv_model, 1, batch=2)[0]["input"]
    irm = ir.from_proto(conv_model)
    assert fold_batchnorm(irm)
    folded = ir.to_proto(irm)
    assert "BatchNormalization" not in testing.count_ops(folded)
    np.testing.assert_allclose(run(folded, x), run(conv_model, x), rtol=1e-4, atol=1e-4)


def test_plan_ties_passthrough_and_fuses_activations(conv_model):
    fp32 = preprocess(conv_model)
    plan = build_plan(ir.from_proto(fp32).graph, target_rules("x86"))
    graph = ir.from_proto(fp32).graph
    by_type = {n.op_type: n for n in graph}
    maxpool, relu = by_type["MaxPool"], by_type["Relu"]
    # MaxPool output shares the scale of its input: no Q/DQ ping-pong
    assert plan.activations[maxpool.outputs[0].name] == plan.activations[maxpool.inputs[0].name]
    # the Conv output feeding Relu is not quantized separately: Relu is fused
    assert relu.inputs[0].name not in plan.activations
    assert relu.outputs[0].name in plan.activations
    assert set(plan.quantized_nodes.values()) >= {"Conv", "Gemm", "Add", "GlobalAveragePool", "Relu", "Clip"}
    assert plan.float_nodes == ()


def test_static_output_graph_dtypes_and_counts(conv_model, conv_calib):
    r = quantize_static(conv_model, conv_calib, StaticConfig(**QUIET))
    ops = testing.count_ops(r.model)
    # conv_net after BN folding, x86 rules: a Q->DQ pair on every tensor an int8 op reads or writes:
    # input (conv1), r1 (Conv+Relu fused, read by MaxPool), p1 (MaxPool, tied to r1), r2 (Conv+Clip
    # fused), c3 (Conv output read by Add), r3 (Add+Relu fused), g (GlobalAveragePool) and f
    # (Flatten, tied to g). The logits leave the Gemm in float. 6 calibrated roots, 8 pairs.
    quantized = {q.input[0]: q.input[1] for q in q_nodes(r.model)}
    assert ops["QuantizeLinear"] == 8 and len(quantized) == 8
    assert set(quantized) == {"input", "r1", "p1", "r2", "c3", "r3", "g", "f"}
    assert quantized["p1"] == quantized["r1"] and quantized["f"] == quantized["g"]  # tied: one scale
    assert len(set(quantized.values())) == len(r.plan.roots) == 6
    # DQs: the 8 activations, 4 weights (w1 folded with BN, w2, w3, wfc) and their 4 int32 biases
    assert ops["DequantizeLinear"] == 8 + 4 + 4
    for q in q_nodes(r.model):
        assert init(r.model, q.input[2]).dtype == np.uint8  # u8 activations on x86
    conv_w = [n.input[1] for n in r.model.graph.node if n.op_type == "Conv"]
    dq_of = {n.output[0]: n for n in r.model.graph.node if n.op_type == "DequantizeLinear"}
    for w in conv_w:
        stored = init(r.model, dq_of[w].input[0])
        assert stored.dtype == np.int8 and stored.min() >= -127  # weights stored as int8, narrow range
        assert init(r.model, dq_of[w].input[1]).ndim == 1  # per-channel
    bias = [n.input[2] for n in r.model.graph.node if n.op_type == "Conv"]
    assert all(init(r.model, dq_of[b].input[0]).dtype == np.int32 for b in bias)
    assert r.report.int8_mac_share == pytest.approx(1.0)


def test_static_numerically_close_to_fp32(conv_model, conv_calib):
    r = quantize_static(conv_model, conv_calib, StaticConfig(algo="min_max", **QUIET))
    x = conv_calib[:16]
    ref, out = run(conv_model, x), run(r.model, x)
    # the logits come out of a float Gemm fed by an int8 tensor: error within a few output-scale steps
    scale = (ref.max() - ref.min()) / 255
    assert np.abs(ref - out).max() < 8 * scale
    assert r.report.agreement[0].cosine > 0.99


@pytest.mark.parametrize("target,act_dtype", [("tensorrt", np.int8), ("arm", np.int8), ("x86", np.uint8)])
def test_targets_choose_activation_types(conv_model, conv_calib, target, act_dtype):
    r = quantize_static(conv_model, conv_calib, StaticConfig(target=target, **QUIET))
    for q in q_nodes(r.model):
        zp = init(r.model, q.input[2])
        assert zp.dtype == act_dtype
        if target != "x86":
            assert zp == 0  # symmetric


def test_reduce_range_limits_weights(conv_model, conv_calib):
    r = quantize_static(conv_model, conv_calib, StaticConfig(reduce_range=True, **QUIET))
    ints = [nh.to_array(i) for i in r.model.graph.initializer if nh.to_array(i).dtype == np.int8 and nh.to_array(i).ndim > 1]
    assert ints and all(a.min() >= -64 and a.max() <= 63 for a in ints)


def test_matmul_model_quantizes_weights_per_column():
    m = testing.matmul_net()
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    r = quantize_static(m, x, StaticConfig(**QUIET))
    assert r.report.int8_mac_share == pytest.approx(1.0)
    dq_axes = [a.i for n in r.model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert 1 in dq_axes
    np.testing.assert_allclose(run(r.model, x[:8]), run(m, x[:8]), atol=0.25)


def test_unsupported_op_stays_float_and_is_reported():
    m = testing.unsupported_net()
    x = np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(np.float32)
    r = quantize_static(m, x, StaticConfig(**QUIET))
    # onnxruntime's constant-folding pre-pass expands HardSwish into HardSigmoid * x
    ops = testing.count_ops(r.model)
    act = "HardSwish" if "HardSwish" in ops else "HardSigmoid"
    assert ops[act] == 1
    floats = {f.op_type: f.reason for f in r.report.float_ops}
    assert act in floats and "int8" in floats[act]
    assert act in r.report.format()


def test_skip_by_name_op_and_regex(conv_model, conv_calib):
    cfg = StaticConfig(skip=SkipSpec(op_types=("Gemm",)), **QUIET)
    r = quantize_static(conv_model, conv_calib, cfg)
    assert any(f.op_type == "Gemm" and "skipped" in f.reason for f in r.report.float_ops)
    assert r.report.int8_mac_share < 1.0
    with pytest.raises(ConfigError, match="Did you mean"):
        quantize_static(conv_model, conv_calib, StaticConfig(skip=SkipSpec(op_types=("Gemn",)), **QUIET))
    with pytest.raises(ConfigError, match="matches no node"):
        quantize_static(conv_model, conv_calib, StaticConfig(skip=SkipSpec(patterns=("^zzz",)), **QUIET))


def test_old_opset_is_upgraded_before_per_channel_qdq(conv_calib):
    m = testing.conv_net(opset=11)
    r = quantize_static(m, conv_calib, StaticConfig(**QUIET))
    opset = next(i.version for i in r.model.opset_import if i.domain in ("", "ai.onnx"))
    assert opset >= 13
    ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_model_without_quantizable_ops_is_refused():
    text = """<ir_version: 8, opset_import: ["" : 17]> g (float[N, 4] x) => (float[N, 4] y) { y = Softmax(x) }"""
    m = onnx.parser.parse_model(text)
    with pytest.raises(NothingToQuantizeError):
        quantize_static(m, np.ones((4, 4), np.float32), StaticConfig(**QUIET))


def test_collapse_is_flagged_and_strict_refuses(conv_model, conv_calib, tmp_path):
    # calibrate on tiny-amplitude data, check on the real range: the INT8 model saturates
    tiny = conv_calib * 1e-3
    hold = conv_calib[:12] * 10
    data = np.concatenate([tiny, tiny[:12], hold])  # 60 calibration + 12 held back
    r = quantize_static(conv_model, data, StaticConfig(holdout=12, **QUIET))
    (agree,) = r.report.agreement
    assert agree.cosine < 0.98  # saturated: the held-back samples lie far outside the calibrated range
    assert agree.top1_agreement is not None and agree.top1_agreement < 0.9
    cosine_warning = f'output "logits": cosine {agree.cosine:.4f} < 0.98 — INT8 disagrees with FP32.'
    top1_warning = f'output "logits": only {agree.top1_agreement * 100:.1f} % top-1 agreement with FP32'
    assert len(r.report.warnings) == 2
    assert r.report.warnings[0].startswith(cosine_warning) and r.report.warnings[1].startswith(top1_warning)
    # the same held-back samples at the calibrated amplitude: no warning (the check is not always on)
    calm = quantize_static(conv_model, np.concatenate([tiny, tiny[:12], hold * 1e-4]), StaticConfig(holdout=12, **QUIET))
    assert calm.report.agreement[0].cosine > 0.999 and calm.report.warnings == ()
    out = tmp_path / "bad.onnx"
    from slimq.core.errors import FidelityError

    with pytest.raises(FidelityError) as e:
        quantize_static(conv_model, data, StaticConfig(holdout=12, strict=True, **QUIET), output=out)
    assert not out.exists()
    assert e.value.exit_code == 4  # same "refused" code as dynamic PTQ


def test_optimized_graph_runs_integer_kernels(conv_model, conv_calib, tmp_path):
    from slimq.io.model import save_model
    from slimq.runtime.session import Predictor, save_optimized

    r = quantize_static(conv_model, conv_calib, StaticConfig(**QUIET))
    q = save_model(r.model, tmp_path / "q.onnx")
    opt = save_optimized(q, tmp_path / "q.opt.onnx")
    ops = testing.count_ops(onnx.load(str(opt)))
    assert ops.get("QLinearConv") == 3 and "Conv" not in ops
    x = conv_calib[:4]
    np.testing.assert_allclose(Predictor(opt).run({"input": x})[0], Predictor(q).run({"input": x})[0], atol=1e-5)


def test_openvino_target_reports_int8_share_from_openvino(conv_model, conv_calib):
    pytest.importorskip("openvino")
    res = quantize_static(conv_model, conv_calib, StaticConfig(target="openvino", holdout=8, **QUIET))
    assert res.report.int8_mac_share > 0.9, res.report.format()  # onnxruntime itself would run these convs float
    assert res.report.macs.runtime == "OpenVINO" and "int8 share of MACs (OpenVINO)" in res.report.format()
    x86 = quantize_static(conv_model, conv_calib, StaticConfig(holdout=8, **QUIET))
    assert 0 < len(q_nodes(res.model)) < len(q_nodes(x86.model))  # Q/DQ only on int8-op inputs
    assert res.report.agreement[0].cosine > 0.98
