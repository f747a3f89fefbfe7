"""Accuracy control: budgets, the search (settings, mixed precision, speed pass), honest best-found."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import slimq
from slimq import testing
from slimq.cli import main
from slimq.core.budget import Budget
from slimq.core.errors import ConfigError, FidelityError
from slimq.tasks.metrics import Metric

QUIET = {"show_progress": False, "holdout": 16}


def damaged_conv_net() -> onnx.ModelProto:
    """conv_net whose second conv has one huge output channel: per-tensor int8 weights zero the rest."""
    m = testing.conv_net()
    for init in m.graph.initializer:
        if init.name == "w2":
            w = onnx.numpy_helper.to_array(init).copy()
            w[0] *= 300.0
            init.CopyFrom(onnx.numpy_helper.from_array(w, "w2"))
    return m


@pytest.fixture(scope="module")
def calib():
    m = testing.conv_net()
    return np.concatenate([f["input"] for f in testing.random_inputs(m, 56, seed=3)])


def test_budget_validation():
    with pytest.raises(ConfigError, match="at least one of"):
        Budget(time_budget=10)
    with pytest.raises(ConfigError, match="min_cosine must be in"):
        Budget(min_cosine=5)
    with pytest.raises(ConfigError, match="needs a metric"):
        Budget(max_drop=0.3)
    with pytest.raises(ConfigError, match='Unknown budget key "min_cosin"'):
        slimq.StaticConfig.from_dict({"budget": {"min_cosin": 0.9}})


def test_search_keeps_the_damaged_layer_float_and_meets_the_budget(calib):
    model = damaged_conv_net()
    plain = slimq.quantize(model, slimq.StaticConfig(per_channel=False, **QUIET), calib)
    assert plain.report.worst_cosine < 0.99  # the damage is real
    cfg = slimq.StaticConfig(per_channel=False, budget=Budget(min_cosine=0.999, time_budget=120), **QUIET)
    res = slimq.quantize(model, cfg, calib)
    search = res.report.details["search"]
    assert search["met"] and res.report.worst_cosine >= 0.999
    assert "c2" in search["float_layers"]
    assert len(search["float_layers"]) <= 2 and res.report.int8_mac_share >= 0.5
    phases = [t["phase"] for t in search["trace"]]
    assert phases[0] == "start" and "settings" in phases and "mixed precision" in phases
    top = search["sensitivity"][0]["unit"]  # the ranking found the culprit first: c2 with its input or output
    assert top.startswith("block:") and top in search["float_units"]
    assert all(t["latency_ms"] is not None for t in search["trace"] if t["phase"] != "sensitivity")


def test_unmeetable_budget_writes_the_best_found_with_exit_3(tmp_path, calib):
    model_path = tmp_path / "m.onnx"
    onnx.save(damaged_conv_net(), model_path)
    out = tmp_path / "q.onnx"
    argv = ["quantize", "static", str(model_path), "--calib", str(tmp_path / "c.npy"), "-o", str(out),
            "--per-tensor", "--min-cosine", "0.9999999", "--min-int8-share", "0.99", "--time-budget", "30"]
    np.save(tmp_path / "c.npy", calib)
    assert main(argv) == 3
    report = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert not report["details"]["search"]["met"]
    assert any("accuracy budget NOT met" in w for w in report["warnings"])
    chosen = report["details"]["search"]["chosen"]
    best_deficit = min(t["deficit"] for t in report["details"]["search"]["trace"]
                       if t["phase"] != "sensitivity" and t["int8_share"] >= 0.99)
    assert chosen["deficit"] == best_deficit and out.exists()
    assert report["macs"]["int8_share"] >= 0.99  # the floor held: nothing was floated past it


def test_unmet_budget_with_strict_writes_nothing(tmp_path, calib):
    cfg = slimq.StaticConfig(per_channel=False, strict=True, **QUIET,
                             budget=Budget(min_cosine=0.9999999, min_int8_share=0.99, time_budget=20))
    with pytest.raises(FidelityError):
        slimq.quantize(damaged_conv_net(), cfg, calib, tmp_path / "q.onnx")
    assert list(tmp_path.iterdir()) == []


def test_max_drop_with_a_callable_metric(calib):
    model = damaged_conv_net()
    fp32_out = slimq.Predictor(model, threads=1).run({"input": calib[:16]})[0]

    def agreement_pct(predict) -> float:  # a user metric: % of argmax equal to FP32 on 16 inputs
        return 100.0 * float((predict({"input": calib[:16]})[0].argmax(1) == fp32_out.argmax(1)).mean())

    cfg = slimq.StaticConfig(per_channel=False, budget=Budget(max_drop=0.0, metric="agree", time_budget=120),
                             **QUIET)
    res = slimq.quantize(model, cfg, calib, metric=Metric("agree", agreement_pct))
    search = res.report.details["search"]
    assert search["met"] and search["chosen"]["metric"] == 100.0 and search["chosen"]["metric_drop"] == 0.0


def test_sensitivity_command_ranks_the_culprit_and_the_search_reuses_it(tmp_path, calib, monkeypatch, caplog):
    from slimq.static import sensitivity

    monkeypatch.setattr(sensitivity, "CACHE_DIR", tmp_path / "cache")
    model_path, data = tmp_path / "m.onnx", tmp_path / "c.npy"
    onnx.save(damaged_conv_net(), model_path)
    np.save(data, calib)
    argv = ["sensitivity", str(model_path), "--calib", str(data), "--per-tensor", "--min-cosine", "0.999",
            "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    units = json.loads((tmp_path / "s.json").read_text())["units"]
    assert "c2" in units[0]["nodes"] and units[0]["recovery"] > 0 and units[0]["damage"] > 0
    recovery = {u["unit"]: u["recovery"] for u in units}
    assert recovery["node:c2"] < 0  # floating c2 alone makes it worse: its output range is the damage
    assert len(list((tmp_path / "cache").iterdir())) == 1
    cfg = slimq.StaticConfig(per_channel=False, budget=Budget(min_cosine=0.999, time_budget=120), **QUIET)
    with caplog.at_level("INFO", logger="slimq"):
        res = slimq.quantize(damaged_conv_net(), cfg, calib)
    assert "using the cached sensitivity" in caplog.text
    assert res.report.details["search"]["met"]
    assert not any(t["phase"] == "sensitivity" for t in res.report.details["search"]["trace"])
