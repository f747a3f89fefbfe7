"""QAT export: QDQ ONNX agrees with the PyTorch fake-quant model; storage types per target."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnx  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import slimq.qat as qat  # noqa: E402
from slimq.core.errors import (  # noqa: E402
    CalibrationDataError,
    ConfigError,
    FidelityError,
    ModelLoadError,
)
from slimq.qat.testing_models import NetWithUnsupported, build, teacher_labels  # noqa: E402
from slimq.runtime.session import optimized_graph  # noqa: E402


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def trained(name: str, config: qat.QATConfig, steps: int = 4) -> qat.QATModel:
    qmodel = qat.prepare(build(name), images(2), config)
    qat.calibrate(qmodel, [images(16, seed=s) for s in range(2)])
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(qat.param_groups(qmodel, lr=0.02), momentum=0.9)
    qmodel.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 16, 16, generator=gen)
        loss = F.cross_entropy(qmodel(x), teacher_labels(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qmodel.eval()


def initializers(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def qdq_zero_points(path, op_type: str) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = initializers(path)
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"}
    return [inits.get(n.input[2], consts.get(n.input[2])) for n in model.graph.node if n.op_type == op_type]


CASES = [
    ("convnet", "ste", "x86"), ("resnet", "ste", "x86"), ("mobilenet", "ste", "x86"),
    ("resnet", "pact", "x86"), ("resnet", "lsq", "x86"), ("mobilenet", "lsq", "tensorrt"),
    ("resnet", "pact", "arm"),
]


@pytest.mark.parametrize(("name", "variant", "target"), CASES)
def test_onnx_agrees_with_fake_quant_model(tmp_path, name: str, variant: str, target: str) -> None:
    config = qat.QATConfig(variant=variant, target=target, freeze_bn_step=2)
    qmodel = trained(name, config)
    result = qat.convert(qmodel, tmp_path / "m.onnx")
    agreement = qat.check_agreement(qmodel, result.path, images(500, seed=7))
    assert not agreement.output_quantized  # the logits' Gemm writes float (QGemm), as static PTQ leaves it
    assert agreement.num_values == 5000
    assert agreement.fraction_within_step >= 0.999, agreement
    assert agreement.max_diff_steps <= 2.0, agreement
    # chunked (bounded memory) and whole-batch comparisons are the same measurement
    assert qat.check_agreement(qmodel, result.path, images(500, seed=7), chunk=500) == agreement


def test_x86_activations_u8_weights_int8_and_ort_uses_integer_kernels(tmp_path) -> None:
    qmodel = trained("resnet", qat.QATConfig(target="x86"))
    result = qat.convert(qmodel, tmp_path / "m.onnx")
    zps = qdq_zero_points(result.path, "QuantizeLinear")
    # One QuantizeLinear per activation quantizer, plus the re-quantization after Flatten.
    assert len(zps) == len(list(qmodel.quantizers())) + 1 == result.artifacts["quantize_nodes"]
    assert all(z.dtype == np.uint8 for z in zps)
    assert {int(z) for z in zps} == {0, 128}  # unsigned (post-ReLU) and signed grids
    # Weights: stored as int8 initializers in [-127, 127], no float weight tensors left.
    inits = initializers(result.path)
    weights = {k: v for k, v in inits.items() if k.endswith("_quantized")}
    assert len(weights) == result.artifacts["int8_weights"] == 6
    assert all(v.dtype == np.int8 and np.abs(v.astype(int)).max() <= 127 for v in weights.values())
    assert not [k for k, v in inits.items() if v.dtype == np.float32 and v.ndim >= 2]
    # Biases: int32 behind DequantizeLinear with scale s_in * s_w, as QLinearConv/QGemm add them.
    graph = onnx.load(str(result.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    biased = [n for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    assert len(biased) == 6
    for node in biased:
        dq = producer[node.input[2]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int32
        s_in, s_w = (inits[producer[node.input[i]].input[1]] for i in (0, 1))
        np.testing.assert_array_equal(inits[dq.input[1]], (s_in * s_w).astype(np.float32))
    ops = qat.ort_optimized_ops(result.path)
    assert ops["com.microsoft:QLinearConv"] == 5, ops
    assert ops["com.microsoft:QLinearAdd"] == 2 and ops["com.microsoft:QGemm"] == 1, ops
    assert "Conv" not in ops and "FusedConv" not in ops


def test_int8_weights_make_the_file_about_four_times_smaller(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 10)).eval()
    qmodel = qat.prepare(model, images(2))
    qat.calibrate(qmodel, [images(8)])
    result = qat.convert(qmodel, tmp_path / "q.onnx")
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert result.report.sizes.quantized_bytes < 0.3 * float_bytes
    agreement = qat.check_agreement(qmodel, result.path, images(200, seed=1))
    assert agreement.fraction_within_step >= 0.999


@pytest.mark.parametrize(("target", "dtype", "zero_points"), [
    ("tensorrt", np.int8, {0}), ("arm", np.int8, {0, -128}),
])
def test_int8_activation_targets(tmp_path, target: str, dtype, zero_points: set[int]) -> None:
    qmodel = trained("mobilenet", qat.QATConfig(target=target), steps=1)
    result = qat.convert(qmodel, tmp_path / "m.onnx")
    zps = qdq_zero_points(result.path, "QuantizeLinear")
    assert zps and all(z.dtype == dtype for z in zps)
    assert {int(z) for z in zps} == zero_points


def test_dynamo_exporter_matches(tmp_path) -> None:
    qmodel = trained("resnet", qat.QATConfig(), steps=1)
    result = qat.convert(qmodel, tmp_path / "d.onnx", exporter="dynamo")
    agreement = qat.check_agreement(qmodel, result.path, images(64, seed=2))
    assert agreement.fraction_within_step >= 0.999
    assert result.artifacts["int8_weights"] == 6


def test_unquantized_output_uses_fallback_step(tmp_path) -> None:
    with pytest.warns(qat.QATWarning):
        qmodel = qat.prepare(NetWithUnsupported(), torch.randn(2, 1, 8, 8),  # mostly float on purpose
                             qat.QATConfig(skip=("head",), min_int8_mac_share=0.0))
    qat.calibrate(qmodel, [torch.randn(4, 1, 8, 8)])
    result = qat.convert(qmodel, tmp_path / "u.onnx")
    x = torch.randn(32, 1, 8, 8)
    agreement = qat.check_agreement(qmodel, result.path, x)
    assert not agreement.output_quantized
    with torch.no_grad():
        ref = qmodel.eval()(x)
    assert agreement.step == pytest.approx(float(ref.abs().max()) / 127, rel=1e-6)
    assert agreement.fraction_within_step >= 0.999


def test_given_io_names_are_used_and_checked(tmp_path) -> None:
    qmodel = trained("convnet", qat.QATConfig(), steps=1)
    result = qat.convert(qmodel, tmp_path / "n.onnx", input_names=["image"], output_names=["logits"])
    assert qat.onnx_io_names(result.path) == (["image"], ["logits"])
    assert qat.check_agreement(qmodel, result.path, images(32)).ok()
    with pytest.raises(ConfigError, match="1 distinct non-empty name"):
        qat.convert(qmodel, tmp_path / "bad.onnx", output_names=["logits", "extra"])
    with pytest.raises(ConfigError, match="must differ"):
        qat.convert(qmodel, tmp_path / "bad.onnx", input_names=["x"], output_names=["x"])
    assert not (tmp_path / "bad.onnx").exists()


def test_collapsed_learned_range_is_reported(tmp_path) -> None:
    qmodel = trained("convnet", qat.QATConfig(variant="lsq"), steps=1)
    with torch.no_grad():
        dict(qmodel.quantizers())["act_quant.gap"].scale.fill_(-0.5)
    with pytest.raises(FidelityError, match="act_quant.gap"):
        qat.convert(qmodel, tmp_path / "m.onnx")


def test_convert_errors(tmp_path) -> None:
    qmodel = qat.prepare(build("convnet"), images(2))
    with pytest.raises(CalibrationDataError, match="act_quant.in_x"):
        qat.convert(qmodel, tmp_path / "m.onnx")
    qat.calibrate(qmodel, [images(4)])
    with pytest.raises(ConfigError, match='trained for target "x86"'):
        qat.convert(qmodel, tmp_path / "m.onnx", target="tensorrt")
    with pytest.raises(ConfigError, match='Did you mean "dynamo"'):
        qat.convert(qmodel, tmp_path / "m.onnx", exporter="dynamic")
    with pytest.raises(ConfigError, match="samples must match"):
        qat.convert(qmodel, tmp_path / "m.onnx", samples=torch.randn(4, 3, 16, 16))
    assert not list(tmp_path.iterdir())


class _CumMax(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.conv(x), 1)[0]


def test_export_failure_names_the_op(tmp_path) -> None:
    with pytest.warns(qat.QATWarning, match="cummax"):
        qmodel = qat.prepare(_CumMax(), torch.randn(2, 1, 8, 8))
    qat.calibrate(qmodel, [torch.randn(4, 1, 8, 8)])
    with pytest.raises(ModelLoadError, match="aten.cummax"):
        qat.convert(qmodel, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_convert_writes_fidelity_report(tmp_path) -> None:
    qmodel = trained("convnet", qat.QATConfig(skip=("fc",)), steps=2)
    result = qat.convert(qmodel, tmp_path / "m.onnx", samples=images(64, seed=5))
    assert result.report_path == tmp_path / "m.onnx.report.json"
    data = json.loads(result.report_path.read_text())
    assert data["method"] == "qat" and data["target"].startswith("x86: uint8")
    assert data["macs"]["int8_share"] > 0.9 and data["macs"]["float_macs"] == 64 * 16 * 10  # the batch through fc
    # The skipped classifier is the only op left in float, named and explained.
    assert [(f["module"], f["op_type"]) for f in data["float_ops"]] == [("fc", "Gemm")]
    assert "QATConfig.skip" in data["float_ops"][0]["reason"]
    assert data["quantized_ops"]["Conv"] == 2 and "Gemm" not in data["quantized_ops"]
    (agree,) = data["agreement"]
    assert agree["output"] == "output" and agree["cosine"] > 0.98, data
    assert agree["top1_agreement"] >= 0.9 and data["agreement_samples"] == 64
    assert not data["agreement_in_sample"] and not data["warnings"]
    assert data["sizes"]["quantized_bytes"] == result.report.sizes.quantized_bytes and data["sizes"]["fp32_bytes"] > 0
    assert result.report.to_dict()["float_ops"] == data["float_ops"]


def test_report_names_unsupported_and_skipped_layers(tmp_path, caplog) -> None:
    with pytest.warns(qat.QATWarning):
        qmodel = qat.prepare(NetWithUnsupported(), torch.randn(2, 1, 8, 8),  # mostly float on purpose
                             qat.QATConfig(skip=("head",), min_int8_mac_share=0.0))
    qat.calibrate(qmodel, [torch.randn(4, 1, 8, 8)])
    with caplog.at_level("WARNING", logger="slimq"):
        report = qat.convert(qmodel, tmp_path / "u.onnx").report
    reasons = {(f.module, f.op_type): f.reason for f in report.float_ops}
    assert "ConvTranspose2d has no int8 form" in reasons[("up", "ConvTranspose")]
    assert "QATConfig.skip" in reasons[("head", "Conv")]
    assert ("sigmoid", "sigmoid") in {(f.node, f.op_type) for f in report.float_ops}
    assert report.quantized_ops == {"Conv": 1}
    # Most MACs stay float: warned in the report and in the log, like static PTQ.
    assert report.int8_mac_share < 0.5 and "of MACs run in int8" in report.warnings[-1]
    assert "of MACs run in int8" in caplog.text
    assert report.agreement_samples == 2 and report.agreement_in_sample
    assert report.agreement[0].cosine > 0.98


def test_skipped_layer_stays_float_in_onnxruntime(tmp_path, caplog) -> None:
    # The skipped conv reads a quantized tensor (conv1's output) and feeds the residual add. Were
    # its output (after its float BatchNorm) quantized for the add, onnxruntime would fold the BN,
    # quantize the float weight itself and run QLinearConv; it gets no quantizer, so it stays Conv.
    with pytest.warns(qat.QATWarning, match="layer1.0.bn2"):  # its BatchNorm has no conv to fold into
        qmodel = qat.prepare(build("resnet"), images(2), qat.QATConfig(skip=("layer1.0.conv2",)))
    qat.calibrate(qmodel, [images(8)])
    with caplog.at_level("WARNING", logger="slimq"):
        result = qat.convert(qmodel, tmp_path / "r.onnx")
    report = result.report
    (conv,) = [f for f in report.float_ops if f.op_type == "Conv"]
    assert conv.module == "layer1.0.conv2" and conv.reason.endswith("(QATConfig.skip)")
    exported = onnx.load(str(result.path))
    optimized = optimized_graph(exported, "extended").graph.node
    assert {n.name: n.op_type for n in optimized}[conv.node] == "Conv"
    n_conv = sum(n.op_type == "Conv" for n in exported.graph.node)
    assert sum(n.op_type == "QLinearConv" for n in optimized) == n_conv - 1
    # TinyResNet (width 8) per sample: stem 8x8x8 outputs x 1x3x3 = 4608 MACs, four block convs
    # 8x8x8 x 8x3x3 = 36864 each, fc 8 x 10 = 80. Only the skipped layer1.0.conv2 stays float.
    total, skipped = 4608 + 4 * 36864 + 80, 36864
    batch = 2  # counted on prepare()'s example inputs, images(2)
    assert report.macs.float_macs == batch * skipped and report.macs.int8_macs == batch * (total - skipped)
    assert report.int8_mac_share == pytest.approx((total - skipped) / total, abs=1e-9)  # 0.7577
    assert not any("never trained for" in w for w in report.warnings) and "never trained for" not in caplog.text
    agreement = qat.check_agreement(qmodel, result.path, images(200, seed=7))
    assert agreement.fraction_within_step >= 0.999 and agreement.max_diff_steps <= 2.0, agreement


def test_eval_is_bit_exact_with_onnxruntime_integer_kernels(tmp_path) -> None:
    """Eval mode computes QLinearConv's integer arithmetic (exact accumulator, float32 multiplier
    ``s_in * s_w / s_out``, round half to even), so the export matches PyTorch exactly, not merely within
    a step: deep int8 networks amplify one-step rounding ties (MobileNetV2: 47 % of logits within a step
    with a float convolution). The float path (output grid unbound) differs at ties on these inputs."""
    from torch import nn

    from slimq.qat.modules import QATConv, bind_output

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU6(),
                        nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.BatchNorm2d(96), nn.ReLU6(),
                        nn.Conv2d(96, 32, 1)).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    qmodel = qat.prepare(net, x[:2])
    qat.calibrate(qmodel, [x])
    convs = [m for m in qmodel.net.modules() if isinstance(m, QATConv)]
    assert all(m.output_quant is not None and m.input_quant is not None for m in convs)
    result = qat.convert(qmodel, tmp_path / "m.onnx")
    agreement = qat.check_agreement(qmodel, result.path, x)
    assert agreement.output_quantized and agreement.max_diff_steps == 0.0, agreement
    for m in convs:
        bind_output(m, None)
    assert qat.check_agreement(qmodel, result.path, x).max_diff_steps >= 1.0  # ties the float path misses


def _qlinear_add_model(scales: tuple[float, float, float], zeros: tuple[int, int, int]) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    names = ("a", "b", "c")
    inits = [helper.make_tensor(f"s{n}", TensorProto.FLOAT, [], [s]) for n, s in zip(names, scales)]
    inits += [helper.make_tensor(f"z{n}", TensorProto.UINT8, [], [z]) for n, z in zip(names, zeros)]
    nodes = [helper.make_node("DequantizeLinear", [n, f"s{n}", f"z{n}"], [f"f{n}"]) for n in "ab"]
    nodes += [helper.make_node("Add", ["fa", "fb"], ["sum"]), helper.make_node("QuantizeLinear", ["sum", "sc", "zc"], ["c"])]
    io = [helper.make_tensor_value_info(n, TensorProto.UINT8, [None]) for n in names]
    model = helper.make_model(helper.make_graph(nodes, "qladd", io[:2], io[2:], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_qlinear_add_matches_onnxruntime_bit_for_bit() -> None:
    """onnxruntime fuses DQ+DQ -> Add -> Q into QLinearAdd (two float32 FMAs on the stored integers); the
    float formula ``round((a*s_a + b*s_b) / s_c)`` rounds some ties the other way."""
    import onnxruntime as ort

    from slimq.qat.add_op import qlinear_add

    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    float_misses = 0
    for zeros in ((128, 128, 128), (0, 0, 128), (0, 128, 0)):
        for _ in range(4):
            scales = tuple(float(np.float32(rng.uniform(0.01, 0.2))) for _ in range(3))
            a, b = (rng.integers(0, 256, 1 << 20, dtype=np.uint8) for _ in range(2))
            sess = ort.InferenceSession(_qlinear_add_model(scales, zeros).SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
            got = sess.run(None, {"a": a, "b": b})[0].astype(np.int64) - zeros[2]
            qa, qb = (torch.from_numpy(v.astype(np.int64) - z) for v, z in ((a, zeros[0]), (b, zeros[1])))
            s = tuple(torch.tensor(v) for v in scales)
            ours = qlinear_add(qa, qb, s, zeros, "uint8").numpy()  # type: ignore[arg-type]
            assert np.array_equal(ours, got)
            plain = torch.round((qa.float() * s[0] + qb.float() * s[1]) / s[2]).clamp(-zeros[2], 255 - zeros[2])
            float_misses += int((plain.numpy() != got).sum())
    assert float_misses > 0  # the float add + QuantizeLinear is not what onnxruntime computes


def test_residual_add_eval_is_bit_exact(tmp_path) -> None:
    """A residual add is a QATAdd in the prepared graph; eval equals onnxruntime's QLinearAdd output."""
    from torch import nn

    from slimq.qat.add_op import QATAdd

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 32, 3, padding=1)
            self.b = nn.Conv2d(3, 32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

    torch.manual_seed(0)
    x = torch.randn(16, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    qmodel = qat.prepare(Residual().eval(), x[:2])
    qat.calibrate(qmodel, [x])
    result = qat.convert(qmodel, tmp_path / "r.onnx")
    agreement = qat.check_agreement(qmodel, result.path, x)
    assert agreement.output_quantized and agreement.max_diff_steps == 0.0, agreement  # float add: 1 step
    adds = [m for m in qmodel.net.modules() if isinstance(m, QATAdd)]
    assert len(adds) == 1 and adds[0].grids is not None
