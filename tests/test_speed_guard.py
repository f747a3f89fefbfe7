"""Never slower than FP32: the speed guard (slimq.runtime.speed), its report lines, and the runtime comparison."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from slimq import testing
from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.io.samples import load_samples
from slimq.io.spec import model_inputs
from slimq.runtime.speed import op_class, place_for_speed, speed_groups
from slimq.static.calibrate import Calibration
from slimq.static.method import quantize_static
from slimq.static.speed_step import Built, guard_speed, rebuild, runtime_line
from slimq.static.steps import run_calibration, split_samples

_DW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8, 16, 16] x) => (float[N, 8, 16, 16] y) {
    a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 8> (x, wd)
    b = Conv <kernel_shape = [1, 1]> (a, wp)
    y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, wk)
}"""


def _dw_model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(_DW)
    for n in m.graph.node:
        n.name = f"conv_{n.output[0]}"
    rng = np.random.default_rng(0)
    for name, shape in {"wd": (8, 1, 3, 3), "wp": (8, 8, 1, 1), "wk": (8, 8, 3, 3)}.items():
        m.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name))
    return m


def _q_nodes(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _int8_convs(model: onnx.ModelProto) -> dict[str, bool]:
    """Per Conv (by output): are its weights quantized (read through a DequantizeLinear), i.e. does it run in int8?"""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.output[0]: producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
            for n in model.graph.node if n.op_type == "Conv"}


def test_op_classes_split_convolutions():
    graph = ir.from_proto(_dw_model()).graph
    assert [op_class(n) for n in graph] == ["Conv depthwise 3x3", "Conv 1x1", "Conv kxk"]


def _first(model: onnx.ModelProto, data: np.ndarray) -> tuple[Built, Calibration, onnx.ModelProto]:
    """The plain INT8 model (guard off), its plan and calibration, and the preprocessed FP32 model."""
    cfg = StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)
    res = quantize_static(model, data, cfg)
    fp32 = preprocess(model)
    samples = load_samples(data, model_inputs(fp32))
    idx = split_samples(len(samples), cfg).calib
    calib = run_calibration(fp32, ir.from_proto(fp32), res.plan, samples, idx, cfg)
    return Built(res.model, res.plan, 0), calib, fp32


@pytest.fixture
def timed(monkeypatch):
    """The small test models here are below the toy-model floor; fake timers stand in for real timing."""
    import slimq.static.speed_step as step

    monkeypatch.setattr(step, "MIN_MACS", 0)


