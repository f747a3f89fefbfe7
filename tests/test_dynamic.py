"""Dynamic PTQ: graph rewrites, formats, fidelity check and fallback, errors, CLI exit codes, BERT export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from slimq import SkipSpec, testing
from slimq.cli.main import main
from slimq.core.errors import (
    ConfigError,
    FidelityError,
    ModelLoadError,
    NothingToQuantizeError,
    OutputPathError,
    RuntimeTooOldError,
)
from slimq.core.qmath import INT4, cosine
from slimq.dynamic import method as dynamic
from slimq.dynamic.check import index_ranges, synthesize_feeds
from slimq.dynamic.graph import Choice, quantize_blocked
from slimq.dynamic.method import DynamicConfig, quantize_dynamic
from slimq.io.model import load_model
from slimq.runtime.session import Predictor, optimized_graph

DYN = DynamicConfig(mode="dynamic-activation", measure_kernels=False)


def _outputs(model, feeds):
    p = Predictor(model)
    return [p.run(f)[0] for f in feeds]


def _cos(a_model, b_model, feeds) -> float:
    a, b = _outputs(a_model, feeds), _outputs(b_model, feeds)
    return cosine(np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b]))


def _inits(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _mlp(w1: np.ndarray, w2: np.ndarray, relu: bool = False) -> onnx.ModelProto:
    """x (N, K) -> MatMul w1 [-> Relu] -> MatMul w2."""
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1")]
    if relu:
        nodes.append(oh.make_node("Relu", ["h"], ["hr"], name="relu"))
    nodes.append(oh.make_node("MatMul", ["hr" if relu else "h", "w2"], ["y"], name="mm2"))
    graph = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", w1.shape[0]])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", w2.shape[1]])],
                          [nh.from_array(w1.astype(np.float32), "w1"), nh.from_array(w2.astype(np.float32), "w2")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def fragile_channel() -> onnx.ModelProto:
    """mm1 writes one huge channel that mm2 ignores: int8 activations of mm2 (dynamic, or onnxruntime's int8
    MatMulNBits kernel for weight-only) lose everything else; only float mm2 is right."""
    r = np.random.default_rng(0)
    w1 = r.normal(0, 0.3, (16, 32))
    w1[:, 0] *= 5000.0
    w2 = r.normal(0, 0.3, (32, 8))
    w2[0] = 0.0
    return _mlp(w1, w2)


def fragile_row() -> onnx.ModelProto:
    """Row 0 of mm2's input is scaled by 5000 and masked out after mm2: per-tensor dynamic quantization of mm2's
    input wipes the other rows; per-row (weight-only kernel) or float mm2 is fine."""
    r = np.random.default_rng(1)
    scale, mask = np.ones((8, 1), np.float32), np.ones((8, 1), np.float32)
    scale[0], mask[0] = 5000.0, 0.0
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), oh.make_node("Mul", ["h", "scale"], ["hs"]),
             oh.make_node("MatMul", ["hs", "w2"], ["z"], name="mm2"), oh.make_node("Mul", ["z", "mask"], ["y"])]
    inits = [nh.from_array(r.normal(0, 0.3, (16, 32)).astype(np.float32), "w1"), nh.from_array(scale, "scale"),
             nh.from_array(r.normal(0, 0.3, (32, 8)).astype(np.float32), "w2"), nh.from_array(mask, "mask")]
    graph = oh.make_graph(nodes, "rows", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def fragile_weights() -> onnx.ModelProto:
    """mm2's weight has a huge row that only ever meets a zero (Relu of a zero column): int8 zeroes the rest."""
    r = np.random.default_rng(0)
    w1 = r.normal(0, 0.3, (16, 32))
    w1[:, 0] = 0.0
    w2 = r.normal(0, 0.3, (32, 8))
    w2[0] = 1e4
    return _mlp(w1, w2, relu=True)


# -- weight-only --------------------------------------------------------------------------------

