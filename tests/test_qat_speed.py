"""QAT's speed plan (slimq.qat.speed): the static speed guard's decision made on QAT's export, before training,
and applied through QATConfig.skip so the fake-quant model and its export agree."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import slimq.qat as qat  # noqa: E402
from slimq.qat.modules import QATConv  # noqa: E402
from slimq.qat.speed import layer_class, layer_groups  # noqa: E402
from slimq.qat.testing_models import TinyMobileNet, build  # noqa: E402


def mobilenet() -> torch.nn.Module:
    """TinyMobileNet wide enough (about 3M MACs at 64x64) for the speed step to time it."""
    torch.manual_seed(0)
    return TinyMobileNet(width=32).eval()


def images(n: int, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(1))


def _convs(model: onnx.ModelProto, int8: bool, depthwise: bool | None = None) -> int:
    """Conv nodes whose weight is int8 (read through DequantizeLinear) or float, optionally only (non-)grouped."""
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    count = 0
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        grouped = any(a.name == "group" and a.i > 1 for a in n.attribute)
        if (n.input[1] in dq_outputs) == int8 and (depthwise is None or grouped == depthwise):
            count += 1
    return count


def _depthwise_int8(model: onnx.ModelProto) -> int:
    return _convs(model, int8=True, depthwise=True)


def _float_convs(model: onnx.ModelProto) -> int:
    return _convs(model, int8=False)


def fake_timer(models):
    """Depthwise int8 is slow (+5 ms each), a float conv costs 1 ms: floating the depthwise class pays off,
    floating any other class does not."""
    return [10.0 + 5.0 * _depthwise_int8(m) + 1.0 * _float_convs(m) for m in models]


def test_layer_classes_name_kernel_families():
    qm = qat.prepare(mobilenet(), images(2))
    classes = {name: layer_class(m) for name, m in qm.net.named_modules() if layer_class(m)}
    assert classes["block.depthwise.0"] == "Conv depthwise 3x3"
    assert classes["block.expand.0"] == "Conv 1x1"
    assert classes["stem.0"] == "Conv kxk"
    assert classes["fc"] == "Gemm"
    groups = dict(layer_groups(qm, {"block.depthwise.0", "fc"}))
    assert groups == {"Conv depthwise 3x3": frozenset({"block.depthwise.0"}), "Gemm": frozenset({"fc"})}


def test_plan_keeps_slow_class_float_and_prepare_follows_it(tmp_path):
    model, x = mobilenet(), images(8)
    plan = qat.speed_plan(model, x[:2], batches=[x], timer=fake_timer)
    assert plan.keep_float == ("block.depthwise.0",)
    assert plan.config.skip == ("block.depthwise.0",)
    kept = [t for t in plan.placement.trials if t.kept]
    assert [t.group for t in kept] == ["Conv depthwise 3x3"]
    tried = {t.group for t in plan.placement.trials}
    assert {"Conv 1x1", "Conv kxk", "Gemm"} <= tried  # the others were measured and refused
    assert "QAT speed plan: kept 1 layer(s) float" in plan.note()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)  # the depthwise conv's BatchNorm stays float with it
        qm = plan.prepare(model, x[:2])
    assert "block.depthwise.0" in qm.report.skipped
    assert not isinstance(qm.net.get_submodule("block.depthwise.0"), QATConv)
    qat.calibrate(qm, [x], algo="hist")
    result = qat.convert(qm, tmp_path / "m.onnx", samples=x)
    exported = onnx.load(str(tmp_path / "m.onnx"))
    assert _depthwise_int8(exported) == 0 and _float_convs(exported) == 1
    assert result.artifacts["export_agreement"].fraction_within_step >= 0.999
    report = result.report
    assert any(n.startswith("QAT speed plan: kept 1 layer(s) float") for n in report.notes)
    assert report.details["speed"]["floats"] == {"block.depthwise.0": "Conv depthwise 3x3"}
    reasons = {(f.module, f.op_type): f.reason for f in report.float_ops}
    assert reasons[("block.depthwise.0", "Conv")] == ("kept float for speed (Conv depthwise 3x3: int8 was slower "
                                                      "on onnxruntime)")
    # the projection conv reads the floated depthwise conv's float output: said so, not "unsupported"
    assert sum("reads the float output of a layer kept float" in f.reason for f in report.float_ops) == 1


def test_plan_without_a_slow_class_keeps_everything_int8():
    model, x = mobilenet(), images(4)
    plan = qat.speed_plan(model, x[:2], timer=lambda ms: [10.0 + _float_convs(m) - 0.5 * _depthwise_int8(m)
                                                         for m in ms])
    assert plan.keep_float == () and plan.config.skip == ()
    assert plan.placement.trials and not any(t.kept for t in plan.placement.trials)


def test_plan_when_no_int8_model_beats_fp32_lists_every_layer():
    model, x = mobilenet(), images(4)

    def int8_always_slower(models):  # FP32 (no int8 weights) 1 ms, anything with int8 weights 50 ms
        return [50.0 if _convs(m, int8=True) else 1.0 for m in models]

    plan = qat.speed_plan(model, x[:2], timer=int8_always_slower)
    assert plan.placement.all_float
    assert set(plan.keep_float) == {"stem.0", "block.expand.0", "block.depthwise.0", "block.project.0", "fc"}
    assert "no INT8 model tried ran faster than FP32" in plan.note()


def test_toy_models_and_untimed_targets_are_not_timed():
    def never(models):
        raise AssertionError("a toy model must not be timed")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)
        toy = qat.speed_plan(build("mobilenet"), torch.randn(2, 1, 16, 16), timer=never)
    assert toy.keep_float == () and "toy model" in toy.placement.skipped
    trt = qat.speed_plan(mobilenet(), images(2), qat.QATConfig(target="tensorrt"), timer=never)
    assert trt.keep_float == () and 'target "tensorrt" is not timed' in trt.note()


def test_plan_on_the_real_runtime_returns_a_consistent_config():
    """Real onnxruntime timing: whatever it decides, the config skips exactly the layers it names."""
    model, x = mobilenet(), images(4)
    plan = qat.speed_plan(model, x[:2])
    assert plan.placement.fp32_ms and plan.placement.final_ms
    assert plan.config.skip == plan.keep_float
    assert set(plan.keep_float) == set(plan.placement.floats)
    assert np.isfinite(plan.placement.final_ms)


def test_a_float_stem_leaves_its_readers_int8(tmp_path):
    """A skipped conv reading the float image cannot become an integer kernel, so its output is quantized for
    the next layer (before: the next conv read it in float and ran as a float Conv with int8 weights)."""
    from slimq.runtime.session import optimized_graph

    model, x = mobilenet(), images(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)  # the stem's BatchNorm stays float with it
        qm = qat.prepare(model, x[:2], qat.QATConfig(skip=("stem.0",)))
    qat.calibrate(qm, [x], algo="hist")
    result = qat.convert(qm, tmp_path / "s.onnx", samples=x)
    ops = [n.op_type for n in optimized_graph(onnx.load(str(result.path)), "extended").graph.node]
    assert ops.count("Conv") == 1 and ops.count("QLinearConv") == 3  # only the stem is float
    assert result.artifacts["export_agreement"].fraction_within_step >= 0.999


def test_quantize_refuses_a_model_whose_int8_never_beats_fp32(tmp_path, monkeypatch):
    """slimq.quantize(QATConfig) on a float model: when the plan keeps every layer float, it says so instead of
    failing on an empty prepare; speed_guard=False still quantizes."""
    import slimq
    import slimq.qat.method as method
    from slimq.core.errors import NothingToQuantizeError

    def slow_plan(model, example, config, batches=None):
        def int8_always_slower(models):
            return [50.0 if _convs(m, int8=True) else 1.0 for m in models]
        return qat.speed_plan(model, example, config, batches, timer=int8_always_slower)

    monkeypatch.setattr(method, "speed_plan", slow_plan)
    with pytest.raises(NothingToQuantizeError, match="no INT8 model tried ran faster than FP32.*--no-speed-guard"):
        slimq.quantize(mobilenet(), qat.QATConfig(), images(12).numpy(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    result = method.quantize_qat(mobilenet(), qat.QATConfig(), images(12).numpy(), tmp_path / "m.onnx",
                                 speed_guard=False)
    assert result.report.int8_mac_share > 0.99