class FakeTimer:
    """Milliseconds from what a model runs in int8: a depthwise conv in int8 costs 3 ms, anything else 1 ms
    per int8 conv; FP32 takes `fp32_ms`. Records what it was asked to time."""

    def __init__(self, fp32_ms: float, dw_ms: float = 3.0) -> None:
        self.fp32_ms, self.dw_ms, self.calls = fp32_ms, dw_ms, 0

    def __call__(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        self.calls += 1
        out = []
        for m in models:
            convs = _int8_convs(m)
            if not any(convs.values()) and not _q_nodes(m):
                out.append(self.fp32_ms)
                continue
            depthwise = [n for n in m.graph.node if n.op_type == "Conv"
                         and any(a.name == "group" and a.i > 1 for a in n.attribute)]
            out.append(sum(self.dw_ms if n in depthwise else 1.0 for n in m.graph.node
                           if n.op_type == "Conv" and convs[n.output[0]]) + 2.0 * sum(not q for q in convs.values()))
        return out


def test_guard_keeps_float_the_class_that_int8_makes_slower(timed):
    data = np.random.default_rng(1).standard_normal((24, 8, 16, 16)).astype(np.float32)
    first, calib, fp32 = _first(_dw_model(), data)
    cfg = StaticConfig(show_progress=False)
    timer = FakeTimer(fp32_ms=5.5)  # all int8: 3 + 1 + 1 = 5 ms; depthwise float: 2 + 1 + 1 = 4 ms
    out = guard_speed(fp32, first, calib, cfg, {"x": data[:1]}, timer=timer)
    rec = out.placement
    assert rec is not None and not rec.all_float
    assert set(rec.floats.values()) == {"Conv depthwise 3x3"}
    quantized = _int8_convs(out.built.model)
    assert sum(quantized.values()) == 2  # the 1x1 and the 3x3 conv stay int8
    assert rec.fp32_ms == 5.5 and rec.final_ms == 4.0 and rec.int8_ms == 5.0
    kept = [t for t in rec.trials if t.kept]
    assert [t.group for t in kept] == ["Conv depthwise 3x3"]
    assert "kept 1 layer(s) float for speed (Conv depthwise 3x3" in rec.note()


def test_guard_keeps_everything_float_when_no_int8_model_is_faster(timed):
    data = np.random.default_rng(1).standard_normal((24, 8, 16, 16)).astype(np.float32)
    first, calib, fp32 = _first(_dw_model(), data)
    out = guard_speed(fp32, first, calib, StaticConfig(show_progress=False), {"x": data[:1]},
                      timer=FakeTimer(fp32_ms=2.5))
    assert out.placement is not None and out.placement.all_float
    assert _q_nodes(out.built.model) == 0 and not any(_int8_convs(out.built.model).values())
    assert "every layer was kept float" in out.placement.note()


def test_guard_changes_nothing_when_int8_wins_everywhere(timed):
    data = np.random.default_rng(1).standard_normal((24, 8, 16, 16)).astype(np.float32)
    first, calib, fp32 = _first(_dw_model(), data)
    out = guard_speed(fp32, first, calib, StaticConfig(show_progress=False), {"x": data[:1]},
                      timer=FakeTimer(fp32_ms=20.0, dw_ms=0.5))
    assert out.built.model is first.model and out.placement is not None and not out.placement.floats
    assert "INT8 runs" in out.placement.note()


def test_groups_come_from_the_plan_and_rebuild_floats_them():
    data = np.random.default_rng(1).standard_normal((24, 8, 16, 16)).astype(np.float32)
    first, calib, fp32 = _first(_dw_model(), data)
    groups = dict(speed_groups(first.plan, ir.from_proto(fp32).graph))
    assert set(groups) == {"Conv depthwise 3x3", "Conv 1x1", "Conv kxk"}
    built = rebuild(fp32, first.plan, calib, StaticConfig(show_progress=False), groups["Conv kxk"])
    assert sum(_int8_convs(built.model).values()) == 2


def test_place_for_speed_returns_none_for_fp32():
    fp32 = _dw_model()
    model, rec = place_for_speed(fp32, fp32, [], lambda f: fp32, lambda ms: [1.0, 2.0][: len(ms)], "ort")
    assert model is None and rec.all_float


def test_tiny_models_skip_the_guard_with_a_note(conv_model, conv_calib):
    res = quantize_static(conv_model, conv_calib, StaticConfig(show_progress=False))
    speed = res.report.details["speed"]
    assert "a toy model" in speed["skipped"] and "MACs per run" in speed["skipped"]
    assert any(n.startswith("speed guard: not run") for n in res.report.notes)
    assert _q_nodes(res.model) > 0


def test_guard_and_runtimes_can_be_turned_off(conv_model, conv_calib):
    res = quantize_static(conv_model, conv_calib, StaticConfig(show_progress=False, speed_guard=False,
                                                               compare_runtimes=False))
    assert "speed" not in res.report.details and "runtimes" not in res.report.details


def test_runtime_line_names_the_fastest_with_both_speedups():
    line = runtime_line({"threads": 1, "fastest": "openvino",
                         "ms": {"ort": {"fp32": 10.0, "int8": 4.0}, "openvino": {"fp32": 8.0, "int8": 2.0}}})
    assert line.startswith("runs fastest on OpenVINO, 2.00x faster than onnxruntime INT8")
    assert "OpenVINO: INT8 2.000 ms, 4.00x its FP32" in line and "onnxruntime: INT8 4.000 ms, 2.50x its FP32" in line
    assert runtime_line({"skipped": "OpenVINO is not installed"}) == \
        "runtimes: not compared (OpenVINO is not installed)"


def test_compare_runtimes_without_openvino(monkeypatch):
    import slimq.runtime.select as select
    from slimq.static import speed_step

    monkeypatch.setattr(select, "openvino_available", lambda: False)
    m = testing.conv_net()
    d = speed_step.compare_runtimes(m, m, testing.random_inputs(m, 1)[0])
    assert "OpenVINO is not installed" in d["skipped"]


@pytest.mark.skipif(not __import__("slimq.runtime.backends", fromlist=["x"]).openvino_available(),
                    reason="OpenVINO is not installed")
def test_compare_runtimes_times_both():
    from slimq.static.speed_step import compare_runtimes

    m = testing.conv_net()
    d = compare_runtimes(m, m, testing.random_inputs(m, 1)[0])
    assert set(d["ms"]) == {"ort", "openvino"} and d["fastest"] in d["ms"]
    assert all(v["fp32"] > 0 and v["int8"] > 0 for v in d["ms"].values())


_HS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
    a = Conv <kernel_shape = [1, 1]> (x, w1)
    h = HardSwish (a)
    y = Conv <kernel_shape = [1, 1]> (h, w2)
}"""


def test_int8_hardswish_runs_as_qlinear_add_and_mul():
    from slimq.graph.passes.qdq_hardswish import int8_hardswish
    from slimq.runtime.session import Predictor, optimized_graph

    m = onnx.parser.parse_model(_HS)
    rng = np.random.default_rng(0)
    for name in ("w1", "w2"):
        m.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32), name))
    data = rng.standard_normal((32, 4, 8, 8)).astype(np.float32)
    q = quantize_static(m, data, StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)).model
    irm = ir.from_proto(q)
    assert int8_hardswish(irm) == 1
    q2 = ir.to_proto(irm)
    assert "HardSwish" not in testing.count_ops(q2)
    ops = testing.count_ops(optimized_graph(q2, "extended"))
    assert ops.get("QLinearAdd") == 1 and ops.get("QLinearMul") == 1 and "HardSwish" not in ops
    before = testing.count_ops(optimized_graph(q, "extended"))  # a float island: DQ, HardSigmoid, Mul, Q
    assert before.get("HardSigmoid") == 1 and before.get("DequantizeLinear", 0) >= 1 and "QLinearMul" not in before
    feeds = {"x": data[:8]}
    ref, plain, rewritten = Predictor(m).run(feeds)[0], Predictor(q).run(feeds)[0], Predictor(q2).run(feeds)[0]
    step = np.abs(ref).max() / 127
    assert np.abs(rewritten - plain).max() <= 2 * step  # the gate's 1/255 grid moves y by a fraction of a step
    assert np.corrcoef(ref.ravel(), rewritten.ravel())[0, 1] > 0.999


def test_guard_keeps_the_int8_hardswish_rewrite_when_it_is_faster(timed):
    from slimq.static.speed_step import with_speed

    m = onnx.parser.parse_model(_HS)
    rng = np.random.default_rng(0)
    for name in ("w1", "w2"):
        m.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32), name))
    data = rng.standard_normal((32, 4, 8, 8)).astype(np.float32)
    first, calib, fp32 = _first(m, data)

    def timer(models):  # FP32 3 ms; INT8 2 ms with a float HardSwish, 1 ms without
        return [3.0 if not _q_nodes(x) else 2.0 if "HardSwish" in testing.count_ops(x) else 1.0 for x in models]

    out = guard_speed(fp32, first, calib, StaticConfig(show_progress=False), {"x": data[:1]}, timer=timer)
    assert out.placement is not None and out.placement.rewrites == ["int8 HardSwish"]
    assert "HardSwish" not in testing.count_ops(out.built.model) and out.placement.final_ms == 1.0
    res = quantize_static(m, data, StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False))
    report = with_speed(res.report, out)
    assert not [f for f in report.float_ops if f.op_type == "HardSwish"]
    assert any("kept int8 HardSwish" in n for n in report.notes)


_HS_TAIL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
    a = Conv <kernel_shape = [1, 1]> (x, w1)
    h = HardSwish (a)
    m = Mul (h, k)
    t = Add (m, c)
    y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (t, w2)
}"""


