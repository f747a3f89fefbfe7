"""`slimq bench` and slimq.bench.runner on tiny models: tables, ratios, JSON/PNG, and bad-input errors."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from slimq.bench.data import LabeledEvaluator
from slimq.bench.profile import profile_markdown, profile_model, summarize
from slimq.bench.results import BenchResult, TimingConfig
from slimq.bench.runner import benchmark
from slimq.bench.tables import result_markdown
from slimq.cli.main import main
from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.testing import matmul_net

FAST = TimingConfig(warmup=1, min_iters=3, min_time=0.01, rounds=2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, conv_int8_files):
    d = tmp_path_factory.mktemp("bench")
    fp32, int8 = conv_int8_files
    rng = np.random.default_rng(1)
    images = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(d / "data.npz", input=images, labels=np.arange(40) % 10)
    return d, fp32, int8, d / "data.npz"


def test_benchmark_measures_accuracy_speed_and_ratios(pair):
    _, fp32, int8, data = pair
    r = benchmark([fp32, int8], str(data), threads=(1, "all"), timing=FAST, names=["FP32", "INT8"])
    counts = sorted({1, os.cpu_count()})
    assert [(s.model, s.threads) for s in r.speed] == [(m, t) for t in counts for m in ("FP32", "INT8")]
    for t in counts:
        ref, q = r.speed_of("FP32", t), r.speed_of("INT8", t)
        assert ref.ratio == 1.0
        assert q.ratio == pytest.approx(q.samples_per_s / ref.samples_per_s)
        assert q.iterations >= 2 * FAST.min_iters and 0 < q.p50_ms <= q.p90_ms
    assert set(r.accuracy) == {"FP32", "INT8"} and set(r.accuracy["FP32"]) == {"top1", "top5"}
    # The accuracy must be what the labels give: recompute top-1 from the FP32 model directly.
    import onnxruntime as ort

    logits = ort.InferenceSession(str(fp32)).run(None, {"input": np.load(data)["input"]})[0]
    assert r.accuracy["FP32"]["top1"] == pytest.approx((logits.argmax(1) == np.arange(40) % 10).mean() * 100)
    assert r.models[1].size_bytes < r.models[0].size_bytes


def test_markdown_tables_have_expected_rows(pair):
    _, fp32, int8, data = pair
    r = benchmark([fp32, int8], str(data), threads=(1,), timing=FAST, names=["FP32", "INT8"])
    md = result_markdown(r)
    acc, speed = md.split("### Speed")
    assert "| model | top1 | top5 | Δ top1 | Δ top5 |" in acc
    d1 = r.accuracy["INT8"]["top1"] - r.accuracy["FP32"]["top1"]
    assert f"| INT8 | {r.accuracy['INT8']['top1']:.2f} |" in acc and f"{d1:+.2f}" in acc
    rows = [ln for ln in speed.splitlines() if ln.startswith("| FP32") or ln.startswith("| INT8")]
    assert len(rows) == 2 and rows[0].split("|")[6].strip() == "1.00x"
    assert rows[1].split("|")[6].strip() == f"{r.speed_of('INT8', 1).ratio:.2f}x"


def test_cli_writes_json_and_png(pair, capsys):
    d, fp32, int8, data = pair
    js, png = d / "out.json", d / "out.png"
    rc = main(["bench", str(fp32), str(int8), "--data", str(data), "--threads", "1", "--min-time", "0.01",
               "--rounds", "1", "--iters", "3", "--warmup", "1", "--json", str(js), "--png", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "### Accuracy" in out and "### Speed" in out and "| conv.int8 | 1 |" in out
    payload = json.loads(js.read_text())
    assert [m["name"] for m in payload["models"]] == ["conv", "conv.int8"]
    assert {s["threads"] for s in payload["speed"]} == {1} and payload["machine"]["onnxruntime"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_with_different_inputs_are_refused(pair, tmp_path):
    _, fp32, _, _ = pair
    other = tmp_path / "mlp.onnx"
    onnx.save(matmul_net(), other)
    with pytest.raises(ConfigError, match="not comparable"):
        benchmark([fp32, other], timing=FAST)


def test_data_that_does_not_match_the_model_is_refused(pair, tmp_path):
    _, fp32, int8, _ = pair
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(CalibrationDataError, match="dimension 2 is 8, expected 16"):
        benchmark([fp32, int8], str(bad), timing=FAST)
    two = tmp_path / "two.npz"
    np.savez(two, image=np.zeros((4, 3, 16, 16), np.float32), extra=np.zeros((4, 3), np.float32))
    with pytest.raises(CalibrationDataError, match='no such input'):
        benchmark([fp32, int8], str(two), timing=FAST)
    few = tmp_path / "few.npz"
    np.savez(few, input=np.zeros((4, 3, 16, 16), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(CalibrationDataError, match="3 labels"):
        benchmark([fp32, int8], str(few), timing=FAST)
    with pytest.raises(CalibrationDataError, match='Did you mean "fashion-mnist"'):
        benchmark([fp32, int8], "fashion-mnst", timing=FAST)


def test_threads_above_core_count_warn_and_clamp(pair):
    _, fp32, int8, _ = pair
    cores = os.cpu_count()
    with pytest.warns(UserWarning, match=f"{cores + 3} threads requested"):
        r = benchmark([fp32, int8], threads=(cores + 3,), timing=FAST)
    assert {s.threads for s in r.speed} == {cores}


def test_any_evaluator_drives_the_accuracy_table(pair):
    _, fp32, int8, _ = pair
    rng = np.random.default_rng(3)
    ev = LabeledEvaluator({"input": rng.standard_normal((10, 3, 16, 16)).astype(np.float32)},
                          rng.integers(0, 10, 10), batch_size=4)
    r = benchmark([fp32, int8], evaluator=ev, threads=(1,), timing=FAST, batch=2)
    assert r.evaluator == {"name": "classification", "primary_metric": "top1", "higher_is_better": True}
    assert r.speed[0].batch == 2 and r.settings["data"] == "classification evaluation set"
    assert isinstance(r, BenchResult) and "Δ top1" in result_markdown(r)


def test_invalid_timing_is_a_config_error():
    with pytest.raises(ConfigError):
        TimingConfig(rounds=0)


def test_profile_summary_skips_warmup_and_takes_medians(pair):
    def run(conv_us):
        return [{"cat": "Node", "name": "c_kernel_time", "dur": conv_us,
                 "args": {"op_name": "Conv", "input_type_shape": [{"float": [1, 3]}],
                          "output_type_shape": [{"float": [1, 8]}]}},
                {"cat": "Session", "name": "model_run", "dur": conv_us + 10}]
    events = run(5000) + run(100) + run(200) + run(9000)  # first run is warm-up; median of 100, 200, 9000
    p = summarize(events, warmup=1)
    assert p.runs == 3 and p.ops[0].op_type == "Conv" and p.ops[0].ms_per_run == pytest.approx(0.2)
    _, fp32, int8, _ = pair
    feeds = {"input": np.zeros((1, 3, 16, 16), np.float32)}
    md = profile_markdown("conv", {"FP32": profile_model(fp32, feeds, runs=3), "INT8": profile_model(int8, feeds, runs=3)})
    assert "| Conv |" in md and "| QLinearConv |" in md