def test_weight_only_int8_stores_int8_weights_and_matches_fp32():
    fp32 = testing.matmul_net()
    res = quantize_dynamic(fp32, DynamicConfig())
    ops = testing.count_ops(res.model)
    assert ops["DequantizeLinear"] == 2 and ops["MatMul"] == 2
    inits = _inits(res.model)
    assert "w1" not in inits and "w2" not in inits  # the float weights are gone
    assert {inits[n].data_type for n in inits if n.endswith("_quantized")} == {onnx.TensorProto.INT8}
    feeds = testing.random_inputs(fp32, 4, seed=3)
    assert _cos(fp32, res.model, feeds) > 0.999
    assert res.report.details["weights"]["MatMul"]["ratio"] < 0.3
    assert res.report.agreement[0].cosine > 0.999
    assert all(d.choice is Choice.WEIGHT_ONLY for d in res.decisions)


def test_onnxruntime_runs_int8_weight_only_as_matmulnbits():
    res = quantize_dynamic(testing.matmul_net(), DynamicConfig())
    assert "MatMulNBits" in testing.count_ops(optimized_graph(res.model, "all"))


def test_int4_group_wise_is_packed_blocked_and_runs():
    fp32 = testing.matmul_net()
    res = quantize_dynamic(fp32, DynamicConfig(weight_bits=4, granularity="group:16"))
    assert any(i.version >= 21 for i in res.model.opset_import if i.domain in ("", "ai.onnx"))
    dq = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 2 and all({a.name: a.i for a in n.attribute}["block_size"] == 16 for n in dq)
    q = [t for t in res.model.graph.initializer if t.name.endswith("_quantized")]
    assert {t.data_type for t in q} == {onnx.TensorProto.INT4}
    assert all(len(t.raw_data) == int(np.prod(t.dims)) // 2 for t in q)  # two values per byte
    assert _cos(fp32, res.model, testing.random_inputs(fp32, 4, seed=3)) > 0.99


def test_int8_group_wise_uses_blocked_int8():
    fp32 = testing.matmul_net()
    res = quantize_dynamic(fp32, DynamicConfig(granularity="group:32"))
    dq = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear"]
    assert all({a.name: a.i for a in n.attribute} == {"axis": 0, "block_size": 32} for n in dq)
    q = [t for t in res.model.graph.initializer if t.name.endswith("_quantized")]
    assert {t.data_type for t in q} == {onnx.TensorProto.INT8}
    assert _cos(fp32, res.model, testing.random_inputs(fp32, 4, seed=3)) > 0.999


def test_quantize_blocked_matches_per_block_absmax():
    w = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    q, s = quantize_blocked(w, INT4.narrow(), axis=0, block=16)
    assert q.shape == w.shape and s.shape == (3, 6)  # ceil(40 / 16) blocks, the last one short
    np.testing.assert_allclose(s[2], np.abs(w[32:]).max(axis=0) / 7, rtol=1e-6)
    assert q.min() >= -7 and q.max() <= 7
    deq = q * np.repeat(s, 16, axis=0)[:40]
    assert np.abs(deq - w).max() <= s.max() / 2 + 1e-6


def test_conv_net_gemm_becomes_matmul_and_conv_weights_are_int8_per_channel():
    fp32 = testing.conv_net()
    res = quantize_dynamic(fp32, DynamicConfig())
    ops = testing.count_ops(res.model)
    assert "Gemm" not in ops and ops["DequantizeLinear"] == 4 and ops["Conv"] == 3
    conv_dq = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear" and "Conv" not in n.output[0]]
    assert all({a.name: a.i for a in n.attribute}.get("axis") in (0, 1) for n in conv_dq)
    assert "disable_quant_qdq" in res.report.details["conv_note"]
    assert _cos(fp32, res.model, testing.random_inputs(fp32, 4, seed=5)) > 0.999


def test_dynamic_mode_keeps_conv_float_and_says_why():
    fp32 = testing.conv_net()
    res = quantize_dynamic(fp32, DYN)
    ops = testing.count_ops(res.model)
    assert ops["MatMulInteger"] == 1 and ops["Conv"] == 3 and "DequantizeLinear" not in ops
    conv = [d for d in res.decisions if d.candidate.op_type == "Conv"]
    assert len(conv) == 3 and all(d.choice is Choice.FLOAT and "12854" in d.reason for d in conv)
    assert "12854" in res.report.details["conv_note"]
    assert _cos(fp32, res.model, testing.random_inputs(fp32, 4, seed=5)) > 0.999


def test_dynamic_mode_on_a_conv_only_model_points_to_weight_only():
    with pytest.raises(NothingToQuantizeError, match="weight-only"):
        quantize_dynamic(testing.unsupported_net(), DYN)


# -- dynamic-activation -------------------------------------------------------------------------

def test_dynamic_activation_inserts_dynamic_quantize_and_matmulinteger():
    fp32 = testing.matmul_net()
    res = quantize_dynamic(fp32, DYN)
    ops = testing.count_ops(res.model)
    assert ops["DynamicQuantizeLinear"] == 2 and ops["MatMulInteger"] == 2 and "MatMul" not in ops
    weights = [t for t in res.model.graph.initializer if t.name.endswith("_quantized")]
    assert {t.data_type for t in weights} == {onnx.TensorProto.INT8}
    fused = testing.count_ops(optimized_graph(res.model, "all"))
    assert fused.get("DynamicQuantizeMatMul", 0) + fused.get("MatMulIntegerToFloat", 0) == 2
    assert res.report.int8_mac_share == 1.0
    assert _cos(fp32, res.model, testing.random_inputs(fp32, 4, seed=3)) > 0.999
    nodes = res.report.details["nodes"]
    assert [n["choice"] for n in nodes] == ["dynamic-activation"] * 2


def test_kernel_choice_is_measured_and_recorded_per_node():
    res = quantize_dynamic(testing.matmul_net(), DynamicConfig(mode="dynamic-activation"))
    for d in res.decisions:
        assert " us vs float " in d.reason and "M=1" in d.reason
        expected = "MatMulInteger" if d.choice is Choice.DYNAMIC else "DequantizeLinear"
        assert expected in testing.count_ops(res.model)


# -- fidelity check and fallback ----------------------------------------------------------------

def test_fragile_activation_is_demoted_to_weight_only(tmp_path):
    res = quantize_dynamic(fragile_row(), DYN, tmp_path / "q.onnx")
    assert [(d.node, d.before, d.after) for d in res.demotions] == [("mm2", Choice.DYNAMIC, Choice.WEIGHT_ONLY)]
    assert {d.node: d.choice for d in res.decisions} == {"mm1": Choice.DYNAMIC, "mm2": Choice.WEIGHT_ONLY}
    assert res.report.warnings and "mm2" in res.report.warnings[0]
    assert res.report.agreement[0].cosine >= 0.99
    saved = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert saved["details"]["fallback"][0]["node"] == "mm2"


def test_fallback_walks_the_ladder_down_to_float_for_the_culprit_only():
    res = quantize_dynamic(fragile_channel(), DYN)
    assert [(d.node, d.after) for d in res.demotions] == [("mm2", Choice.WEIGHT_ONLY), ("mm2", Choice.FLOAT)]
    assert {d.node: d.choice for d in res.decisions} == {"mm1": Choice.DYNAMIC, "mm2": Choice.FLOAT}
    assert res.report.agreement[0].cosine >= 0.99


def test_fragile_weight_is_demoted_to_float():
    res = quantize_dynamic(fragile_weights(), DynamicConfig())
    assert [(d.node, d.after) for d in res.demotions] == [("mm2", Choice.FLOAT)]
    assert "w2" in _inits(res.model)  # mm2 kept its float weight
    assert res.report.agreement[0].cosine >= 0.99


def test_refuse_writes_nothing(tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(FidelityError, match="Nothing was written") as e:
        quantize_dynamic(fragile_row(), DynamicConfig(mode="dynamic-activation", measure_kernels=False,
                                                              on_collapse="refuse"), out)
    assert e.value.exit_code == 4
    assert list(tmp_path.iterdir()) == []


def test_warn_writes_with_a_warning(tmp_path):
    cfg = DynamicConfig(mode="dynamic-activation", measure_kernels=False, on_collapse="warn")
    res = quantize_dynamic(fragile_row(), cfg, tmp_path / "q.onnx")
    assert res.path.exists() and not res.demotions
    assert "written anyway" in res.report.warnings[0] and res.report.agreement[0].cosine < 0.99


def test_check_data_is_used(tmp_path):
    fp32 = testing.matmul_net()
    data = tmp_path / "check.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32))
    res = quantize_dynamic(fp32, DynamicConfig(), check_data=data)
    assert res.report.agreement_samples == 3 and res.report.details["check_inputs"] == "check-data inputs"


# -- errors -------------------------------------------------------------------------------------

def _no_weights() -> onnx.ModelProto:
    x = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 2]) for n in ("a", "b")]
    graph = oh.make_graph([oh.make_node("MatMul", ["a", "b"], ["y"])], "g", x,
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_no_quantizable_weights_raises_and_writes_nothing(tmp_path):
    with pytest.raises(NothingToQuantizeError, match="Nothing was written"):
        quantize_dynamic(_no_weights(), DynamicConfig(), tmp_path / "q.onnx")
    assert list(tmp_path.iterdir()) == []


def test_everything_skipped_is_nothing_to_quantize():
    with pytest.raises(NothingToQuantizeError, match="skipped"):
        quantize_dynamic(testing.matmul_net(), DynamicConfig(skip=SkipSpec(op_types=("MatMul",))))


def test_int4_on_a_runtime_without_it_names_the_version(monkeypatch):
    monkeypatch.setattr(dynamic, "_blocked_dq_runs", lambda bits: "Could not find an implementation")
    with pytest.raises(RuntimeTooOldError, match=r"onnxruntime >= 1\.19.*--weight-bits 8"):
        quantize_dynamic(testing.matmul_net(), DynamicConfig(weight_bits=4))


def test_real_runtime_supports_int4():
    assert dynamic._blocked_dq_runs(4) is None and dynamic._blocked_dq_runs(8) is None


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "dynamic-activaton"}, 'Did you mean "dynamic-activation"'),
    ({"granularity": "grp:128"}, 'Did you mean "group:128"'),
    ({"weight_bits": 2}, "Valid values: 4, 8"),
    ({"on_collapse": "refuze"}, 'Did you mean "refuse"'),
    ({"mode": "dynamic-activation", "weight_bits": 4}, "weight-only"),
    ({"granularity": "group:1"}, ">= 2"),
    ({"min_cosine": 1.5}, "min_cosine"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DynamicConfig(**kwargs)


def test_unknown_skip_node_and_own_output_path(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean"):
        quantize_dynamic(testing.matmul_net(), DynamicConfig(skip=SkipSpec(names=("yy",))))
    src = tmp_path / "m.onnx"
    onnx.save(testing.matmul_net(), src)
    with pytest.raises(OutputPathError):
        quantize_dynamic(src, DynamicConfig(), src)
    with pytest.raises(ModelLoadError):
        quantize_dynamic(tmp_path / "missing.onnx", DynamicConfig())


def test_external_data_round_trip(tmp_path):
    fp32 = testing.matmul_net()
    out = tmp_path / "q.onnx"
    res = quantize_dynamic(fp32, DynamicConfig(external_data=True), out)
    assert (tmp_path / "q.onnx.data").stat().st_size >= 2048  # w1 as int8 (32 x 64 bytes) lives in the data file
    loaded = load_model(out)
    feeds = testing.random_inputs(fp32, 2, seed=9)
    for a, b in zip(_outputs(res.model, feeds), _outputs(loaded, feeds)):
        np.testing.assert_array_equal(a, b)


def test_models_over_the_protobuf_limit_are_checked_through_external_data(monkeypatch):
    from slimq.io import model as model_io
    from slimq.runtime import session

    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 2**26 + 1000)  # matmul_net's weights count as "over 2 GB"
    fp32 = testing.matmul_net()
    res = quantize_dynamic(fp32, DYN)
    assert res.report.agreement[0].cosine > 0.999
    feeds = testing.random_inputs(fp32, 2, seed=4)
    big = session.predictor(res.model)
    for f, ref in zip(feeds, _outputs(res.model, feeds)):
        np.testing.assert_array_equal(big.run(f)[0], ref)


# -- CLI ----------------------------------------------------------------------------------------

@pytest.fixture()
def saved(tmp_path):
    def save(model, name="m.onnx"):
        path = tmp_path / name
        onnx.save(model, path)
        return path
    return save


def test_cli_exit_codes(saved, tmp_path, capsys):
    good, fragile = saved(testing.matmul_net()), saved(fragile_row(), "fragile.onnx")
    assert main(["quantize", "dynamic", str(good), "-o", str(tmp_path / "a.onnx")]) == 0
    assert "MatMul weights" in capsys.readouterr().out
    args = ["quantize", "dynamic", str(fragile), "--mode", "dynamic-activation", "--no-measure"]
    assert main(args + ["-o", str(tmp_path / "b.onnx")]) == 3
    assert "fallback: mm2" in capsys.readouterr().out
    assert main(args + ["-o", str(tmp_path / "c.onnx"), "--on-collapse", "refuse"]) == 4
    assert not (tmp_path / "c.onnx").exists()
    assert main(["quantize", "dynamic", str(good), "-o", str(tmp_path / "d.onnx"), "--weight-bits", "3"]) == 2
    assert main(["quantize", "dynamic", str(good), "-o", str(tmp_path / "d.onnx"), "--mode", "dynamic-activaton"]) == 2
    assert 'Did you mean "dynamic-activation"' in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()


def test_cli_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "dynamic", "--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "4  refused" in text and "3  written with warnings" in text


# -- BERT-style encoder -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    pytest.importorskip("onnxscript")
    from slimq.zoo.bert import TINY_BERT, export_bert

    return export_bert(tmp_path_factory.mktemp("bert") / "tiny_bert.onnx", TINY_BERT)


def test_bert_export_has_dynamic_batch_and_sequence(tiny_bert):
    import torch

    from slimq.zoo.bert import TINY_BERT, build_bert, example_inputs

    model = load_model(tiny_bert)
    dims = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", "sequence"]] * 2
    ops = testing.count_ops(model)
    assert ops["LayerNormalization"] == 5 and ops["Softmax"] == 2 and ops["MatMul"] == 16
    torch_model = build_bert(TINY_BERT)
    for batch, seq in ((1, 16), (3, 7)):
        ids, mask = example_inputs(TINY_BERT, batch, seq, seed=batch)
        with torch.no_grad():
            ref = torch_model(ids, mask)[0].numpy()
        out = Predictor(model).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        np.testing.assert_allclose(out, ref, atol=2e-4)


def test_bert_check_inputs_use_the_vocabulary(tiny_bert):
    model = load_model(tiny_bert)
    assert index_ranges(model) == {"input_ids": 1000}
    feeds = synthesize_feeds(model, 3, dim=12)
    assert all(f["input_ids"].shape == (1, 12) and f["input_ids"].max() < 1000 for f in feeds)
    assert all((f["attention_mask"] == 1).all() for f in feeds)


def test_bert_weight_only_quantizes_embeddings_and_shrinks(tiny_bert, tmp_path):
    res = quantize_dynamic(tiny_bert, DynamicConfig(), tmp_path / "wo.onnx")
    kinds = {d.candidate.op_type for d in res.decisions if d.choice is Choice.WEIGHT_ONLY}
    assert kinds == {"MatMul", "Gather"}
    assert res.report.details["weights"]["Gather"]["tensors"] == 3
    tables = [t.name for t in res.model.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT and t.dims[-1:] != [1] and np.prod(t.dims) >= 64 * 64]
    assert not tables  # no float table or linear weight is left, only per-row / per-channel scales
    assert all(r["ratio"] < 0.27 for r in res.report.details["weights"].values())
    assert res.report.sizes.ratio < 0.4  # tiny model: graph, biases and LayerNorm weigh in
    assert res.report.agreement[0].cosine >= 0.99


def test_bert_dynamic_activation_keeps_attention_float(tiny_bert):
    res = quantize_dynamic(tiny_bert, DYN)
    ops = testing.count_ops(res.model)
    assert ops["MatMulInteger"] == 12 and ops["MatMul"] == 4  # Q/K/V/out/FFN x 2 layers; scores and context float
    assert ops["Softmax"] == 2 and ops["LayerNormalization"] == 5
    float_reasons = {f.op_type for f in res.report.float_ops}
    assert {"MatMul", "Softmax", "LayerNormalization"} <= float_reasons
    assert res.report.agreement[0].cosine >= 0.99 and not res.demotions


def test_bert_int4_matmul_weights_shrink(tiny_bert):
    res = quantize_dynamic(tiny_bert, DynamicConfig(weight_bits=4, granularity="group:64"))
    assert res.report.details["weights"]["MatMul"]["ratio"] <= 0.15
    assert res.report.agreement[0].cosine >= 0.99


# -- PP-OCRv4 rec: never silently bad -----------------------------------------------------------

def test_ppocr_rec_dynamic_is_never_silently_bad():
    from slimq.tasks.base import evaluate
    from slimq.tasks.ocr_rec import RecEvaluator, rapidocr_model_path

    try:
        rec = rapidocr_model_path("rec")
    except ModelLoadError:
        pytest.skip("rapidocr-onnxruntime models are not installed")
    ev = RecEvaluator(rec, n_lines=32, batch_size=8)
    cfg = DynamicConfig(mode="dynamic-activation", check_samples=4, rank_samples=1)
    res = quantize_dynamic(rec, cfg, check_data=ev.calibration_batches(1, 4))
    worst = min(a.cosine for a in res.report.agreement)
    assert worst >= cfg.min_cosine  # either it agreed, or the fallback repaired it ...
    if res.demotions:  # ... and then said so, naming the layers
        assert res.report.warnings and all(d.node in res.report.warnings[0] for d in res.demotions[:8])
    cer_fp32 = evaluate(Predictor(str(rec), threads="all").run, ev)["cer"]
    cer_q = evaluate(Predictor(res.model, threads="all").run, ev)["cer"]
    assert cer_q <= cer_fp32 + 1.0


def test_weight_only_convs_are_dequantized_once_at_load():
    """No weight-only conv kernel exists in onnxruntime: the Predictor folds the weights at load."""
    from slimq.runtime.session import Predictor, dequantize_at_load

    fp32 = testing.conv_net()
    res = quantize_dynamic(fp32, DynamicConfig())
    assert dequantize_at_load(res.model) and not dequantize_at_load(quantize_dynamic(testing.matmul_net()).model)
    assert "DequantizeLinear" not in testing.count_ops(optimized_graph(res.model, "all"))
    x = testing.random_inputs(fp32, 1, batch=2)[0]
    folded = Predictor(res.model).run(x)[0]
    every_run = Predictor(res.model, level="disable").run(x)[0]  # DequantizeLinear executed as written
    np.testing.assert_allclose(folded, every_run, rtol=1e-4, atol=1e-4)