def _hs_tail_model(rng: np.random.Generator) -> onnx.ModelProto:
    m = onnx.parser.parse_model(_HS_TAIL)
    weights = {"w1": rng.normal(0, 1, (4, 4, 1, 1)), "w2": rng.normal(0, 0.3, (4, 4, 3, 3)),
               "k": np.array([0.7]), "c": np.array([-0.83])}
    m.graph.initializer.extend(onnx.numpy_helper.from_array(v.astype(np.float32), n) for n, v in weights.items())
    return m


def test_int8_hardswish_absorbs_a_scalar_affine_tail_into_the_grid():
    """HardSwish -> Mul(a) -> Add(c) before a padded conv (PP-LCNetV3's learnable affine): the plan puts c on
    the Add's grid, and the rewrite folds a and c into QLinearMul's output scale and zero point: no float op
    is left, and the outputs are those of the plain QDQ model."""
    from slimq.graph.passes.qdq_hardswish import int8_hardswish
    from slimq.runtime.session import Predictor, optimized_graph

    rng = np.random.default_rng(1)
    m = _hs_tail_model(rng)
    data = rng.standard_normal((32, 4, 8, 8)).astype(np.float32)
    q = quantize_static(m, data, StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)).model
    before = testing.count_ops(optimized_graph(q, "extended"))
    assert before.get("HardSigmoid") == 1 and before.get("Add", 0) >= 1  # the float island with its tail
    irm = ir.from_proto(q)
    assert int8_hardswish(irm) == 1
    q2 = ir.to_proto(irm)
    after = testing.count_ops(optimized_graph(q2, "extended"))
    assert not {"HardSigmoid", "HardSwish", "Add", "Mul"} & set(after), after
    assert after.get("QLinearConv") == 2 and after.get("QLinearMul") == 1
    assert after.get("DequantizeLinear") == 1 and after.get("QuantizeLinear") == 1  # the model's input and output
    feeds = {"x": data[:8]}
    ref, plain, rewritten = Predictor(m).run(feeds)[0], Predictor(q).run(feeds)[0], Predictor(q2).run(feeds)[0]
    step = np.abs(ref).max() / 127
    assert np.abs(rewritten - plain).max() <= 2 * step
    assert np.corrcoef(ref.ravel(), rewritten.ravel())[0, 1] > 0.999


def test_int8_hardswish_leaves_a_constant_off_the_grid_float(caplog):
    """Where the added constant is not on the output grid (the plan could not put it there), moving it into
    the zero point would shift every value: the site is left alone and says why."""
    from slimq.graph.passes.qdq_hardswish import Int8HardSwishPass

    rng = np.random.default_rng(1)
    m = _hs_tail_model(rng)
    data = rng.standard_normal((32, 4, 8, 8)).astype(np.float32)
    q = quantize_static(m, data, StaticConfig(show_progress=False, speed_guard=False, compare_runtimes=False)).model
    adds = [n for n in q.graph.node if n.op_type == "Add"]
    assert len(adds) == 1
    consts = {i.name: i for i in q.graph.initializer}
    const = next(consts[name] for name in adds[0].input if name in consts)
    value = onnx.numpy_helper.to_array(const) * 1.37  # move c off the grid
    const.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), const.name))
    irm = ir.from_proto(q)
    with caplog.at_level("DEBUG", logger="slimq"):
        result = Int8HardSwishPass()(irm)
    assert not result.modified and "HardSwish" in testing.count_ops(ir.to_proto(irm))
    assert "not on the output grid" in caplog.text


def test_an_inexact_rewrite_that_costs_accuracy_is_not_kept():
    """Faster is not enough for a rewrite that changes values: it must keep the SQNR against FP32 within
    MAX_REWRITE_LOSS_DB on the held-out samples; an exact rewrite is not checked."""
    from slimq.runtime.speed import MAX_REWRITE_LOSS_DB, QDQRewrite

    fp32, int8 = testing.conv_net(), testing.conv_net()
    lossy, exact = onnx.ModelProto(), onnx.ModelProto()
    lossy.CopyFrom(int8)
    lossy.doc_string = "lossy"
    exact.CopyFrom(int8)
    exact.doc_string = "exact"
    sqnr = {"": 30.0, "lossy": 30.0 - 2 * MAX_REWRITE_LOSS_DB, "exact": 10.0}
    ms = {"": 2.0, "lossy": 1.0, "exact": 1.5}

    def timer(models):
        return [3.0 if m is fp32 else ms[m.doc_string] for m in models]

    rewrites = [QDQRewrite("lossy", lambda m: lossy if not m.doc_string else None, exact=False),
                QDQRewrite("exact", lambda m: exact if not m.doc_string else None)]
    model, rec = place_for_speed(fp32, int8, [], lambda f: int8, timer, "ort", rewrites,
                                 fidelity=lambda m: sqnr[m.doc_string])
    assert model is exact and rec.rewrites == ["exact"]
    lossy_trial = next(t for t in rec.trials if t.group == "lossy")
    assert not lossy_trial.kept and "costs accuracy: SQNR against FP32 30.00 -> 29.00 dB" in lossy_trial.note
    model, rec = place_for_speed(fp32, int8, [], lambda f: int8, timer, "ort", rewrites[:1], fidelity=None)
    assert model is int8 and not rec.rewrites  # no samples to check an inexact rewrite on: not applied
